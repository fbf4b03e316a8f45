"""What a run leaves behind and prints: metrics JSON and CSV, the training plot, the
reconstructions, the one-line summary and the tables of `wvq train --compare` and
`wvq diagnose`."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import torch

from wvq_kernels.reporting import Column, format_table, line_plots

USAGE_COLUMNS = (
    Column("U %", "utilization %", 7, "{:.2f}"),
    Column("C", "perplexity", 7, "{:.0f}"),
    Column("E", "quantization_error", 9, "{:.4g}"),
)


def describe(metrics: dict) -> str:
    return (
        f"step {metrics['step']}: U={100 * metrics['utilization']:.2f}% "
        f"C={metrics['perplexity']:.0f} E={metrics['quantization_error']:.4g} "
        f"PSNR={metrics['psnr']:.2f} dB"
    )


def usage_table(
    leading: Sequence[Column], rows: list[dict], trailing: Sequence[Column] = ()
) -> str:
    """A table of U (in %), C and E between the ``leading`` and ``trailing`` columns."""
    shown = [{**row, "utilization %": 100 * row["utilization"]} for row in rows]
    return format_table([*leading, *USAGE_COLUMNS, *trailing], shown)


def compare_table(rows: list[dict]) -> str:
    leading = [
        Column("quantizer", "quantizer", 12, left=True),
        Column("strategy", "strategy", 9, left=True),
        Column("steps", "step", 6),
    ]
    return usage_table(leading, rows, [Column("PSNR", "psnr", 6, "{:.2f}")])


def ceilings_table(rows: list[dict], codebook_size: int) -> str:
    title = f"codebook (K = {codebook_size})"
    return usage_table([Column(title, "codebook", 22, left=True)], rows)


def write_artefacts(run_dir: Path, config, trainer, images: torch.Tensor) -> None:
    """metrics.json (config, evaluations, events, curve), metrics.csv (evaluations), curve.csv
    (training loss and batch utilization), usage.png (both over steps) and
    reconstructions.png (of the first 32 ``images``)."""
    history, curve = trainer.history, trainer.curve
    metrics = {
        "config": asdict(config),
        "history": history,
        "events": trainer.events,
        "curve": curve,
    }
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    write_csv(run_dir / "metrics.csv", history)
    write_csv(run_dir / "curve.csv", curve)
    plot_training(run_dir / "usage.png", history, curve)
    write_reconstructions(run_dir / "reconstructions.png", trainer.model, images[:32])


def write_csv(path: Path, rows: list[dict]) -> None:
    """One line per row; the columns are every key of any row, in order of appearance."""
    fields = list(dict.fromkeys(key for row in rows for key in row))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, restval="")
        writer.writeheader()
        writer.writerows(rows)


def plot_training(path: Path, history: list[dict], curve: list[dict]) -> Path | None:
    """The training loss and batch utilization (every curve_every steps) and the evaluations'
    U, C and PSNR, over steps."""
    panels = [
        ("training loss", {"loss": _series(curve, "loss")}),
        ("batch utilization (%)", {"batch": _series(curve, "batch_utilization", 100)}),
        ("eval utilization U (%)", {"eval": _series(history, "utilization", 100)}),
        ("eval perplexity C", {"eval": _series(history, "perplexity")}),
        ("eval PSNR (dB)", {"eval": _series(history, "psnr")}),
    ]
    return line_plots(path, panels, logy=("training loss",))


def _series(rows: list[dict], key: str, scale: float = 1) -> tuple[list, list]:
    """(steps, scale * values) of the rows that have ``key`` (the adversarial stage logs no
    batch utilization)."""
    kept = [row for row in rows if key in row]
    return [row["step"] for row in kept], [scale * row[key] for row in kept]


@torch.no_grad()
def write_reconstructions(path: Path, model, images: torch.Tensor) -> None:
    """32 eval images, each above its reconstruction, as an 8 x 8 grid."""
    from matplotlib.image import imsave

    model.eval()
    reconstruction = model(images)[0].clamp(-1, 1)
    model.train()
    pairs = torch.stack([images, reconstruction], 1).flatten(0, 1)  # original above its copy
    grid = pairs.reshape(8, 8, 3, 32, 32).permute(0, 3, 1, 4, 2).reshape(8 * 32, 8 * 32, 3)
    imsave(path, ((grid + 1) / 2).numpy())

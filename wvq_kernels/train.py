"""`wvq train`: the reference VQ-VAE on 32x32 patches, with U/C/E/PSNR evaluation, exact-resume
checkpoints and artefacts under runs/<name>/ (metrics JSON + CSV, reconstructions, usage plot)."""
from __future__ import annotations

import csv
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

import wvq_kernels
from wvq_kernels.data import load_datasets
from wvq_kernels.models import VQVAE
from wvq_kernels.nn import VectorQuantizer

QUANTIZER_OPTIONS = {
    "vanilla": {},
    "ema": {"ema": True},
    "wasserstein": {"distribution_loss": "wasserstein"},
    "simvq": {"linear_reparam": True},
}


@dataclass
class TrainConfig:
    name: str = "vqvae"
    quantizer: str = "wasserstein"
    codebook_size: int = 65536
    steps: int = 100000
    minutes: float = 6.0
    batch_size: int = 128
    lr: float = 1e-3
    codebook_lr: float = 0.02
    eval_every: int = 500
    checkpoint_every: int = 500
    train_size: int = 20000
    eval_size: int = 8192
    hidden: int = 64
    data: str | None = None
    seed: int = 0
    out_dir: str = "runs"


def build_model(config: TrainConfig) -> VQVAE:
    torch.manual_seed(config.seed)
    quantizer = VectorQuantizer(8, config.codebook_size, **QUANTIZER_OPTIONS[config.quantizer])
    return VQVAE(quantizer, latent_dim=8, hidden=config.hidden)


def build_optimizer(model: VQVAE, config: TrainConfig) -> torch.optim.Optimizer:
    """Adam (0.9, 0.95); the codebook gets its own, much larger learning rate (W-VQ reference)."""
    codebook = {id(p) for p in model.quantizer.codebook_parameters()}
    rest = [p for p in model.parameters() if id(p) not in codebook]
    groups = [{"params": rest, "lr": config.lr}]
    if codebook:
        groups.append({"params": model.quantizer.codebook_parameters(), "lr": config.codebook_lr})
    return torch.optim.Adam(groups, betas=(0.9, 0.95))


def psnr(reconstruction: torch.Tensor, target: torch.Tensor) -> float:
    """Peak signal-to-noise ratio in dB for images in [-1, 1] (peak-to-peak 2)."""
    mse = F.mse_loss(reconstruction.clamp(-1, 1), target).item()
    return 10 * math.log10(4.0 / max(mse, 1e-12))


@torch.no_grad()
def evaluate(model: VQVAE, images: torch.Tensor, batch_size: int = 512) -> dict[str, float]:
    """U, C and E from one fused assignment (with histogram) over the whole eval set; PSNR."""
    model.eval()
    quantizer = model.quantizer
    features = torch.cat([quantizer.project_in(model.encode(images[i:i + batch_size]))
                          for i in range(0, len(images), batch_size)])
    result = wvq_kernels.assign(features, quantizer.codes(), histogram=True)
    utilization, perplexity = wvq_kernels.usage(result.counts)
    codes = quantizer.indices_to_codes(result.indices)
    reconstruction = torch.cat([model.decode(codes[i:i + batch_size])
                                for i in range(0, len(images), batch_size)])
    model.train()
    return {"utilization": utilization.item(), "perplexity": perplexity.item(),
            "quantization_error": result.distances.mean().item(),
            "psnr": psnr(reconstruction, images)}


def train_step(model, optimizer, images: torch.Tensor) -> dict[str, float]:
    reconstruction, out = model(images)
    loss = F.mse_loss(reconstruction, images) + out.loss
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    return {"loss": loss.item(), "batch_utilization": out.stats["utilization"].item()}


def save_checkpoint(path: Path, model, optimizer, sampler: torch.Generator, step: int,
                    history: list[dict]) -> None:
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
             "sampler": sampler.get_state(), "torch_rng": torch.get_rng_state(),
             "step": step, "history": history}
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)  # atomic: an interrupted save never leaves a broken checkpoint


def load_checkpoint(path: Path, model, optimizer, sampler: torch.Generator):
    state = torch.load(path, weights_only=False)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    sampler.set_state(state["sampler"])
    torch.set_rng_state(state["torch_rng"])
    return state["step"], state["history"]


class Progress:
    """tqdm when installed, else one printed line every ``every`` steps."""

    def __init__(self, total: int, start: int, every: int = 50):
        try:
            from tqdm import tqdm
            self.bar = tqdm(total=total, initial=start, unit="step")
        except ImportError:
            self.bar = None
        self.every = every

    def update(self, step: int, info: dict) -> None:
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix({k: f"{v:.4g}" for k, v in info.items()})
        elif step % self.every == 0:
            print(f"step {step}: " + " ".join(f"{k}={v:.4g}" for k, v in info.items()), flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def write_artefacts(run_dir: Path, config: TrainConfig, history: list[dict], model, images) -> None:
    (run_dir / "metrics.json").write_text(json.dumps({"config": asdict(config),
                                                      "history": history}, indent=2))
    with open(run_dir / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(history[0]))
        writer.writeheader()
        writer.writerows(history)
    write_plots(run_dir, history, model, images[:32])


def write_plots(run_dir: Path, history: list[dict], model, images: torch.Tensor) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [row["step"] for row in history]
    fig, left = plt.subplots(figsize=(7, 4))
    left.plot(steps, [100 * row["utilization"] for row in history], "b-o", label="U (%)")
    left.set_xlabel("step")
    left.set_ylabel("utilization U (%)", color="b")
    right = left.twinx()
    right.plot(steps, [row["perplexity"] for row in history], "r-s", label="C")
    right.set_ylabel("perplexity C", color="r")
    fig.tight_layout()
    fig.savefig(run_dir / "usage.png", dpi=100)
    plt.close(fig)

    with torch.no_grad():
        model.eval()
        reconstruction = model(images)[0].clamp(-1, 1)
        model.train()
    pairs = torch.stack([images, reconstruction], 1).flatten(0, 1)  # original above its copy
    grid = pairs.reshape(8, 8, 3, 32, 32).permute(0, 3, 1, 4, 2).reshape(8 * 32, 8 * 32, 3)
    plt.imsave(run_dir / "reconstructions.png", ((grid + 1) / 2).numpy())


def train(config: TrainConfig, *, resume: bool = False, log=print) -> list[dict]:
    """Train until ``config.steps`` or ``config.minutes``; returns the evaluation history."""
    run_dir = Path(config.out_dir) / config.name
    run_dir.mkdir(parents=True, exist_ok=True)
    train_set, eval_set = load_datasets(config.data, train_size=config.train_size,
                                        eval_size=config.eval_size, seed=config.seed)
    model = build_model(config)
    optimizer = build_optimizer(model, config)
    sampler = torch.Generator().manual_seed(config.seed)
    checkpoint = run_dir / "checkpoint.pt"
    step, history = 0, []
    if resume and checkpoint.exists():
        step, history = load_checkpoint(checkpoint, model, optimizer, sampler)
    deadline = time.monotonic() + 60 * config.minutes
    progress = Progress(config.steps, step)
    while step < config.steps and time.monotonic() < deadline:
        batch = train_set[torch.randint(len(train_set), (config.batch_size,), generator=sampler)]
        info = train_step(model, optimizer, batch)
        step += 1
        progress.update(step, info)
        if step % config.eval_every == 0:
            history.append({"step": step, **evaluate(model, eval_set)})
            log(f"eval {describe(history[-1])}")
        if step % config.checkpoint_every == 0:
            save_checkpoint(checkpoint, model, optimizer, sampler, step, history)
    progress.close()
    if not history or history[-1]["step"] != step:
        history.append({"step": step, **evaluate(model, eval_set)})
    save_checkpoint(checkpoint, model, optimizer, sampler, step, history)
    write_artefacts(run_dir, config, history, model, eval_set)
    log(f"final {describe(history[-1])} ({config.quantizer}, K={config.codebook_size}); "
        f"plot {run_dir / 'usage.png'}")
    return history


def describe(metrics: dict) -> str:
    return (f"step {metrics['step']}: U={100 * metrics['utilization']:.2f}% "
            f"C={metrics['perplexity']:.0f} E={metrics['quantization_error']:.4g} "
            f"PSNR={metrics['psnr']:.2f} dB")

"""`wvq train --profile`: where a training step's time goes, the quantizer against the model.

A few warm-up steps, then steps under torch.profiler with scopes around the model's forward and
the quantizer's forward (module hooks, so the model code is not touched). The quantizer's
forward is split into the fused ops it launches (``wvq::*``, measured by the profiler) and the
rest (the Gaussian W2 term, state updates, glue in PyTorch). The backward pass and the
optimizer step are reported together: the quantizer's share of the backward is a gather and,
for W-VQ, the W2 gradient through an 8x8 eigendecomposition.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile, record_function

from .config import TrainConfig, stages
from .data import load_datasets
from .loop import Trainer

STEP = "wvq.profile.step"
MODEL_FORWARD = "wvq.profile.model_forward"
QUANTIZER_FORWARD = "wvq.profile.quantizer_forward"


def profile_training(
    config: TrainConfig, *, steps: int = 10, warmup: int = 3, log=print
) -> list[dict]:
    """Milliseconds per step in each part of the first stage's training step (rows of
    ``{"part", "ms_per_step", "share"}``), printed as a table."""
    train_set, _ = load_datasets(
        config.data, train_size=config.train_size, eval_size=config.eval_size, seed=config.seed
    )
    trainer = Trainer(config, len(train_set))
    stage = stages(config)[0]
    trainer.enter_stage(stage)
    batches = torch.randint(
        len(train_set), (warmup + steps, config.batch_size), generator=trainer.sampler
    )
    for picks in batches[:warmup]:
        trainer.train_step(train_set[picks], stage)
    with _scoped(trainer.model, MODEL_FORWARD), _scoped(trainer.model.quantizer, QUANTIZER_FORWARD):
        with profile(activities=[ProfilerActivity.CPU]) as profiler:
            for picks in batches[warmup:]:
                with record_function(STEP):
                    trainer.train_step(train_set[picks], stage)
    rows = breakdown(profiler.key_averages(), steps)
    log(profile_table(rows, config))
    return rows


def breakdown(events, steps: int) -> list[dict]:
    """The per-step parts from the profiler's averages: each row's time excludes the rows
    below it that it contains, so the shares add up to the step."""
    total = {event.key: event.cpu_time_total / 1e3 / steps for event in events}
    fused = {key: ms for key, ms in total.items() if key.startswith("wvq::")}
    step, model, quantizer = total[STEP], total[MODEL_FORWARD], total[QUANTIZER_FORWARD]
    rows = [(f"quantizer: {name}", ms) for name, ms in sorted(fused.items())]
    rows += [
        ("quantizer: W2 term, updates, glue", quantizer - sum(fused.values())),
        ("model forward (without the quantizer)", model - quantizer),
        ("backward + optimizer", step - model),
    ]
    return [
        {"part": part, "ms_per_step": ms, "share": ms / step}
        for part, ms in [*rows, ("step", step)]
    ]


def profile_table(rows: list[dict], config: TrainConfig) -> str:
    quantizer = sum(row["share"] for row in rows if row["part"].startswith("quantizer"))
    lines = [
        f"profile of {config.quantizer} at K={config.codebook_size}, batch {config.batch_size}",
        f"{'part':<42} {'ms/step':>9} {'share':>7}",
    ]
    lines += [f"{r['part']:<42} {r['ms_per_step']:>9.2f} {100 * r['share']:>6.1f}%" for r in rows]
    lines.append(f"quantizer forward in total: {100 * quantizer:.1f}% of the step")
    return "\n".join(lines)


class _scoped:
    """A profiler scope around every forward of ``module``, opened and closed by hooks."""

    def __init__(self, module: nn.Module, name: str):
        self.module, self.name, self.open = module, name, []

    def __enter__(self):
        self.handles = [
            self.module.register_forward_pre_hook(self._enter),
            self.module.register_forward_hook(self._exit),
        ]
        return self

    def __exit__(self, *exc):
        for handle in self.handles:
            handle.remove()

    def _enter(self, module, args):
        scope = record_function(self.name)
        scope.__enter__()
        self.open.append(scope)

    def _exit(self, module, args, output):
        self.open.pop().__exit__(None, None, None)

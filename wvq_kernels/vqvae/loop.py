"""`wvq train`: the reference VQ-VAE on 32x32 patches through the strategy's stages, with
exact-resume checkpoints and artefacts under runs/<name>/ (see report.py)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import wvq_kernels
from wvq_kernels import distributed
from wvq_kernels.nn.quantizer import nsvq_tau

from . import parallel
from .config import STRATEGIES, Stage, TrainConfig, build_model, codebook_optimizer, stages
from .data import load_datasets
from .evaluation import evaluate
from .models import (
    VQVAE,
    PatchDiscriminator,
    adaptive_adversarial_weight,
    hinge_discriminator_loss,
    hinge_generator_loss,
)
from .report import compare_table, describe, write_artefacts

# Gradient norms are clipped at this per parameter group, except an SGD codebook's.
MAX_GRAD_NORM = 1.0


class Optimizers:
    """Torch optimizers stepped as one: Adam for the model, and the codebook's own when it is
    not Adam. ``param_groups`` lists the model's group first, then the codebook's."""

    def __init__(self, *optimizers: torch.optim.Optimizer):
        self.optimizers = optimizers

    @property
    def param_groups(self) -> list[dict]:
        return [group for optimizer in self.optimizers for group in optimizer.param_groups]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        for optimizer in self.optimizers:
            optimizer.step()

    def state_dict(self) -> list[dict]:
        return [optimizer.state_dict() for optimizer in self.optimizers]

    def load_state_dict(self, states: list[dict]) -> None:
        for optimizer, state in zip(self.optimizers, states, strict=True):
            optimizer.load_state_dict(state)


def build_optimizer(model: VQVAE, config: TrainConfig) -> Optimizers:
    """Adam (0.9, 0.95) for the model; the codebook gets its own, much larger learning rate (W-VQ
    reference), and for W-VQ its own algorithm (see codebook_optimizer)."""
    codebook = model.quantizer.codebook_parameters()
    ids = {id(p) for p in codebook}
    model_parameters = [p for p in model.parameters() if id(p) not in ids]
    adam_groups = [{"params": model_parameters, "lr": config.lr, "max_grad_norm": MAX_GRAD_NORM}]
    algorithm, lr = codebook_optimizer(config)
    sgd = []
    if codebook and algorithm == "adam":
        adam_groups.append({"params": codebook, "lr": lr, "max_grad_norm": MAX_GRAD_NORM})
    elif codebook:
        groups = [{"params": codebook, "lr": lr, "max_grad_norm": None}]
        sgd = [torch.optim.SGD(groups, momentum=0.9)]
    return Optimizers(torch.optim.Adam(adam_groups, betas=(0.9, 0.95)), *sgd)


class Trainer:
    """The model, its optimizers and the position in the stage schedule: everything a
    checkpoint holds, so that a resumed run continues exactly, in any stage."""

    def __init__(self, config: TrainConfig, train_size: int):
        self.config = config
        self.model = build_model(config)
        # The model as the training steps call it: DDP around it in a multi-process run.
        self.forward_model = self.model
        self.optimizer = build_optimizer(self.model, config)
        self.discriminator = PatchDiscriminator()
        self.discriminator_optimizer = torch.optim.Adam(
            self.discriminator.parameters(), lr=config.discriminator_lr, betas=(0.5, 0.9)
        )
        self.sampler = torch.Generator().manual_seed(config.seed)
        self.step, self.stage, self.stage_start = 0, 0, 0
        self.history: list[dict] = []
        self.events: list[dict] = []
        self.curve: list[dict] = []
        self.steps_per_epoch = max(1, train_size // config.batch_size)

    def enter_stage(self, stage: Stage) -> None:
        """Freeze what the stage does not train: the encoder after joint training, the codebook
        too in the adversarial stage (whose quantizer then only looks codes up)."""
        model = self.model
        train_encoder = stage.name == "joint"
        train_codebook = stage.name != "adversarial"
        for module in (model.encoder, model.to_latent, model.quantizer.project_in):
            module.requires_grad_(train_encoder)
        for parameter in model.quantizer.codebook_parameters():
            parameter.requires_grad_(train_codebook)
        model.train()
        model.quantizer.train(train_codebook)
        # Consolidation fine-tunes codes on a fixed latent geometry: steps as large as the ones
        # that tracked a moving encoder would keep shaking codes out of their cells.
        codebook_lr = codebook_optimizer(self.config)[1]
        if stage.name == "consolidate":
            codebook_lr *= self.config.consolidate_codebook_lr_scale
        for group in self.optimizer.param_groups[1:]:
            group["lr"] = codebook_lr
        self.forward_model = parallel.wrap(model)

    def tau(self) -> float:
        config = self.config
        epoch = self.step // self.steps_per_epoch
        return nsvq_tau(epoch, config.tau_start, config.tau_decay, config.tau_min)

    def train_step(self, images: torch.Tensor, stage: Stage) -> dict[str, float]:
        if stage.name == "adversarial":
            return self.adversarial_step(images)
        self.model.quantizer.tau = self.tau()
        reconstruction, out = self.forward_model(images)
        loss = F.mse_loss(reconstruction, images) + out.loss
        self.apply(self.optimizer, loss)
        if parallel.world_size() == 1:
            return {"loss": loss.item(), "batch_utilization": out.stats["utilization"].item()}
        return self.global_batch_info(loss, out.indices)

    def global_batch_info(self, loss: torch.Tensor, indices: torch.Tensor) -> dict[str, float]:
        """The loss (mean over ranks) and the utilization of the whole global batch, as one
        process on it would report them."""
        size = self.model.quantizer.codebook_size
        counts = distributed.all_reduce_histogram(wvq_kernels.code_histogram(indices, size))
        utilization, _ = wvq_kernels.usage(counts)
        mean_loss = parallel.sum_over_ranks(loss.detach().reshape(1)) / parallel.world_size()
        return {"loss": mean_loss.item(), "batch_utilization": utilization.item()}

    def adversarial_step(self, images: torch.Tensor) -> dict[str, float]:
        """Decoder: reconstruction + adaptively weighted hinge generator loss; then the
        discriminator on real images against the detached reconstructions."""
        reconstruction, out = self.forward_model(images)
        parallel.add_other_ranks_usage(self.model.quantizer, out.indices)
        reconstruction_loss = F.mse_loss(reconstruction, images)
        generator_loss = hinge_generator_loss(self.discriminator(reconstruction))
        weight = adaptive_adversarial_weight(
            reconstruction_loss, generator_loss, self.model.decoder.net[-1].weight
        )
        loss = reconstruction_loss + self.config.adversarial_weight * weight * generator_loss
        self.apply(self.optimizer, loss)
        discriminator_loss = hinge_discriminator_loss(
            self.discriminator(images), self.discriminator(reconstruction.detach())
        )
        self.apply(self.discriminator_optimizer, discriminator_loss, self.discriminator)
        return {"loss": loss.item(), "discriminator_loss": discriminator_loss.item()}

    @staticmethod
    def apply(optimizer, loss: torch.Tensor, unwrapped: nn.Module | None = None) -> None:
        """One optimizer step, gradient norms clipped per parameter group at the group's
        ``max_grad_norm`` (1, else none): NSVQ's dense loss gives the codebook gradients orders
        of magnitude above the model's, which a joint clip would turn into vanishing model
        updates; an SGD codebook's step is its gradient, which a clip would distort. The
        gradients of ``unwrapped`` (a module outside DDP) are averaged over ranks first."""
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if unwrapped is not None:
            parallel.average_gradients(unwrapped)
        for group in optimizer.param_groups:
            max_norm = group.get("max_grad_norm", MAX_GRAD_NORM)
            if max_norm is not None:
                torch.nn.utils.clip_grad_norm_(group["params"], max_norm)
        optimizer.step()

    def end_of_epoch(self, stage: Stage, log) -> None:
        """NSVQ: refill the codes that went unused over the epoch from the reservoir."""
        quantizer = self.model.quantizer
        if stage.name == "adversarial" or quantizer.reservoir is None:
            return
        refilled = int(quantizer.refill_dead_codes(self.config.refill_threshold).item())
        event = {"step": self.step, "stage": stage.name, "refilled": refilled, "tau": self.tau()}
        self.events.append(event)
        log(f"refill step {self.step} ({stage.name}): {refilled} codes, tau {self.tau():.3g}")

    def state_dict(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "discriminator": self.discriminator.state_dict(),
            "discriminator_optimizer": self.discriminator_optimizer.state_dict(),
            "sampler": self.sampler.get_state(),
            "torch_rng": torch.get_rng_state(),
            "step": self.step,
            "stage": self.stage,
            "stage_start": self.stage_start,
            "history": self.history,
            "events": self.events,
            "curve": self.curve,
        }

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.discriminator.load_state_dict(state["discriminator"])
        self.discriminator_optimizer.load_state_dict(state["discriminator_optimizer"])
        self.sampler.set_state(state["sampler"])
        torch.set_rng_state(state["torch_rng"])
        self.step, self.stage = state["step"], state["stage"]
        self.stage_start = state["stage_start"]
        self.history, self.events = state["history"], state["events"]
        # Checkpoints written before the curve was recorded resume with an empty one.
        self.curve = state.get("curve", [])

    def save_on_main(self, path: Path) -> None:
        """Rank 0 writes the checkpoint (every rank holds the same state)."""
        if not parallel.is_main():
            return
        tmp = path.with_suffix(".tmp")
        torch.save(self.state_dict(), tmp)
        tmp.replace(path)  # atomic: an interrupted save never leaves a broken checkpoint


class Progress:
    """tqdm when installed, else one printed line every ``every`` steps; nothing unless
    ``shown`` (the ranks other than 0 of a multi-process run)."""

    def __init__(self, total: int, start: int, every: int = 50, shown: bool = True):
        self.bar = None
        if shown:
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=total, initial=start, unit="step")
            except ImportError:
                pass
        self.every = every if shown else 0

    def update(self, step: int, info: dict) -> None:
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix({k: f"{v:.4g}" for k, v in info.items()})
        elif self.every and step % self.every == 0:
            print(f"step {step}: " + " ".join(f"{k}={v:.4g}" for k, v in info.items()), flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def train(config: TrainConfig, *, resume: bool = False, log=print) -> list[dict]:
    """Train through the strategy's stages (each until its steps or minutes); returns the
    evaluation history."""
    if config.strategy not in STRATEGIES:
        raise ValueError(f"strategy: expected one of {STRATEGIES}, got {config.strategy!r}")
    parallel.check_batch_size(config.batch_size)
    if not parallel.is_main():
        log = _silent
    run_dir = Path(config.out_dir) / config.name
    run_dir.mkdir(parents=True, exist_ok=True)
    train_set, eval_set = load_datasets(
        config.data, train_size=config.train_size, eval_size=config.eval_size, seed=config.seed
    )
    trainer = Trainer(config, len(train_set))
    checkpoint = run_dir / "checkpoint.pt"
    if resume and checkpoint.exists():
        trainer.load_state_dict(torch.load(checkpoint, weights_only=False))
    schedule = stages(config)
    # The last stage stays current when it ends, so that resuming with more steps extends it.
    while True:
        run_stage(trainer, schedule[trainer.stage], train_set, eval_set, checkpoint, log)
        if trainer.stage == len(schedule) - 1:
            break
        trainer.stage += 1
        trainer.stage_start = trainer.step
    # Saved before the final evaluation: that row reports where this run stopped, and a run
    # resumed from here must not inherit it, since an uninterrupted run has no row there.
    trainer.save_on_main(checkpoint)
    history = trainer.history
    if not history or history[-1]["step"] != trainer.step:
        final = evaluate(trainer.model, eval_set)
        history.append({"step": trainer.step, "stage": schedule[-1].name, **final})
    if parallel.is_main():
        write_artefacts(run_dir, config, trainer, eval_set)
    # No rank returns before rank 0 has written the checkpoint: a caller that resumes next
    # (or reads the artefacts) would otherwise race it.
    parallel.wait_for_all()
    log(
        f"final {describe(history[-1])} ({config.quantizer}, K={config.codebook_size}); "
        f"plot {run_dir / 'usage.png'}"
    )
    return history


def run_stage(trainer: Trainer, stage: Stage, train_set, eval_set, checkpoint: Path, log) -> None:
    config = trainer.config
    trainer.enter_stage(stage)
    deadline = time.monotonic() + 60 * stage.minutes
    progress = Progress(trainer.stage_start + stage.steps, trainer.step, shown=parallel.is_main())
    while trainer.step - trainer.stage_start < stage.steps:
        if parallel.any_rank(time.monotonic() >= deadline):
            break
        # Every rank draws the same global batch and trains on its share of it.
        picks = torch.randint(len(train_set), (config.batch_size,), generator=trainer.sampler)
        info = trainer.train_step(train_set[parallel.local_share(picks)], stage)
        trainer.step += 1
        progress.update(trainer.step, info)
        if trainer.step % config.curve_every == 0:
            trainer.curve.append({"step": trainer.step, "stage": stage.name, **info})
        if trainer.step % trainer.steps_per_epoch == 0:
            trainer.end_of_epoch(stage, log)
        if trainer.step % config.eval_every == 0:
            metrics = evaluate(trainer.model, eval_set)
            trainer.history.append({"step": trainer.step, "stage": stage.name, **metrics})
            log(f"eval {describe(trainer.history[-1])}")
        if trainer.step % config.checkpoint_every == 0:
            trainer.save_on_main(checkpoint)
    progress.close()


def _silent(_message: str) -> None:
    pass


def compare(configs: list[TrainConfig], *, log=print) -> list[dict]:
    """Train each configuration in turn and print their final evaluations in one table (also
    written to <out>/compare.json)."""
    rows = []
    for config in configs:
        final = train(config, log=log)[-1]
        rows.append({"quantizer": config.quantizer, "strategy": config.strategy, **final})
    log(compare_table(rows))
    if parallel.is_main():
        out = Path(configs[0].out_dir) / "compare.json"
        out.write_text(json.dumps(rows, indent=2))
        log(f"wrote {out}")
    return rows

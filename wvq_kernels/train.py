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
from wvq_kernels.models import (VQVAE, PatchDiscriminator, adaptive_adversarial_weight,
                                hinge_discriminator_loss, hinge_generator_loss)
from wvq_kernels.nn import VectorQuantizer
from wvq_kernels.nn.quantizer import nsvq_tau

QUANTIZER_OPTIONS = {
    "vanilla": {},
    "ema": {"ema": True},
    # W-VQ's synthetic experiment's weights, 0.1·L_code + 10·W with L_code summed over d (the
    # module's codebook term is a mean over d): they go with its SGD (codebook_optimizer).
    "wasserstein": {"distribution_loss": "wasserstein", "alpha": 0.8, "gamma": 10.0},
    "simvq": {"linear_reparam": True},
    # NSVQ: dense non-stationary embedding loss and per-epoch refills from a feature reservoir.
    "nsvq": {"codebook_loss": "dense", "reservoir_size": 16384},
}
# The codebook's optimizer: Adam (0.9, 0.95) at 0.02, the W-VQ reference VQ-VAE's, except for
# W-VQ: SGD with momentum 0.9, unclipped, as in the paper's synthetic experiment. W's gradient
# is one affine map of every code, which SGD applies as such, so codes that win no feature still
# spread with the feature distribution (an affine image of a Gaussian stays Gaussian); Adam
# normalises each coordinate, moving them by equal steps wherever they are, and they stay
# unused (wvq train: U 88% with Adam, 97% with SGD). Each code's share of the loss, hence its
# gradient, scales as 1/K, so the SGD learning rate scales as K: 3.0 at K = 65,536.
ADAM_CODEBOOK_LR = 0.02
WVQ_SGD_LR_PER_CODE = 3.0 / 65536
# Gradient norms are clipped at this per parameter group, except an SGD codebook's.
MAX_GRAD_NORM = 1.0
STRATEGIES = ("standard", "nsvq")
# Evaluation tokens per code: a single batch caps U near 1 - exp(-N/K), so U is measured over
# an eval set. 40,960 images x 64 tokens = 40 tokens per code at K = 65,536, the ratio of the
# W-VQ paper's CIFAR-10 test set (10,000 x 64) at K = 16,384. Even a codebook of 65,536 sampled
# training features leaves ~10% of the codes unused over 8,192 eval images here, ~4% over 40,960.
EVAL_IMAGES = 40960
PSNR_IMAGES = 4096


@dataclass
class TrainConfig:
    name: str = "vqvae"
    quantizer: str = "wasserstein"
    # "standard": one stage of joint training. "nsvq": joint training with the dense loss and a
    # decaying tau, then the encoder frozen while the codebook consolidates, then adversarial
    # refinement of the decoder; each stage ends at its step count or its minutes.
    strategy: str = "standard"
    codebook_size: int = 65536
    steps: int = 100000
    minutes: float = 7.0
    batch_size: int = 128
    lr: float = 1e-3
    codebook_lr: float | None = None  # None: the quantizer's (codebook_optimizer)
    eval_every: int = 1000
    checkpoint_every: int = 500
    train_size: int = 20000
    eval_size: int = EVAL_IMAGES
    hidden: int = 64
    data: str | None = None
    seed: int = 0
    out_dir: str = "runs"
    consolidate_steps: int = 100000
    consolidate_minutes: float = 4.0
    consolidate_codebook_lr_scale: float = 0.1
    adversarial_steps: int = 100000
    adversarial_minutes: float = 2.0
    # tau of epoch e (0-based): max(tau_min, tau_start * tau_decay**e), an epoch being one pass
    # over the training patches. NOTES' schedule starts at 10, but here features have std ~1 and
    # nearest-code squared distances ~0.01: tau = 10 flattens the softmax over all 65,536 codes
    # and drags every code to the feature mean. The floor only guards the exponent's range.
    tau_start: float = 1.0
    tau_decay: float = 0.1
    tau_min: float = 1e-4
    # Codes whose EMA usage (tokens per step, decay 0.99) is below this are refilled at each
    # epoch's end: one hit decays to it in ~230 steps, about the tokens of the eval set. A
    # larger threshold churns codes that an evaluation would still count as used.
    refill_threshold: float = 0.001
    discriminator_lr: float = 2e-4
    adversarial_weight: float = 0.1


@dataclass(frozen=True)
class Stage:
    name: str
    steps: int
    minutes: float


def stages(config: TrainConfig) -> list[Stage]:
    joint = Stage("joint", config.steps, config.minutes)
    if config.strategy == "standard":
        return [joint]
    return [joint, Stage("consolidate", config.consolidate_steps, config.consolidate_minutes),
            Stage("adversarial", config.adversarial_steps, config.adversarial_minutes)]


def build_model(config: TrainConfig) -> VQVAE:
    torch.manual_seed(config.seed)
    quantizer = VectorQuantizer(8, config.codebook_size, **QUANTIZER_OPTIONS[config.quantizer])
    return VQVAE(quantizer, latent_dim=8, hidden=config.hidden)


def codebook_optimizer(config: TrainConfig) -> tuple[str, float]:
    """("adam" or "sgd", learning rate) of the codebook's parameters."""
    if config.quantizer == "wasserstein":
        algorithm, lr = "sgd", WVQ_SGD_LR_PER_CODE * config.codebook_size
    else:
        algorithm, lr = "adam", ADAM_CODEBOOK_LR
    return algorithm, lr if config.codebook_lr is None else config.codebook_lr


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
    adam_groups = [{"params": [p for p in model.parameters() if id(p) not in ids],
                    "lr": config.lr, "max_grad_norm": MAX_GRAD_NORM}]
    algorithm, lr = codebook_optimizer(config)
    sgd = []
    if codebook and algorithm == "adam":
        adam_groups.append({"params": codebook, "lr": lr, "max_grad_norm": MAX_GRAD_NORM})
    elif codebook:
        sgd = [torch.optim.SGD([{"params": codebook, "lr": lr, "max_grad_norm": None}],
                               momentum=0.9)]
    return Optimizers(torch.optim.Adam(adam_groups, betas=(0.9, 0.95)), *sgd)


def psnr(reconstruction: torch.Tensor, target: torch.Tensor) -> float:
    """Peak signal-to-noise ratio in dB for images in [-1, 1] (peak-to-peak 2)."""
    mse = F.mse_loss(reconstruction.clamp(-1, 1), target).item()
    return 10 * math.log10(4.0 / max(mse, 1e-12))


@torch.no_grad()
def latents(model: VQVAE, images: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """The features the quantizer assigns, (images, 8, 8, codebook_dim), in eval mode."""
    was_training = model.training
    model.eval()
    features = torch.cat([model.quantizer.project_in(model.encode(images[i:i + batch_size]))
                          for i in range(0, len(images), batch_size)])
    model.train(was_training)
    return features


def usage_metrics(result: wvq_kernels.Assignment) -> dict[str, float]:
    """U, C and E of an assignment made with ``histogram=True``."""
    utilization, perplexity = wvq_kernels.usage(result.counts)
    return {"utilization": utilization.item(), "perplexity": perplexity.item(),
            "quantization_error": result.distances.mean().item()}


@torch.no_grad()
def evaluate(model: VQVAE, images: torch.Tensor, batch_size: int = 1024,
             psnr_images: int = PSNR_IMAGES) -> dict[str, float]:
    """U, C and E from one fused assignment (with histogram) over the whole eval set; PSNR over
    its first ``psnr_images`` images (decoding all of them would double the cost)."""
    was_training = model.training
    model.eval()
    quantizer = model.quantizer
    result = wvq_kernels.assign(latents(model, images, batch_size), quantizer.codes(),
                                histogram=True)
    shown = images[:psnr_images]
    codes = quantizer.indices_to_codes(result.indices[:len(shown)])
    reconstruction = torch.cat([model.decode(codes[i:i + batch_size])
                                for i in range(0, len(shown), batch_size)])
    model.train(was_training)
    return {**usage_metrics(result), "psnr": psnr(reconstruction, shown)}


def utilization_ceilings(train_features: torch.Tensor, eval_features: torch.Tensor,
                         codes: torch.Tensor, *, seed: int = 0) -> list[dict]:
    """U, C and E over ``eval_features`` (N, d) of the trained ``codes`` (K, d) and of reference
    codebooks of the same size built from ``train_features`` alone, to tell a quantizer's
    shortfall from what the features allow:

    - ``gaussian``: K draws from the Gaussian with the training features' mean and covariance,
      i.e. a codebook that knows the features through their first two moments only, which is
      all W-VQ's distribution term matches;
    - ``gaussian d/(d+2)``: the same with the covariance scaled by d/(d+2), the optimal code
      density for Gaussian features (``target_cov_scale``);
    - ``training features``: K distinct training features, a codebook whose density follows the
      features' own (left out when there are fewer than K).
    """
    generator = torch.Generator().manual_seed(seed)
    size, dim = codes.shape
    rows = [("trained", codes)]
    for name, scale in (("gaussian", 1.0), ("gaussian d/(d+2)", dim / (dim + 2))):
        rows.append((name, _gaussian_codebook(train_features, size, scale, generator)))
    if len(train_features) >= size:
        rows.append(("training features",
                     train_features[torch.randperm(len(train_features), generator=generator)[:size]]))
    return [{"codebook": name,
             **usage_metrics(wvq_kernels.assign(eval_features, codebook, histogram=True))}
            for name, codebook in rows]


def _gaussian_codebook(features: torch.Tensor, size: int, scale: float,
                       generator: torch.Generator) -> torch.Tensor:
    features = features.double()
    eigenvalues, vectors = torch.linalg.eigh(torch.cov(features.T))
    root = vectors * (scale * eigenvalues.clamp_min(0)).sqrt()  # root @ root.T = scale * cov
    draws = torch.randn(size, features.shape[1], generator=generator, dtype=torch.float64)
    return (features.mean(0) + draws @ root.T).float()




def diagnose(run_dir: str | Path, *, log=print) -> list[dict]:
    """`wvq diagnose`: a finished run's codebook beside the reference codebooks of
    :func:`utilization_ceilings`, on the run's own data split and checkpoint; prints the table
    and writes ``ceilings.json`` into the run directory."""
    run_dir = Path(run_dir)
    config = TrainConfig(**json.loads((run_dir / "metrics.json").read_text())["config"])
    train_set, eval_set = load_datasets(config.data, train_size=config.train_size,
                                        eval_size=config.eval_size, seed=config.seed)
    state = torch.load(run_dir / "checkpoint.pt", weights_only=False)
    model = build_model(config)
    model.load_state_dict(state["model"])
    rows = utilization_ceilings(latents(model, train_set).flatten(0, -2),
                                latents(model, eval_set).flatten(0, -2),
                                model.quantizer.codes().detach(), seed=config.seed)
    header = f"{'codebook (K = ' + str(config.codebook_size) + ')':<22} {'U %':>7} {'C':>7} {'E':>9}"
    log(f"{run_dir} ({config.quantizer}, step {state['step']}), eval set of {len(eval_set)} images")
    log(header)
    log("-" * len(header))
    for row in rows:
        log(f"{row['codebook']:<22} {100 * row['utilization']:>7.2f} {row['perplexity']:>7.0f} "
            f"{row['quantization_error']:>9.4g}")
    (run_dir / "ceilings.json").write_text(json.dumps(rows, indent=2))
    return rows


class Trainer:
    """The model, its optimizers and the position in the stage schedule: everything a
    checkpoint holds, so that a resumed run continues exactly, in any stage."""

    def __init__(self, config: TrainConfig, train_size: int):
        self.config = config
        self.model = build_model(config)
        self.optimizer = build_optimizer(self.model, config)
        self.discriminator = PatchDiscriminator()
        self.discriminator_optimizer = torch.optim.Adam(
            self.discriminator.parameters(), lr=config.discriminator_lr, betas=(0.5, 0.9))
        self.sampler = torch.Generator().manual_seed(config.seed)
        self.step, self.stage, self.stage_start = 0, 0, 0
        self.history: list[dict] = []
        self.events: list[dict] = []
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

    def tau(self) -> float:
        config = self.config
        return nsvq_tau(self.step // self.steps_per_epoch, config.tau_start, config.tau_decay,
                        config.tau_min)

    def train_step(self, images: torch.Tensor, stage: Stage) -> dict[str, float]:
        if stage.name == "adversarial":
            return self.adversarial_step(images)
        self.model.quantizer.tau = self.tau()
        reconstruction, out = self.model(images)
        loss = F.mse_loss(reconstruction, images) + out.loss
        self.apply(self.optimizer, loss)
        return {"loss": loss.item(), "batch_utilization": out.stats["utilization"].item()}

    def adversarial_step(self, images: torch.Tensor) -> dict[str, float]:
        """Decoder: reconstruction + adaptively weighted hinge generator loss; then the
        discriminator on real images against the detached reconstructions."""
        reconstruction, _ = self.model(images)
        reconstruction_loss = F.mse_loss(reconstruction, images)
        generator_loss = hinge_generator_loss(self.discriminator(reconstruction))
        weight = adaptive_adversarial_weight(reconstruction_loss, generator_loss,
                                             self.model.decoder.net[-1].weight)
        loss = reconstruction_loss + self.config.adversarial_weight * weight * generator_loss
        self.apply(self.optimizer, loss)
        discriminator_loss = hinge_discriminator_loss(self.discriminator(images),
                                                      self.discriminator(reconstruction.detach()))
        self.apply(self.discriminator_optimizer, discriminator_loss)
        return {"loss": loss.item(), "discriminator_loss": discriminator_loss.item()}

    @staticmethod
    def apply(optimizer, loss: torch.Tensor) -> None:
        """One optimizer step, gradient norms clipped per parameter group at the group's
        ``max_grad_norm`` (1, else none): NSVQ's dense loss gives the codebook gradients orders
        of magnitude above the model's, which a joint clip would turn into vanishing model
        updates; an SGD codebook's step is its gradient, which a clip would distort."""
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
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
        self.events.append({"step": self.step, "stage": stage.name, "refilled": refilled,
                            "tau": self.tau()})
        log(f"refill step {self.step} ({stage.name}): {refilled} codes, tau {self.tau():.3g}")

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "discriminator": self.discriminator.state_dict(),
                "discriminator_optimizer": self.discriminator_optimizer.state_dict(),
                "sampler": self.sampler.get_state(), "torch_rng": torch.get_rng_state(),
                "step": self.step, "stage": self.stage, "stage_start": self.stage_start,
                "history": self.history, "events": self.events}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.discriminator.load_state_dict(state["discriminator"])
        self.discriminator_optimizer.load_state_dict(state["discriminator_optimizer"])
        self.sampler.set_state(state["sampler"])
        torch.set_rng_state(state["torch_rng"])
        self.step, self.stage, self.stage_start = state["step"], state["stage"], state["stage_start"]
        self.history, self.events = state["history"], state["events"]

    def save(self, path: Path) -> None:
        tmp = path.with_suffix(".tmp")
        torch.save(self.state_dict(), tmp)
        tmp.replace(path)  # atomic: an interrupted save never leaves a broken checkpoint


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


def write_artefacts(run_dir: Path, config: TrainConfig, trainer: Trainer, images) -> None:
    history = trainer.history
    (run_dir / "metrics.json").write_text(json.dumps(
        {"config": asdict(config), "history": history, "events": trainer.events}, indent=2))
    with open(run_dir / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(history[-1]), restval="")
        writer.writeheader()
        writer.writerows(history)
    write_plots(run_dir, history, trainer.model, images[:32])


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
    """Train through the strategy's stages (each until its steps or minutes); returns the
    evaluation history."""
    if config.strategy not in STRATEGIES:
        raise ValueError(f"strategy: expected one of {STRATEGIES}, got {config.strategy!r}")
    run_dir = Path(config.out_dir) / config.name
    run_dir.mkdir(parents=True, exist_ok=True)
    train_set, eval_set = load_datasets(config.data, train_size=config.train_size,
                                        eval_size=config.eval_size, seed=config.seed)
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
    history = trainer.history
    if not history or history[-1]["step"] != trainer.step:
        history.append({"step": trainer.step, "stage": schedule[-1].name,
                        **evaluate(trainer.model, eval_set)})
    trainer.save(checkpoint)
    write_artefacts(run_dir, config, trainer, eval_set)
    log(f"final {describe(history[-1])} ({config.quantizer}, K={config.codebook_size}); "
        f"plot {run_dir / 'usage.png'}")
    return history


def run_stage(trainer: Trainer, stage: Stage, train_set, eval_set, checkpoint: Path, log) -> None:
    config = trainer.config
    trainer.enter_stage(stage)
    deadline = time.monotonic() + 60 * stage.minutes
    progress = Progress(trainer.stage_start + stage.steps, trainer.step)
    while trainer.step - trainer.stage_start < stage.steps and time.monotonic() < deadline:
        batch = train_set[torch.randint(len(train_set), (config.batch_size,),
                                        generator=trainer.sampler)]
        info = trainer.train_step(batch, stage)
        trainer.step += 1
        progress.update(trainer.step, info)
        if trainer.step % trainer.steps_per_epoch == 0:
            trainer.end_of_epoch(stage, log)
        if trainer.step % config.eval_every == 0:
            trainer.history.append({"step": trainer.step, "stage": stage.name,
                                    **evaluate(trainer.model, eval_set)})
            log(f"eval {describe(trainer.history[-1])}")
        if trainer.step % config.checkpoint_every == 0:
            trainer.save(checkpoint)
    progress.close()


def describe(metrics: dict) -> str:
    return (f"step {metrics['step']}: U={100 * metrics['utilization']:.2f}% "
            f"C={metrics['perplexity']:.0f} E={metrics['quantization_error']:.4g} "
            f"PSNR={metrics['psnr']:.2f} dB")


def compare(configs: list[TrainConfig], *, log=print) -> list[dict]:
    """Train each configuration in turn and print their final evaluations in one table (also
    written to <out>/compare.json)."""
    rows = []
    for config in configs:
        final = train(config, log=log)[-1]
        rows.append({"quantizer": config.quantizer, "strategy": config.strategy, **final})
    header = f"{'quantizer':<12} {'strategy':<9} {'steps':>6} {'U %':>7} {'C':>7} {'E':>9} {'PSNR':>6}"
    log(header)
    log("-" * len(header))
    for row in rows:
        log(f"{row['quantizer']:<12} {row['strategy']:<9} {row['step']:>6} "
            f"{100 * row['utilization']:>7.2f} {row['perplexity']:>7.0f} "
            f"{row['quantization_error']:>9.4g} {row['psnr']:>6.2f}")
    out = Path(configs[0].out_dir) / "compare.json"
    out.write_text(json.dumps(rows, indent=2))
    log(f"wrote {out}")
    return rows

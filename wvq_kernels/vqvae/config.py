"""The settings of a `wvq train` run: quantizer options, the codebook's optimizer, the stages,
and the model they describe."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from wvq_kernels.nn import VectorQuantizer

from .models import VQVAE

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
STRATEGIES = ("standard", "nsvq")
# Evaluation tokens per code: a single batch caps U near 1 - exp(-N/K), so U is measured over
# an eval set. 40,960 images x 64 tokens = 40 tokens per code at K = 65,536, the ratio of the
# W-VQ paper's CIFAR-10 test set (10,000 x 64) at K = 16,384. Even a codebook of 65,536 sampled
# training features leaves ~10% of the codes unused over 8,192 eval images here, ~4% over 40,960.
EVAL_IMAGES = 40960


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
    # The training loss and batch utilization are recorded every this many steps (the curve).
    curve_every: int = 10
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
    # over the training patches. NSVQ's published schedule starts at 10, but here features have
    # std ~1 and nearest-code squared distances ~0.01: tau = 10 flattens the softmax over all
    # 65,536 codes and drags every code to the feature mean. The floor only guards the
    # exponent's range.
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
    return [
        joint,
        Stage("consolidate", config.consolidate_steps, config.consolidate_minutes),
        Stage("adversarial", config.adversarial_steps, config.adversarial_minutes),
    ]


def codebook_optimizer(config: TrainConfig) -> tuple[str, float]:
    """("adam" or "sgd", learning rate) of the codebook's parameters."""
    if config.quantizer == "wasserstein":
        algorithm, lr = "sgd", WVQ_SGD_LR_PER_CODE * config.codebook_size
    else:
        algorithm, lr = "adam", ADAM_CODEBOOK_LR
    return algorithm, lr if config.codebook_lr is None else config.codebook_lr


def build_model(config: TrainConfig) -> VQVAE:
    """The freshly initialised model of a run (seeded by ``config.seed``)."""
    torch.manual_seed(config.seed)
    quantizer = VectorQuantizer(8, config.codebook_size, **QUANTIZER_OPTIONS[config.quantizer])
    return VQVAE(quantizer, latent_dim=8, hidden=config.hidden)

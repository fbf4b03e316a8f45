"""The synthetic ("atomic") experiment of the Wasserstein-VQ paper (arXiv 2506.15078).

K = 16,384 codes in d = 8, codebook initialised N(0, I) (or U(−1, 1)^d); every step draws fresh
features N(μ·1, I) (or U(μ−1, μ+1)^d); the codebook (or, for "linear", a d×d map + bias over
frozen codes) is the only parameter, trained with SGD, momentum 0.9:

- wasserstein: 0.1·L_code + 10·W, lr 3.0, W from biased covariances of the batch and codebook;
- vanilla: L_code, lr 1.0;   linear: L_code through the map, lr 0.02;
- ema: no optimizer, cluster sizes and sums decayed with 0.9, Laplace smoothing 1e-5
  (``VectorQuantizer(ema=True, decay=0.9)``);
- nsvq (no published row): NSVQ's dense non-stationary loss in L_code's scale (the winner plus
  every code with weight min(1, λ·K·softmax(−d/τ)), λ = 0.01, τ decaying per epoch), SGD at
  lr 30, and at each epoch's end codes whose EMA usage fell below 10% of a uniform share
  refilled from a 16,384-row reservoir of that epoch's features.

L_code = mean_i Σ_d (e_{r_i} − sg(z_i))². Evaluation: quantization error E, utilization U and
perplexity C over fresh samples.

``drift=True`` is the case NSVQ is about: the feature mean moves linearly from 0 at the first
step to μ·1 at the last, and evaluation uses the final distribution.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import ClassVar

import torch

from wvq_kernels import _trusted as kernels
from wvq_kernels import gaussian_w2
from wvq_kernels.nn import VectorQuantizer
from wvq_kernels.nn.quantizer import nsvq_tau
from wvq_kernels.reporting import Column, format_table, line_plots

from .evaluation import usage_metrics

METHODS = ("vanilla", "ema", "linear", "wasserstein", "nsvq")

# Published final values (E, U %, C) for Gaussian features, by shift μ.
PUBLISHED = {
    0: {
        "vanilla": (1.001, 99.68, 14789),
        "ema": (0.982, 99.99, 14736),
        "linear": (1.056, 99.37, 14570),
        "wasserstein": (0.987, 99.79, 14883),
    },
    2: {
        "vanilla": (2.119, 6.51, 600),
        "ema": (1.543, 14.04, 2207),
        "linear": (1.055, 99.35, 14566),
        "wasserstein": (0.991, 99.76, 14915),
    },
    4: {
        "vanilla": (5.294, 0.07, 11),
        "ema": (3.005, 0.79, 129),
        "linear": (1.676, 23.23, 2346),
        "wasserstein": (1.021, 99.85, 14823),
    },
}


@dataclasses.dataclass(frozen=True)
class AtomicConfig:
    mu: float = 0.0
    method: str = "wasserstein"
    distribution: str = "gaussian"
    num_codes: int = 16384
    dim: int = 8
    steps: int = 2000
    batch: int = 50_000
    eval_samples: int = 200_000
    log_every: int = 100
    seed: int = 12
    backend: str = "auto"
    drift: bool = False
    # NSVQ: refills and τ steps happen every epoch_steps steps; τ of epoch e (0-based) is
    # max(tau_min, tau_start·tau_decay^e). Short epochs, so that few codes die between the
    # last refill and the evaluation (drifting run: 100 steps U 67.2%, 25 steps 80.3%).
    epoch_steps: int = 25
    tau_start: float = 1.0
    tau_decay: float = 0.5
    tau_min: float = 1e-3

    @classmethod
    def quick(cls, **overrides):
        """A few-second variant for CI: same method, fewer codes, steps and samples."""
        settings = dict(
            num_codes=1024, steps=60, batch=4096, eval_samples=16384, log_every=20, epoch_steps=5
        )
        settings.update(overrides)
        return cls(**settings)


@dataclasses.dataclass
class Evaluation:
    step: int
    error: float
    utilization: float
    perplexity: float


def mean_at(config: AtomicConfig, step: int) -> float:
    """The feature mean (per dimension) at a training step; evaluation uses step = steps."""
    return config.mu * step / config.steps if config.drift else config.mu


def sample(
    config: AtomicConfig, count: int, generator: torch.Generator, step: int | None = None
) -> torch.Tensor:
    mean = mean_at(config, config.steps if step is None else step)
    if config.distribution == "gaussian":
        return torch.randn(count, config.dim, generator=generator) + mean
    if config.distribution == "uniform":
        return torch.rand(count, config.dim, generator=generator) * 2 - 1 + mean
    raise ValueError(f"distribution must be gaussian or uniform, got {config.distribution!r}")


def initial_codebook(config: AtomicConfig, generator: torch.Generator) -> torch.Tensor:
    if config.distribution == "gaussian":
        return torch.randn(config.num_codes, config.dim, generator=generator)
    return torch.rand(config.num_codes, config.dim, generator=generator) * 2 - 1


class AtomicQuantizer:
    """The trained object of one method: `codebook()` is what features are assigned to."""

    # NSVQ's rate is ours (no published row): at vanilla's 1.0 a code seen by its ~3 tokens
    # per step moves 0.1% of the way to them per step and lags any drift; measured on the
    # drifting run (μ 0→4): lr 1 U 94.0%, 10 95.2%, 30 96.9%.
    LEARNING_RATES: ClassVar[dict[str, float]] = {
        "vanilla": 1.0,
        "linear": 0.02,
        "wasserstein": 3.0,
        "nsvq": 30.0,
    }
    RESERVOIR_SIZE = 16384
    # Refill threshold, as a share of the uniform usage (batch / K tokens per step), on usage
    # decayed by 0.9 per step (EMA's decay here), so that a code left behind by the drift falls
    # below it within an epoch (drifting run at lr 1: share 0.01 U 80.3%, 0.1 94.0%).
    DEAD_SHARE = 0.1
    USAGE_DECAY = 0.9

    def __init__(self, config: AtomicConfig, generator: torch.Generator):
        self.config = config
        self.steps_done = 0
        codes = initial_codebook(config, generator)
        if config.method in MODULE_QUANTIZERS:
            self.module = MODULE_QUANTIZERS[config.method](config, codes)
            parameters = self.module.codebook_parameters()
            self.codes = self.module.embedding
        elif config.method == "linear":
            self.frozen = codes
            self.weight = torch.eye(config.dim, requires_grad=True)
            self.bias = torch.zeros(config.dim, requires_grad=True)
            parameters = [self.weight, self.bias]
        else:
            self.codes = codes.requires_grad_()
            parameters = [self.codes]
        if config.method != "ema":
            lr = self.LEARNING_RATES[config.method]
            self.optimizer = torch.optim.SGD(parameters, lr=lr, momentum=0.9)

    def codebook(self) -> torch.Tensor:
        if self.config.method == "linear":
            return self.frozen @ self.weight.T + self.bias
        return self.codes

    def step(self, features: torch.Tensor) -> None:
        self.steps_done += 1
        if self.config.method == "ema":
            with torch.no_grad():
                self.module(features)
            return
        if self.config.method == "nsvq":
            self._nsvq_step(features)
            return
        codebook = self.codebook()
        indices = kernels.assign(features, codebook.detach(), backend=self.config.backend).indices
        code_loss = (codebook[indices] - features).square().sum(dim=1).mean()
        loss = code_loss
        if self.config.method == "wasserstein":
            feature_stats = kernels.moments(features, backend=self.config.backend)
            code_stats = kernels.moments(codebook, backend=self.config.backend)
            distance = gaussian_w2(
                feature_stats.mean, feature_stats.cov, code_stats.mean, code_stats.cov
            )
            loss = 0.1 * code_loss + 10.0 * distance
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    def _nsvq_step(self, features: torch.Tensor) -> None:
        config = self.config
        epoch = (self.steps_done - 1) // config.epoch_steps
        self.module.tau = nsvq_tau(epoch, config.tau_start, config.tau_decay, config.tau_min)
        self.optimizer.zero_grad(set_to_none=True)
        self.module(features).loss.backward()
        self.optimizer.step()
        # Not after the last step: the evaluation judges trained codes, not fresh refills.
        if self.steps_done % config.epoch_steps == 0 and self.steps_done < config.steps:
            self.module.refill_dead_codes(self.DEAD_SHARE * config.batch / config.num_codes)


def _ema_quantizer(config: AtomicConfig, codes: torch.Tensor) -> VectorQuantizer:
    """The EMA codebook as the module implements it (decay 0.9, Laplace smoothing 1e-5). Its
    cluster sizes start at one pseudo-count per code and its sums at the codes, which keeps
    unused codes where they are (sum / size stays the code as both decay) instead of blowing
    them up by 1 / eps."""
    quantizer = VectorQuantizer(
        config.dim, config.num_codes, ema=True, decay=0.9, backend=config.backend
    )
    with torch.no_grad():
        quantizer.embedding.copy_(codes)
        quantizer.embed_sum.copy_(codes)
    return quantizer


def _nsvq_quantizer(config: AtomicConfig, codes: torch.Tensor) -> VectorQuantizer:
    """NSVQ's codebook as the modules implement it: the dense loss alone (alpha = d puts its
    per-element mean in L_code's per-token scale; no commitment, the features are data) and a
    reservoir for refills, seeded from the experiment's seed."""
    quantizer = VectorQuantizer(
        config.dim,
        config.num_codes,
        alpha=float(config.dim),
        beta=0.0,
        decay=AtomicQuantizer.USAGE_DECAY,
        codebook_loss="dense",
        lam=0.01,
        reservoir_size=AtomicQuantizer.RESERVOIR_SIZE,
        backend=config.backend,
    )
    with torch.no_grad():
        quantizer.embedding.copy_(codes)
    quantizer.generator.manual_seed(config.seed)
    return quantizer


# The methods whose codebook is a wvq_kernels.nn.VectorQuantizer.
MODULE_QUANTIZERS = {"ema": _ema_quantizer, "nsvq": _nsvq_quantizer}


@torch.no_grad()
def evaluate(quantizer: AtomicQuantizer, features: torch.Tensor, step: int) -> Evaluation:
    codebook = quantizer.codebook().detach()
    metrics = usage_metrics(
        kernels.assign(features, codebook, histogram=True, backend=quantizer.config.backend)
    )
    return Evaluation(
        step, metrics["quantization_error"], metrics["utilization"], metrics["perplexity"]
    )


def run_atomic(config: AtomicConfig, progress=None) -> list[Evaluation]:
    """Trains one method and returns evaluations every `log_every` steps and at the end."""
    if config.method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {config.method!r}")
    generator = torch.Generator().manual_seed(config.seed)
    quantizer = AtomicQuantizer(config, generator)
    eval_features = sample(
        config, config.eval_samples, torch.Generator().manual_seed(config.seed + 1)
    )
    history = [evaluate(quantizer, eval_features, 0)]
    for step in range(1, config.steps + 1):
        quantizer.step(sample(config, config.batch, generator, step))
        if step % config.log_every == 0 or step == config.steps:
            history.append(evaluate(quantizer, eval_features, step))
            if progress is not None:
                progress(config, history[-1])
    return history


def mu_label(config: AtomicConfig) -> str:
    """μ, or 0→μ for a drifting run."""
    return f"0→{config.mu:g}" if config.drift else f"{config.mu:g}"


def published(config: AtomicConfig):
    if (
        config.distribution != "gaussian"
        or config.num_codes != 16384
        or config.dim != 8
        or config.drift
    ):
        return None
    return (
        PUBLISHED.get(int(config.mu), {}).get(config.method)
        if float(config.mu).is_integer()
        else None
    )


# The paper's columns and the seconds are set off by wider columns (more space before them).
TABLE_COLUMNS = (
    Column("method", "method", 12, left=True),
    Column("mu", "mu", 4),
    Column("E", "error", 8, "{:.3f}"),
    Column("U %", "utilization %", 8, "{:.2f}"),
    Column("C", "perplexity", 8, "{:.0f}"),
    Column("paper E", "paper E", 10, "{:.3f}"),
    Column("paper U %", "paper U %", 9, "{:.2f}"),
    Column("paper C", "paper C", 8, "{:.0f}"),
    Column("seconds", "seconds", 9, "{:.1f}"),
)


def results_table(rows: list[tuple[AtomicConfig, Evaluation, float]]) -> str:
    """Each run's final E, U and C beside the published values."""
    return format_table(TABLE_COLUMNS, [_table_row(*row) for row in rows])


def _table_row(config: AtomicConfig, final: Evaluation, seconds: float) -> dict:
    paper = published(config) or (None, None, None)
    return {
        "method": config.method,
        "mu": mu_label(config),
        "error": final.error,
        "utilization %": 100 * final.utilization,
        "perplexity": final.perplexity,
        **dict(zip(("paper E", "paper U %", "paper C"), paper)),
        "seconds": seconds,
    }


def save_results(rows, histories, out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    records = [
        {
            "config": dataclasses.asdict(c),
            "final": dataclasses.asdict(e),
            "seconds": s,
            "published": published(c),
            "history": [dataclasses.asdict(h) for h in hist],
        }
        for (c, e, s), hist in zip(rows, histories)
    ]
    json_path = out_dir / "atomic.json"
    json_path.write_text(json.dumps(records, indent=2))
    written = [json_path]
    plot = _plot(rows, histories, out_dir / "atomic.png")
    if plot is not None:
        written.append(plot)
    return written


def _plot(rows, histories, path: Path) -> Path | None:
    """E, U and C over steps, one line per (method, μ)."""
    panels = {"quantization error E": {}, "utilization U (%)": {}, "perplexity C": {}}
    for (config, _, _), history in zip(rows, histories):
        steps = [h.step for h in history]
        label = f"{config.method} μ={mu_label(config)}"
        panels["quantization error E"][label] = (steps, [h.error for h in history])
        panels["utilization U (%)"][label] = (steps, [100 * h.utilization for h in history])
        panels["perplexity C"][label] = (steps, [h.perplexity for h in history])
    return line_plots(path, list(panels.items()), logy=("quantization error E",))


def run_grid(
    mus,
    methods,
    distribution="gaussian",
    quick=False,
    out_dir="runs/atomic",
    seed=12,
    backend="auto",
    drift=False,
    echo=print,
):
    """Runs every (μ, method) pair, prints the table beside the published values and saves
    JSON and a plot. Returns the table rows."""
    rows, histories = [], []
    for mu in mus:
        for method in methods:
            settings = dict(
                mu=mu,
                method=method,
                distribution=distribution,
                seed=seed,
                backend=backend,
                drift=drift,
            )
            config = AtomicConfig.quick(**settings) if quick else AtomicConfig(**settings)
            started = time.perf_counter()
            history = run_atomic(
                config,
                progress=lambda c, e: echo(
                    f"  {c.method} μ={c.mu:g} step {e.step}/{c.steps}: E {e.error:.3f} "
                    f"U {100 * e.utilization:.2f}% C {e.perplexity:.0f}"
                ),
            )
            rows.append((config, history[-1], time.perf_counter() - started))
            histories.append(history)
    echo(results_table(rows))
    for path in save_results(rows, histories, Path(out_dir)):
        echo(f"wrote {path}")
    return rows

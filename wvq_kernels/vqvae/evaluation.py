"""How a run is judged: U, C and E of an assignment, PSNR, and the utilization ceilings that
`wvq diagnose` sets beside a trained codebook."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F

import wvq_kernels
from wvq_kernels import distributed

from . import parallel
from .config import TrainConfig, build_model
from .data import load_datasets
from .models import VQVAE
from .report import ceilings_table

PSNR_IMAGES = 4096


def usage_metrics(result: wvq_kernels.Assignment) -> dict[str, float]:
    """U, C and E of an assignment made with ``histogram=True``: the fraction of codes used, the
    perplexity of their distribution, and the mean squared distance to the chosen code (summed
    in float64, so that it does not depend on how many rows there are)."""
    utilization, perplexity = wvq_kernels.usage(result.counts)
    return {
        "utilization": utilization.item(),
        "perplexity": perplexity.item(),
        "quantization_error": result.distances.double().mean().item(),
    }


def psnr(reconstruction: torch.Tensor, target: torch.Tensor) -> float:
    """Peak signal-to-noise ratio in dB for images in [-1, 1] (peak-to-peak 2)."""
    mse = F.mse_loss(reconstruction.clamp(-1, 1), target).item()
    return 10 * math.log10(4.0 / max(mse, 1e-12))


@torch.no_grad()
def latents(model: VQVAE, images: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """The features the quantizer assigns, (images, 8, 8, codebook_dim), in eval mode."""
    was_training = model.training
    model.eval()
    features = torch.cat(
        [
            model.quantizer.project_in(model.encode(images[i : i + batch_size]))
            for i in range(0, len(images), batch_size)
        ]
    )
    model.train(was_training)
    return features


@torch.no_grad()
def evaluate(
    model: VQVAE, images: torch.Tensor, batch_size: int = 1024, psnr_images: int = PSNR_IMAGES
) -> dict[str, float]:
    """U, C and E from one fused assignment (with histogram) over the whole eval set; PSNR over
    its first ``psnr_images`` images (decoding all of them would double the cost).

    In a multi-process run every rank takes its share of the images, and the counts and float64
    sums are combined over ranks: every rank returns the metrics of the whole set."""
    # Each rank's share of the decoded images and of the rest, so that both are balanced.
    shown = parallel.local_share(images[:psnr_images])
    mine = images
    if parallel.world_size() > 1:
        mine = torch.cat([shown, parallel.local_share(images[psnr_images:])])
    result, reconstruction = _assign_and_decode(model, mine, len(shown), batch_size)
    if parallel.world_size() == 1:
        return {**usage_metrics(result), "psnr": psnr(reconstruction, shown)}
    utilization, perplexity = wvq_kernels.usage(distributed.all_reduce_histogram(result.counts))
    squared_error = (reconstruction.clamp(-1, 1) - shown).double().square().sum()
    local = [result.distances.double().sum(), result.distances.numel(), squared_error]
    distance_sum, tokens, squared_error_sum = parallel.sum_over_ranks(torch.tensor(local)).tolist()
    mse = squared_error_sum / images[:psnr_images].numel()
    return {
        "utilization": utilization.item(),
        "perplexity": perplexity.item(),
        "quantization_error": distance_sum / tokens,
        "psnr": 10 * math.log10(4.0 / max(mse, 1e-12)),
    }


@torch.no_grad()
def _assign_and_decode(
    model: VQVAE, images: torch.Tensor, decoded: int, batch_size: int
) -> tuple[wvq_kernels.Assignment, torch.Tensor]:
    """The assignment (with histogram) of the images' latents, and the reconstructions of the
    first ``decoded`` images."""
    was_training = model.training
    model.eval()
    quantizer = model.quantizer
    result = wvq_kernels.assign(
        latents(model, images, batch_size), quantizer.codes(), histogram=True
    )
    codes = quantizer.indices_to_codes(result.indices[:decoded])
    reconstruction = torch.cat(
        [model.decode(codes[i : i + batch_size]) for i in range(0, decoded, batch_size)]
    )
    model.train(was_training)
    return result, reconstruction


def utilization_ceilings(
    train_features: torch.Tensor, eval_features: torch.Tensor, codes: torch.Tensor, *, seed: int = 0
) -> list[dict]:
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
        order = torch.randperm(len(train_features), generator=generator)
        rows.append(("training features", train_features[order[:size]]))
    return [
        {
            "codebook": name,
            **usage_metrics(wvq_kernels.assign(eval_features, codebook, histogram=True)),
        }
        for name, codebook in rows
    ]


def _gaussian_codebook(
    features: torch.Tensor, size: int, scale: float, generator: torch.Generator
) -> torch.Tensor:
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
    train_set, eval_set = load_datasets(
        config.data, train_size=config.train_size, eval_size=config.eval_size, seed=config.seed
    )
    state = torch.load(run_dir / "checkpoint.pt", weights_only=False)
    model = build_model(config)
    model.load_state_dict(state["model"])
    rows = utilization_ceilings(
        latents(model, train_set).flatten(0, -2),
        latents(model, eval_set).flatten(0, -2),
        model.quantizer.codes().detach(),
        seed=config.seed,
    )
    log(f"{run_dir} ({config.quantizer}, step {state['step']}), eval set of {len(eval_set)} images")
    log(ceilings_table(rows, config.codebook_size))
    (run_dir / "ceilings.json").write_text(json.dumps(rows, indent=2))
    return rows

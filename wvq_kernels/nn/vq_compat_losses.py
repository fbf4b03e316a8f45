"""The losses of the ``VectorQuantize`` swap-in, and the per-codebook record of a forward
they are computed from."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .code_logits import cross_entropy_chunked, diversity_loss_chunked

__all__ = ["LossBreakdown", "Losses", "Step", "mean_square_error"]


class LossBreakdown(NamedTuple):
    """The unweighted loss terms, as vector-quantize-pytorch names them."""

    commitment: Tensor
    codebook_diversity: Tensor
    orthogonal_reg: Tensor
    inplace_optimize: Tensor


class Step(NamedTuple):
    """One codebook's share of a forward: its selected rows as quantized."""

    features: Tensor  # (M, codebook_dim) float32, differentiable in the input
    codes: Tensor  # (M, codebook_dim) the chosen codes, differentiable in a learned codebook
    indices: Tensor  # (M,) int64
    codebook: Tensor  # (K, codebook_dim) the codes chosen among, as the assignment saw them


class Losses:
    """Methods of ``VectorQuantize`` computing its losses: the commitment (squared error or
    cross-entropy), the codebook diversity and the orthogonal regulariser, as the peer. The
    host module provides the options they read and ``quantizers``."""

    def _losses(self, steps: list[Step], freeze: bool, tokens, groups, heads) -> LossBreakdown:
        zero = tokens.new_zeros((), dtype=torch.float32)
        if not self.training:
            return LossBreakdown(zero, zero, zero, zero)
        diversity = zero
        if self.codebook_diversity_loss_weight > 0:
            diversity = self._diversity(steps, groups, heads)
        commitment = zero
        if self.has_commitment_loss and self.commitment_use_cross_entropy_loss:
            commitment = self._cross_entropy(steps, [step.indices for step in steps])
        elif self.has_commitment_loss:
            commitment = self._commitment(steps, learned=self.learnable_codebook and not freeze)
        orthogonal = self._orthogonal(steps) if self.orthogonal_reg_weight > 0 else zero
        return LossBreakdown(commitment, diversity, orthogonal, zero)

    def _total_loss(self, breakdown: LossBreakdown) -> Tensor:
        loss = breakdown.commitment * self.commitment_weight
        loss = loss + breakdown.codebook_diversity * self.codebook_diversity_loss_weight
        loss = loss + breakdown.orthogonal_reg * self.orthogonal_reg_weight
        if self.training and not loss.requires_grad:
            # As the peer: a training loss always takes part in autograd.
            loss = loss.detach().requires_grad_()
        return loss

    def _diversity(self, steps: list[Step], groups, heads: Tensor) -> Tensor:
        """The peer's codebook diversity loss over the one codebook's selected rows: minus
        the entropy of each sequence position's mean code distribution, averaged over
        positions (see ``diversity_loss_chunked``)."""
        ((step,), ((_, where),)) = steps, groups
        grid = torch.arange(heads.shape[1], device=heads.device)[None, :, None]
        grid = grid.expand(heads.shape[:3])
        positions = grid.reshape(-1) if where is None else grid[where]
        features = step.features if step.features.ndim == 2 else step.features[:, 0]
        learned = self._codebook_takes_gradients
        return diversity_loss_chunked(
            features,
            step.codebook if learned else step.codebook.detach(),
            positions,
            heads.shape[1],
            self.codebook_diversity_temperature,
            "cosine" if self.use_cosine_sim else "l2",
        )

    def _commitment(self, steps: list[Step], learned: bool) -> Tensor:
        """Mean squared error between the selected features and their codes (detached unless
        the codebook is learned), over every selected element of every head."""
        return mean_square_error(
            [(s.codes if learned else s.codes.detach(), s.features) for s in steps]
        )

    def _orthogonal(self, steps: list[Step]) -> Tensor:
        """The peer's orthogonal regulariser, mean over codebooks of
        Σᵢⱼ cos²(cᵢ, cⱼ)/n² − 1/n, computed through the d×d Gram matrix (‖ĈᵀĈ‖²_F equals the
        sum over the n×n cosine matrix), so no n×n matrix exists whatever n."""
        terms = []
        for index, quantizer in enumerate(self.quantizers):
            codes = quantizer.codes()
            if self.orthogonal_reg_active_codes_only:
                used = torch.cat([s.indices for s in self._steps_of(steps, index)])
                codes = codes[torch.unique(used)]
            limit = self.orthogonal_reg_max_codes
            if limit is not None and codes.shape[0] > limit:
                codes = codes[torch.randperm(codes.shape[0], device=codes.device)[:limit]]
            unit = F.normalize(codes, dim=-1, eps=1e-6)
            gram = unit.T @ unit
            count = unit.shape[0]
            terms.append(gram.square().sum() / count**2 - 1 / count)
        return torch.stack(terms).mean()

    def _steps_of(self, steps: list[Step], index: int) -> list[Step]:
        return [steps[index]] if self.separate_codebook_per_head else steps

    def _top_commitment(self, step: Step, groups, heads, freeze: bool) -> Tensor:
        """(B, N, k): each code's mean squared error to its token, 0 on padding; the codes
        detached unless learned (in eval: whenever the codebook takes gradients, as the
        peer)."""
        if self.training:
            learned = self.learnable_codebook and not freeze
        else:
            learned = self._codebook_takes_gradients
        codes = step.codes if learned else step.codes.detach()
        error = (codes - step.features).square().mean(-1)
        return self._scatter([error], groups, heads[..., 0], 0.0)[:, :, 0]

    def _cross_entropy(self, steps: list[Step], targets: list[Tensor]) -> Tensor:
        """Mean over the targets that are not −1 of their cross-entropy among all K codes
        (no N×K matrix); the codebook takes the gradient when it is learned, as the peer's."""
        metric = "cosine" if self.use_cosine_sim else "l2"
        learned = self._codebook_takes_gradients
        total = sum(
            cross_entropy_chunked(
                step.features, step.codebook if learned else step.codebook.detach(), t, metric
            )
            for step, t in zip(steps, targets)
        )
        count = sum((t >= 0).sum() for t in targets)
        return total / count.clamp_min(1)


def mean_square_error(pairs: list[tuple[Tensor, Tensor]]) -> Tensor:
    """The mean over every element of every pair; 0 when there are none (all rows masked)."""
    # mse_loss: one pass forward and one backward, where (a − b).square().sum() takes three
    # and three.
    total = sum(F.mse_loss(a, b, reduction="sum") for a, b in pairs)
    return total / max(sum(a.numel() for a, _ in pairs), 1)

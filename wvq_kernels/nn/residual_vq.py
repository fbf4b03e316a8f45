"""Swap-ins for vector-quantize-pytorch's ``ResidualVQ`` and ``GroupedResidualVQ`` (1.32)."""

from __future__ import annotations

import math
import random
from functools import partial
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import distributed
from .rotation_trick import directional_reparam
from .vq_compat import VectorQuantize
from .vq_compat_options import reject_unsupported

__all__ = ["GroupedResidualVQ", "ResidualVQ"]

UNSUPPORTED_RESIDUAL_FORWARD: dict[str, tuple[object, str]] = {
    "indices": (
        None,
        "the cross-entropy of given codes against all K needs the N×K matrix of distances, "
        "which the fused ops never build",
    ),
}

# DiVeQ (Vali et al.) across the stack, as the peer: learned codebooks without a commitment
# loss or a gradient estimator in the layers, the directional reparameterisation applied once to
# the summed output, every layer's gradient passed on to the next residual.
DIVEQ_LAYER_OPTIONS = {
    "ema_update": False,
    "learnable_codebook": True,
    "route_gradients_to_input": False,
    "commitment_weight": 0.0,
}
DIVEQ_NOISE_VARIANCE = 5e-3

# QINCo's layers, as the peer: learned codebooks, which the MLPs transform per token.
IMPLICIT_LAYER_OPTIONS = {"learnable_codebook": True, "ema_update": False}

# Peer options that put the channels at dim 1; the residual stack handles them itself and runs
# its layers on channel-last tokens.
CHANNEL_FIRST_OPTIONS = {"accept_image_fmap": False, "accept_3d_fmap": False, "channel_last": True}


class ResidualVQ(nn.Module):
    """``from wvq_kernels.nn import ResidualVQ`` in place of vector-quantize-pytorch's: residual
    quantization (SoundStream, Algorithm 1), each of ``num_quantizers`` layers a
    ``wvq_kernels.nn.VectorQuantize`` on the fused ops quantizing what the previous ones left.

    The peer's constructor (``vq_kwargs`` go to every layer's ``VectorQuantize``) and forward:
    ``(quantized, indices (..., num_quantizers), losses (num_quantizers,))``, plus
    ``all_codes (num_quantizers, ..., codebook_dim)`` with ``return_all_codes=True``.
    ``codebook_size`` may be a tuple (one size per layer). ``shared_codebook=True`` makes every
    layer the same module; an EMA codebook then accumulates its statistics over all layers and
    is recomputed once, at the end of the forward (the peer's manual EMA update). In training,
    ``quantize_dropout`` keeps the layers up to one drawn from
    ``[quantize_dropout_cutoff_index, num_quantizers)`` (rounded up to a multiple of
    ``quantize_dropout_multiple_of``) with the peer's draw for a given
    ``rand_quantize_dropout_fixed_seed``, and reports the others as index -1 and loss 0; the
    draw is the same on every rank under torch.distributed. ``quant_grad_frac`` lets that
    fraction of the gradient flow from each layer's output into the next layer's residual.
    ``diveq=True`` trains the codebooks by DiVeQ: learned codes, no commitment loss, and the
    directional reparameterisation of the summed output (the peer's noise variance, 5e-3).

    ``beam_size`` (``eval_beam_size`` in eval, or per forward) searches the residual paths:
    each token keeps its ``beam_size`` best partial paths, extends each by its residual's
    ``beam_size`` nearest codes of the next layer (the fused top-k assignment, no N×K matrix),
    scores them by their accumulated commitment losses weighted per layer by
    ``beam_score_quantizer_weights``, and returns the best path; in training each layer's
    codebook then takes the EMA step for the kept path's codes (the peer updates only the
    first layer's). Memory: O(N·beam²·d) for the candidates.

    ``implicit_neural_codebook=True`` (QINCo, Huijben et al. 2024) gives every layer after the
    first an MLP (``mlp_kwargs``: ``dim_hidden``, ``depth``) that makes each token its own
    codebook from the sum of the codes chosen so far; the layers' codebooks are learned, as the
    peer. Those per-token codebooks are (N, K, d): memory O(N·K·d), the one path of the stack
    that is not N×K-free, as in the peer. ``get_codes_from_indices`` transforms only the chosen
    codes, O(N·d). Not with beam search (``TypeError``).

    Channel-first inputs (``accept_image_fmap``, ``accept_3d_fmap``, ``channel_last=False``)
    work at any size (the peer's stack needs channels == height there): indices come back as
    ``(b, h, w, q)``, ``get_output_from_indices`` in the input's layout. Declined, with a
    ``TypeError`` naming the option and why: ``forward(indices=...)`` (see
    ``UNSUPPORTED_RESIDUAL_FORWARD``).
    """

    def __init__(
        self,
        *,
        dim: int,
        num_quantizers: int | None = None,
        codebook_size: int | tuple[int, ...],
        codebook_dim: int | None = None,
        shared_codebook: bool = False,
        diveq: bool = False,
        heads: int = 1,
        quantize_dropout: bool = False,
        quantize_dropout_cutoff_index: int = 0,
        quantize_dropout_multiple_of: int = 1,
        accept_image_fmap: bool = False,
        implicit_neural_codebook: bool = False,
        mlp_kwargs: dict | None = None,
        beam_size: int | None = None,
        eval_beam_size: int | None = None,
        beam_score_quantizer_weights: list[float] | None = None,
        quant_grad_frac: float = 0.0,
        return_zeros_for_masked_padding: bool = True,
        **vq_kwargs,
    ):
        super().__init__()
        sizes = _codebook_sizes(codebook_size, num_quantizers)
        _check_residual_options(heads, shared_codebook, sizes, quantize_dropout_cutoff_index)
        layout = {
            name: vq_kwargs.pop(name, default) for name, default in CHANNEL_FIRST_OPTIONS.items()
        }
        layout["accept_image_fmap"] = accept_image_fmap
        self.channels_first = layout != CHANNEL_FIRST_OPTIONS
        self.accept_image_fmap = accept_image_fmap
        self.codebook_dim = codebook_dim or dim
        self.has_projections = self.codebook_dim != dim
        self.project_in = (
            nn.Linear(dim, self.codebook_dim) if self.has_projections else nn.Identity()
        )
        self.project_out = (
            nn.Linear(self.codebook_dim, dim) if self.has_projections else nn.Identity()
        )
        self.num_quantizers, self.codebook_sizes = len(sizes), sizes
        self.uniform_codebook_size = len(set(sizes)) == 1
        self.shared_codebook = shared_codebook
        self.quantize_dropout = quantize_dropout and self.num_quantizers > 1
        self.quantize_dropout_cutoff_index = quantize_dropout_cutoff_index
        self.quantize_dropout_multiple_of = quantize_dropout_multiple_of
        self.diveq = diveq
        self.quant_grad_frac = 1.0 if diveq else quant_grad_frac
        if diveq:
            vq_kwargs.update(DIVEQ_LAYER_OPTIONS)
        self.return_zeros_for_masked_padding = return_zeros_for_masked_padding
        self.beam_size, self.eval_beam_size, self.beam_score_weights = _beam_options(
            beam_size, eval_beam_size, beam_score_quantizer_weights, self.num_quantizers
        )
        self.implicit_neural_codebook = implicit_neural_codebook
        if implicit_neural_codebook:
            self._check_beam_size(beam_size)
            vq_kwargs.update(IMPLICIT_LAYER_OPTIONS)
        self.layers = self._build_layers(sizes, shared_codebook, vq_kwargs)
        self.mlps = None
        if implicit_neural_codebook:
            cosine = self.layers[0].use_cosine_sim
            self.mlps = nn.ModuleList(
                ImplicitCodebookMLP(self.codebook_dim, l2norm_output=cosine, **(mlp_kwargs or {}))
                for _ in range(self.num_quantizers - 1)
            )

    def _build_layers(self, sizes, shared: bool, vq_kwargs: dict) -> nn.ModuleList:
        def layer(size: int, **extra) -> VectorQuantize:
            dims = {"dim": self.codebook_dim, "codebook_dim": self.codebook_dim}
            return VectorQuantize(codebook_size=size, **dims, **vq_kwargs, **extra)

        if not shared:
            return nn.ModuleList(layer(size) for size in sizes)
        if vq_kwargs.get("threshold_ema_dead_code", 0) > 0:
            raise TypeError(
                "ResidualVQ: shared_codebook=True with threshold_ema_dead_code > 0 is not "
                "supported: the shared EMA codebook is recomputed once at the end of the "
                "forward (manual_ema_update), a step without dead-code replacement"
            )
        # The peer's shared codebook: an EMA one gathers its statistics from every layer and
        # is recomputed once per forward.
        shared_layer = layer(sizes[0])
        if shared_layer.ema_update:
            shared_layer = layer(sizes[0], manual_ema_update=True)
        return nn.ModuleList([shared_layer] * len(sizes))

    @property
    def codebook_size(self) -> int:
        return self.layers[0].codebook_size

    @property
    def codebooks(self) -> Tensor | tuple[Tensor, ...]:
        """``(num_quantizers, K, codebook_dim)``; a tuple of each layer's with different
        sizes."""
        codebooks = tuple(layer.codebook for layer in self.layers)
        return torch.stack(codebooks) if self.uniform_codebook_size else codebooks

    def get_codes_from_indices(self, indices: Tensor) -> Tensor:
        """``(num_quantizers, ..., codebook_dim)``: each layer's code of ``indices``
        ``(..., q)`` (fewer than ``num_quantizers`` columns with quantize dropout), zeros for
        -1 (a dropped layer)."""
        missing = self.num_quantizers - indices.shape[-1]
        if missing > 0:
            if not self.quantize_dropout:
                raise ValueError(
                    f"indices: expected {self.num_quantizers} quantizers in the last dimension, "
                    f"got {indices.shape[-1]}; fewer need quantize_dropout=True"
                )
            indices = nn.functional.pad(indices, (0, missing), value=-1)
        codes, summed = [], 0.0
        for layer, transform, layer_indices in zip(
            self.layers, self._code_transforms(), indices.unbind(-1)
        ):
            dropped = layer_indices < 0
            layer_codes = layer.get_codes_from_indices(layer_indices.clamp_min(0))
            if transform is not None:
                # The chosen codes alone through the MLP: (..., d), never (..., K, d).
                layer_codes = transform.transform_pairs(layer_codes, summed)
            layer_codes = layer_codes.masked_fill(dropped[..., None], 0.0)
            codes.append(layer_codes)
            summed = summed + layer_codes
        return torch.stack(codes)

    def get_output_from_indices(self, indices: Tensor) -> Tensor:
        """What forward outputs (in eval mode) for ``indices``, in the input's layout."""
        summed = self.get_codes_from_indices(indices).sum(0)
        return self._from_channels_last(self.project_out(summed))

    def forward(
        self,
        x: Tensor,
        mask: Tensor | None = None,
        indices: Tensor | list[Tensor] | None = None,
        return_all_codes: bool = False,
        sample_codebook_temp: float | None = None,
        freeze_codebook: bool = False,
        beam_size: int | None = None,
        rand_quantize_dropout_fixed_seed: int | None = None,
    ):
        reject_unsupported("ResidualVQ.forward", UNSUPPORTED_RESIDUAL_FORWARD, {"indices": indices})
        if beam_size is None:
            beam_size = self.beam_size if self.training else self.eval_beam_size
        tokens = x.movedim(1, -1) if self.channels_first else x
        features = self.project_in(tokens)
        last = self._last_layer(features.device, rand_quantize_dropout_fixed_seed)
        # Only what the caller set, so that each layer's own defaults (its freeze_codebook,
        # sample_codebook_temp) hold otherwise.
        options = {"mask": mask, "sample_codebook_temp": sample_codebook_temp}
        options = {name: value for name, value in options.items() if value is not None}
        if freeze_codebook:
            options["freeze_codebook"] = True
        if beam_size is not None and beam_size > 1:
            self._check_beam_size(beam_size)
            quantized, all_indices, losses = self._search_beams(features, last, options, beam_size)
        else:
            quantized, all_indices, losses = self._quantize_layers(features, last, options)
        if self.training and self.shared_codebook and self.layers[0].ema_update:
            self.layers[0].update_ema()
        if self.diveq:
            quantized = directional_reparam(features, quantized, DIVEQ_NOISE_VARIANCE)
        quantized = self.project_out(quantized)
        if mask is not None:
            padding = (
                torch.zeros_like(quantized) if self.return_zeros_for_masked_padding else tokens
            )
            quantized = torch.where(mask[..., None], quantized, padding)
        result = (self._from_channels_last(quantized), all_indices, losses)
        if return_all_codes:
            result += (self.get_codes_from_indices(all_indices),)
        return result

    def _quantize_layers(self, features: Tensor, last: int, options: dict):
        """The residual loop: (sum of the layers' outputs, indices (..., q), losses (q,))."""
        # The layers take (b, n, d): feature maps' positions are flattened into n.
        shape = features.shape
        features = features.flatten(1, -2) if features.dim() > 3 else features
        residual, quantized = features, torch.zeros_like(features)
        all_indices, losses = [], []
        for layer, transform in zip(self.layers[: last + 1], self._code_transforms()):
            layer_options = options
            if transform is not None:
                # QINCo: this layer's codes, per token, from what the layers before chose.
                transform = partial(transform, condition=quantized)
                layer_options = options | {"codebook_transform_fn": transform}
            layer_quantized, layer_indices, loss = layer(residual, **layer_options)
            residual = residual - _gradient_fraction(layer_quantized, self.quant_grad_frac)
            quantized = quantized + layer_quantized
            all_indices.append(layer_indices)
            losses.append(loss.reshape(()).float())
        all_indices, losses = torch.stack(all_indices, -1), torch.stack(losses)
        return self._stack_kept(quantized.reshape(shape), all_indices, losses, shape)

    def _search_beams(self, features: Tensor, last: int, options: dict, beam_size: int):
        """``_quantize_layers`` by beam search (the peer's ``beam_size``): each of the
        ``beam_size`` best partial paths of a token is extended by the ``beam_size`` nearest
        codes of the next layer (its fused top-k assignment, no N×K matrix), the paths scored
        by their accumulated commitment losses (weighted per layer by
        ``beam_score_quantizer_weights``) and the best kept; the last layer keeps one. In
        training the layers' codebooks are then updated with the kept path's codes."""
        shape = features.shape
        features = features.flatten(1, -2) if features.dim() > 3 else features
        paths = _Paths.start(features)
        for index, layer in enumerate(self.layers[: last + 1]):
            kept = beam_size if index < last else 1
            paths = self._extend_paths(paths, layer, index, options, beam_size, kept)
        best = _Paths(*(t[:, :, 0] for t in paths))
        if self.training:
            self._update_with_paths(best.inputs, best.indices, options)
        losses = _mean_over_tokens(best.losses, options.get("mask"))
        return self._stack_kept(best.quantized.reshape(shape), best.indices, losses, shape)

    def _extend_paths(self, paths, layer, index: int, options: dict, beam_size: int, kept: int):
        """One layer of the search: every path's ``beam_size`` nearest codes, then the
        ``kept`` best of the extended paths (all of them, in order, when they are no more)."""
        tokens, count = paths.residual.shape[1:3]
        layer_options = options | {"topk": beam_size}
        if "mask" in options:
            layer_options["mask"] = options["mask"].repeat_interleave(count, dim=1)
        outputs = layer(paths.residual.flatten(1, 2), **layer_options)
        # (B, N, J, k, ...): k codes for each of the J paths.
        codes, code_indices, code_losses = (t.unflatten(1, (tokens, count)) for t in outputs)
        weighted = code_losses.float() * self.beam_score_weights[index]
        scores = (paths.scores[..., None] - weighted).flatten(2)
        if scores.shape[-1] > kept:
            scores, chosen = scores.topk(kept, dim=-1)
        else:
            chosen = torch.arange(scores.shape[-1], device=scores.device).expand_as(scores)
        parents = _take_paths_of(paths, chosen.div(code_indices.shape[-1], rounding_mode="floor"))
        codes = _take_paths(codes.flatten(2, 3), chosen)
        return _Paths(
            residual=parents.residual - _gradient_fraction(codes, self.quant_grad_frac),
            quantized=parents.quantized + codes,
            scores=scores,
            indices=_append(parents.indices, _take_paths(code_indices.flatten(2), chosen)),
            losses=_append(parents.losses, _take_paths(code_losses.flatten(2).float(), chosen)),
            inputs=torch.cat([parents.inputs, parents.residual.detach()[..., None, :]], dim=-2),
        )

    @torch.no_grad()
    def _update_with_paths(self, inputs: Tensor, indices: Tensor, options: dict) -> None:
        """Each layer's codebook update (EMA step) for the codes beam search chose."""
        for layer, layer_input, layer_indices in zip(
            self.layers, inputs.unbind(-2), indices.unbind(-1)
        ):
            frozen = options.get("freeze_codebook", layer.freeze_codebook)
            layer.update_indices(
                layer_input,
                layer_indices,
                mask=options.get("mask"),
                ema_update=False if frozen else None,
            )

    def _stack_kept(self, quantized: Tensor, indices: Tensor, losses: Tensor, shape):
        """The forward's (quantized, indices (..., q), losses (q,)) from those of the kept
        layers: index −1 and loss 0 for the layers quantize dropout left out."""
        dropped = self.num_quantizers - indices.shape[-1]
        indices = F.pad(indices, (0, dropped), value=-1)
        losses = F.pad(losses, (0, dropped))
        return quantized, indices.reshape(*shape[:-1], self.num_quantizers), losses

    def _code_transforms(self) -> tuple:
        """Per layer, its codebook's MLP (QINCo), None for the first and without."""
        if self.mlps is None:
            return (None,) * self.num_quantizers
        return (None, *self.mlps)

    def _check_beam_size(self, beam_size: int | None) -> None:
        if self.implicit_neural_codebook and beam_size is not None and beam_size > 1:
            raise TypeError(
                f"ResidualVQ: beam_size={beam_size} with implicit_neural_codebook=True is not "
                "supported: the top k of per-token codebooks needs the N×K×D codes of every "
                "token, k times over"
            )

    def _last_layer(self, device: torch.device, seed: int | None) -> int:
        """The last layer this forward runs: all but in training with quantize dropout."""
        if not (self.training and self.quantize_dropout):
            return self.num_quantizers - 1
        seed = _shared_seed(device) if seed is None else seed
        last = random.Random(seed).randrange(
            self.quantize_dropout_cutoff_index, self.num_quantizers
        )
        multiple = self.quantize_dropout_multiple_of
        return min(math.ceil((last + 1) / multiple) * multiple - 1, self.num_quantizers - 1)

    def _from_channels_last(self, vectors: Tensor) -> Tensor:
        return vectors.movedim(-1, 1) if self.channels_first else vectors


class GroupedResidualVQ(nn.Module):
    """``GroupedResidualVQ`` of vector-quantize-pytorch: the feature dimension split into
    ``groups`` chunks, each quantized by its own ``ResidualVQ`` (``kwargs`` go to each).
    Returns ``(quantized, indices (groups, ..., q), losses (groups, q))`` and, with
    ``return_all_codes``, a tuple of each group's ``(q, ..., codebook_dim)`` codes, as the
    peer."""

    def __init__(self, *, dim: int, groups: int = 1, accept_image_fmap: bool = False, **kwargs):
        super().__init__()
        if dim % groups:
            raise ValueError(f"dim: expected a multiple of groups={groups}, got {dim}")
        self.dim, self.groups, self.accept_image_fmap = dim, groups, accept_image_fmap
        self.rvqs = nn.ModuleList(
            ResidualVQ(dim=dim // groups, accept_image_fmap=accept_image_fmap, **kwargs)
            for _ in range(groups)
        )

    @property
    def split_dim(self) -> int:
        return 1 if self.rvqs[0].channels_first else -1

    @property
    def codebooks(self) -> Tensor:
        return torch.stack([rvq.codebooks for rvq in self.rvqs])

    def get_codes_from_indices(self, indices: Tensor) -> Tensor:
        return torch.stack(
            [rvq.get_codes_from_indices(part) for rvq, part in zip(self.rvqs, indices)]
        )

    def get_output_from_indices(self, indices: Tensor) -> Tensor:
        outputs = [rvq.get_output_from_indices(part) for rvq, part in zip(self.rvqs, indices)]
        return torch.cat(outputs, dim=self.split_dim)

    def forward(
        self,
        x: Tensor,
        indices=None,
        return_all_codes: bool = False,
        sample_codebook_temp: float | None = None,
        freeze_codebook: bool = False,
        mask: Tensor | None = None,
    ):
        if x.shape[self.split_dim] != self.dim:
            raise ValueError(
                f"x: expected {self.dim} features in dimension {self.split_dim}, "
                f"got shape {tuple(x.shape)}"
            )
        # Every group drops the same layers, as in the peer.
        seed = _shared_seed(x.device) if self.training else None
        outputs = [
            rvq(
                chunk,
                mask=mask,
                indices=indices,
                return_all_codes=return_all_codes,
                sample_codebook_temp=sample_codebook_temp,
                freeze_codebook=freeze_codebook,
                rand_quantize_dropout_fixed_seed=seed,
            )
            for rvq, chunk in zip(self.rvqs, x.chunk(self.groups, dim=self.split_dim))
        ]
        quantized, all_indices, losses, *all_codes = zip(*outputs)
        result = (
            torch.cat(quantized, dim=self.split_dim),
            torch.stack(all_indices),
            torch.stack(losses),
        )
        return result + tuple(all_codes)


class _Paths(NamedTuple):
    """Beam search's kept partial paths, ``(B, N, J, ...)`` per token: the residual left, the
    sum of the chosen codes, the score, the codes' indices and losses so far, and the input
    of each layer so far (for the codebook updates)."""

    residual: Tensor
    quantized: Tensor
    scores: Tensor
    indices: Tensor
    losses: Tensor
    inputs: Tensor

    @classmethod
    def start(cls, features: Tensor) -> _Paths:
        """One empty path per token of ``features`` (B, N, d)."""
        batch, tokens, dim = features.shape
        scores = features.new_zeros((batch, tokens, 1), dtype=torch.float32)
        return cls(
            residual=features[:, :, None],
            quantized=torch.zeros_like(features[:, :, None]),
            scores=scores,
            indices=scores.new_empty((batch, tokens, 1, 0), dtype=torch.int64),
            losses=scores.new_empty((batch, tokens, 1, 0)),
            inputs=features.new_empty((batch, tokens, 1, 0, dim)),
        )


def _take_paths_of(paths: _Paths, chosen: Tensor) -> _Paths:
    return _Paths(*(_take_paths(values, chosen) for values in paths))


def _append(values: Tensor, last: Tensor) -> Tensor:
    """(B, N, J, l) and (B, N, J) → (B, N, J, l + 1)."""
    return torch.cat([values, last[..., None]], dim=-1)


class ImplicitCodebookMLP(nn.Module):
    """QINCo's codebook generator (Huijben et al. 2024), with the peer's parameter names so
    that its checkpoints load: a code c and the sum q of the codes the layers before chose
    give ``proj_in([q, c])`` and then ``depth`` residual SiLU blocks; unit length with
    ``l2norm_output`` (cosine similarity)."""

    def __init__(
        self, dim: int, dim_hidden: int | None = None, depth: int = 4, l2norm_output: bool = False
    ):
        super().__init__()
        hidden = dim_hidden or dim
        self.dim, self.l2norm_output = dim, l2norm_output
        self.proj_in = nn.Linear(2 * dim, dim)
        self.layers = nn.ModuleList(
            nn.Sequential(nn.Linear(dim, hidden), nn.SiLU(), nn.Linear(hidden, dim))
            for _ in range(depth)
        )

    def forward(self, codes: Tensor, *, condition: Tensor) -> Tensor:
        """As ``codebook_transform_fn``: the codebook ``(1, K, d)`` and ``condition``
        ``(B, N, d)`` give every token its own codebook, ``(1, B, N, K, d)``: O(N·K·d)
        memory, the one residual path that is not N×K-free (as the peer)."""
        codes = codes.reshape(codes.shape[0], *[1] * (condition.dim() - 1), *codes.shape[1:])
        return self.transform_pairs(codes, condition[None, ..., None, :])

    def transform_pairs(self, codes: Tensor, condition: Tensor) -> Tensor:
        """The transformed codes of ``codes`` and ``condition`` broadcast against each other;
        for one chosen code per token, ``(..., d)`` with ``(..., d)``."""
        condition_weight, code_weight = self.proj_in.weight.split(self.dim, dim=1)
        # proj_in of the concatenation as two products, so the (…, K, 2d) pairs are never made.
        hidden = F.linear(condition, condition_weight) + F.linear(
            codes, code_weight, self.proj_in.bias
        )
        for block in self.layers:
            hidden = hidden + block(hidden)
        return F.normalize(hidden, dim=-1) if self.l2norm_output else hidden


def _beam_options(beam_size, eval_beam_size, weights, num_quantizers: int):
    """(beam_size, eval_beam_size, per-layer score weights), with the peer's checks."""
    if eval_beam_size is not None and beam_size is None:
        raise ValueError("eval_beam_size: needs beam_size as well (as the peer)")
    weights = (1.0,) * num_quantizers if weights is None else tuple(map(float, weights))
    if len(weights) != num_quantizers:
        raise ValueError(
            f"beam_score_quantizer_weights: expected {num_quantizers} weights, got {len(weights)}"
        )
    return beam_size, beam_size if eval_beam_size is None else eval_beam_size, weights


def _take_paths(values: Tensor, paths: Tensor) -> Tensor:
    """``values`` (B, N, J, ...) at the paths ``paths`` (B, N, J') → (B, N, J', ...)."""
    index = paths.reshape(*paths.shape, *[1] * (values.dim() - 3))
    return values.gather(2, index.expand(*paths.shape, *values.shape[3:]))


def _mean_over_tokens(losses: Tensor, mask: Tensor | None) -> Tensor:
    """Per layer, the mean of per-token losses (B, N, q) over the unmasked tokens."""
    if mask is None:
        return losses.mean((0, 1))
    kept = torch.where(mask[..., None], losses, 0.0).sum((0, 1))
    return kept / mask.sum().clamp_min(1e-4)


def _codebook_sizes(codebook_size, num_quantizers: int | None) -> tuple[int, ...]:
    if isinstance(codebook_size, tuple):
        if num_quantizers is not None and num_quantizers != len(codebook_size):
            raise ValueError(
                f"num_quantizers: {num_quantizers} but {len(codebook_size)} codebook sizes"
            )
        return codebook_size
    if num_quantizers is None:
        raise ValueError("num_quantizers: required unless codebook_size is a tuple of sizes")
    return (codebook_size,) * num_quantizers


def _check_residual_options(heads: int, shared: bool, sizes, cutoff: int) -> None:
    """The peer's refusals (assertions there), as ValueErrors."""
    if heads != 1:
        raise ValueError(f"heads: residual quantization takes heads=1 (as the peer), got {heads}")
    if shared and len(set(sizes)) > 1:
        raise ValueError(f"shared_codebook=True needs one codebook size, got {sizes}")
    if not 0 <= cutoff < len(sizes):
        raise ValueError(
            f"quantize_dropout_cutoff_index: expected 0 <= index < {len(sizes)}, got {cutoff}"
        )


def _gradient_fraction(tensor: Tensor, fraction: float) -> Tensor:
    """``tensor`` whose gradient is scaled by ``fraction`` (detached at 0)."""
    detached = tensor.detach()
    return detached if fraction <= 0 else fraction * tensor + (1 - fraction) * detached


def _shared_seed(device: torch.device) -> int:
    """A seed drawn from torch's generator, summed over ranks so that all agree."""
    seed = torch.randint(10_000, (1,), device=device)
    return int(distributed.all_reduce_histogram(seed)[0])

"""A swap-in for vector-quantize-pytorch's ``VectorQuantize`` on the fused ops."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from .. import _trusted as kernels
from .code_logits import (
    EXPONENTIAL_FLOOR,
    top_codes_chunked,
)
from .gather import gather_codes
from .quantizer import LAPLACE_EPS, VectorQuantizer, finite_flag
from .rotation_trick import directional_reparam, rotate_to, straight_through
from .vq_compat_checkpoint import PEER_MARKER, PeerCodebookView, from_peer_layout, to_peer_layout
from .vq_compat_losses import LossBreakdown, Losses, Step, mean_square_error
from .vq_compat_options import check_peer_constraints
from .vq_compat_state import CodebookState

__all__ = ["LossBreakdown", "VectorQuantize"]


class VectorQuantize(CodebookState, Losses, nn.Module):
    """``from wvq_kernels.nn import VectorQuantize`` in place of
    ``from vector_quantize_pytorch import VectorQuantize`` (1.32): the same constructor
    arguments, forward keywords, return values, attributes and checkpoints.

    Each codebook (one, or one per head with ``separate_codebook_per_head``) is a
    ``VectorQuantizer`` in ``self.quantizers``: nearest codes by the fused assignment, the EMA
    codebook, dead-code replacement and the statistics synchronised under torch.distributed
    (``sync_codebook``) are its own. This wrapper adds the peer's layouts (heads, channel-first,
    image and video feature maps, one token), masks (padding takes no part in any statistic or
    loss), k-means initialisation on the first forward (training or not, as the peer), the
    gradient estimators (rotation trick by default, straight-through, DiVeQ), the losses, and
    the EMA steps the core quantizer does not take (per-code weights, accumulation, sampled
    codes, affine codebooks, bridges, another Laplace ``eps``). What needs every code's logit
    for every token (sampling, top k, the cross-entropy commitment, the diversity loss) is made
    block by block of codes (``code_logits``), never as an N×K matrix.

    Declined, with a ``TypeError`` naming the options and the reason (never for the peer's
    defaults): a few combinations (the diversity loss with separate codebooks per head;
    ``codebook_transform_fn`` with heads, top k or the losses over every code's logit); see
    docs/migration.md. A peer
    ``state_dict`` loads directly (its keys are mapped on load); ``peer_state_dict()`` gives
    the reverse.
    """

    def __init__(
        self,
        dim: int,
        codebook_size: int,
        codebook_dim: int | None = None,
        heads: int = 1,
        separate_codebook_per_head: bool = False,
        decay: float = 0.8,
        eps: float = 1e-5,
        freeze_codebook: bool = False,
        kmeans_init: bool = False,
        kmeans_iters: int = 10,
        sync_kmeans: bool = True,
        use_cosine_sim: bool = False,
        layernorm_after_project_in: bool = False,
        threshold_ema_dead_code: float = 0,
        channel_last: bool = True,
        accept_image_fmap: bool = False,
        accept_3d_fmap: bool = False,
        commitment_weight: float = 1.0,
        commitment_use_cross_entropy_loss: bool = False,
        orthogonal_reg_weight: float = 0.0,
        orthogonal_reg_active_codes_only: bool = False,
        orthogonal_reg_max_codes: int | None = None,
        codebook_diversity_loss_weight: float = 0.0,
        codebook_diversity_temperature: float = 100.0,
        stochastic_sample_codes: bool = False,
        sample_codebook_temp: float = 1.0,
        straight_through: bool = False,
        rotation_trick: bool | None = None,
        directional_reparam: bool = False,
        directional_reparam_variance: float = 5e-3,
        sync_codebook: bool | None = None,
        sync_affine_param: bool = False,
        ema_update: bool | None = None,
        vq_bridge: nn.Module | None = None,
        manual_ema_update: bool = False,
        learnable_codebook: bool | None = None,
        in_place_codebook_optimizer: Callable | None = None,
        manual_in_place_optimizer_update: bool = False,
        affine_param: bool = False,
        affine_param_batch_decay: float = 0.99,
        affine_param_codebook_decay: float = 0.9,
        sync_update_v: float = 0.0,
        return_zeros_for_masked_padding: bool = True,
        route_gradients_to_input: bool = True,
        *,
        backend: str = "auto",
    ):
        super().__init__()
        if codebook_diversity_loss_weight > 0 and separate_codebook_per_head:
            raise TypeError(
                "VectorQuantize: codebook_diversity_loss_weight > 0 with "
                "separate_codebook_per_head=True is not supported: the peer averages the code "
                "distributions of different codebooks together"
            )
        # The peer's defaults, which depend on one another. Straight-through given alone
        # turns the rotation trick off rather than clash with its default.
        bridged = vq_bridge is not None
        ema_update = not (directional_reparam or bridged) if ema_update is None else ema_update
        if learnable_codebook is None:
            learnable_codebook = directional_reparam or bridged
        if rotation_trick is None:
            rotation_trick = not directional_reparam and not straight_through and dim > 1
        check_peer_constraints(
            use_cosine_sim=use_cosine_sim,
            learnable_codebook=learnable_codebook,
            ema_update=ema_update,
            straight_through=straight_through,
            rotation_trick=rotation_trick,
            directional_reparam=directional_reparam,
            threshold_ema_dead_code=threshold_ema_dead_code,
            sync_update_v=sync_update_v,
            affine_param=affine_param,
            bridged=bridged,
        )
        codebook_dim = codebook_dim or dim
        self.dim, self.codebook_size, self.codebook_dim, self.heads = (
            dim,
            codebook_size,
            codebook_dim,
            heads,
        )
        self.separate_codebook_per_head = separate_codebook_per_head
        self.decay, self.eps, self.freeze_codebook = decay, eps, freeze_codebook
        self.kmeans_iters, self.sync_kmeans, self.use_cosine_sim = (
            kmeans_iters,
            sync_kmeans,
            use_cosine_sim,
        )
        self.channel_last, self.accept_image_fmap, self.accept_3d_fmap = (
            channel_last,
            accept_image_fmap,
            accept_3d_fmap,
        )
        self.commitment_weight = commitment_weight
        self.commitment_use_cross_entropy_loss = commitment_use_cross_entropy_loss
        self.has_commitment_loss = commitment_weight > 0 and not directional_reparam
        self.orthogonal_reg_weight = orthogonal_reg_weight
        self.orthogonal_reg_active_codes_only = orthogonal_reg_active_codes_only
        self.orthogonal_reg_max_codes = orthogonal_reg_max_codes
        self.codebook_diversity_loss_weight = codebook_diversity_loss_weight
        self.codebook_diversity_temperature = codebook_diversity_temperature
        self.stochastic_sample_codes, self.sample_codebook_temp = (
            stochastic_sample_codes,
            sample_codebook_temp,
        )
        self.straight_through, self.rotation_trick = straight_through, rotation_trick
        self.directional_reparam = directional_reparam
        self.directional_reparam_variance = directional_reparam_variance
        self.sync_codebook, self.manual_ema_update = sync_codebook, manual_ema_update
        self.learnable_codebook, self.affine_param = learnable_codebook, affine_param
        self.sync_affine_param = sync_affine_param
        self.affine_param_batch_decay = affine_param_batch_decay
        self.affine_param_codebook_decay = affine_param_codebook_decay
        self.sync_update_v = sync_update_v
        self.return_zeros_for_masked_padding = return_zeros_for_masked_padding
        self.route_gradients_to_input = route_gradients_to_input
        self.backend = backend
        self._build_projections(layernorm_after_project_in)
        self.vq_bridge = vq_bridge
        num_codebooks = heads if separate_codebook_per_head else 1
        self.quantizers = nn.ModuleList(
            self._make_codebook(threshold_ema_dead_code, ema_update) for _ in range(num_codebooks)
        )
        self.register_buffer("initted", torch.tensor(not kmeans_init))
        if affine_param:
            self._build_affine_state(num_codebooks)
        # Accumulated EMA statistics (accum_ema_update=True), folded into the next EMA step.
        self._pending: list[tuple[Tensor, Tensor] | None] = [None] * num_codebooks
        self.manual_in_place_optimizer_update = manual_in_place_optimizer_update
        self.in_place_codebook_optimizer = (
            in_place_codebook_optimizer(self._codebook_and_bridge_parameters())
            if in_place_codebook_optimizer is not None
            else None
        )
        self.register_load_state_dict_pre_hook(self._load_peer_layout)

    def _build_projections(self, layernorm: bool) -> None:
        inner_dim = self.codebook_dim * self.heads
        if inner_dim == self.dim:
            self.project_in, self.project_out = nn.Identity(), nn.Identity()
        else:
            linear = nn.Linear(self.dim, inner_dim)
            # The peer's layout (and so its state_dict keys): a Sequential only with the norm.
            self.project_in = (
                nn.Sequential(linear, nn.LayerNorm(inner_dim)) if layernorm else linear
            )
            self.project_out = nn.Linear(inner_dim, self.dim)
        self.has_projections = inner_dim != self.dim

    def _make_codebook(self, threshold_ema_dead_code: float, ema_update: bool) -> VectorQuantizer:
        ema = ema_update and not self.learnable_codebook
        quantizer = VectorQuantizer(
            self.codebook_dim,
            self.codebook_size,
            ema=ema,
            decay=self.decay,
            dead_code_threshold=threshold_ema_dead_code,
            metric="cosine" if self.use_cosine_sim else "l2",
            backend=self.backend,
            sync_stats=self.sync_codebook,
        )
        learned = self._codebook_takes_gradients
        if ema and learned:
            codes = quantizer.embedding
            delattr(quantizer, "embedding")
            quantizer.embedding = nn.Parameter(codes)
        elif not ema:
            quantizer.embedding.requires_grad_(learned)
        return quantizer

    @property
    def _codebook_takes_gradients(self) -> bool:
        # The peer learns the codebook by gradient when asked to, and also under orthogonal
        # regularisation (whose gradient then meets the EMA updates, as there); its distances
        # (cross-entropy, diversity) then carry gradients to the codes too.
        return self.learnable_codebook or self.orthogonal_reg_weight > 0

    def _build_affine_state(self, num_codebooks: int) -> None:
        shape = (num_codebooks, 1, self.codebook_dim)
        for name in ("batch_mean", "batch_variance", "codebook_mean", "codebook_variance"):
            self.register_buffer(name, torch.zeros(shape))
        self.register_buffer("batch_stats_needs_init", torch.tensor(True))
        self.register_buffer("codebook_stats_needs_init", torch.tensor(True))

    # ---- attributes the peer's users call -------------------------------------------------

    @property
    def ema_update(self) -> bool:
        return self.quantizers[0].ema

    @property
    def _codebook(self) -> PeerCodebookView:
        """The peer's ``_codebook`` internals that its users and tests reach for (``embed``,
        ``embed_avg``, ``cluster_size``, ``initted``, ``update_ema()``), read from ours."""
        return PeerCodebookView(self)

    @property
    def codebook(self) -> Tensor:
        """(K, codebook_dim), or (heads, K, codebook_dim) with separate codebooks; rows
        normalised with ``use_cosine_sim``, as the peer stores them."""
        codes = torch.stack([self._normalize(q.codes()) for q in self.quantizers])
        return codes if self.separate_codebook_per_head else codes[0]

    @codebook.setter
    def codebook(self, codes: Tensor) -> None:
        # As the peer: the codes only; the EMA sums keep their values.
        codes = codes if self.separate_codebook_per_head else codes[None]
        with torch.no_grad():
            for quantizer, rows in zip(self.quantizers, codes):
                quantizer.embedding.copy_(rows)

    def codebook_parameters(self) -> list[nn.Parameter]:
        return [p for q in self.quantizers for p in q.codebook_parameters() if p.requires_grad]

    def _codebook_and_bridge_parameters(self) -> list[nn.Parameter]:
        bridge = [] if self.vq_bridge is None else list(self.vq_bridge.parameters())
        return self.codebook_parameters() + bridge

    def update_in_place_optimizer(self) -> None:
        """One step of ``in_place_codebook_optimizer`` on the gradients the last forward left
        (averaged over the ranks when the codebook synchronises); call it yourself with
        ``manual_in_place_optimizer_update``."""
        if self.in_place_codebook_optimizer is None:
            return
        if self._syncs():
            for parameter in self._codebook_and_bridge_parameters():
                if parameter.grad is not None:
                    dist.all_reduce(parameter.grad)
                    parameter.grad /= dist.get_world_size()
        self.in_place_codebook_optimizer.step()
        self.in_place_codebook_optimizer.zero_grad()

    def get_codes_from_indices(self, indices: Tensor) -> Tensor:
        """The codes of ``indices`` (as forward returns them), before ``project_out``."""
        return self._to_layout(self._lookup(indices))

    def get_output_from_indices(self, indices: Tensor) -> Tensor:
        """What forward outputs (in eval mode) for ``indices``."""
        return self._to_layout(self.project_out(self._lookup(indices)))

    @torch.no_grad()
    def update_ema(self) -> None:
        """Recomputes the EMA codebooks from their statistics (for ``manual_ema_update``)."""
        for quantizer in self.quantizers:
            if quantizer.ema:
                self._refresh_codebook(quantizer)

    @torch.no_grad()
    def update_indices(
        self,
        x: Tensor,
        indices: Tensor,
        mask: Tensor | None = None,
        ema_update_weight: Tensor | Callable | None = None,
        accum_ema_update: bool = False,
        ema_update: bool | None = None,
    ) -> None:
        """The codebook update of a training forward for given ``indices`` (as forward
        returns them; −1 and masked tokens are left out): the EMA step, then the dead-code
        refills. For callers that choose the codes themselves (beam search over residual
        quantizers)."""
        heads = self.project_in(self._tokens(x, mask)).unflatten(
            -1, (self.heads, self.codebook_dim)
        )
        groups = self._groups(heads, mask)
        for index, ((rows, _), codes) in enumerate(
            zip(groups, self._group_targets(indices, groups, heads))
        ):
            kept = codes >= 0
            features = self._normalize(rows.float())[kept]
            if ema_update is not False:
                self._ema_step(index, features, codes[kept], ema_update_weight, accum_ema_update)

    update_ema_indices = update_indices

    @torch.no_grad()
    def expire_codes_(self, x: Tensor) -> None:
        """Dead-code refills (in training, with ``threshold_ema_dead_code``) from ``x``,
        ``(..., heads·codebook_dim)`` rows already in the codebook space (as the peer's:
        no ``project_in``)."""
        if not self.training:
            return
        heads = x.reshape(-1, self.heads, self.codebook_dim)
        parts = (
            [heads[:, h] for h in range(self.heads)] if self.separate_codebook_per_head else [heads]
        )
        for quantizer, part in zip(self.quantizers, parts):
            if quantizer.dead_code_threshold > 0:
                features = self._normalize(part.reshape(-1, self.codebook_dim).float())
                self._replace_dead_codes(quantizer, features, finite_flag(features))

    def peer_state_dict(self) -> dict[str, Tensor]:
        """This module's state in vector-quantize-pytorch's layout (see docs/migration.md)."""
        return to_peer_layout(self)

    def _lookup(self, indices: Tensor) -> Tensor:
        if self.heads == 1:
            return self._lookup_codes(0)[indices]
        per_head = [
            self._lookup_codes(head if self.separate_codebook_per_head else 0)[indices[..., head]]
            for head in range(self.heads)
        ]
        return torch.cat(per_head, dim=-1)

    def _to_layout(self, vectors: Tensor) -> Tensor:
        if self.channel_last and not self.accept_image_fmap and not self.accept_3d_fmap:
            return vectors
        return vectors.movedim(-1, 1)

    def _lookup_codes(self, index: int) -> Tensor:
        return self._normalize(self._effective_codes(index, self.quantizers[index].codes()))

    def _effective_codes(self, index: int, codes: Tensor) -> Tensor:
        """The codes as the assignment sees them: through ``vq_bridge`` (which sees the
        codebook as a batch of one sequence of K codes), then the affine map."""
        if self.vq_bridge is not None:
            codes = self.vq_bridge(codes[None])[0]
        if self.affine_param:
            codes = self._affine_codes(index, codes)
        return codes

    # ---- forward ---------------------------------------------------------------------------

    def forward(
        self,
        x: Tensor,
        indices: Tensor | None = None,
        mask: Tensor | None = None,
        lens: Tensor | None = None,
        topk: int | None = None,
        sample_codebook_temp: float | None = None,
        freeze_codebook: bool | None = None,
        return_loss_breakdown: bool = False,
        codebook_transform_fn: Callable | None = None,
        ema_update_weight: Tensor | Callable | None = None,
        accum_ema_update: bool = False,
        ema_update: bool | None = None,
    ):
        if codebook_transform_fn is not None:
            self._check_transform(topk, indices)
        mask = _token_mask(x, mask, lens)
        tokens = self._tokens(x, mask)
        heads = self.project_in(tokens).unflatten(-1, (self.heads, self.codebook_dim))
        groups = self._groups(heads, mask)
        freeze = self.freeze_codebook if freeze_codebook is None else freeze_codebook
        update = self.training and not freeze and ema_update is not False
        temperature = (
            self.sample_codebook_temp if sample_codebook_temp is None else sample_codebook_temp
        )
        if not self.initted:
            self._kmeans_init([rows for rows, _ in groups])
        if topk is not None:
            top = self._forward_top(x, tokens, heads, groups, mask, topk, temperature, freeze)
            return top if return_loss_breakdown else top[:3]
        if codebook_transform_fn is not None:
            steps = [
                self._quantize_per_token(
                    groups,
                    update,
                    temperature,
                    codebook_transform_fn,
                    ema_update_weight,
                    accum_ema_update,
                )
            ]
        else:
            steps = [
                self._quantize(
                    index, rows, update, temperature, ema_update_weight, accum_ema_update
                )
                for index, (rows, _) in enumerate(groups)
            ]
        in_place = None
        if self.in_place_codebook_optimizer is not None and self.training and not freeze:
            in_place = self._optimize_in_place(steps)
            steps = [
                self._quantize(index, rows, False, temperature, None, False)
                for index, (rows, _) in enumerate(groups)
            ]
        outputs = [self._route(step, x.requires_grad) for step in steps]
        if indices is not None:
            return self._given_codes_loss(outputs, steps, groups, heads, indices)
        # In the input's dtype before project_out, as the peer (a bf16 module stays bf16).
        quantized = self._scatter(outputs, groups, heads, 0.0).flatten(2).to(x.dtype)
        quantized = self.project_out(quantized)
        codes = self._scatter([step.indices for step in steps], groups, heads[..., 0], -1)
        quantized = self._mask_padding(quantized, tokens, mask)
        codes = codes if self.heads > 1 else codes[..., 0]
        quantized, codes = self._vectors_back(x, quantized), self._tokens_back(x, codes)
        breakdown = self._losses(steps, freeze, tokens, groups, heads)
        if in_place is not None:
            breakdown = breakdown._replace(inplace_optimize=in_place)
        loss = self._total_loss(breakdown)
        if return_loss_breakdown:
            return quantized, codes, loss, breakdown
        return quantized, codes, loss

    def _forward_top(self, x, tokens, heads, groups, mask, topk, temperature, freeze):
        """The peer's ``forward(x, topk=k)``: the k nearest codes per token (k draws without
        replacement with ``stochastic_sample_codes`` in training), best first, and the
        commitment loss per token and code; no codebook update. Returns the four outputs of
        ``return_loss_breakdown``."""
        if self.heads != 1 or (
            self.training
            and (self.commitment_use_cross_entropy_loss or self.in_place_codebook_optimizer)
        ):
            raise ValueError(
                "topk: only with one head, and in training without the cross-entropy "
                "commitment or the in-place optimizer (as the peer)"
            )
        ((rows, _),) = groups
        step = self._quantize_here(0, rows, False, temperature, None, False, topk)
        routed = self._route(step, x.requires_grad)
        quantized = self._scatter([routed], groups, heads, 0.0)[:, :, 0].to(x.dtype)
        quantized = self.project_out(quantized)
        codes = self._scatter([step.indices], groups, heads[..., 0], -1)[:, :, 0]
        commitment = self._top_commitment(step, groups, heads, freeze)
        parts = self._losses([step], freeze, tokens, groups, heads)
        parts = parts._replace(commitment=commitment)
        if self.has_commitment_loss:
            loss = commitment * self.commitment_weight
        else:
            # As the peer: unweighted in eval, left out in training.
            loss = commitment if not self.training else torch.zeros_like(commitment)
        loss = loss + parts.orthogonal_reg * self.orthogonal_reg_weight
        quantized = self._mask_padding(quantized, tokens[:, :, None], mask)
        quantized = self._vectors_back(x, quantized)
        return quantized, self._tokens_back(x, codes), self._tokens_back(x, loss), parts

    def _mask_padding(self, quantized: Tensor, tokens: Tensor, mask: Tensor | None) -> Tensor:
        """The padding's outputs: zeros, or the input with ``return_zeros_for_masked_padding``
        off."""
        if mask is None:
            return quantized
        padding = torch.zeros_like(tokens) if self.return_zeros_for_masked_padding else tokens
        keep = mask.reshape(*mask.shape, *[1] * (quantized.ndim - mask.ndim))
        return torch.where(keep, quantized, padding)

    def _given_codes_loss(self, outputs, steps, groups, heads, indices) -> tuple[Tensor, Tensor]:
        """The peer's ``forward(x, indices=...)``: the quantized features in the codebook
        space, laid out as the peer's codebook returns them (``(B, N, d)``; with heads
        ``(heads, B, N, d)`` or ``(1, B·heads, N, d)``), and the mean cross-entropy of the
        given codes (−1: ignored) under softmax over every code's logit."""
        loss = self._cross_entropy(steps, self._group_targets(indices, groups, heads))
        quantized = self._scatter(outputs, groups, heads, 0.0).to(heads.dtype)
        if self.heads == 1:
            return quantized[:, :, 0], loss
        if self.separate_codebook_per_head:
            return quantized.permute(2, 0, 1, 3), loss
        return quantized.transpose(1, 2).flatten(0, 1)[None], loss

    def _group_targets(self, indices: Tensor, groups, heads: Tensor) -> list[Tensor]:
        """Per codebook, the given ``indices`` of its selected rows (as ``_groups``)."""
        targets = indices.reshape(heads.shape[:3])
        parts = (
            [targets[:, :, h : h + 1] for h in range(self.heads)]
            if self.separate_codebook_per_head
            else [targets]
        )
        return [
            part.reshape(-1) if where is None else part[where]
            for part, (_, where) in zip(parts, groups)
        ]

    def _optimize_in_place(self, steps: list[Step]) -> Tensor:
        """The peer's in-place codebook step: the codes' squared error to the (detached)
        features, backpropagated into the codebook (and bridge) and stepped at once; the
        caller then quantizes again with the moved codes."""
        loss = mean_square_error([(s.codes, s.features.detach()) for s in steps])
        loss.backward()
        if not self.manual_in_place_optimizer_update:
            self.update_in_place_optimizer()
        return loss.detach()

    def _tokens(self, x: Tensor, mask: Tensor | None) -> Tensor:
        """``x`` as (B, N, dim) tokens; ``_vectors_back`` and ``_tokens_back`` put per-token
        vectors ``(B, N, ..., d)`` and per-token values ``(B, N, ...)`` back in its layout."""
        if mask is not None and (x.ndim == 2 or self.accept_image_fmap or self.accept_3d_fmap):
            raise ValueError("mask/lens: not accepted with one-token or feature-map input")
        if x.ndim == 2:
            tokens = x[:, None]
        elif self.accept_image_fmap or self.accept_3d_fmap:
            tokens = x.flatten(2).transpose(1, 2)
        else:
            tokens = x if self.channel_last else x.transpose(1, 2)
        return tokens

    def _vectors_back(self, x: Tensor, vectors: Tensor) -> Tensor:
        if x.ndim == 2:
            return vectors[:, 0]
        if self.accept_image_fmap or self.accept_3d_fmap:
            return vectors.movedim(-1, 1).unflatten(2, x.shape[2:])
        return vectors if self.channel_last else vectors.movedim(-1, 1)

    def _tokens_back(self, x: Tensor, values: Tensor) -> Tensor:
        if x.ndim == 2:
            return values[:, 0]
        if self.accept_image_fmap or self.accept_3d_fmap:
            return values.unflatten(1, x.shape[2:])
        return values

    def _groups(self, heads: Tensor, mask: Tensor | None) -> list[tuple[Tensor, Tensor | None]]:
        """Per codebook: its selected rows (M, codebook_dim) and where they sit in
        ``heads`` (B, N, H', ...) as a mask, None when every row is selected."""
        parts = (
            [heads[:, :, h : h + 1] for h in range(self.heads)]
            if self.separate_codebook_per_head
            else [heads]
        )
        groups = []
        for part in parts:
            if mask is None:
                groups.append((part.reshape(-1, self.codebook_dim), None))
            else:
                where = mask[..., None].expand(part.shape[:-1])
                groups.append((part[where], where))
        return groups

    def _scatter(self, values: list[Tensor], groups, heads: Tensor, fill: float) -> Tensor:
        """Puts each codebook's per-row values back at its rows of ``heads``."""
        parts = []
        for value, (_, where) in zip(values, groups):
            width = self.heads if len(groups) == 1 else 1
            shape = (*heads.shape[:2], width, *value.shape[1:])
            if where is None:
                parts.append(value.reshape(shape))
            else:
                parts.append(value.new_full(shape, fill).index_put((where,), value))
        # One codebook: its values as they are (a cat of one part would copy them).
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=2)

    # ---- one codebook ----------------------------------------------------------------------

    def _quantize(
        self, index: int, rows: Tensor, update: bool, temperature: float, weight, accumulate: bool
    ) -> Step:
        sampling = self.training and self.stochastic_sample_codes and temperature > 0
        wrapper_ema = update and (
            self.manual_ema_update
            or self.eps != LAPLACE_EPS
            or weight is not None
            or accumulate
            or self._pending[index] is not None
        )
        if self.affine_param or self.vq_bridge is not None or sampling or wrapper_ema:
            return self._quantize_here(index, rows, update, temperature, weight, accumulate)
        return self._quantize_core(self.quantizers[index], rows, update)

    def _quantize_core(self, quantizer: VectorQuantizer, rows: Tensor, update: bool) -> Step:
        """The core quantizer's forward: assignment, EMA step, dead codes, synchronisation."""
        # The codes this forward chooses among, kept from the EMA step and refills that the
        # core forward makes in place (the clone stays differentiable in a learned codebook).
        codes = self._normalize(quantizer.codes().clone())
        indices = quantizer.assign_and_update(rows, update)
        chosen = gather_codes(codes, indices, self.backend)
        return Step(self._normalize(rows.float()), chosen, indices, codes)

    def _quantize_here(
        self,
        index: int,
        rows: Tensor,
        update: bool,
        temperature: float,
        weight,
        accumulate: bool,
        topk: int | None = None,
    ) -> Step:
        """Affine codebooks, bridges, sampled codes, the top k and the EMA variants the core
        quantizer lacks. With ``topk`` the step's tensors gain a k axis after the rows."""
        features = self._normalize(rows.float())
        # A copy: the EMA step and refills below move the codebook in place.
        raw = self.quantizers[index].codes().clone()
        if self.affine_param:
            self._update_affine(index, features.detach(), raw.detach())
        codes = self._normalize(self._effective_codes(index, raw))
        indices = self._choose(features.detach(), codes.detach(), temperature, topk)
        chosen = gather_codes(codes, indices, self.backend)
        if update:
            self._ema_step(index, features.detach(), indices, weight, accumulate)
        if topk is not None:
            features = features[:, None].expand(-1, indices.shape[1], -1)
        return Step(features, chosen, indices, codes)

    def _check_transform(self, topk, indices) -> None:
        refused = {
            "heads > 1": self.heads > 1,
            "topk": topk is not None,
            "indices": indices is not None,
            "commitment_use_cross_entropy_loss": self.commitment_use_cross_entropy_loss,
            "codebook_diversity_loss_weight > 0": self.codebook_diversity_loss_weight > 0,
            "in_place_codebook_optimizer": self.in_place_codebook_optimizer is not None,
        }
        for name, present in refused.items():
            if present:
                raise TypeError(
                    f"VectorQuantize.forward: codebook_transform_fn with {name} is not "
                    "supported: those need the logits of every per-token code"
                )

    def _quantize_per_token(
        self, groups, update: bool, temperature: float, transform, weight, accumulate: bool
    ) -> Step:
        """An implicit codebook (``codebook_transform_fn``, e.g. QINCo's): the function maps
        the (1, K, d) codebook to one codebook per token, (1, B, N, K, d), and each token takes
        the nearest (or, sampling, a drawn) code of its own. Those per-token codebooks are the
        function's N×K×D output, as in the peer; the logits to them add N×K."""
        ((rows, where),) = groups
        features = self._normalize(rows.float())
        raw = self.quantizers[0].codes().clone()
        if self.affine_param:
            self._update_affine(0, features.detach(), raw.detach())
        codes = self._normalize(self._effective_codes(0, raw))
        per_token = transform(codes[None]).reshape(-1, self.codebook_size, self.codebook_dim)
        if where is not None:
            per_token = per_token[where.reshape(-1)]
        per_token = self._normalize(per_token)
        if self.use_cosine_sim:
            logits = (per_token @ features[:, :, None]).squeeze(-1)
        else:
            logits = -F.pairwise_distance(features[:, None], per_token)
        logits = logits.detach()
        if self.training and self.stochastic_sample_codes and temperature > 0:
            noise = torch.empty_like(logits).exponential_().clamp_min_(EXPONENTIAL_FLOOR)
            logits = logits / temperature - noise.log()
        indices = logits.argmax(-1)
        chosen = per_token[torch.arange(indices.shape[0], device=indices.device), indices]
        if update:
            self._ema_step(0, features.detach(), indices, weight, accumulate)
        return Step(features, chosen, indices, codes)

    def _choose(
        self, features: Tensor, codes: Tensor, temperature: float, topk: int | None
    ) -> Tensor:
        """Nearest codes (M,), sampled ones (training, ``stochastic_sample_codes``), or the
        top k (M, k)."""
        sampling = self.training and self.stochastic_sample_codes and temperature > 0
        if not sampling:
            if topk is None:
                return kernels.assign(features, codes, backend=self.backend).indices
            k = min(int(topk), self.codebook_size)
            # Nearest first, ties to the smaller index: the order of the peer's logits.
            return kernels.assign_topk(features, codes, k, backend=self.backend).indices
        metric = "cosine" if self.use_cosine_sim else "l2"
        k = 1 if topk is None else min(int(topk), self.codebook_size)
        top = top_codes_chunked(features, codes, k, temperature, metric)
        return top[:, 0] if topk is None else top

    def _route(self, step: Step, input_requires_grad: bool) -> Tensor:
        """The quantized rows, with the gradient estimator to the input in training."""
        if not (self.training and input_requires_grad and self.route_gradients_to_input):
            return step.codes
        if self.rotation_trick:
            routed = rotate_to(step.features, step.codes)
        elif self.directional_reparam:
            routed = directional_reparam(
                step.features, step.codes, self.directional_reparam_variance
            )
        else:
            routed = straight_through(step.features, step.codes)
        if self.sync_update_v > 0:
            # vqtorch's synchronised update (21): the codes move with v times the gradient.
            routed = routed + self.sync_update_v * (routed - routed.detach())
        return routed

    def _normalize(self, vectors: Tensor) -> Tensor:
        return F.normalize(vectors, dim=-1) if self.use_cosine_sim else vectors

    def _load_peer_layout(self, module, state_dict, prefix, *args) -> None:
        if prefix + PEER_MARKER in state_dict:
            from_peer_layout(self, state_dict, prefix)

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, codebook_size={self.codebook_size}, "
            f"codebook_dim={self.codebook_dim}, heads={self.heads}, "
            f"separate_codebook_per_head={self.separate_codebook_per_head}, "
            f"rotation_trick={self.rotation_trick}, ema_update={self.ema_update}"
        )


def _token_mask(x: Tensor, mask: Tensor | None, lens: Tensor | None) -> Tensor | None:
    if mask is not None and lens is not None:
        raise ValueError("mask and lens: give one or the other, not both")
    if lens is not None:
        mask = torch.arange(x.shape[1], device=x.device) < lens[:, None]
    return mask

"""A swap-in for vector-quantize-pytorch's ``VectorQuantize`` (its common options)."""

from __future__ import annotations

from torch import Tensor, nn

from .quantizer import VectorQuantizer

__all__ = ["VectorQuantize"]


class VectorQuantize(nn.Module):
    """``from wvq_kernels.nn import VectorQuantize`` in place of
    ``from vector_quantize_pytorch import VectorQuantize``: same constructor arguments for the
    common options and the same return tuple ``(quantized, indices, commit_loss)`` for
    channel-last ``(B, N, dim)`` input (any ``(..., dim)`` works).

    As there: an EMA codebook (``decay``, Laplace smoothing), ``commitment_weight·‖sg(z_q) − z‖²``
    as the loss, k-means initialisation on the first batch, EMA dead-code replacement with
    ``threshold_ema_dead_code`` and cosine similarity; under torch.distributed the statistics
    are synchronised over the world group unless ``sync_codebook=False`` (see
    ``VectorQuantizer``'s ``sync_stats``). Differences: gradients pass by the plain
    straight-through estimator (vector-quantize-pytorch defaults to the rotation trick), and
    the commitment loss is also reported in eval mode (there it is 0 outside training). Options
    of vector-quantize-pytorch that are not listed here raise a ``TypeError``.
    """

    def __init__(
        self,
        dim: int,
        codebook_size: int,
        codebook_dim: int | None = None,
        *,
        decay: float = 0.8,
        kmeans_init: bool = False,
        threshold_ema_dead_code: float = 0,
        use_cosine_sim: bool = False,
        commitment_weight: float = 1.0,
        channel_last: bool = True,
        backend: str = "auto",
        sync_codebook: bool | None = None,
    ):
        super().__init__()
        if not channel_last:
            raise TypeError(
                "VectorQuantize: only channel_last=True ((B, N, dim) input) is supported"
            )
        self.quantizer = VectorQuantizer(
            dim,
            codebook_size,
            codebook_dim=codebook_dim,
            ema=True,
            decay=decay,
            beta=commitment_weight,
            dead_code_threshold=threshold_ema_dead_code,
            metric="cosine" if use_cosine_sim else "l2",
            backend=backend,
            kmeans_init=kmeans_init,
            sync_stats=sync_codebook,
        )

    @property
    def codebook(self) -> Tensor:
        return self.quantizer.codes()

    def get_output_from_indices(self, indices: Tensor) -> Tensor:
        return self.quantizer.indices_to_codes(indices)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        out = self.quantizer(x)
        return out.quantized, out.indices, out.loss

"""Declining options by name, and the option combinations vector-quantize-pytorch refuses.

``reject_unsupported`` raises a ``TypeError`` that names a declined option and the reason,
only for a value other than the peer's default (the swap-in quantizers keep their tables of
declined options beside their constructors).
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "check_peer_constraints",
    "reject_unsupported",
]


def _differs(value: Any, default: Any) -> bool:
    if default is None:
        return value is not None
    return value != default


def reject_unsupported(where: str, table: dict[str, tuple[Any, str]], values: dict) -> None:
    """Raises a TypeError for the first option of ``values`` that ``table`` declines and that
    is not at the peer's default."""
    for name, value in values.items():
        default, reason = table[name]
        if _differs(value, default):
            raise TypeError(f"{where}: {name}={_describe(value)} is not supported: {reason}")


def _describe(value: Any) -> str:
    if hasattr(value, "shape"):
        return f"<tensor of shape {tuple(value.shape)}>"
    return repr(value)


def check_peer_constraints(
    *,
    use_cosine_sim: bool,
    learnable_codebook: bool,
    ema_update: bool,
    straight_through: bool,
    rotation_trick: bool,
    directional_reparam: bool,
    threshold_ema_dead_code: float,
    sync_update_v: float,
    affine_param: bool,
    bridged: bool,
) -> None:
    """The combinations the peer refuses (with assertions), refused here with a ValueError."""
    refusals = [
        (use_cosine_sim and learnable_codebook, "use_cosine_sim with learnable_codebook"),
        (
            sum(map(bool, (straight_through, rotation_trick, directional_reparam))) > 1,
            "more than one of straight_through, rotation_trick, directional_reparam",
        ),
        (
            directional_reparam and threshold_ema_dead_code == 0,
            "directional_reparam without dead-code replacement (threshold_ema_dead_code = 0)",
        ),
        (straight_through and learnable_codebook, "straight_through with learnable_codebook"),
        (ema_update and learnable_codebook, "ema_update with learnable_codebook"),
        (not 0 <= sync_update_v <= 1, "sync_update_v outside [0, 1]"),
        (
            sync_update_v > 0 and not learnable_codebook,
            "sync_update_v > 0 without a learnable_codebook",
        ),
        (affine_param and use_cosine_sim, "affine_param with use_cosine_sim"),
        (bridged and not learnable_codebook, "vq_bridge without learnable_codebook"),
        (bridged and ema_update, "vq_bridge with ema_update"),
    ]
    for refused, what in refusals:
        if refused:
            raise ValueError(f"VectorQuantize: {what} is not a valid combination")

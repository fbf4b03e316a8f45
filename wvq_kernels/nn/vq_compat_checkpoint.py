"""vector-quantize-pytorch ``VectorQuantize`` checkpoints into the swap-in.

The peer keeps its codebook state under ``_codebook.``: ``embed`` (num_codebooks, K, d),
``embed_avg`` (the EMA code sums), ``cluster_size`` (num_codebooks, K), ``initted`` and, with
``affine_param``, the affine statistics. The projections have the same names on both sides.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["PEER_MARKER", "PeerCodebookView", "from_peer_layout", "to_peer_layout"]

PEER_MARKER = "_codebook.embed"
_PEER = "_codebook."
BRIDGE = "vq_bridge."
AFFINE = ("batch_mean", "batch_variance", "codebook_mean", "codebook_variance")


def from_peer_layout(module, state_dict: dict, prefix: str) -> None:
    """Rewrites, in place, the peer's keys under ``prefix`` into ``module``'s. State the peer
    does not keep (usage counters, the feature queue, ...) keeps ``module``'s current value,
    so a strict load succeeds."""
    peer = {
        key[len(prefix) + len(_PEER) :]: state_dict.pop(key)
        for key in list(state_dict)
        if key.startswith(prefix + _PEER)
    }
    bridge = {name: value for name, value in peer.items() if name.startswith(BRIDGE)}
    ours = _codebook_state(module, peer) | _affine_state(peer) | bridge
    for name, value in module.state_dict().items():
        state_dict.setdefault(prefix + name, value)
    state_dict.update({prefix + name: value for name, value in ours.items()})


def _codebook_state(module, peer: dict[str, Tensor]) -> dict[str, Tensor]:
    state = {"initted": peer["initted"]}
    for index, quantizer in enumerate(module.quantizers):
        name = f"quantizers.{index}."
        state[name + "embedding"] = peer["embed"][index]
        state[name + "cluster_size"] = peer["cluster_size"][index]
        if quantizer.ema:
            state[name + "embed_sum"] = peer["embed_avg"][index]
    return state


def _affine_state(peer: dict[str, Tensor]) -> dict[str, Tensor]:
    # The peer registers its batch statistics on the first forward; before it they are absent.
    state = {name: peer[name] for name in AFFINE if name in peer}
    if "batch_mean" in peer:
        state["batch_stats_needs_init"] = peer["batch_mean"].new_zeros((), dtype=bool)
    if "codebook_mean_needs_init" in peer:
        state["codebook_stats_needs_init"] = peer["codebook_mean_needs_init"]
    return state


def to_peer_layout(module) -> dict[str, Tensor]:
    """``module``'s state in the peer's layout, for ``load_state_dict`` into a peer
    ``VectorQuantize`` built with the same options."""
    ours = module.state_dict()
    quantizers = list(module.quantizers)
    # The peer keeps cosine codebooks normalised; the swap-in normalises them where used.
    embed = [q.embedding.detach() for q in quantizers]
    if module.use_cosine_sim:
        embed = [F.normalize(e, dim=-1) for e in embed]
    peer = {
        _PEER + "initted": ours["initted"],
        _PEER + "embed": _stack(embed),
        _PEER + "cluster_size": _stack([q.cluster_size for q in quantizers]),
        _PEER + "embed_avg": _stack(
            [
                q.embed_sum if q.ema else e * q.cluster_size[:, None]
                for q, e in zip(quantizers, embed)
            ]
        ),
    }
    peer |= {_PEER + name: ours[name] for name in AFFINE if name in ours}
    if "codebook_stats_needs_init" in ours:
        peer[_PEER + "codebook_mean_needs_init"] = ours["codebook_stats_needs_init"]
        peer[_PEER + "codebook_variance_needs_init"] = ours["codebook_stats_needs_init"]
    peer |= {_PEER + name: value for name, value in ours.items() if name.startswith(BRIDGE)}
    projections = {k: v for k, v in ours.items() if k.startswith(("project_in.", "project_out."))}
    return peer | projections


class PeerCodebookView:
    """The swap-in's codebook state under the peer's ``_codebook`` names and shapes
    (``(num_codebooks, K, d)`` and ``(num_codebooks, K)``): for code written against the
    peer's internals. The tensors are copies."""

    def __init__(self, module):
        self._module = module

    @property
    def embed(self) -> Tensor:
        return to_peer_layout(self._module)[_PEER + "embed"]

    @property
    def embed_avg(self) -> Tensor:
        return to_peer_layout(self._module)[_PEER + "embed_avg"]

    @property
    def cluster_size(self) -> Tensor:
        return to_peer_layout(self._module)[_PEER + "cluster_size"]

    @property
    def initted(self) -> Tensor:
        return self._module.initted

    def update_ema(self) -> None:
        self._module.update_ema()


def _stack(tensors: list[Tensor]) -> Tensor:
    return torch.stack([t.detach().clone() for t in tensors])

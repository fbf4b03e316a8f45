"""A small patch discriminator and the hinge / adaptive-weight pieces of VQGAN-style training."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class PatchDiscriminator(nn.Module):
    """(B, 3, 32, 32) images -> (B, 1, 8, 8) real/fake logits, one per overlapping patch."""

    def __init__(self, hidden: int = 32):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, hidden, 4, stride=2, padding=1),
            nn.LeakyReLU(0.2),  # 16x16
            nn.Conv2d(hidden, 2 * hidden, 4, stride=2, padding=1),  # 8x8
            nn.GroupNorm(8, 2 * hidden),
            nn.LeakyReLU(0.2),
            nn.Conv2d(2 * hidden, 1, 3, padding=1),
        )

    def forward(self, images: Tensor) -> Tensor:
        return self.net(images)


def hinge_discriminator_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    return F.relu(1 - real_logits).mean() + F.relu(1 + fake_logits).mean()


def hinge_generator_loss(fake_logits: Tensor) -> Tensor:
    return -fake_logits.mean()


def adaptive_adversarial_weight(
    reconstruction_loss: Tensor, generator_loss: Tensor, last_layer: Tensor, max_weight: float = 1e4
) -> Tensor:
    """VQGAN's balance: ‖∇ reconstruction‖ / ‖∇ adversarial‖ at the decoder's last layer, so
    that neither term swamps the other whatever their scales (detached)."""
    (reconstruction_grad,) = torch.autograd.grad(reconstruction_loss, last_layer, retain_graph=True)
    (generator_grad,) = torch.autograd.grad(generator_loss, last_layer, retain_graph=True)
    weight = reconstruction_grad.norm() / (generator_grad.norm() + 1e-4)
    return weight.clamp(0, max_weight).detach()

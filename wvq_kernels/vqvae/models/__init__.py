from .discriminator import (
    PatchDiscriminator,
    adaptive_adversarial_weight,
    hinge_discriminator_loss,
    hinge_generator_loss,
)
from .vqvae import VQVAE

__all__ = [
    "VQVAE",
    "PatchDiscriminator",
    "adaptive_adversarial_weight",
    "hinge_discriminator_loss",
    "hinge_generator_loss",
]

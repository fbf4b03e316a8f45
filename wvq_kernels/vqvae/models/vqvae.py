"""A small convolutional VQ-VAE: 32x32 RGB -> 8x8 tokens of dimension ``latent_dim``."""

from __future__ import annotations

from torch import Tensor, nn


class Encoder(nn.Module):
    def __init__(self, hidden: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, hidden, 4, stride=2, padding=1),
            nn.ReLU(),  # 16x16
            nn.Conv2d(hidden, hidden, 4, stride=2, padding=1),
            nn.ReLU(),  # 8x8
            nn.Conv2d(hidden, hidden, 3, padding=1),
            nn.ReLU(),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class Decoder(nn.Module):
    def __init__(self, hidden: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(hidden, hidden, 3, padding=1),
            nn.ReLU(),
            nn.ConvTranspose2d(hidden, hidden, 4, stride=2, padding=1),
            nn.ReLU(),  # 16x16
            nn.ConvTranspose2d(hidden, 3, 4, stride=2, padding=1),  # 32x32
        )

    def forward(self, h: Tensor) -> Tensor:
        return self.net(h)


class VQVAE(nn.Module):
    """Encoder, 1x1 projection to ``latent_dim``, quantizer, 1x1 projection back, decoder.

    ``quantizer`` maps (..., latent_dim) features to an object with ``quantized``, ``indices``,
    ``loss`` and ``stats`` (wvq_kernels.nn.VectorQuantizer's output).
    """

    def __init__(self, quantizer: nn.Module, *, latent_dim: int = 8, hidden: int = 64):
        super().__init__()
        self.encoder = Encoder(hidden)
        self.to_latent = nn.Conv2d(hidden, latent_dim, 1)
        self.quantizer = quantizer
        self.from_latent = nn.Conv2d(latent_dim, hidden, 1)
        self.decoder = Decoder(hidden)

    def encode(self, x: Tensor) -> Tensor:
        """(B, 3, 32, 32) -> (B, 8, 8, latent_dim) channels-last latents."""
        return self.to_latent(self.encoder(x)).permute(0, 2, 3, 1)

    def decode(self, latents: Tensor) -> Tensor:
        return self.decoder(self.from_latent(latents.permute(0, 3, 1, 2)))

    def forward(self, x: Tensor):
        """(reconstruction, quantizer output)."""
        out = self.quantizer(self.encode(x))
        return self.decode(out.quantized), out

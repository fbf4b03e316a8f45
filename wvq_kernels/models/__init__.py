from wvq_kernels.models.vqvae import VQVAE

__all__ = ["VQVAE"]

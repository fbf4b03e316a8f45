"""THE APPLICATION: the reference VQ-VAE trained with the library's quantizers (`wvq train`,
`wvq diagnose`) and the reproduction of published experiments (`wvq repro`).

    config.py      TrainConfig, the stages, the quantizers' options and the codebook's optimizer
    loop.py        the Trainer, its optimizers, train() and compare()
    evaluation.py  U / C / E of an assignment, PSNR, utilization ceilings, diagnose()
    report.py      metrics JSON / CSV, the training plot, reconstructions, tables
    repro.py       Wasserstein VQ's synthetic ("atomic") experiment
    data.py        the embedded photographs, image folders, CIFAR-style .npz
    models/        the convolutional VQ-VAE and the patch discriminator

It imports the library; the library never imports it. Its dependencies are the ``vqvae`` extra.
"""

from .config import TrainConfig
from .evaluation import diagnose, evaluate
from .loop import compare, train

__all__ = ["TrainConfig", "compare", "diagnose", "evaluate", "train"]

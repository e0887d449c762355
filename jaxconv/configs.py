"""Every command's defaults, in one place: the flags and ``--help`` of ``jaxconv``, the
library's dataclass and keyword defaults and the experiments read them from here.

Plain Python (no JAX, no numpy), so that the argument parser imports nothing heavy.
"""

from __future__ import annotations

import dataclasses

SEED = 0
CHECKPOINT_EVERY = 1  # epochs between checkpoints
KEEP = 3  # checkpoints kept


@dataclasses.dataclass(frozen=True)
class Training:
    """A training command's defaults: the run (:class:`jaxconv.train.TrainConfig`), how long
    it trains and how it keeps checkpoints (:func:`jaxconv.train.fit`).

    ``workdir``: the run directory when none is given, a ``str.format`` pattern of the
    command's flags (``{dataset}`` with ``/`` as ``_``, ``{upsampling}``).
    """

    epochs: int
    batch_size: int
    learning_rate: float
    workdir: str
    seed: int = SEED
    checkpoint_every: int = CHECKPOINT_EVERY
    keep: int = KEEP


# ``jaxconv train``: the convolutional autoencoder (jaxconv.models), Adam
AUTOENCODER = Training(epochs=30, batch_size=64, learning_rate=1e-3, workdir="runs/{dataset}")
EMBEDDING_DIM = 64

# ``jaxconv segment``: the U-Net (jaxconv.segmentation) on digit scenes (jaxconv.scenes).
# learning_rate: AdamW's peak, reached after a linear warm-up over WARMUP of the steps.
SEGMENTATION = Training(
    epochs=8, batch_size=16, learning_rate=2e-3, workdir="runs/segment-{upsampling}"
)
WARMUP = 0.05  # fraction of the steps
UPSAMPLINGS = ("transposed", "resize")
UPSAMPLING = "transposed"
IMAGE_SIZE = (64, 64)  # scene height and width
WIDTHS = (16, 32, 64, 128)  # U-Net features per level, full size first; each level halves
MIN_SIZE = 16  # smallest image height and width that the U-Net takes
NUM_SCENES = (10_000, 1_000)  # train and test scenes generated

# ``jaxconv interpolate`` / ``embed`` / ``generate`` (jaxconv.analysis)
INTERPOLATION_STEPS = 10  # images per row, endpoints included
INTERPOLATION_PAIRS = 4  # pairs of test images when none are named
KNN_K = 5  # neighbours of the k-NN label accuracy
GENERATE_PER_ROW = 10  # samples per Gaussian
GENERATE_SEED = 0

"""The settings of a segmentation run (its defaults: :mod:`jaxconv.configs`).

Importable without JAX (numpy only), so that ``jaxconv``'s argument parser needs no JAX:
the network, its loss and its training are :mod:`jaxconv.segmentation`, which re-exports
:class:`SegmentationConfig`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING, ClassVar

from jaxconv import configs, scenes
from jaxconv.configs import MIN_SIZE, UPSAMPLINGS

if TYPE_CHECKING:
    from jaxconv.segmentation import SegmentationTask


def crop_for(image_size: Sequence[int]) -> tuple[int, int]:
    """The training crop of the recipe: three quarters of each side (48 of 64), at least
    ``MIN_SIZE``."""
    return tuple(max(MIN_SIZE, min(n, round(0.75 * n))) for n in image_size)


@dataclasses.dataclass(frozen=True)
class SegmentationConfig:
    """The network's shape and how it is trained: what a run and its checkpoint are.

    ``widths``: features per level, level ``i`` at ``1 / 2**i`` of the image size.
    ``depth``: extra stride-1 convs after each down-sampling. ``norm_groups``: GroupNorm
    groups (at most the layer's width); 0 for no normalisation.

    Training (:class:`SegmentationTask`): ``image_size`` is the train and test scenes'
    size, ``crop`` the random window of it each training step sees (``None``: the whole
    scene), ``num_scenes`` the train and test scenes generated, ``epochs`` the length of
    the learning-rate schedule.
    """

    task_name: ClassVar[str] = "segmentation"
    command: ClassVar[str] = "segment"  # the jaxconv command that trains it

    widths: tuple[int, ...] = (16, 32, 64, 128)
    depth: int = 1
    upsampling: str = configs.UPSAMPLING
    num_classes: int = scenes.NUM_CLASSES
    image_channels: int = 1
    norm_groups: int = 8
    image_size: tuple[int, int] = configs.IMAGE_SIZE
    crop: tuple[int, int] | None = crop_for(configs.IMAGE_SIZE)
    num_scenes: tuple[int, int] = configs.NUM_SCENES
    epochs: int = configs.SEGMENTATION.epochs

    def __post_init__(self) -> None:
        if len(self.widths) < 2 or min(self.widths) < 1:
            raise ValueError(f"widths must be two or more positive ints, got {self.widths}")
        if self.depth < 0 or self.norm_groups < 0:
            raise ValueError(
                f"depth and norm_groups must be >= 0, got {self.depth}, {self.norm_groups}"
            )
        if self.upsampling not in UPSAMPLINGS:
            raise ValueError(f"upsampling must be one of {UPSAMPLINGS}, got {self.upsampling!r}")
        if self.num_classes < 2 or self.image_channels < 1:
            raise ValueError(
                f"num_classes must be >= 2 and image_channels >= 1, got {self.num_classes}, "
                f"{self.image_channels}"
            )
        if len(self.image_size) != 2 or min(self.image_size) < MIN_SIZE:
            raise ValueError(
                f"image_size must be (height, width), each >= {MIN_SIZE}, got {self.image_size}"
            )
        if self.crop is not None and not (
            len(self.crop) == 2
            and MIN_SIZE <= min(self.crop)
            and all(c <= n for c, n in zip(self.crop, self.image_size))
        ):
            raise ValueError(
                f"crop must be (height, width) between {MIN_SIZE} and image_size "
                f"{self.image_size}, got {self.crop}"
            )
        if len(self.num_scenes) != 2 or min(self.num_scenes) < 1 or self.epochs < 1:
            raise ValueError(
                f"num_scenes must be two positive counts and epochs >= 1, got "
                f"{self.num_scenes}, {self.epochs}"
            )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> SegmentationConfig:
        tuples = {
            key: None if d.get(key) is None else tuple(d[key])
            for key in ("widths", "image_size", "crop", "num_scenes")
        }
        return cls(**{**d, **tuples})

    def task(self) -> SegmentationTask:
        from jaxconv.segmentation import SegmentationTask

        return SegmentationTask(self)

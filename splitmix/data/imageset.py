"""The one in-memory form every importer produces and every consumer reads."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ImageSet:
    """Images as uint8 NHWC (C = 1 or 3) with int64 labels in 0..num_classes-1.

    Keeping one canonical layout lets every reader be tested the same way and lets the prepared
    cache be a plain memory-mappable ``.npy`` pair.
    """

    images: np.ndarray  # (N, H, W, C) uint8
    labels: np.ndarray  # (N,) int64

    def __post_init__(self) -> None:
        if self.images.dtype != np.uint8 or self.images.ndim != 4:
            raise ValueError(
                f"images must be uint8 NHWC, got {self.images.dtype} {self.images.shape}"
            )
        if self.labels.dtype != np.int64 or self.labels.shape != (self.images.shape[0],):
            raise ValueError(
                f"labels must be int64 of length {self.images.shape[0]}, "
                f"got {self.labels.dtype} {self.labels.shape}"
            )

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def class_counts(self, num_classes: int = 10) -> list[int]:
        return np.bincount(self.labels, minlength=num_classes).tolist()

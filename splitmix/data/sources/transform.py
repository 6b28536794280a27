"""Whole-set transforms the original pipelines apply per image: resize, gray to RGB, FedBN split.

They run once when a dataset is prepared (not in the training loop), so a per-image PIL call is
fine, and using PIL itself is what makes the pixels equal to the original torchvision pipeline:
``transforms.Resize`` on a PIL image calls ``PIL.Image.resize(..., BILINEAR)``, whose bilinear
filter widens with the scale factor (i.e. it antialiases when shrinking).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from splitmix.data.imageset import ImageSet
from splitmix.data.sources._common import image_set


def take(images: ImageSet, index: np.ndarray | slice) -> ImageSet:
    """The samples at ``index`` (array of positions or a slice), as a new ImageSet."""
    return image_set(images.images[index], images.labels[index])


def resize(images: ImageSet, size: int) -> ImageSet:
    """Every image to ``size`` x ``size`` with PIL bilinear (== torchvision Resize on PIL images).

    No-op (same object) when the images already have that size.
    """
    n, h, w, c = images.images.shape
    if (h, w) == (size, size):
        return images
    if size < 1:
        raise ValueError(f"size must be positive, got {size}")
    mode = "L" if c == 1 else "RGB"
    out = np.empty((n, size, size, c), dtype=np.uint8)
    for i in range(n):
        im = Image.fromarray(images.images[i, :, :, 0] if c == 1 else images.images[i], mode)
        out[i] = np.asarray(im.resize((size, size), Image.Resampling.BILINEAR)).reshape(
            size, size, c
        )
    return ImageSet(out, images.labels.copy())


def to_rgb(images: ImageSet) -> ImageSet:
    """Gray (C=1) repeated to 3 channels, as ``transforms.Grayscale(3)`` does; RGB unchanged."""
    if images.images.shape[3] == 3:
        return images
    return ImageSet(np.repeat(images.images, 3, axis=3), images.labels.copy())


def fedbn_train_test_split(pool: ImageSet) -> tuple[ImageSet, ImageSet]:
    """FedBN's 80/20 split of train + test: ``StratifiedShuffleSplit(1, 0.2, random_state=0)``.

    The splitter's permutation depends only on the labels and the sample count, so a placeholder
    ``X`` gives the same indices as FedBN passing the images. Both parts keep the splitter's order.
    """
    # imported here: sklearn costs ~0.75 s to import and only this recipe needs it
    from sklearn.model_selection import StratifiedShuffleSplit

    splitter = StratifiedShuffleSplit(n_splits=1, test_size=0.2, random_state=0)
    train_idx, test_idx = next(splitter.split(np.zeros((len(pool), 1)), pool.labels))
    return take(pool, train_idx), take(pool, test_idx)

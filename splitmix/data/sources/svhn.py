"""SVHN cropped digits and SynthDigits: MATLAB v5 ``.mat`` files with ``X`` and ``y``.

Both ``train_32x32.mat``/``test_32x32.mat`` (SVHN) and ``synth_{train,test}_32x32.mat``
(SynthDigits, Ganin & Lempitsky) store ``X`` as (32, 32, 3, N) uint8 (height, width, channel,
sample) and ``y`` as (N, 1), with label 10 standing for the digit 0 (SVHN's convention; SynthDigits
uses 0 directly, which the same mapping leaves unchanged).
"""

from __future__ import annotations

import numpy as np
import scipy.io

from splitmix.data.imageset import ImageSet
from splitmix.data.sources._common import (
    CORRUPT_ERRORS,
    PathLike,
    data_error,
    image_set,
    labels_from,
    require_file,
)


def read_digits_mat(path: PathLike) -> ImageSet:
    """Images (N, 32, 32, 3) uint8 and labels 0..9 (10 -> 0) from an SVHN-layout .mat file."""
    p = require_file(path, "digits .mat file")
    try:
        mat = scipy.io.loadmat(p, variable_names=["X", "y"])
    except NotImplementedError:  # scipy's answer for MATLAB v7.3 (HDF5) files
        raise data_error(p, "is a MATLAB v7.3 file, expected the v5 .mat of the release") from None
    except CORRUPT_ERRORS as exc:
        what = f"not a readable MATLAB .mat file ({type(exc).__name__}: {exc})"
        raise data_error(p, what) from None
    missing = [k for k in ("X", "y") if k not in mat]
    if missing:
        raise data_error(p, f"has no variable {' or '.join(missing)} (expected X and y)")
    x, y = mat["X"], np.asarray(mat["y"]).reshape(-1)
    if x.ndim != 4 or x.shape[2] != 3 or x.shape[3] != y.shape[0]:
        raise data_error(p, f"X is {x.shape} with {y.shape[0]} labels, expected (H, W, 3, N)")
    if x.dtype != np.uint8 and (
        x.dtype.kind not in "iu" or (x.size and (x.min() < 0 or x.max() > 255))
    ):
        raise data_error(p, f"X has dtype {x.dtype}, expected uint8 pixels")
    y = labels_from(y, p, num_classes=11)
    y[y == 10] = 0
    return image_set(np.transpose(x, (3, 0, 1, 2)), y)

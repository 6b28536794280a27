"""Writers of tiny files in the EXACT official raw formats, for tests of readers and acquisition.

Each writer creates a few KB on disk and returns what a correct reader must produce (an ``ImageSet``
or a dict of them), so a test is a plain round trip. Formats follow the releases byte for byte
where it matters (IDX magic and big-endian header, gzip/bz2 wrapping, MATLAB v5 ``X``/``y``
layout, CIFAR pickled dicts with bytes keys, DANN MNIST-M and FedBN layouts, DomainNet zips).
All writers are deterministic given ``seed``.
"""

from __future__ import annotations

import bz2
import gzip
import io
import pickle
import struct
import tarfile
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import scipy.io
from PIL import Image

from splitmix.data.catalog import CIFAR10_CLASSES, DOMAINNET_CLASSES
from splitmix.data.imageset import ImageSet


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def _labels(rng: np.random.Generator, n: int) -> np.ndarray:
    """Labels covering every class when n >= 10 (readers' class checks need all present)."""
    labels = np.arange(n, dtype=np.int64) % 10
    return rng.permutation(labels)


def _encode(pixels: np.ndarray, fmt: str, mode: str | None = None) -> bytes:
    arr = pixels[..., 0] if pixels.ndim == 3 and pixels.shape[2] == 1 else pixels
    buf = io.BytesIO()
    Image.fromarray(arr, mode).save(buf, format=fmt)
    return buf.getvalue()


def _tar_add(tf: tarfile.TarFile, name: str, data: bytes | None) -> None:
    """Add a file (or a directory when ``data`` is None) with fixed metadata, like the mirror's."""
    info = tarfile.TarInfo(name)
    info.mtime = 1530576000
    if data is None:
        info.type = tarfile.DIRTYPE
        info.mode = 0o755
        tf.addfile(info)
    else:
        info.size = len(data)
        info.mode = 0o644
        tf.addfile(info, io.BytesIO(data))


def _write_tar_gz(path: Path, members: Iterable[tuple[str, bytes | None]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tf:
        for name, data in members:
            _tar_add(tf, name, data)


def _write_dir(root: Path, members: Iterable[tuple[str, bytes | None]]) -> None:
    for name, data in members:
        target = root / name
        if data is None:
            target.mkdir(parents=True, exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)


# ---------------------------------------------------------------------------------------- MNIST


def idx_bytes(array: np.ndarray) -> bytes:
    """Raw IDX: magic 0x0000 08 <ndim>, big-endian int32 dims, uint8 body."""
    header = struct.pack(">I", 0x0800 + array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def write_mnist_idx(
    directory: Path, n: int, *, seed: int = 0, prefix: str = "train"
) -> tuple[Path, Path, ImageSet]:
    """``<prefix>-images-idx3-ubyte.gz`` and ``<prefix>-labels-idx1-ubyte.gz`` (train or t10k)."""
    rng = _rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = _labels(rng, n)
    directory.mkdir(parents=True, exist_ok=True)
    img_path = directory / f"{prefix}-images-idx3-ubyte.gz"
    lab_path = directory / f"{prefix}-labels-idx1-ubyte.gz"
    img_path.write_bytes(gzip.compress(idx_bytes(images), mtime=0))
    lab_path.write_bytes(gzip.compress(idx_bytes(labels.astype(np.uint8)), mtime=0))
    return img_path, lab_path, ImageSet(images[..., None], labels)


# ----------------------------------------------------------------------------------------- USPS


def write_usps_libsvm(
    path: Path, n: int, *, seed: int = 0, sparse: bool = False
) -> tuple[ImageSet, np.ndarray]:
    """libsvm ``usps.bz2``-style text: ``label idx:val`` with labels 1..10, 6-decimal values.

    The first image holds the exact values -1, 0 and 1 at pixels 0, 1, 2 so tests can check the
    FedBN scaling from first principles. With ``sparse``, zero values are omitted (libsvm allows
    it). Returns (expected ImageSet, the float32 values written, shape (n, 256)).
    """
    rng = _rng(seed)
    values = rng.uniform(-1, 1, size=(n, 256)).round(6).astype(np.float32)
    values[:, 5] = 0.0  # some exact zeros on every line
    values[0, :3] = (-1.0, 0.0, 1.0)
    labels = _labels(rng, n)
    lines = []
    for row, label in zip(values, labels, strict=True):
        items = [f"{j + 1}:{v:.6f}" for j, v in enumerate(row) if not (sparse and v == 0.0)]
        lines.append(" ".join([str(label + 1), *items]))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bz2.compress(("\n".join(lines) + "\n").encode("ascii")))
    pixels = ((values + 1) / 2 * 255).astype(np.uint8)
    return ImageSet(pixels.reshape(n, 16, 16, 1), labels), values


def write_usps_h5(path: Path, n_train: int, n_test: int, *, seed: int = 0) -> dict[str, ImageSet]:
    """Kaggle-style ``usps.h5``: ``{train,test}/data`` (N, 256) float32 k/255, ``/target`` int32."""
    rng = _rng(seed)
    out = {}
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        for split, n in (("train", n_train), ("test", n_test)):
            pixels = rng.integers(0, 256, size=(n, 256), dtype=np.uint8)
            labels = _labels(rng, n)
            grp = f.create_group(split)
            grp["data"] = (pixels / 255.0).astype(np.float32)
            grp["target"] = labels.astype(np.int32)
            out[split] = ImageSet(pixels.reshape(n, 16, 16, 1), labels)
    return out


# ----------------------------------------------------------------------------- SVHN / Synth .mat


def write_svhn_mat(path: Path, n: int, *, seed: int = 0, synth: bool = False) -> ImageSet:
    """``X`` (32, 32, 3, N) uint8 and ``y`` (N, 1); SVHN writes digit 0 as 10, SynthDigits as 0."""
    rng = _rng(seed)
    images = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
    labels = _labels(rng, n)
    y = labels.copy() if synth else np.where(labels == 0, 10, labels)
    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(
        path, {"X": np.transpose(images, (1, 2, 3, 0)), "y": y.reshape(-1, 1).astype(np.uint8)}
    )
    return ImageSet(images, labels)


# -------------------------------------------------------------------------------------- CIFAR-10


def write_cifar10_pickles_tar(
    path: Path, n_per_batch: int, *, seed: int = 0
) -> dict[str, ImageSet]:
    """``cifar-10-python.tar.gz`` with ``cifar-10-batches-py/{data_batch_1..5,test_batch}``.

    Batches are pickled dicts with bytes keys (what the Python-2 pickles load as with
    ``encoding='bytes'``): b'batch_label', b'labels' (list), b'data' (N, 3072) CHW rows and
    b'filenames'; ``batches.meta`` is included too.
    """
    rng = _rng(seed)
    members: list[tuple[str, bytes | None]] = [("cifar-10-batches-py", None)]
    expected: dict[str, list[ImageSet]] = {"train": [], "test": []}
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        images = rng.integers(0, 256, size=(n_per_batch, 32, 32, 3), dtype=np.uint8)
        labels = _labels(rng, n_per_batch)
        batch = {
            b"batch_label": name.encode(),
            b"labels": [int(v) for v in labels],
            b"data": images.transpose(0, 3, 1, 2).reshape(n_per_batch, 3072).copy(),
            b"filenames": [f"img_{i}.png".encode() for i in range(n_per_batch)],
        }
        members.append((f"cifar-10-batches-py/{name}", pickle.dumps(batch, protocol=2)))
        expected["test" if name == "test_batch" else "train"].append(ImageSet(images, labels))
    meta = {b"label_names": [c.encode() for c in CIFAR10_CLASSES], b"num_vis": 3072}
    members.append(("cifar-10-batches-py/batches.meta", pickle.dumps(meta, protocol=2)))
    _write_tar_gz(path, members)
    return {
        split: ImageSet(
            np.concatenate([s.images for s in sets]), np.concatenate([s.labels for s in sets])
        )
        for split, sets in expected.items()
    }


def write_image_tree(
    path: Path,
    n_per_class: int,
    *,
    classes: Sequence[str] = CIFAR10_CLASSES,
    splits: Sequence[str] = ("train", "test"),
    top: str = "cifar-10-images",
    side: int = 32,
    fmt: str = "PNG",
    as_tar: bool = True,
    seed: int = 0,
) -> dict[str, ImageSet]:
    """``<top>/<split>/<class>/NNNN.<ext>`` as a tar.gz at ``path`` or a folder ``path``.

    Expected order is (class index, file name). With ``fmt="JPEG"`` the expected pixels are the
    decoded JPEG (lossy), otherwise exactly the generated pixels.
    """
    rng = _rng(seed)
    ext = "jpg" if fmt == "JPEG" else fmt.lower()
    members: list[tuple[str, bytes | None]] = [(top, None)]
    expected = {}
    for split in splits:
        members.append((f"{top}/{split}", None))
        images, labels = [], []
        for label, cls in enumerate(classes):
            members.append((f"{top}/{split}/{cls}", None))
            for i in range(n_per_class):
                pixels = rng.integers(0, 256, size=(side, side, 3), dtype=np.uint8)
                blob = _encode(pixels, fmt)
                members.append((f"{top}/{split}/{cls}/{i:04d}.{ext}", blob))
                if fmt == "JPEG":
                    pixels = np.asarray(Image.open(io.BytesIO(blob)).convert("RGB"))
                images.append(pixels)
                labels.append(label)
        expected[split] = ImageSet(np.stack(images), np.asarray(labels, dtype=np.int64))
    if as_tar:
        _write_tar_gz(path, members)
    else:
        _write_dir(path, members)
    return expected


def write_cifar10_image_tree(
    path: Path, n_per_class: int, *, as_tar: bool = True, seed: int = 0
) -> dict[str, ImageSet]:
    """The mirror's ``cifar-10-images.tar.gz`` layout, with lossless PNGs for exact round trips."""
    return write_image_tree(path, n_per_class, as_tar=as_tar, seed=seed)


# --------------------------------------------------------------------------------------- MNIST-M


def write_mnist_m_tar(
    path: Path,
    n_train: int,
    n_test: int,
    *,
    seed: int = 0,
    as_dir: bool = False,
    omit: Sequence[str] = (),
) -> dict[str, ImageSet]:
    """DANN layout under ``mnist_m/``: PNG folders plus ``mnist_m_<split>_labels.txt``.

    ``omit`` lists names relative to ``mnist_m/`` to leave out (e.g. a label file or one PNG),
    for tests of incomplete archives; the returned sets describe the intact data. Label lines are
    written in a shuffled file order so that "label-file order" differs from name order.
    """
    rng = _rng(seed)
    members: list[tuple[str, bytes | None]] = [("mnist_m", None)]
    expected = {}
    for split, n in (("train", n_train), ("test", n_test)):
        folder = f"mnist_m_{split}"
        members.append((f"mnist_m/{folder}", None))
        images = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
        labels = _labels(rng, n)
        order = rng.permutation(n)
        for i in range(n):
            members.append((f"mnist_m/{folder}/{i:08d}.png", _encode(images[i], "PNG")))
        text = "".join(f"{i:08d}.png {labels[i]}\n" for i in order)
        members.append((f"mnist_m/{folder}_labels.txt", text.encode()))
        expected[split] = ImageSet(images[order], labels[order])
    members = [(n, d) for n, d in members if n.removeprefix("mnist_m/") not in set(omit)]
    members.sort(key=lambda m: m[0])
    if as_dir:
        _write_dir(path, members)
    else:
        _write_tar_gz(path, members)
    return expected


# ----------------------------------------------------------------------------------------- FedBN

FEDBN_SHAPES = {
    "MNIST": (28, 28),
    "SVHN": (32, 32, 3),
    "USPS": (16, 16),
    "SynthDigits": (32, 32, 3),
    "MNIST_M": (28, 28, 3),
}


def write_fedbn_digits(
    root: Path,
    domain: str,
    *,
    part_size: int = 3,
    test_size: int = 4,
    parts: int = 10,
    seed: int = 0,
    float_labels: bool = False,
) -> dict[str, ImageSet]:
    """``<root>/<domain>/partitions/train_part{i}.pkl`` and ``test.pkl``, pickled (images, labels).

    Gray domains store (N, H, W) like FedBN; the expected sets carry the channel axis. Returns
    ``train`` (all parts in order), ``test`` and ``part{i}`` entries.
    """
    rng = _rng(seed)
    shape = FEDBN_SHAPES[domain]
    (root / domain / "partitions").mkdir(parents=True, exist_ok=True)
    out: dict[str, ImageSet] = {}

    def dump(target: Path, n: int) -> ImageSet:
        images = rng.integers(0, 256, size=(n, *shape), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n).astype(np.int64)
        stored = labels.astype(np.float64) if float_labels else labels
        with open(target, "wb") as f:
            pickle.dump((images, stored), f, pickle.HIGHEST_PROTOCOL)
        return ImageSet(images[..., None] if len(shape) == 2 else images, labels)

    sets = [
        dump(root / domain / "partitions" / f"train_part{i}.pkl", part_size) for i in range(parts)
    ]
    for i, s in enumerate(sets):
        out[f"part{i}"] = s
    out["train"] = ImageSet(
        np.concatenate([s.images for s in sets]), np.concatenate([s.labels for s in sets])
    )
    out["test"] = dump(root / domain / "test.pkl", test_size)
    return out


# ------------------------------------------------------------------------------------- DomainNet


@dataclass
class DomainNetFixture:
    """What was written: per ``"<site>/<class>/<file>"`` its label and its RGB pixels (FedBN's band
    rule applied, original size), and the split lists' order per (site, split)."""

    images: dict[str, tuple[int, np.ndarray]] = field(default_factory=dict)
    lists: dict[tuple[str, str], list[str]] = field(default_factory=dict)


def pil_luma(rgb: np.ndarray) -> np.ndarray:
    """PIL's ``convert('L')``: ITU-R 601-2 luma in 16-bit fixed point, rounded."""
    r, g, b = (rgb[..., i].astype(np.uint32) for i in range(3))
    return ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16).astype(np.uint8)


def _domainnet_image(rng: np.random.Generator, k: int) -> tuple[bytes, str, np.ndarray]:
    """Cycle through the modes the real sites contain; returns (bytes, extension, expected RGB)."""
    h, w = (int(v) for v in rng.integers(12, 40, size=2))
    rgb = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    kind = k % 4
    if kind == 0:  # RGB PNG
        return _encode(rgb, "PNG"), "png", rgb
    if kind == 1:  # gray PNG -> replicated
        gray = rgb[..., 0]
        return _encode(gray, "PNG", "L"), "png", np.repeat(gray[..., None], 3, axis=2)
    if kind == 2:  # RGBA PNG: 4 bands -> FedBN turns it gray
        rgba = np.concatenate([rgb, np.full((h, w, 1), 200, np.uint8)], axis=2)
        return _encode(rgba, "PNG", "RGBA"), "png", np.repeat(pil_luma(rgb)[..., None], 3, axis=2)
    blob = _encode(rgb, "JPEG")  # lossy: expected = what the JPEG decodes to
    return blob, "jpg", np.asarray(Image.open(io.BytesIO(blob)).convert("RGB"))


def write_domainnet_tree(
    root: Path,
    sites: Sequence[str],
    *,
    classes: Sequence[str] = DOMAINNET_CLASSES,
    n_per_class: int = 2,
    as_zip: bool = False,
    split_lists: Path | None = None,
    seed: int = 0,
) -> DomainNetFixture:
    """``<root>/<site>/<class>/<site>_NNN.<ext>`` (or ``<root>/<site>.zip`` with the same members),
    images of varying sizes and modes; optionally FedBN-style split lists
    ``<split_lists>/<site>_{train,test}.pkl`` = pickled (paths, text labels): even-numbered files
    to train and odd to test, each list in a shuffled order."""
    rng = _rng(seed)
    fx = DomainNetFixture()
    for site in sites:
        members: list[tuple[str, bytes | None]] = [(site, None)]
        split_of: dict[str, list[str]] = {"train": [], "test": []}
        k = 0
        for label, cls in enumerate(classes):
            members.append((f"{site}/{cls}", None))
            for i in range(n_per_class):
                blob, ext, rgb = _domainnet_image(rng, k)
                k += 1
                rel = f"{site}/{cls}/{site}_{i:03d}.{ext}"
                members.append((rel, blob))
                fx.images[rel] = (label, rgb)
                split_of["train" if i % 2 == 0 else "test"].append(rel)
        if as_zip:
            root.mkdir(parents=True, exist_ok=True)
            with zipfile.ZipFile(root / f"{site}.zip", "w") as zf:
                for name, data in members:
                    if data is None:
                        zf.writestr(name + "/", b"")
                    else:
                        zf.writestr(name, data)
        else:
            _write_dir(root, members)
        if split_lists is not None:
            split_lists.mkdir(parents=True, exist_ok=True)
            for split, rels in split_of.items():
                order = [rels[j] for j in rng.permutation(len(rels))]
                fx.lists[(site, split)] = order
                paths = [f"../data/DomainNet/{rel}" for rel in order]
                texts = [rel.split("/")[1] for rel in order]
                with open(split_lists / f"{site}_{split}.pkl", "wb") as f:
                    pickle.dump((paths, texts), f, pickle.HIGHEST_PROTOCOL)
    return fx

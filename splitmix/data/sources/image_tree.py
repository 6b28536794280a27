"""Class-folder image trees: ``<top>/<split>/<class>/<file>``, from a tar(.gz) or a folder.

The mirror's CIFAR-10 JPEG copy (``cifar-10-images/{train,test}/<class>/NNNN.jpg``) is one. Order is
deterministic (class index, then file name) so that the same archive always yields the same
ImageSet, whatever order the archive or the file system lists entries in.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import numpy as np

from splitmix.data.imageset import ImageSet
from splitmix.data.sources._common import (
    IMAGE_SUFFIXES,
    PathLike,
    data_error,
    decode_fixed_size,
    decode_image,
    image_set,
    read_tar_members,
)

Key = tuple[str, str]  # (class folder, file name)


def _is_image(name: str) -> bool:
    return PurePosixPath(name).suffix.lower() in IMAGE_SUFFIXES


def _tree_from_tar(path: Path, split: str) -> dict[Key, bytes]:
    def want(name: str) -> bool:
        parts = PurePosixPath(name).parts
        return len(parts) >= 3 and parts[-3] == split and _is_image(name)

    found: dict[Key, bytes] = {}
    for name, blob in read_tar_members(path, want).items():
        pp = PurePosixPath(name)
        key = (pp.parent.name, pp.name)
        if key in found:
            what = f"holds {split}/{key[0]}/{key[1]} twice"
            raise data_error(path, what, "use an archive with one tree")
        found[key] = blob
    return found


def _split_dir(path: Path, split: str) -> Path:
    """``<path>/<split>``, or ``<path>/<top>/<split>`` for a folder holding one extracted tree."""
    if (path / split).is_dir():
        return path / split
    nested = sorted(d / split for d in path.iterdir() if (d / split).is_dir())
    if len(nested) != 1:
        raise data_error(
            path,
            f"expected one {split}/ folder here or one level down, found {len(nested)}",
            "point to the extracted image tree",
        )
    return nested[0]


def _tree_from_dir(path: Path, split: str) -> dict[Key, bytes]:
    root = _split_dir(path, split)
    return {
        (d.name, f.name): f.read_bytes()
        for d in root.iterdir()
        if d.is_dir()
        for f in d.iterdir()
        if f.is_file() and _is_image(f.name)
    }


def read_image_tree(
    source: PathLike, split: str, classes: tuple[str, ...], *, channels: int = 3
) -> ImageSet:
    """All images of ``split`` labelled by the index of their class folder in ``classes``.

    Every image must have the same size (the first one's) and every class must have at least one
    image; a class folder not in ``classes`` is an error, because silently dropping it would
    hide a wrong ``classes`` list.
    """
    src = Path(source)
    if not src.exists():
        raise data_error(src, "image tree does not exist", "place the archive or folder here")
    tree = _tree_from_dir(src, split) if src.is_dir() else _tree_from_tar(src, split)
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted({c for c, _ in tree if c not in index})
    if unknown:
        raise data_error(
            src,
            f"{split}/ has class folder(s) {unknown[:3]} not in {list(classes)[:3]}...",
            "pass the classes of this dataset",
        )
    present = {c for c, _ in tree}
    empty = [c for c in classes if c not in present]
    if empty:
        raise data_error(src, f"{split}/ has no images of class {empty[0]!r}", "use the full tree")
    keys = sorted(tree, key=lambda k: (index[k[0]], k[1]))
    names = [f"{src}:{split}/{c}/{f}" for c, f in keys]
    width, height = decode_image(tree[keys[0]], "RGB", names[0]).size
    images = decode_fixed_size([tree[k] for k in keys], names, height, width, channels)
    labels = np.fromiter((index[c] for c, _ in keys), dtype=np.int64, count=len(keys))
    return image_set(images, labels)

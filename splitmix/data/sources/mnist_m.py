"""MNIST-M in the layout DANN distributes (32x32 RGB PNGs plus label text files).

::

    mnist_m/mnist_m_train/00000000.png ...      mnist_m/mnist_m_train_labels.txt
    mnist_m/mnist_m_test/00000000.png ...       mnist_m/mnist_m_test_labels.txt

Each label line is ``00000000.png 5``. Sample order is label-file order (the release's order, which
follows MNIST's), and every label line must have its PNG and every PNG its line: a partial
extraction or a mixed-up archive fails here instead of training on a silently different set.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from splitmix.data.imageset import ImageSet
from splitmix.data.sources._common import (
    PathLike,
    check_split,
    data_error,
    decode_fixed_size,
    image_set,
    labels_from,
    read_tar_members,
)

MNIST_M_SIDE = 32


def _parse_labels(text: bytes, where: str) -> list[tuple[str, int]]:
    entries: list[tuple[str, int]] = []
    seen: set[str] = set()
    for lineno, line in enumerate(text.decode("utf-8", "replace").splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
            what = f"line {lineno} is {line[:40]!r}, expected 'NNNNNNNN.png label'"
            raise data_error(where, what)
        if parts[0] in seen:
            raise data_error(where, f"line {lineno} repeats {parts[0]}")
        seen.add(parts[0])
        entries.append((parts[0], int(parts[1])))
    if not entries:
        raise data_error(where, "label file has no entries")
    return entries


def _check_pairing(labelled: list[str], images: set[str], where: str) -> None:
    missing = [n for n in labelled if n not in images]
    if missing:
        raise data_error(
            where,
            f"{len(missing)} labelled images are missing, e.g. {missing[0]}",
            "extract or fetch the complete archive",
        )
    extra = sorted(images.difference(labelled))
    if extra:
        raise data_error(
            where,
            f"{len(extra)} images have no label line, e.g. {extra[0]}",
            "use the label file that belongs to these images",
        )


def _from_tar(path: Path, split: str) -> tuple[bytes, dict[str, bytes], str]:
    folder, label_name = f"mnist_m_{split}", f"mnist_m_{split}_labels.txt"

    def want(name: str) -> bool:
        pp = PurePosixPath(name)
        return pp.name == label_name or (pp.parent.name == folder and pp.suffix == ".png")

    members = read_tar_members(path, want)
    label_files = [n for n in members if PurePosixPath(n).name == label_name]
    if len(label_files) != 1:
        state = "no" if not label_files else f"{len(label_files)}"
        raise data_error(
            path,
            f"archive has {state} {label_name} member(s), expected exactly one",
            "use the DANN mnist_m archive",
        )
    labels = members.pop(label_files[0])
    pngs: dict[str, bytes] = {}
    for name, blob in members.items():
        base = PurePosixPath(name).name
        if base in pngs:
            raise data_error(path, f"archive holds {base} twice under {folder}/")
        pngs[base] = blob
    return labels, pngs, f"{path}:{label_files[0]}"


def _from_dir(path: Path, split: str) -> tuple[bytes, dict[str, bytes], str]:
    label_name = f"mnist_m_{split}_labels.txt"
    roots = [r for r in (path, path / "mnist_m") if (r / label_name).is_file()]
    if not roots:
        raise data_error(
            path, f"no {label_name} here or in mnist_m/", "point to the extracted mnist_m folder"
        )
    root = roots[0]
    image_dir = root / f"mnist_m_{split}"
    if not image_dir.is_dir():
        raise data_error(image_dir, "image folder does not exist", "extract the complete archive")
    pngs = {f.name: f.read_bytes() for f in image_dir.iterdir() if f.suffix == ".png"}
    return (root / label_name).read_bytes(), pngs, str(root / label_name)


def read_mnist_m(source: PathLike, split: str) -> ImageSet:
    """MNIST-M (N, 32, 32, 3) from the DANN ``.tar.gz`` or its extracted folder, in label order."""
    src = Path(source)
    check_split(split, ("train", "test"), src)
    if src.is_dir():
        label_text, pngs, where = _from_dir(src, split)
    else:
        label_text, pngs, where = _from_tar(src, split)
    entries = _parse_labels(label_text, where)
    names = [n for n, _ in entries]
    _check_pairing(names, set(pngs), where)
    images = decode_fixed_size(
        [pngs[n] for n in names], [f"{src}:{n}" for n in names], MNIST_M_SIDE, MNIST_M_SIDE, 3
    )
    return image_set(images, labels_from([y for _, y in entries], where))

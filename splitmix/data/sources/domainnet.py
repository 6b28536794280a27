"""DomainNet (FedBN's 10-class subset), read from the official site zips or extracted folders.

Images live at ``<root>/<site>/<class>/<file>``, either extracted or inside ``<root>/<site>.zip``
(the official zips hold ``<site>/<class>/<file>.jpg``). Which files form train and test:

* with FedBN's split lists (``<split_lists>/<site>_{train,test}.pkl``, each a pickle of
  ``(paths, text_labels)``), exactly those files in that order, the image path rebuilt from the
  last three components of each listed path and the label taken from the text label, as FedBN's
  ``DomainNetDataset`` does. This is the faithful choice.
* without lists, every image of the class folders, split per class: files sorted by name, permuted
  by ``seeding.rng(0, "domainnet-split/<site>/<class>")``, the first ``round(0.7 n)`` to train and
  the rest to test, each split then ordered by (class index, file name). A documented, stable rule,
  but NOT FedBN's split; results are comparable only among runs that use it.

Images vary in size and mode, so each is converted and resized while reading (a full-size stack of
a site would not fit in memory): non-3-band images (gray, palette, RGBA, CMYK) become gray repeated
to 3 channels, as FedBN's ``transforms.Grayscale(num_output_channels=3)`` does; 3-band images are
converted to RGB; then PIL bilinear resize to ``size`` x ``size`` (what torchvision's
``Resize((size, size))`` does on a PIL image).
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image

from splitmix.data.catalog import DOMAINNET_CLASSES
from splitmix.data.imageset import ImageSet
from splitmix.data.sources._common import (
    CORRUPT_ERRORS,
    IMAGE_SUFFIXES,
    PathLike,
    check_split,
    data_error,
    decode_image,
    image_set,
)
from splitmix.data.sources.safe_pickle import load_pickled
from splitmix.seeding import rng

DOMAINNET_SITES = ("real", "clipart", "infograph", "painting", "quickdraw", "sketch")
DOMAINNET_URL = "http://csr.bu.edu/ftp/visda/2019/multi-source/"
# the download page serves clipart and painting from groundtruth/, the other sites from the top
DOMAINNET_ZIP_URLS = {
    site: DOMAINNET_URL
    + ("groundtruth/" if site in ("clipart", "painting") else "")
    + f"{site}.zip"
    for site in DOMAINNET_SITES
}
TRAIN_FRACTION = 0.7  # only for the no-split-list fallback
_LIST_FIX = "delete it and fetch FedBN's domainnet_dataset.zip again (its README links it)"


class _SiteFiles:
    """One site's files by ``<class>/<file>`` name, from its folder or its zip."""

    def __init__(self, root: Path, site: str) -> None:
        folder, archive = root / site, root / f"{site}.zip"
        self.where = folder if folder.is_dir() else archive
        self._zip: zipfile.ZipFile | None = None
        self._names: dict[str, str] = {}  # "<class>/<file>" -> zip member name
        if folder.is_dir():
            return
        if not archive.is_file():
            raise data_error(
                folder,
                f"DomainNet site {site!r} is neither extracted here nor at {archive}",
                f"download {DOMAINNET_ZIP_URLS.get(site, DOMAINNET_URL)} into {root}",
            )
        try:
            self._zip = zipfile.ZipFile(archive)
            members = self._zip.namelist()
        except CORRUPT_ERRORS + (zipfile.BadZipFile,) as exc:
            raise data_error(archive, f"unreadable zip ({type(exc).__name__}: {exc})") from None
        for name in members:
            parts = PurePosixPath(name).parts
            if len(parts) >= 3 and parts[-3] == site and not name.endswith("/"):
                self._names[f"{parts[-2]}/{parts[-1]}"] = name

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()

    def list_class(self, cls: str) -> list[str]:
        """File names of one class folder, sorted."""
        if self._zip is not None:
            prefix = f"{cls}/"
            return sorted(k[len(prefix) :] for k in self._names if k.startswith(prefix))
        d = self.where / cls
        return sorted(f.name for f in d.iterdir() if f.is_file()) if d.is_dir() else []

    def read(self, rel: str) -> bytes:
        if self._zip is None:
            f = self.where / rel
            if not f.is_file():
                raise data_error(f, "listed image does not exist", "extract the complete site zip")
            return f.read_bytes()
        member = self._names.get(rel)
        if member is None:
            raise data_error(self.where, f"has no member for {rel}", "use the complete site zip")
        try:
            return self._zip.read(member)
        except CORRUPT_ERRORS + (zipfile.BadZipFile,) as exc:
            raise data_error(self.where, f"cannot read {member} ({exc})") from None


def load_split_list(path: PathLike) -> tuple[list[str], list[str]]:
    """FedBN's ``<site>_<split>.pkl``: (paths, text labels), as its loader reads it (np.load),
    through the restricted unpickler (strings and arrays only: the lists come from Google Drive)."""
    p = Path(path)
    if not p.is_file():
        raise data_error(p, "DomainNet split list does not exist", "place FedBN's split lists here")
    obj = load_pickled(p, "a (paths, labels) pickle", _LIST_FIX)
    try:
        paths, labels = obj
        paths, labels = [str(x) for x in paths], [str(x) for x in labels]
    except CORRUPT_ERRORS as exc:
        what = f"not a (paths, labels) pickle ({type(exc).__name__}: {exc})"
        raise data_error(p, what, _LIST_FIX) from None
    if len(paths) != len(labels):
        raise data_error(p, f"{len(paths)} paths but {len(labels)} labels")
    return paths, labels


def _from_lists(list_path: Path, site: str, classes: tuple[str, ...]) -> list[tuple[str, int]]:
    index = {c: i for i, c in enumerate(classes)}
    paths, text_labels = load_split_list(list_path)
    out = []
    for path, text in zip(paths, text_labels, strict=True):
        parts = PurePosixPath(path.replace("\\", "/")).parts
        if len(parts) < 3:
            raise data_error(list_path, f"path {path!r} has fewer than 3 components")
        if parts[-3] != site:
            raise data_error(
                list_path, f"path {path!r} is not in site {site!r}", "use this site's list"
            )
        if text not in index:
            raise data_error(list_path, f"label {text!r} is not one of the classes {classes}")
        out.append((f"{parts[-2]}/{parts[-1]}", index[text]))
    return out


def _seeded_split(
    files: _SiteFiles, site: str, split: str, classes: tuple[str, ...]
) -> list[tuple[str, int]]:
    out = []
    for label, cls in enumerate(classes):
        names = [n for n in files.list_class(cls) if n.lower().endswith(IMAGE_SUFFIXES)]
        if not names:
            raise data_error(files.where, f"has no images of class {cls!r}", "use the full site")
        perm = rng(0, f"domainnet-split/{site}/{cls}").permutation(len(names))
        n_train = int(round(TRAIN_FRACTION * len(names)))
        chosen = perm[:n_train] if split == "train" else perm[n_train:]
        out.extend((f"{cls}/{names[i]}", label) for i in sorted(chosen))
    return out


def fedbn_to_rgb(im: Image.Image) -> Image.Image:
    """FedBN's rule: images without exactly 3 bands become gray replicated to RGB."""
    if len(im.getbands()) != 3:
        return im.convert("L").convert("RGB")
    return im if im.mode == "RGB" else im.convert("RGB")


def decode_resized(
    blob: bytes, size: int, where: str, to_rgb: Callable[[Image.Image], Image.Image] = fedbn_to_rgb
) -> np.ndarray:
    # decoded in its own mode: FedBN's band rule needs the original mode
    im = to_rgb(decode_image(blob, None, where))
    if im.size != (size, size):
        im = im.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(im)


def read_domainnet(
    root: PathLike,
    site: str,
    split: str,
    *,
    size: int,
    split_lists: PathLike | None = None,
    classes: tuple[str, ...] = DOMAINNET_CLASSES,
) -> ImageSet:
    """One DomainNet site's train or test set as (N, size, size, 3) uint8 (see module doc)."""
    root = Path(root)
    check_split(split, ("train", "test"), root)
    if size < 1:
        raise data_error(root, f"size {size} is not positive", "pass the model input side")
    files = _SiteFiles(root, site)
    try:
        if split_lists is not None:
            entries = _from_lists(Path(split_lists) / f"{site}_{split}.pkl", site, classes)
        else:
            entries = _seeded_split(files, site, split, classes)
        images = np.empty((len(entries), size, size, 3), dtype=np.uint8)
        for i, (rel, _) in enumerate(entries):
            images[i] = decode_resized(files.read(rel), size, f"{files.where}:{rel}")
    finally:
        files.close()
    labels = np.fromiter((y for _, y in entries), dtype=np.int64, count=len(entries))
    return image_set(images, labels)

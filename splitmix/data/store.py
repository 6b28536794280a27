"""The prepared cache: raw files in, memory-mappable ``.npy`` pairs per domain out.

Layout under the data root (argument > ``$SPLITMIX_DATA`` > ``data``)::

    <root>/raw/<mirror layout>                 fetched raw files + SHA256SUMS of what was verified
    <root>/prepared/<dataset>/<domain>/<size>px/{train,test}_{images,labels}.npy + manifest.json

Each array is written to a temp file and renamed into place, and the manifest is written last
(after removing any old one first), so a domain is "prepared" exactly when its manifest exists:
an interrupted prepare is never mistaken for a finished one. Loading is ``np.load(mmap_mode='r')``
on whole arrays, so no per-sample Python runs and only the touched pages are read.

A cache can still be damaged after the fact (a full disk, a copy cut short, an edit). Loading checks
it cheaply instead of re-hashing: each ``.npy`` header must parse, the file must be as long as the
header says (``np.load`` with ``mmap_mode`` checks that) and its shape must be what the manifest
recorded. ``data prepare`` rebuilds a domain that fails those checks, so the fix named by every
load error works without ``--force``. Bundled datasets are cached the same way and heal
themselves: their marker records each file's size and the labels' sha256, and a cache that does
not match is decoded again from the bundle.
"""

from __future__ import annotations

import json
import logging
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from splitmix.atomic import atomic_write, atomic_write_text
from splitmix.data.catalog import check_domain, get_dataset
from splitmix.data.fetch import (
    MIRROR_ENV,
    available,
    fetch,
    recorded_sha256,
    resolve_mirror,
    verified_by,
)
from splitmix.data.imageset import ImageSet
from splitmix.data.recipes import Built, Recipe, check_source, default_size, recipes
from splitmix.data.registry import get_file
from splitmix.errors import DataError

log = logging.getLogger("splitmix.data")

DATA_ENV = "SPLITMIX_DATA"
MANIFEST = "manifest.json"
SPLITS = ("train", "test")
MANIFEST_FORMAT = 1

PathArg = str | os.PathLike[str] | None


def data_root(root: PathArg = None) -> Path:
    """The data root: the argument, else ``$SPLITMIX_DATA``, else ``data`` (relative to cwd)."""
    if root not in (None, ""):
        return Path(root).expanduser()
    return Path(os.environ.get(DATA_ENV) or "data").expanduser()


def raw_dir(root: PathArg = None) -> Path:
    return data_root(root) / "raw"


def prepared_dir(dataset: str, domain: str, size: int, root: PathArg = None) -> Path:
    return data_root(root) / "prepared" / dataset / domain / f"{size}px"


def read_manifest(
    dataset: str, domain: str, size: int, root: PathArg = None
) -> dict[str, Any] | None:
    """The domain's manifest, None if it is not prepared; DataError (with the fix) if unreadable."""
    path = prepared_dir(dataset, domain, size, root) / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise DataError(
            f"{path}: unreadable manifest ({type(exc).__name__}); run "
            f"`{prepare_command(dataset, domain, size)}` to rebuild the domain"
        ) from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("splits"), dict):
        raise DataError(
            f"{path}: not a prepared-cache manifest (no 'splits'); run "
            f"`{prepare_command(dataset, domain, size)}` to rebuild the domain"
        )
    return manifest


def _open_npy(path: Path, mmap: bool) -> np.ndarray:
    """``np.load`` that raises only ValueError for a damaged file (EOFError: a 0-byte file)."""
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except EOFError:
        raise ValueError("empty file") from None
    except OSError as exc:
        if not path.is_file():
            raise ValueError("missing") from None
        raise ValueError(str(exc)) from None


def _open_split(out: Path, split: str, mmap: bool) -> ImageSet:
    """One split's arrays; ValueError naming the file if either is damaged or they disagree."""
    arrays = []
    for kind in ("images", "labels"):
        path = out / f"{split}_{kind}.npy"
        try:
            arrays.append(_open_npy(path, mmap))
        except ValueError as exc:
            raise ValueError(f"{path.name}: {exc}") from None
    images, labels = arrays
    if images.ndim != 4 or labels.ndim != 1 or len(images) != len(labels):
        raise ValueError(f"{split} arrays disagree: images {images.shape}, labels {labels.shape}")
    return ImageSet(images, labels)


def _check_against_manifest(data: ImageSet, manifest: dict[str, Any], split: str) -> None:
    """ValueError if the arrays are not the shape ``data prepare`` recorded (cheap: headers)."""
    info = manifest["splits"].get(split)
    want = info.get("shape") if isinstance(info, dict) else None
    if want is not None and list(data.images.shape) != list(want):
        raise ValueError(
            f"{split}_images.npy has shape {list(data.images.shape)}, the manifest says {want}"
        )


def prepared_problem(dataset: str, domain: str, size: int, root: PathArg = None) -> str | None:
    """Why the prepared domain cannot be used (None if every file checks out).

    Header, length and shape checks only (see the module docstring): milliseconds, not a
    re-hash of every file.
    """
    out = prepared_dir(dataset, domain, size, root)
    try:
        manifest = read_manifest(dataset, domain, size, root)
    except DataError:
        return f"{out / MANIFEST} is unreadable"
    if manifest is None:
        return f"no {out / MANIFEST}"
    for split in SPLITS:
        try:
            _check_against_manifest(_open_split(out, split, mmap=True), manifest, split)
        except (ValueError, KeyError, TypeError) as exc:
            return f"{out}: {exc}"
    return None


# ------------------------------------------------------------------------------------ writing
def _save_npy(path: Path, array: np.ndarray) -> None:
    atomic_write(path, lambda fh: np.save(fh, np.ascontiguousarray(array), allow_pickle=False))


def _library_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("splitmix-bench")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "unknown"


def _split_info(images: ImageSet, num_classes: int) -> dict[str, Any]:
    return {
        "n": len(images),
        "shape": list(images.images.shape),
        "class_counts": images.class_counts(num_classes),
    }


def _write_prepared(
    out: Path, recipe: Recipe, built: Built, raw: Path, size: int, fallback: list[str]
) -> None:
    num_classes = get_dataset(recipe.dataset).num_classes
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)  # from here until the end the domain is unprepared
    for split, part in (("train", built.train), ("test", built.test)):
        _save_npy(out / f"{split}_images.npy", part.images)
        _save_npy(out / f"{split}_labels.npy", part.labels)
    manifest = {
        "format": MANIFEST_FORMAT,
        "dataset": recipe.dataset,
        "domain": recipe.domain,
        "size": size,
        "source": recipe.source,
        "variant": recipe.variant,
        "note": recipe.note,
        "fallback": fallback,  # why more preferred sources were not used (empty = none tried)
        "source_files": [
            {"path": rel, "sha256": recorded_sha256(raw, rel), "verified_by": verified_by(raw, rel)}
            for rel in recipe.files
        ],
        "steps": built.steps,
        "splits": {
            "train": _split_info(built.train, num_classes),
            "test": _split_info(built.test, num_classes),
        },
        **built.extra,
        "library_version": _library_version(),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    atomic_write_text(out / MANIFEST, json.dumps(manifest, indent=1) + "\n")


# ------------------------------------------------------------------------------------ choosing
def _local(recipe: Recipe, raw: Path, mirror: Path | None) -> bool:
    return all(available(get_file(rel), raw, mirror) for rel in recipe.files)


def _obtain(
    candidates: list[Recipe], raw: Path, mirror: Path | None, offline: bool | None
) -> tuple[Recipe, dict[str, Path], list[str]]:
    """Fetch the files of the first candidate that can be had, preferring ones already at hand.

    Candidates whose files are all in the raw dir or the mirror are tried first (no network
    surprises when the data is local), each tier in preference order. Returns the recipe, its
    verified files and why earlier candidates were passed over.
    """
    order = sorted(
        range(len(candidates)), key=lambda i: (not _local(candidates[i], raw, mirror), i)
    )
    failures: list[tuple[Recipe, DataError]] = []
    for i in order:
        recipe = candidates[i]
        try:
            files = {rel: fetch(rel, raw, mirror=mirror, offline=offline) for rel in recipe.files}
        except DataError as exc:
            failures.append((recipe, exc))
            continue
        tried = {id(r) for r, _ in failures}
        skipped = [f"{r.label}: {e}" for r, e in failures]
        skipped += [
            f"{r.label}: not tried, needs "
            + ", ".join(rel for rel in r.files if not available(get_file(rel), raw, mirror))
            + f" (not in the raw dir or mirror); {recipe.label} was at hand"
            for r in candidates[:i]
            if id(r) not in tried
        ]
        # a failure, or a caveated variant standing in for a better one, must not pass unseen
        loud = bool(failures) or bool(recipe.note)
        for line in skipped:
            log.log(
                logging.WARNING if loud else logging.INFO,
                "%s/%s: using %s; %s",
                recipe.dataset,
                recipe.domain,
                recipe.label,
                line,
            )
        return recipe, files, skipped
    first_recipe, first_error = failures[0]
    others = [
        f"--source {r.source} needs {', '.join(r.files)}"
        for r in candidates
        if r is not first_recipe and r.source != first_recipe.source
    ]
    hint = f" (alternatively: {'; '.join(dict.fromkeys(others))})" if others else ""
    raise DataError(f"{first_error}{hint}")


# ------------------------------------------------------------------------------------- public
def prepare_domain(
    dataset: str,
    domain: str,
    *,
    root: PathArg = None,
    mirror: PathArg = None,
    size: int | None = None,
    source: str | None = None,
    force: bool = False,
    offline: bool | None = None,
) -> Path:
    """Fetch, read, resize and write one domain; skip if already prepared the same way."""
    size = size or default_size(dataset)
    out = prepared_dir(dataset, domain, size, root)
    candidates = recipes(dataset, domain, source)
    if not force and (out / MANIFEST).is_file():
        problem = prepared_problem(dataset, domain, size, root)
        if problem is None:
            done = read_manifest(dataset, domain, size, root) or {}
            if source in (None, done.get("source")):
                return out
        else:  # a damaged cache is rebuilt: the command every load error names must repair it
            log.warning("%s/%s: prepared cache damaged (%s); rebuilding", dataset, domain, problem)
    raw = raw_dir(root)
    recipe, files, fallback = _obtain(candidates, raw, resolve_mirror(mirror), offline)
    built = recipe.build(files, size)
    _write_prepared(out, recipe, built, raw, size, fallback)
    return out


def prepare(
    dataset: str,
    domain: str | None = None,
    *,
    root: PathArg = None,
    mirror: PathArg = None,
    size: int | None = None,
    source: str | None = None,
    force: bool = False,
    offline: bool | None = None,
    progress: bool = False,
) -> list[Path]:
    """Prepare one domain or every domain of ``dataset``; returns the prepared directories.

    Bundled datasets need no preparing (returns []). ``source`` picks the origin (see
    ``recipes.SOURCES``); None tries them in order, preferring files already at hand.
    """
    spec = get_dataset(dataset)
    if domain is not None:
        check_domain(dataset, domain)
    if spec.bundled:
        return []
    check_source(dataset, source)
    domains = [domain] if domain else list(spec.domains)
    from tqdm import tqdm

    # disable=None: a bar only on a terminal (not in Snakemake logs); closed before any error
    # reaches the CLI so the one-line message starts its own line
    with tqdm(
        domains,
        desc=f"prepare {dataset}",
        unit="domain",
        leave=False,
        disable=None if progress else True,
    ) as bar:
        return [
            prepare_domain(
                dataset,
                d,
                root=root,
                mirror=mirror,
                size=size,
                source=source,
                force=force,
                offline=offline,
            )
            for d in bar
        ]


def fetch_dataset(
    dataset: str,
    domain: str | None = None,
    *,
    root: PathArg = None,
    mirror: PathArg = None,
    source: str | None = None,
    offline: bool | None = None,
) -> list[Path]:
    """Fetch the raw files ``prepare`` would use (same source choice), without preparing."""
    spec = get_dataset(dataset)
    if domain is not None:
        check_domain(dataset, domain)
    if spec.bundled:
        return []
    raw, mir = raw_dir(root), resolve_mirror(mirror)
    paths: list[Path] = []
    for d in [domain] if domain else spec.domains:
        _, files, _ = _obtain(recipes(dataset, d, source), raw, mir, offline)
        paths += [p for p in files.values() if p not in paths]
    return paths


def prepare_command(dataset: str, domain: str, size: int, *, force: bool = True) -> str:
    """The command that builds one prepared domain; with ``force`` (for a damaged one) it also
    rebuilds a domain whose manifest looks fine."""
    extra = "" if size == default_size(dataset) else f" --size {size}"
    flag = " --force" if force else ""
    return f"python -m splitmix data prepare {dataset} --domain {domain}{extra}{flag}"


def _bundled_marker(out: Path, split: str) -> Path:
    return out / f"{split}.cache.json"


def _sha256_file(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def _marker_record(sha: str, images: Path, labels: Path) -> dict[str, Any]:
    """What a bundled cache must still match to be trusted: the bundle payload it was decoded from,
    each file's size, and the labels' sha256 (8-40 KB; the images are checked by size and header
    only, since hashing them on every load would cost a noticeable part of what the cache saves)."""
    return {
        "bundle_sha256": sha,
        "bytes": {f.name: f.stat().st_size for f in (images, labels)},
        "labels_sha256": _sha256_file(labels),
    }


def _bundled_cache_problem(record: dict[str, Any], sha: str, images: Path, labels: Path) -> str:
    """Why the cache files do not match ``record`` ('' if they do)."""
    if record["bundle_sha256"] != sha:
        return "decoded from another bundle"
    for f in (images, labels):
        size, want = f.stat().st_size, record["bytes"][f.name]
        if size != want:
            return f"{f.name} has {size} bytes, expected {want}"
    if _sha256_file(labels) != record["labels_sha256"]:
        return f"{labels.name} does not match its recorded sha256"
    return ""


def _open_bundled_cache(out: Path, split: str, sha: str, mmap: bool) -> tuple[ImageSet | None, str]:
    """The cached split if it verifies, else (None, why not) so the caller decodes it anew."""
    images, labels = out / f"{split}_images.npy", out / f"{split}_labels.npy"
    try:
        record = json.loads(_bundled_marker(out, split).read_text())
        problem = _bundled_cache_problem(record, sha, images, labels)
        if problem:
            return None, problem
        return _open_split(out, split, mmap), ""
    except FileNotFoundError:
        return None, "not cached yet"
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return None, f"{type(exc).__name__}: {exc}"


def _load_bundled_cached(
    dataset: str, domain: str, split: str, root: PathArg, mmap: bool
) -> ImageSet:
    """A bundled split, decoded once into the prepared cache and memory-mapped from then on.

    Decoding cifar10-mini's 6,000 JPEGs takes ~0.7 s, paid by every training job; the cache is
    keyed by the payload's sha256, so a rebuilt bundle is decoded anew, and a damaged cache
    (truncated, emptied, edited labels) is decoded anew too instead of failing every later run.
    A read-only data root just means decoding every time.
    """
    from splitmix.data.bundle import load_bundled, provenance  # lazy: only bundled datasets

    sha = provenance(dataset)["domains"][domain]["splits"][split]["sha256"]
    out = prepared_dir(dataset, domain, get_dataset(dataset).image_size, root)
    cached, why = _open_bundled_cache(out, split, sha, mmap)
    if cached is not None:
        return cached
    if _bundled_marker(out, split).exists():
        log.warning("%s/%s %s: cache in %s is damaged (%s); decoding the bundle again",
                    dataset, domain, split, out, why)  # fmt: skip
    decoded = load_bundled(dataset, domain, split)
    images, labels = out / f"{split}_images.npy", out / f"{split}_labels.npy"
    try:
        _bundled_marker(out, split).unlink(missing_ok=True)  # untrusted until rewritten, last
        (out / f"{split}.bundle-sha256").unlink(missing_ok=True)  # marker of earlier versions
        _save_npy(images, decoded.images)
        _save_npy(labels, decoded.labels)
        record = _marker_record(sha, images, labels)
        atomic_write_text(_bundled_marker(out, split), json.dumps(record, indent=1) + "\n")
    except OSError as exc:
        log.warning("cannot cache %s/%s %s under %s (%s); decoding each time",
                    dataset, domain, split, out, exc)  # fmt: skip
    return decoded


def check_bundled_cache(
    dataset: str, domain: str | None = None, *, root: PathArg = None, force: bool = False
) -> Path:
    """Verify the decoded cache of a bundled dataset, decoding again what is missing or damaged
    (everything with ``force``); returns the dataset's cache folder.

    Loading heals the cache anyway; this gives ``data prepare`` of a bundled dataset a job, so
    the command a user reaches for after a data error does something.
    """
    spec = get_dataset(dataset)
    if domain is not None:
        check_domain(dataset, domain)
    for d in [domain] if domain else spec.domains:
        for split in SPLITS:
            if force:
                out = prepared_dir(dataset, d, spec.image_size, root)
                _bundled_marker(out, split).unlink(missing_ok=True)
            _load_bundled_cached(dataset, d, split, root, mmap=True)
    return data_root(root) / "prepared" / dataset


def load_domain(
    dataset: str,
    domain: str,
    split: str,
    *,
    root: PathArg = None,
    size: int | None = None,
    mmap: bool = True,
) -> ImageSet:
    """One domain's train or test split from the bundle or the prepared cache (memory-mapped)."""
    spec = get_dataset(dataset)
    check_domain(dataset, domain)
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; use one of: {', '.join(SPLITS)}")
    if spec.bundled:
        return _load_bundled_cached(dataset, domain, split, root, mmap)
    size = size or default_size(dataset)
    out = prepared_dir(dataset, domain, size, root)
    if not (out / MANIFEST).is_file():
        raise DataError(
            f"{dataset}/{domain} at {size}px is not prepared (no {out / MANIFEST}); run "
            f"`{prepare_command(dataset, domain, size, force=False)}` (it fetches missing raw "
            "files; "
            f"set {MIRROR_ENV} to copy them from a local mirror, or run "
            f"`python -m splitmix data fetch {dataset} --domain {domain}` first)"
        )
    manifest = read_manifest(dataset, domain, size, root)
    assert manifest is not None  # the manifest file exists (checked above)
    try:
        data = _open_split(out, split, mmap)
        _check_against_manifest(data, manifest, split)
    except ValueError as exc:
        raise DataError(
            f"{out}: prepared cache damaged ({exc}); run "
            f"`{prepare_command(dataset, domain, size)}` to rebuild it"
        ) from None
    return data


def describe(
    dataset: str,
    domain: str,
    *,
    root: PathArg = None,
    mirror: PathArg = None,
    size: int | None = None,
) -> tuple[str, str]:
    """(status, what is missing or wrong), cheaply: existence and header checks, no checksums."""
    spec = get_dataset(dataset)
    check_domain(dataset, domain)
    if spec.bundled:
        return "bundled", ""
    size = size or default_size(dataset)
    if (prepared_dir(dataset, domain, size, root) / MANIFEST).is_file():
        problem = prepared_problem(dataset, domain, size, root)
        if problem is None:
            return "prepared", ""
        return "damaged", f"{problem}; run `{prepare_command(dataset, domain, size)}`"
    raw, mir = raw_dir(root), resolve_mirror(mirror)
    cands = recipes(dataset, domain)
    where = [[available(get_file(rel), raw, mir) for rel in r.files] for r in cands]
    if any(all(w == "raw" for w in ws) for ws in where):
        return "raw present", ""
    if any(all(ws) for ws in where):
        return "in mirror", ""
    options = [
        f"{r.label}: " + ", ".join(rel for rel, w in zip(r.files, ws, strict=True) if not w)
        for r, ws in zip(cands, where, strict=True)
    ]
    return "missing", " | ".join(options)


def status(
    dataset: str,
    domain: str,
    *,
    root: PathArg = None,
    mirror: PathArg = None,
    size: int | None = None,
) -> str:
    """One of bundled | prepared | damaged | raw present | in mirror | missing."""
    return describe(dataset, domain, root=root, mirror=mirror, size=size)[0]

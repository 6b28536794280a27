"""Get one raw file into the raw directory, verified, or fail with one line that says how.

Order: a verified copy already in the raw dir; else a copy from a local mirror (verified against
the mirror's ``SHA256SUMS``); else a download (pooch over https, gdown for Google-Drive-only
files). Every path writes to a temporary file in the destination folder and renames it into place
only after the checksum matched, so an interrupted or corrupt transfer never leaves a file that
looks fetched.

The raw dir keeps its own ``SHA256SUMS`` (sha256sum format, mirror layout) of every file it has
verified. That makes a raw dir usable as a mirror elsewhere, gives the prepared-cache manifests
their source checksums for free, and pins files that have no published checksum.

A file is accepted only when something vouches for its bytes: the registry's sha256 or md5, a
sha256 already pinned in the raw dir, or the mirror's ``SHA256SUMS`` line. A file with none of
these (FedBN's Google-Drive zips have no published checksum) is refused with one line, unless the
user opts in with ``SPLITMIX_TRUST_FIRST_USE=1``: then the copy's sha256 is pinned (every later copy
must match it) and the decision is written to ``TRUSTED.json`` in the raw dir, from which the
prepared manifest records how each source file was verified (:func:`verified_by`). A downloaded
dataset is parsed afterwards, and a pickle in it is parsed by code (``sources.safe_pickle``) that
runs nothing from it; the checksum is what keeps a swapped archive from being trained on.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from splitmix.atomic import atomic_write_text
from splitmix.data.registry import GDOWN, MANUAL, RawFile, get_file
from splitmix.errors import DataError

log = logging.getLogger("splitmix.data")

MIRROR_ENV = "SPLITMIX_DATA_MIRROR"
DOWNLOAD_BASE_ENV = "SPLITMIX_DOWNLOAD_BASE"  # HTTP(S) server laid out like the mirror
OFFLINE_ENV = "SPLITMIX_OFFLINE"  # "1": never touch the network (compute nodes, tests)
TRUST_ENV = "SPLITMIX_TRUST_FIRST_USE"  # "1": accept and pin a file nothing else vouches for
SUMS = "SHA256SUMS"
TRUSTED = "TRUSTED.json"  # raw dir: how each file without a registry checksum was accepted
_CHUNK = 1 << 20


# ----------------------------------------------------------------------------------- checksums
def file_hashes(path: Path) -> tuple[str, str]:
    """(sha256, md5) of a file in one read pass."""
    sha, md5 = hashlib.sha256(), hashlib.md5()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            sha.update(chunk)
            md5.update(chunk)
    return sha.hexdigest(), md5.hexdigest()


def read_sums(path: Path) -> dict[str, str]:
    """Parse a sha256sum-format file (``HASH  relpath`` or ``HASH *relpath``); {} if absent."""
    sums: dict[str, str] = {}
    if not path.is_file():
        return sums
    for line in path.read_text().splitlines():
        parts = line.strip().split(maxsplit=1)
        if len(parts) == 2 and re.fullmatch(r"[0-9a-fA-F]{64}", parts[0]):
            sums[parts[1].lstrip("*").removeprefix("./")] = parts[0].lower()
    return sums


@contextlib.contextmanager
def _locked(raw_dir: Path) -> Iterator[None]:
    """Serialise updates of the raw dir's SHA256SUMS (parallel Snakemake jobs fetch at once)."""
    raw_dir.mkdir(parents=True, exist_ok=True)
    with open(raw_dir / f".{SUMS}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def record_sha256(raw_dir: Path, relpath: str, sha256: str) -> None:
    """Add or update one line of the raw dir's SHA256SUMS (atomically, under a lock)."""
    with _locked(raw_dir):
        sums = read_sums(raw_dir / SUMS)
        if sums.get(relpath) == sha256:
            return
        sums[relpath] = sha256
        atomic_write_text(raw_dir / SUMS, "".join(f"{h}  {p}\n" for p, h in sorted(sums.items())))


def recorded_sha256(raw_dir: Path, relpath: str) -> str | None:
    return read_sums(Path(raw_dir) / SUMS).get(relpath)


def trust_first_use() -> bool:
    """Whether the user opted in (``SPLITMIX_TRUST_FIRST_USE=1``) to pin unverifiable files."""
    return os.environ.get(TRUST_ENV, "").strip().lower() in ("1", "true", "yes")


def read_trusted(raw_dir: Path) -> dict[str, dict[str, str]]:
    """The raw dir's ``TRUSTED.json`` ({} if absent or unreadable: it is a record, not a key)."""
    path = Path(raw_dir) / TRUSTED
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _record_trust(raw_dir: Path, relpath: str, sha256: str, basis: str, origin: str) -> None:
    """Pin ``sha256`` and write down why it was accepted (shown in the prepared manifest)."""
    record_sha256(raw_dir, relpath, sha256)
    with _locked(raw_dir):
        trusted = read_trusted(raw_dir)
        trusted[relpath] = {
            "sha256": sha256,
            "basis": basis,
            "origin": origin,
            "when": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        atomic_write_text(raw_dir / TRUSTED, json.dumps(trusted, indent=1, sort_keys=True) + "\n")


def verified_by(raw_dir: Path, relpath: str) -> str:
    """What vouched for the raw file's bytes, in words, for the prepared manifest."""
    entry = get_file(relpath)
    if entry.sha256:
        return "registry sha256"
    if entry.md5:
        return "registry md5 (the publisher's)"
    sha = recorded_sha256(raw_dir, relpath)
    record = read_trusted(raw_dir).get(relpath)
    if record and record.get("sha256") == sha:
        return f"{record['basis']}: {record['origin']} ({record['when']})"
    if sha:
        return f"sha256 pinned in {SUMS} by an earlier version (no record of how it was accepted)"
    return "unverified"


def _mismatch(entry: RawFile, sha: str, md5: str, pinned: str | None) -> str | None:
    """Why (sha, md5) is not ``entry`` (None when it is); ``pinned`` is an extra sha256 to match."""
    if entry.sha256 and sha != entry.sha256:
        return f"sha256 mismatch (expected {entry.sha256}, got {sha})"
    if not entry.sha256 and entry.md5 and md5 != entry.md5:
        return f"md5 mismatch (expected {entry.md5}, got {md5})"
    if pinned and sha != pinned:
        return f"sha256 mismatch (expected {pinned}, got {sha})"
    return None


# ------------------------------------------------------------------------------------ messages
def how_to_get(entry: RawFile) -> str:
    """The fix part of every error: the official source and where a copy may come from."""
    mirror = f"or set {MIRROR_ENV} to a mirror holding {entry.relpath}"
    if entry.method == MANUAL:
        return f"{entry.note}; place a verified copy there, {mirror}"
    if entry.method == GDOWN:
        return (
            f"download it with `gdown {entry.gdrive_id}` ({entry.urls[0]}) "
            f"or place a verified copy there, {mirror}"
        )
    return f"download it from {entry.urls[0]} or place a verified copy there, {mirror}"


def _error(dest: Path, entry: RawFile, what: str) -> DataError:
    return DataError(" ".join(f"{dest}: {what}; {how_to_get(entry)}".split()))


def _untrusted(path: Path, entry: RawFile, what: str) -> DataError:
    """Nothing vouches for this file: say so, and how to vouch (check, then opt in or list it)."""
    return DataError(
        " ".join(
            f"{path}: {what}; {entry.relpath} has no published checksum and none is pinned yet, "
            f"so it cannot be verified: check that it came from {entry.source}, then "
            f"rerun with {TRUST_ENV}=1 to accept it and pin its sha256 (recorded in the prepared "
            f"manifest), or add its line to the mirror's {SUMS}".split()
        )
    )


# -------------------------------------------------------------------------------------- mirror
def resolve_mirror(mirror: str | os.PathLike[str] | None = None) -> Path | None:
    """The mirror to use: the argument, else ``$SPLITMIX_DATA_MIRROR``, else none."""
    value = mirror if mirror not in (None, "") else os.environ.get(MIRROR_ENV) or None
    if value is None:
        return None
    path = Path(value).expanduser()
    if not path.is_dir():
        raise DataError(
            f"data mirror {path} is not a directory; pass an existing folder laid out like the "
            f"raw dir (with a {SUMS} file) via --mirror or {MIRROR_ENV}"
        )
    return path


def _copy_from_mirror(entry: RawFile, src: Path, dest: Path, mirror_sha: str | None) -> str:
    """Copy ``src`` to ``dest`` through a temp file, verifying while copying; return the sha256."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    try:
        sha, md5 = hashlib.sha256(), hashlib.md5()
        with os.fdopen(fd, "wb") as out, open(src, "rb") as inp:
            while chunk := inp.read(_CHUNK):
                sha.update(chunk)
                md5.update(chunk)
                out.write(chunk)
        got_sha, got_md5 = sha.hexdigest(), md5.hexdigest()
        why = _mismatch(entry, got_sha, got_md5, mirror_sha)
        if why:
            raise _error(src, entry, f"corrupt mirror copy: {why}")
        os.chmod(tmp, 0o644)  # mkstemp makes 0600 and mirror files are often read-only
        os.replace(tmp, dest)
        return got_sha
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


# ------------------------------------------------------------------------------------ download
def _download_urls(entry: RawFile, url: str | None) -> tuple[str, ...]:
    if url:
        return (url,)
    base = os.environ.get(DOWNLOAD_BASE_ENV)
    if base:
        return (f"{base.rstrip('/')}/{entry.relpath}",)
    return () if entry.method in (MANUAL, GDOWN) else entry.urls


def _pooch_download(url: str, entry: RawFile, dest: Path, known: str | None, bar: bool) -> None:
    """pooch streams to a temp file next to ``dest`` and renames it only if the hash matches."""
    import pooch  # lazy: importing requests costs ~0.3 s that `data list` should not pay
    import requests

    try:
        pooch.retrieve(url, known_hash=known, fname=dest.name, path=dest.parent, progressbar=bar)
    except ValueError as exc:  # pooch's hash mismatch
        found = re.search(r"expected (\S+) but got (\S+?)\.", str(exc))
        if found:
            alg, _, exp = found.group(1).rpartition(":")
            raise _error(
                dest,
                entry,
                f"{alg or 'sha256'} mismatch (expected {exp}, got {found.group(2)}) "
                f"for the download from {url}",
            ) from None
        raise _error(dest, entry, f"download from {url} failed ({exc})") from None
    except requests.exceptions.HTTPError as exc:
        code = exc.response.status_code if exc.response is not None else "?"
        raise _error(
            dest, entry, f"download from {url} failed (HTTP {code}; {entry.expected})"
        ) from None
    except requests.exceptions.ChunkedEncodingError:
        raise _error(
            dest, entry, f"download from {url} failed (transfer cut short; {entry.expected})"
        ) from None
    except (requests.exceptions.RequestException, OSError) as exc:
        raise _error(
            dest, entry, f"download from {url} failed ({_short(exc)}; {entry.expected})"
        ) from None


def _short(exc: BaseException, limit: int = 160) -> str:
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _gdown_download(entry: RawFile, dest: Path, pinned: str | None) -> None:
    """gdown into a private temp folder next to ``dest``; only a verified file leaves it.

    gdown keeps partial ``*.part`` files for resuming; a folder of our own removed in ``finally``
    guarantees that a failed or interrupted transfer leaves nothing behind.
    """
    import gdown

    dest.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".gdown"))
    try:
        tmp = work / dest.name
        gdown.download(id=entry.gdrive_id, output=str(tmp), quiet=False)
        sha, md5 = file_hashes(tmp)
        why = _mismatch(entry, sha, md5, pinned)
        if why:
            raise _error(dest, entry, f"{why} for the Google Drive download")
        os.replace(tmp, dest)
    except DataError:
        raise
    except Exception as exc:  # gdown raises its own types plus requests' ones
        raise _error(
            dest, entry, f"Google Drive download failed ({_short(exc)}; {entry.expected})"
        ) from None
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _offline(offline: bool | None) -> bool:
    if offline is not None:
        return offline
    return os.environ.get(OFFLINE_ENV, "") not in ("", "0", "false", "no")


# --------------------------------------------------------------------------------------- fetch
def fetch(
    name_or_relpath: str | RawFile,
    raw_dir: str | os.PathLike[str],
    *,
    mirror: str | os.PathLike[str] | None = None,
    url: str | None = None,
    offline: bool | None = None,
    progressbar: bool = True,
) -> Path:
    """Make ``raw_dir/<relpath>`` a verified copy of the registry file and return its path.

    ``url`` overrides the download source (tests point it at a local server); so does
    ``$SPLITMIX_DOWNLOAD_BASE`` (an HTTP server laid out like the mirror). ``offline`` (default
    ``$SPLITMIX_OFFLINE``) forbids downloads. Raises a one-line DataError naming the file, the
    expected checksum and where to get it when no verified copy can be had.
    """
    entry = name_or_relpath if isinstance(name_or_relpath, RawFile) else get_file(name_or_relpath)
    raw = Path(raw_dir)
    dest = raw / entry.relpath
    pinned = None if entry.sha256 else recorded_sha256(raw, entry.relpath)
    vouched = entry.known_hash is not None or pinned is not None
    problem = f"missing ({entry.expected})"
    unvouched_sha = None  # sha256 of a raw-dir copy that nothing vouches for

    if dest.is_file():
        sha, md5 = file_hashes(dest)
        why = _mismatch(entry, sha, md5, pinned)
        if why is None and vouched:
            record_sha256(raw, entry.relpath, sha)
            return dest
        if why is None:  # a mirror's SHA256SUMS may still vouch for it below
            unvouched_sha = sha
            problem = f"nothing vouches for this copy (its sha256 is {sha})"
        else:
            problem = why  # keep the bad copy until a verified one replaces it atomically

    mirror_dir = resolve_mirror(mirror)
    if mirror_dir is not None and (mirror_dir / entry.relpath).is_file():
        return _from_mirror(entry, mirror_dir, raw, pinned)

    if unvouched_sha is not None:
        if not trust_first_use():
            raise _untrusted(dest, entry, problem)
        _accept_first_use(raw, entry, unvouched_sha, "a copy placed in the raw dir")
        return dest

    urls = _download_urls(entry, url)
    use_gdown = not urls and entry.method == GDOWN
    if _offline(offline) or not (urls or use_gdown):
        reason = "offline, not downloading" if (urls or use_gdown) else "no download URL"
        raise _error(dest, entry, f"{problem}; {reason}")
    if not vouched and not trust_first_use():  # refuse before spending a download on it
        raise _untrusted(dest, entry, f"{problem}; not downloading an unverifiable file")

    source = entry.source if use_gdown else "download"
    if use_gdown:
        _gdown_download(entry, dest, pinned)
    else:
        source = _download_first(urls, entry, dest, pinned, progressbar)
    os.chmod(dest, 0o644)  # downloaders write through 0600 temp files
    sha, _ = file_hashes(dest)
    if vouched:
        record_sha256(raw, entry.relpath, sha)
    else:
        _accept_first_use(raw, entry, sha, f"downloaded from {source}")
    return dest


def _download_first(
    urls: tuple[str, ...], entry: RawFile, dest: Path, pinned: str | None, bar: bool
) -> str:
    """Try the official URLs in order (mirrors of the same bytes); return the one that worked."""
    known = entry.known_hash or (f"sha256:{pinned}" if pinned else None)
    last: DataError | None = None
    for candidate in urls:
        try:
            _pooch_download(candidate, entry, dest, known, bar)
            return candidate
        except DataError as exc:
            last = exc
    assert last is not None  # urls is never empty here
    raise last


def _from_mirror(entry: RawFile, mirror_dir: Path, raw: Path, pinned: str | None) -> Path:
    """Copy the mirror's file in, verified by the registry, a pin, or the mirror's SHA256SUMS;
    a file none of them vouches for needs the user's opt-in."""
    src, dest = mirror_dir / entry.relpath, raw / entry.relpath
    mirror_sha = read_sums(mirror_dir / SUMS).get(entry.relpath)
    if entry.known_hash is None and pinned is None and mirror_sha is None:
        if not trust_first_use():
            raise _untrusted(src, entry, f"mirror copy without a line in {mirror_dir / SUMS}")
        sha = _copy_from_mirror(entry, src, dest, None)
        _accept_first_use(raw, entry, sha, f"mirror copy {src} (no {SUMS} line)")
        return dest
    if pinned and mirror_sha and mirror_sha != pinned:  # a mirror may not override a pin
        raise _error(
            src,
            entry,
            f"the mirror's {SUMS} lists sha256 {mirror_sha} but {raw / SUMS} pins {pinned}",
        )
    sha = _copy_from_mirror(entry, src, dest, mirror_sha or pinned)
    record_sha256(raw, entry.relpath, sha)
    if entry.known_hash is None and pinned is None:  # only the mirror's list vouched for it
        _record_trust(raw, entry.relpath, sha, f"listed in the mirror's {SUMS}", str(src))
    return dest


def _accept_first_use(raw: Path, entry: RawFile, sha: str, origin: str) -> None:
    """The user opted in: pin this copy's sha256 and record the decision."""
    log.warning(
        "%s has no published checksum; accepted on first use (%s=1) and pinned to sha256 %s",
        raw / entry.relpath,
        TRUST_ENV,
        sha,
    )
    _record_trust(raw, entry.relpath, sha, f"first use, accepted with {TRUST_ENV}=1", origin)


def available(entry: RawFile, raw_dir: Path, mirror: Path | None) -> str | None:
    """Where a file can be had without the network, cheaply (no checksums): raw | mirror | None."""
    if (Path(raw_dir) / entry.relpath).is_file():
        return "raw"
    if mirror is not None and (mirror / entry.relpath).is_file():
        return "mirror"
    return None

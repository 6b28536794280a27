"""Acquisition: downloads (local HTTP server only), mirror copies, checksums, no half files."""

from __future__ import annotations

import hashlib
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from splitmix.data import registry
from splitmix.data.fetch import (
    SUMS,
    TRUST_ENV,
    TRUSTED,
    fetch,
    read_sums,
    read_trusted,
    recorded_sha256,
    verified_by,
)
from splitmix.data.registry import HTTPS, MANUAL, RawFile
from splitmix.errors import DataError

GOOD = b"splitmix tiny payload\n" * 50
OTHER = b"a different payload\n" * 30


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("SPLITMIX_DATA_MIRROR", "SPLITMIX_DOWNLOAD_BASE", "SPLITMIX_DATA", TRUST_ENV):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("SPLITMIX_OFFLINE", "1")  # a test that forgets offline=False cannot leak
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


class Server:
    """Serves ``files`` (url path -> bytes); ``/truncated/...`` sends less than it promises."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.requests: list[str] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (stdlib name)
                outer.requests.append(self.path)
                if self.path.startswith("/truncated/"):
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(GOOD) + 1000))
                    self.end_headers()
                    self.wfile.write(GOOD[:100])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                body = outer.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def url(self, path: str) -> str:
        return self.base + path


@pytest.fixture
def server() -> Iterator[Server]:
    s = Server()
    thread = threading.Thread(target=s.httpd.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield s
    finally:
        s.httpd.shutdown()
        s.httpd.server_close()


def entry(sha256: str | None = None, md5: str | None = None, method: str = HTTPS) -> RawFile:
    urls = ("https://example.invalid/tiny/file.bin",) if method == HTTPS else ()
    return RawFile("tiny/file.bin", "tiny", method, urls, sha256=sha256, md5=md5, note="test")


def leftovers(raw: Path) -> list[str]:
    """Everything in the file's folder: must be empty after a failed fetch (no temp files)."""
    d = raw / "tiny"
    return sorted(p.name for p in d.iterdir()) if d.exists() else []


# ------------------------------------------------------------------------------------- download
def test_download_verifies_and_records(server: Server, tmp_path: Path) -> None:
    server.files["/good"] = GOOD
    raw = tmp_path / "raw"
    path = fetch(entry(sha(GOOD)), raw, url=server.url("/good"), offline=False, progressbar=False)
    assert path == raw / "tiny/file.bin"
    assert path.read_bytes() == GOOD
    assert read_sums(raw / SUMS) == {"tiny/file.bin": sha(GOOD)}
    # a verified local copy is used as is: no second request
    fetch(entry(sha(GOOD)), raw, url=server.url("/good"), offline=False, progressbar=False)
    assert server.requests == ["/good"]


def test_download_md5_checked(server: Server, tmp_path: Path) -> None:
    server.files["/good"] = GOOD
    md5 = hashlib.md5(GOOD).hexdigest()
    raw = tmp_path / "raw"
    fetch(entry(md5=md5), raw, url=server.url("/good"), offline=False, progressbar=False)
    assert recorded_sha256(raw, "tiny/file.bin") == sha(GOOD)  # sha256 kept for manifests
    with pytest.raises(DataError, match=f"md5 mismatch \\(expected {'0' * 32}, got {md5}\\)"):
        fetch(entry(md5="0" * 32), tmp_path / "raw2", url=server.url("/good"), offline=False)
    assert leftovers(tmp_path / "raw2") == []


def test_wrong_checksum_leaves_nothing(server: Server, tmp_path: Path) -> None:
    server.files["/good"] = GOOD
    raw = tmp_path / "raw"
    with pytest.raises(DataError) as err:
        fetch(entry(sha(OTHER)), raw, url=server.url("/good"), offline=False, progressbar=False)
    msg = str(err.value)
    assert "\n" not in msg
    assert f"expected {sha(OTHER)}, got {sha(GOOD)}" in msg
    assert str(raw / "tiny/file.bin") in msg
    assert leftovers(raw) == []
    assert not (raw / SUMS).exists()


def test_truncated_transfer_leaves_nothing(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw = tmp_path / "raw"
    monkeypatch.setenv(TRUST_ENV, "1")
    # no known hash: only the short body itself can reveal the truncation
    with pytest.raises(
        DataError, match="download from .*/truncated/x failed \\(transfer cut short"
    ) as err:
        fetch(entry(), raw, url=server.url("/truncated/x"), offline=False, progressbar=False)
    assert "\n" not in str(err.value)
    assert leftovers(raw) == []


def test_http_404(server: Server, tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    with pytest.raises(DataError, match="HTTP 404") as err:
        fetch(entry(sha(GOOD)), raw, url=server.url("/nope"), offline=False, progressbar=False)
    assert f"sha256 {sha(GOOD)}" in str(err.value)
    assert leftovers(raw) == []


def test_download_base_env_serves_mirror_layout(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server.files["/tiny/file.bin"] = GOOD
    monkeypatch.setenv("SPLITMIX_DOWNLOAD_BASE", server.base + "/")
    path = fetch(entry(sha(GOOD)), tmp_path / "raw", offline=False, progressbar=False)
    assert path.read_bytes() == GOOD
    assert server.requests == ["/tiny/file.bin"]


def test_unverifiable_download_needs_opt_in(server: Server, tmp_path: Path) -> None:
    server.files["/good"] = GOOD
    raw = tmp_path / "raw"
    with pytest.raises(DataError) as err:
        fetch(entry(), raw, url=server.url("/good"), offline=False, progressbar=False)
    msg = str(err.value)
    assert msg.startswith(f"{raw / 'tiny/file.bin'}: missing")
    assert f"rerun with {TRUST_ENV}=1 to accept it and pin its sha256" in msg and "\n" not in msg
    assert server.requests == []  # refused before a byte was downloaded
    assert leftovers(raw) == [] and not (raw / SUMS).exists()


def test_trust_on_first_use_pins_the_first_copy(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server.files["/good"] = GOOD
    raw = tmp_path / "raw"
    monkeypatch.setenv(TRUST_ENV, "1")
    dest = fetch(entry(), raw, url=server.url("/good"), offline=False, progressbar=False)
    assert recorded_sha256(raw, "tiny/file.bin") == sha(GOOD)
    record = read_trusted(raw)["tiny/file.bin"]
    assert record["sha256"] == sha(GOOD)
    assert record["origin"] == f"downloaded from {server.base}/good"
    monkeypatch.delenv(TRUST_ENV)  # pinned now: later copies are verified without the opt-in
    dest.write_bytes(OTHER)  # local copy corrupted: it is replaced by a verified download
    fetch(entry(), raw, url=server.url("/good"), offline=False, progressbar=False)
    assert dest.read_bytes() == GOOD
    dest.unlink()
    server.files["/good"] = OTHER  # upstream changed: the pinned sha256 refuses it
    with pytest.raises(DataError, match=f"expected {sha(GOOD)}, got {sha(OTHER)}"):
        fetch(entry(), raw, url=server.url("/good"), offline=False, progressbar=False)
    assert leftovers(raw) == []


def test_offline_missing_names_file_checksum_and_source(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    with pytest.raises(DataError) as err:
        fetch("svhn/train_32x32.mat", raw)  # SPLITMIX_OFFLINE=1 from the autouse fixture
    msg = str(err.value)
    assert msg.startswith(f"{raw / 'svhn/train_32x32.mat'}: missing")
    assert "md5 e26dedcc434d2e4c54c9b2d4a06d8373" in msg
    assert "https://ufldl.stanford.edu/housenumbers/train_32x32.mat" in msg
    assert "SPLITMIX_DATA_MIRROR" in msg and "\n" not in msg


def test_manual_file_without_mirror_says_how(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no download URL") as err:
        fetch("mnist_m/mnist_m.tar.gz", tmp_path / "raw", offline=False)
    assert "sha256 e7d6668bcc0bb0fb3215a3902ddbc01eaff5d6573a6151f0a6c1850f5c8ede5c" in str(
        err.value
    )


def test_unknown_file_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="unknown raw file 'nope/x.bin'"):
        fetch("nope/x.bin", tmp_path)


# --------------------------------------------------------------------------------------- mirror
def make_mirror(root: Path, content: bytes, listed: bytes) -> Path:
    (root / "tiny").mkdir(parents=True)
    (root / "tiny/file.bin").write_bytes(content)
    (root / SUMS).write_text(f"{sha(listed)}  tiny/file.bin\n")
    return root


def test_mirror_copy_verified_against_its_sums(tmp_path: Path) -> None:
    mirror = make_mirror(tmp_path / "mirror", GOOD, GOOD)
    raw = tmp_path / "raw"
    path = fetch(entry(method=MANUAL), raw, mirror=mirror)  # no registry hash: the mirror's rules
    assert path.read_bytes() == GOOD
    assert recorded_sha256(raw, "tiny/file.bin") == sha(GOOD)
    assert leftovers(raw) == ["file.bin"]


def test_corrupt_mirror_file_names_file_and_expected_sha(tmp_path: Path) -> None:
    mirror = make_mirror(tmp_path / "mirror", OTHER, GOOD)
    raw = tmp_path / "raw"
    with pytest.raises(DataError) as err:
        fetch(entry(method=MANUAL), raw, mirror=mirror)
    msg = str(err.value)
    assert str(mirror / "tiny/file.bin") in msg
    assert f"expected {sha(GOOD)}, got {sha(OTHER)}" in msg
    assert leftovers(raw) == []


def test_mirror_cannot_substitute_a_different_registry_file(tmp_path: Path) -> None:
    # the mirror's own SHA256SUMS agrees with its file, but the registry knows the real bytes
    mirror = make_mirror(tmp_path / "mirror", OTHER, OTHER)
    with pytest.raises(DataError, match=f"expected {sha(GOOD)}, got {sha(OTHER)}"):
        fetch(entry(sha(GOOD), method=MANUAL), tmp_path / "raw", mirror=mirror)
    assert leftovers(tmp_path / "raw") == []


def test_mirror_from_env_and_missing_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mirror = make_mirror(tmp_path / "mirror", GOOD, GOOD)
    monkeypatch.setenv("SPLITMIX_DATA_MIRROR", str(mirror))
    assert fetch(entry(sha(GOOD), method=MANUAL), tmp_path / "raw").read_bytes() == GOOD
    with pytest.raises(DataError, match="is not a directory"):
        fetch(entry(method=MANUAL), tmp_path / "raw2", mirror=tmp_path / "absent")


def test_real_mirror_mnist_labels(mirror: Path, tmp_path: Path) -> None:
    path = fetch("mnist/t10k-labels-idx1-ubyte.gz", tmp_path / "raw", mirror=mirror)
    assert sha(path.read_bytes()) == registry.get_file("mnist/t10k-labels-idx1-ubyte.gz").sha256


def test_registry_hashes_match_the_mirror_sums(mirror: Path) -> None:
    sums = read_sums(mirror / SUMS)
    assert sums, "mirror SHA256SUMS is empty"
    for rel, digest in sums.items():
        assert registry.get_file(rel).sha256 == digest, rel
    for f in registry.REGISTRY.values():  # every entry can be obtained somehow, and says how
        assert f.method in (registry.HTTPS, registry.GDOWN, registry.MANUAL)
        assert f.urls or f.note
        assert all(u.startswith("https://") for u in f.urls)


def test_gdown_path_verifies_and_cleans_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import gdown

    monkeypatch.setenv(TRUST_ENV, "1")  # Drive files have no published checksum

    served = {"body": GOOD}
    calls: list[str] = []

    def fake_download(*, id: str, output: str, quiet: bool) -> str:  # noqa: A002 (gdown's name)
        calls.append(id)
        Path(output + "12345678.part").write_bytes(b"partial")  # what gdown leaves for resuming
        Path(output).write_bytes(served["body"])
        return output

    monkeypatch.setattr(gdown, "download", fake_download)
    drive = RawFile("tiny/file.bin", "tiny", registry.GDOWN, ("https://drive",), gdrive_id="ID1")
    raw = tmp_path / "raw"
    assert fetch(drive, raw, offline=False).read_bytes() == GOOD
    assert calls == ["ID1"] and leftovers(raw) == ["file.bin"]
    (raw / "tiny/file.bin").unlink()
    served["body"] = OTHER  # the Drive file changed since it was first trusted
    with pytest.raises(DataError, match=f"expected {sha(GOOD)}, got {sha(OTHER)}"):
        fetch(drive, raw, offline=False)
    assert leftovers(raw) == []


# ------------------------------------------------------------------- files nothing vouches for
def test_mirror_file_without_sums_line_is_refused_unless_opted_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mirror = make_mirror(tmp_path / "mirror", GOOD, GOOD)
    (mirror / SUMS).write_text("")  # the file is there, its SHA256SUMS line is not
    raw = tmp_path / "raw"
    with pytest.raises(DataError) as err:
        fetch(entry(method=MANUAL), raw, mirror=mirror)
    msg = str(err.value)
    assert msg.startswith(f"{mirror / 'tiny/file.bin'}: mirror copy without a line in")
    assert TRUST_ENV in msg and "\n" not in msg
    assert leftovers(raw) == [] and not (raw / TRUSTED).exists()
    monkeypatch.setenv(TRUST_ENV, "1")
    assert fetch(entry(method=MANUAL), raw, mirror=mirror).read_bytes() == GOOD
    record = read_trusted(raw)["tiny/file.bin"]
    assert record["sha256"] == sha(GOOD) == recorded_sha256(raw, "tiny/file.bin")
    assert record["origin"] == f"mirror copy {mirror / 'tiny/file.bin'} (no {SUMS} line)"


def test_raw_copy_nothing_vouches_for_names_its_sha(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw = tmp_path / "raw"
    (raw / "tiny").mkdir(parents=True)
    (raw / "tiny/file.bin").write_bytes(OTHER)
    with pytest.raises(DataError, match=f"its sha256 is {sha(OTHER)}.*{TRUST_ENV}=1"):
        fetch(entry(method=MANUAL), raw)
    assert not (raw / SUMS).exists()  # nothing pinned without the opt-in
    monkeypatch.setenv(TRUST_ENV, "1")
    fetch(entry(method=MANUAL), raw)
    assert recorded_sha256(raw, "tiny/file.bin") == sha(OTHER)


def test_verified_by_names_what_vouched(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    raw = tmp_path / "raw"
    assert verified_by(raw, "mnist/t10k-labels-idx1-ubyte.gz") == "registry sha256"
    assert verified_by(raw, "svhn/test_32x32.mat") == "registry md5 (the publisher's)"
    rel = "fedbn/digit_dataset.zip"
    assert verified_by(raw, rel) == "unverified"
    mirror = tmp_path / "mirror"
    (mirror / "fedbn").mkdir(parents=True)
    (mirror / rel).write_bytes(GOOD)
    (mirror / SUMS).write_text(f"{sha(GOOD)}  {rel}\n")
    fetch(rel, raw, mirror=mirror)  # the mirror's list vouches: no opt-in needed
    assert verified_by(raw, rel).startswith(f"listed in the mirror's {SUMS}: {mirror / rel} (")
    (raw / TRUSTED).unlink()  # a pin of an older version, with no record of how
    assert verified_by(raw, rel).startswith(f"sha256 pinned in {SUMS} by an earlier version")


def test_registry_pins_the_public_archives() -> None:
    """CIFAR-10's and DomainNet's archives have a sha256 that is public (Keras, TFDS); only
    FedBN's Google-Drive zips and the SynthDigits files are left to first-use pinning."""
    unpinned = sorted(rel for rel, f in registry.REGISTRY.items() if f.known_hash is None)
    assert unpinned == [
        "domainnet/domainnet_dataset.zip",
        "fedbn/data.zip",
        "fedbn/digit_dataset.zip",
        "synth/synth_test_32x32.mat",
        "synth/synth_train_32x32.mat",
    ]
    for rel, f in registry.REGISTRY.items():
        assert f.sha256 is None or len(f.sha256) == 64, rel


def test_mirror_sums_cannot_override_a_pin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    raw = tmp_path / "raw"
    (raw / "tiny").mkdir(parents=True)
    (raw / "tiny/file.bin").write_bytes(GOOD)
    monkeypatch.setenv(TRUST_ENV, "1")
    fetch(entry(method=MANUAL), raw)  # pinned to GOOD on first use
    monkeypatch.delenv(TRUST_ENV)
    (raw / "tiny/file.bin").unlink()
    mirror = make_mirror(tmp_path / "mirror", OTHER, OTHER)  # self-consistent, but not the pin
    with pytest.raises(DataError, match=f"lists sha256 {sha(OTHER)} but .* pins {sha(GOOD)}"):
        fetch(entry(method=MANUAL), raw, mirror=mirror)
    assert leftovers(raw) == [] and recorded_sha256(raw, "tiny/file.bin") == sha(GOOD)

"""``python -m splitmix data list|fetch|prepare [...]``: see what data is where, get it, prepare it.

Every failure is a ``SplitmixError`` that ``splitmix.cli.main`` prints as one ``error:`` line with
exit status 2. ``data bundle`` belongs to ``splitmix.data.bundle``: it is added only when that
module offers ``register_cli(subparsers)``, so the bundle owner can plug in without editing here.
"""

from __future__ import annotations

import argparse
import importlib
import json

from splitmix.data.catalog import DATASETS, get_dataset
from splitmix.data.fetch import fetch
from splitmix.data.recipes import SOURCES
from splitmix.data.registry import GROUPS, REGISTRY, group_files
from splitmix.data.store import (
    MANIFEST,
    check_bundled_cache,
    data_root,
    describe,
    fetch_dataset,
    prepare,
    raw_dir,
)
from splitmix.errors import DataError

_ALL_SOURCES = sorted({s for v in SOURCES.values() for s in v})


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--root", help="data root (default: $SPLITMIX_DATA or ./data)")
    p.add_argument(
        "--mirror",
        help="local mirror folder laid out like data/raw (default: $SPLITMIX_DATA_MIRROR)",
    )


def _network(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--offline",
        action="store_true",
        default=None,
        help="never download; use only the raw dir and the mirror (also: SPLITMIX_OFFLINE=1)",
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    data = subparsers.add_parser("data", help="list, fetch and prepare datasets")
    sub = data.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    p = sub.add_parser("list", help="show every dataset/domain and whether it is ready")
    _common(p)
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("fetch", help="download/copy and verify raw files")
    p.add_argument("name", help="a dataset, a file group (e.g. svhn) or a raw file path")
    p.add_argument("--domain", help="only the files this domain needs (with a dataset name)")
    p.add_argument(
        "--source", choices=_ALL_SOURCES, help="with a dataset: the files of this source"
    )
    _common(p)
    _network(p)
    p.set_defaults(func=cmd_fetch)

    p = sub.add_parser("prepare", help="build the prepared cache (.npy per domain)")
    p.add_argument("dataset", help=f"one of: {', '.join(DATASETS)}")
    p.add_argument("--domain", help="only this domain (default: all)")
    p.add_argument("--size", type=int, help="image side in pixels (default: the dataset's)")
    p.add_argument("--source", choices=_ALL_SOURCES, help="where images come from (per dataset)")
    p.add_argument("--force", action="store_true", help="rebuild even if already prepared")
    _common(p)
    _network(p)
    p.set_defaults(func=cmd_prepare)

    try:
        bundle = importlib.import_module("splitmix.data.bundle")
    except ModuleNotFoundError as exc:
        if exc.name != "splitmix.data.bundle":
            raise
        return
    if hasattr(bundle, "register_cli"):
        bundle.register_cli(sub)


def cmd_list(args: argparse.Namespace) -> int:
    rows = [("dataset", "domain", "status", "missing")]
    for name, spec in DATASETS.items():
        for domain in spec.domains:
            state, missing = describe(name, domain, root=args.root, mirror=args.mirror)
            rows.append((name, domain, state, missing))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r[:3], widths, strict=True)) + "  " + r[3])
    print(f"data root: {data_root(args.root)}")
    return 0


def _files_for(name: str, domain: str | None) -> list[str]:
    """Registry relpaths meant by NAME when it is a file group or a single raw file."""
    if domain is not None:
        raise DataError(
            f"--domain needs a dataset name, got {name!r}; use one of: {', '.join(DATASETS)}"
        )
    if name in GROUPS:
        return [f.relpath for f in group_files(name)]
    if name in REGISTRY:
        return [name]
    raise DataError(
        f"unknown dataset, file group or raw file {name!r}; datasets: {', '.join(DATASETS)}; "
        f"groups: {', '.join(GROUPS)}; files: {', '.join(REGISTRY)}"
    )


def cmd_fetch(args: argparse.Namespace) -> int:
    if args.name in DATASETS:  # the files prepare would use, chosen the same way
        paths = fetch_dataset(
            args.name,
            args.domain,
            root=args.root,
            mirror=args.mirror,
            source=args.source,
            offline=args.offline,
        )
        if not paths and get_dataset(args.name).bundled:
            print(f"{args.name} is bundled with the package; nothing to fetch")
        for path in paths:
            print(f"ok       {path}")
        return 0
    rels = _files_for(args.name, args.domain)
    raw = raw_dir(args.root)
    failed: list[DataError] = []
    for rel in rels:
        try:
            path = fetch(rel, raw, mirror=args.mirror, offline=args.offline)
            print(f"ok       {path}")
        except DataError as exc:  # keep going: one missing file should not hide the others
            print(f"missing  {raw / rel}")
            failed.append(exc)
    if len(failed) > 1:
        raise DataError(f"{len(failed)} of {len(rels)} files unavailable; first: {failed[0]}")
    if failed:
        raise failed[0]
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    spec = get_dataset(args.dataset)
    if args.size is not None and args.size < 1:
        raise DataError(f"--size {args.size} is not positive; pass the image side in pixels")
    if spec.bundled:
        cache = check_bundled_cache(args.dataset, args.domain, root=args.root, force=args.force)
        print(f"{args.dataset} is bundled with the package; its decoded cache in {cache} is ok")
        return 0
    paths = prepare(
        args.dataset,
        args.domain,
        root=args.root,
        mirror=args.mirror,
        size=args.size,
        source=args.source,
        force=args.force,
        offline=args.offline,
        progress=True,
    )
    for p in paths:
        m = json.loads((p / MANIFEST).read_text())
        n = {k: v["n"] for k, v in m["splits"].items()}
        src = f"{m['source']}/{m['variant']}"
        print(f"prepared {p}  (source {src}, train {n['train']}, test {n['test']})")
    return 0

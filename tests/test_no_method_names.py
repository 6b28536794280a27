"""The engine, the evaluation, the report and the workflow know no method by name: no registered
method name appears as a string literal in their source (docstrings and comments included), so a
new method needs no edit there and a renamed one breaks nothing. What they need to know about a
method is a capability it declares and training records (e.g. ``one_run_per_width``)."""

from __future__ import annotations

import io
import tokenize
from pathlib import Path

import pytest

from splitmix.methods import algorithm_class

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("splitmix/report", "splitmix/evaluate", "splitmix/fl", "workflow")
FILES = ("Snakefile",)
SUFFIXES = {".py", ".smk"}
# string tokens: plain and byte strings, and the literal parts of f-strings (Python >= 3.12)
STRING_TOKENS = {tokenize.STRING} | (
    {tokenize.FSTRING_MIDDLE} if hasattr(tokenize, "FSTRING_MIDDLE") else set()
)


def method_names() -> set[str]:
    """The registered methods' names (the paper's four and whatever baselines/ adds)."""
    try:  # the registry's home after the move to splitmix/methods.py, and before it
        from splitmix.methods import available_algorithms
    except ImportError:
        from splitmix.fl.algorithm import available_algorithms

    names = set(available_algorithms())
    assert {"fedavg", "heterofl", "sheterofl", "splitmix"} <= names
    assert all(algorithm_class(n).name == n for n in names)
    return names


def sources() -> list[Path]:
    found = [p for f in FOLDERS for p in sorted((ROOT / f).rglob("*")) if p.suffix in SUFFIXES]
    return found + [ROOT / f for f in FILES]


def string_literals(path: Path) -> list[tuple[int, str]]:
    """``(line, value)`` of every string literal of a Python or Snakemake file."""
    out = []
    tokens = tokenize.generate_tokens(io.StringIO(path.read_text()).readline)
    for tok in tokens:
        if tok.type not in STRING_TOKENS:
            continue
        text = tok.string
        if tok.type == tokenize.STRING:  # strip prefixes and quotes: r"..", '''..''', f".."
            body = text.lstrip("rRbBuUfF")
            quote = body[:3] if body[:3] in ('"""', "'''") else body[:1]
            text = body[len(quote) : -len(quote)]
        out.append((tok.start[0], text))
    return out


def test_the_scan_sees_the_files_and_their_literals():
    files = sources()
    assert ROOT / "splitmix/report/tables.py" in files
    assert ROOT / "workflow/rules/train.smk" in files
    literals = {v for p in files for _, v in string_literals(p)}
    assert {"dataset", "split", "method"} <= literals  # it does read the string literals


@pytest.mark.parametrize("path", sources(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_registered_method_name_is_a_string_literal(path):
    names = method_names()
    hits = [(line, v) for line, v in string_literals(path) if v.strip().lower() in names]
    assert not hits, f"{path.relative_to(ROOT)} names a method: {hits}"

"""reStructuredText fragments beside the report's files, for ``snakemake --report``.

Snakemake gives every file of a report the caption of one template (``workflow/report/``); the
template ``.. include::``-s the fragment ``<name>.rst`` that the report command writes beside each
figure and each Markdown table, so every figure shows its own caption and every table (Table 1,
the claims check) shows its content, without the workflow knowing any figure or table by name.

Only the Markdown the report itself writes is translated: ``#`` headings, paragraphs, ``-``/``*``
bullet lists, pipe tables, and ``**bold**``, ``*italic*``, ```code``` and ``[text](url)`` inline.
Everything else is escaped, so a caption can never break the HTML report.
"""

from __future__ import annotations

import re
from pathlib import Path

from splitmix.atomic import atomic_write_text

SUFFIX = ".rst"
# Characters that start inline markup in reST; escaped with a backslash they read as themselves.
_SPECIAL = re.compile(r"([\\*`|_<>\[\]])")
_INLINE = re.compile(
    r"\*\*(?P<bold>[^*]+)\*\*|\*(?P<em>[^*\s][^*]*)\*|`(?P<code>[^`]+)`"
    r"|\[(?P<text>[^\]]+)\]\((?P<url>[^)\s]+)\)"
)
_TABLE_RULE = re.compile(r"^\|?\s*:?-{2,}:?\s*(\|\s*:?-{2,}:?\s*)*\|?$")
_BULLET = re.compile(r"^\s*[-*+]\s+")


def escape(text: str) -> str:
    """Plain text as reST inline text (nothing in it is read as markup)."""
    return _SPECIAL.sub(r"\\\1", text)


def inline(text: str) -> str:
    """Markdown inline markup as reST; everything between the marked-up spans is escaped."""
    out, pos = [], 0
    for m in _INLINE.finditer(text):
        out.append(escape(text[pos : m.start()]))
        if m["bold"]:
            span = f"**{escape(m['bold'])}**"
        elif m["em"]:
            span = f"*{escape(m['em'])}*"
        elif m["code"]:
            span = f"``{m['code']}``"
        else:
            span = f"`{escape(m['text'])} <{m['url']}>`__"
        # reST markup must not touch a word character; an escaped space joins them invisibly
        before = "\\ " if m.start() > 0 and text[m.start() - 1].isalnum() else ""
        after = "\\ " if m.end() < len(text) and text[m.end()].isalnum() else ""
        out.append(before + span + after)
        pos = m.end()
    out.append(escape(text[pos:]))
    return "".join(out)


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def _table(lines: list[str]) -> list[str]:
    """A Markdown pipe table (header, rule, rows) as a reST list-table."""
    header, rows = _cells(lines[0]), [_cells(line) for line in lines[2:]]
    out = [".. list-table::", "   :header-rows: 1", ""]
    for row in [header, *rows]:
        row = (row + [""] * len(header))[: len(header)]
        out.append(f"   * - {inline(row[0])}".rstrip())
        out += [f"     - {inline(c)}".rstrip() for c in row[1:]]
    return [*out, ""]


def markdown_to_rst(text: str) -> str:
    """The report's Markdown (headings, paragraphs, bullets, pipe tables) as a reST fragment.

    Headings become rubrics, not sections: a fragment is included inside a caption, where
    section titles would clash with the report's own structure.
    """
    lines = text.splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        nxt = lines[i + 1] if i + 1 < len(lines) else ""
        if line.lstrip().startswith("|") and _TABLE_RULE.match(nxt.strip()):
            j = i + 2
            while j < len(lines) and lines[j].lstrip().startswith("|"):
                j += 1
            out += ["", *_table(lines[i:j])]
            i = j
            continue
        if line.startswith("#"):
            out += ["", f".. rubric:: {inline(line.lstrip('#').strip())}", ""]
        elif _BULLET.match(line):
            if out and out[-1] and not out[-1].startswith("- "):
                out.append("")
            out.append("- " + inline(_BULLET.sub("", line)))
        elif line.strip():
            if out and out[-1].startswith("- ") and not line.startswith(" "):
                out.append("")
            out.append(("  " if line.startswith(" ") else "") + inline(line.strip()))
        else:
            out.append("")
        i += 1
    return re.sub(r"\n{3,}", "\n\n", "\n".join(out)).strip() + "\n"


def caption_file(name: str) -> str:
    """File name of the caption fragment of the figure ``name``."""
    return f"{name}{SUFFIX}"


def write_caption(stem: Path, caption: str, files: list[Path]) -> Path:
    """``<stem>.rst``: a figure's caption and the other formats it was saved in."""
    others = [p.name for p in files if p.suffix != ".png"]
    text = escape(caption)
    if others:
        text += "\n\nAlso as " + ", ".join(f"``{name}``" for name in others) + "."
    path = stem.with_name(caption_file(stem.name))
    atomic_write_text(path, text + "\n")
    return path


def write_markdown_fragments(out: Path) -> list[Path]:
    """``<name>.rst`` beside every ``<name>.md`` of the report folder (tables, claims)."""
    written = []
    for md in sorted(Path(out).glob("*.md")):
        path = md.with_suffix(SUFFIX)
        atomic_write_text(path, markdown_to_rst(md.read_text(encoding="utf-8")))
        written.append(path)
    return written

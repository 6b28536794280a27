"""reST fragments for ``snakemake --report``: captions and Markdown tables render as written."""

from __future__ import annotations

import html as htmllib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from docutils.core import publish_parts

from splitmix.report.build import make_report
from splitmix.report.rst import escape, markdown_to_rst, write_markdown_fragments

from .synthetic import at_specs, main_specs, write_runs

REPO = Path(__file__).resolve().parents[2]
GLOB = "results/**/eval.csv"


def html(rst: str) -> str:
    """The HTML body docutils makes of ``rst``; any warning fails the test (halt_level 2)."""
    return publish_parts(rst, writer="html", settings_overrides={"halt_level": 2})["body"]


def _text(body: str) -> str:
    return htmllib.unescape(re.sub(r"<[^>]+>", "", body)).replace("\xa0", "")


def test_plain_text_with_markup_characters_reads_as_itself():
    text = "a *b* `c` |d| e_ [1]_ x_y <z> back\\slash ± λ"
    assert _text(html(escape(text))).strip() == text


def test_markdown_table_becomes_an_html_table_with_bold_cells():
    md = (
        "# Table 1: accuracy\n\nLegend with **bold** and † marks.\n\n## digits / feature\n\n"
        "| Width | a acc [%] | b acc [%] |\n|:--|--:|--:|\n"
        "| ×1/8 | **83.75 ± 1.41** | 80.33 ± 2.25 |\n| ×1 | 88.15 ± 2.71 † | |\n"
    )
    body = html(markdown_to_rst(md))
    assert '<p class="rubric">Table 1: accuracy</p>' in body
    assert '<p class="rubric">digits / feature</p>' in body
    rows = re.findall(r"<tr>(.*?)</tr>", body, re.S)
    cells = [[_text(c).strip() for c in re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", r, re.S)]
             for r in rows]  # fmt: skip
    assert cells == [
        ["Width", "a acc [%]", "b acc [%]"],
        ["×1/8", "83.75 ± 1.41", "80.33 ± 2.25"],
        ["×1", "88.15 ± 2.71 †", ""],
    ]
    assert "<strong>83.75 ± 1.41</strong>" in body
    assert "<strong>bold</strong>" in body


def test_markdown_lists_code_and_links():
    md = "Claims:\n\n- held: `splitmix` above x\n- not held\n\nSee [docs](docs/claims.md).\n"
    body = html(markdown_to_rst(md))
    assert re.findall(r"<li>(.*?)</li>", body, re.S) and body.count("<li>") == 2
    assert '<tt class="docutils literal">splitmix</tt>' in body
    assert '<a class="reference external" href="docs/claims.md">docs</a>' in body


def test_every_markdown_file_of_the_folder_gets_a_fragment(tmp_path):
    (tmp_path / "table1.md").write_text("# T\n\n| a | b |\n|--|--|\n| 1 | 2 |\n")
    (tmp_path / "claims.md").write_text("# Claims\n\n- one held\n")
    written = write_markdown_fragments(tmp_path)
    assert [p.name for p in written] == ["claims.rst", "table1.rst"]
    assert "one held" in html((tmp_path / "claims.rst").read_text())


def test_report_writes_a_caption_fragment_per_figure_and_removes_stale_ones(tmp_path):
    write_runs(tmp_path, main_specs(("digits",), seeds=(1,)))
    out = tmp_path / "f"
    report = make_report(str(tmp_path / GLOB), out, ("png", "pdf"), only=["convergence"])
    (name, _, caption) = report.made[0]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["figures"][0]["caption_file"] == f"{name}.rst"
    body = _text(html((out / f"{name}.rst").read_text()))
    assert caption in body and f"{name}.pdf" in body
    assert "Table 1" in html((out / "table1.rst").read_text())
    (tmp_path / "results").joinpath("digits").rename(tmp_path / "gone")
    write_runs(tmp_path, main_specs(("cifar10",), seeds=(1,)))
    make_report(str(tmp_path / GLOB), out, ("png",), only=["convergence"])
    assert not (out / f"{name}.rst").exists() and not (out / f"{name}.png").exists()


@pytest.mark.slow
def test_snakemake_report_shows_each_figure_caption_and_the_tables(tmp_path):
    """``snakemake --report`` on synthetic report outputs (no training): ~10 s."""
    for part in ("Snakefile", "workflow", "config"):
        src = REPO / part
        (shutil.copytree if src.is_dir() else shutil.copy)(src, tmp_path / part)
    rows = tmp_path / "rows"
    write_runs(rows, main_specs(("digits",), seeds=(1, 2), robust=True) + at_specs("digits"))
    out = tmp_path / "figures" / "test"  # REPORT_DIR of config/test.yaml
    report = make_report(str(rows / GLOB), out, ("png",))
    (out / "claims.md").write_text("# Claims\n\n| claim | verdict |\n|--|--|\n| a | held |\n")
    write_markdown_fragments(out)  # as the claims check leaves it beside Table 1
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [Path(sys.executable).parent / "snakemake", "--configfile", "config/test.yaml",
         "--report", "report.html"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    page = (tmp_path / "report.html").read_text()
    results = json.loads(re.search(r"^\s*var results = (\{.*\});?\s*$", page, re.M).group(1))
    by_name = {Path(k).name: v for k, v in results.items()}
    for name, _, caption in report.made:
        entry = by_name[f"{name}.png"]
        assert entry["labels"] == {"figure": name}
        assert caption.split(":")[0] in _text(entry["caption"])
    captions = [by_name[f"{n}.png"]["caption"] for n, _, _ in report.made]
    assert len(set(captions)) == len(captions)  # no two figures share a caption
    assert by_name["table1.md"]["labels"] == {"table": "table1"}
    assert "<table" in by_name["table1.md"]["caption"]
    assert "held" in _text(by_name["claims.md"]["caption"])

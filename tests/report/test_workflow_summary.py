"""The workflow's report rule checks the claims and `snakemake` prints the summary at the end.

No training: the run folders of config/test.yaml are filled with synthetic outputs (training files
first, then eval.csv), so the only job Snakemake has to run is the report.
"""

from __future__ import annotations

import json

import pytest

from tests.workflow import TEST_CONFIG, load_yaml, snakemake, tiny_config, write_config

from .synthetic import WIDTHS, Spec, record_for, rows_for

pytestmark = pytest.mark.slow


def _methods() -> dict[str, tuple[str, tuple[float, ...]]]:
    """config/test.yaml's methods: name -> (algorithm, widths evaluated), so that a baseline
    added to the test grid gets its synthetic run too."""
    out = {}
    for name, entry in load_yaml(TEST_CONFIG)["methods"].items():
        algorithm = entry["algorithm"]
        fedavg = algorithm == "fedavg"
        out[name] = (algorithm, (float(entry["params"]["width"]),) if fedavg else WIDTHS)
    return out


METHODS = _methods()
N = len(METHODS)  # every run of config/test.yaml


def _fill(workdir, curve: str) -> None:
    """Finished, evaluated runs of config/test.yaml (digits-mini / tiny, seed 1)."""
    for method, (algorithm, widths) in METHODS.items():
        spec = Spec("digits", method, algorithm, 1, widths, flags=True, curve=curve)
        run = workdir / "results" / "digits-mini" / "tiny" / method / "seed1"
        run.mkdir(parents=True)
        record = record_for(spec)
        record["config"] |= {"dataset": "digits-mini", "split": "tiny"}
        for name in ("best.pt", "log.csv", "comm.csv"):
            (run / name).write_text("")
        (run / "run.json").write_text(json.dumps(record))
        rows = rows_for(spec).assign(dataset="digits-mini", split="tiny")
        rows.to_csv(run / "eval.csv", index=False)
        (run / "eval.json").write_text(json.dumps({"machine": spec.machine, "device": "cpu"}))


def test_snakemake_prints_the_claims_summary_of_the_report_it_built(tmp_path):
    _fill(tmp_path, curve="rising")  # like the tiny CI run: every run still learning
    proc = snakemake(tmp_path, "--cores", "1", "--configfile", str(TEST_CONFIG))
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "train digits-mini/" not in proc.stdout  # the job messages of training ...
    assert "evaluate digits-mini/" not in proc.stdout  # ... and evaluation: none ran
    lines = proc.stdout.splitlines()
    done = lines.index(f"done: {N} runs in results/, report in figures/test/")
    papers = [
        "Split-Mix (Hong et al., ICLR 2022)",
        "DepthFL (Kim et al., ICLR 2023)",
        "FedRolex (Alam et al., NeurIPS 2022)",
        "FIARSE (Wu et al., NeurIPS 2024)",
        "FjORD (Horvath et al., NeurIPS 2021)",
        "ScaleFL (Ilhan et al., CVPR 2023)",
    ]
    counts = {
        "Split-Mix (Hong et al., ICLR 2022)": 7,
        "DepthFL (Kim et al., ICLR 2023)": 2,
        "FedRolex (Alam et al., NeurIPS 2022)": 1,
        "FIARSE (Wu et al., NeurIPS 2024)": 3,
        "FjORD (Horvath et al., NeurIPS 2021)": 2,
        "ScaleFL (Ilhan et al., CVPR 2023)": 2,
    }
    assert lines[done + 1 : done + 8] == [
        *(f"claims of {p}: 0 held, 0 not held, {counts[p]} not testable -> "
          "figures/test/claims.md" for p in papers),
        f"under-trained: {N} of {N} runs flagged -> figures/test/table1.md",
    ]  # fmt: skip
    md = (tmp_path / "figures" / "test" / "claims.md").read_text()
    assert f"## Under-trained runs: {N} of {N}" in md
    assert "under-trained runs: sheterofl seed 1, splitmix seed 1 (reasons under" in md
    assert "- sheterofl seed 1: validation accuracy still rising at ×1: +" in md
    table = (tmp_path / "figures" / "test" / "table1.md").read_text()
    assert table.count("‡") >= 4 * 4  # every cell of the tiny run is marked


def test_workflow_without_claims_writes_none(tmp_path):
    _fill(tmp_path, curve="plateau")
    config = write_config(tmp_path / "c.yaml", tiny_config(claims=None))
    proc = snakemake(tmp_path, "--cores", "1", "--configfile", str(config))
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert not (tmp_path / "figures" / "test" / "claims.md").exists()
    assert f"under-trained: 0 of {N} runs flagged -> figures/test/table1.md" in proc.stdout
    assert "claims of" not in proc.stdout


def test_a_missing_claims_file_stops_the_workflow_before_any_job(tmp_path):
    config = write_config(tmp_path / "c.yaml", tiny_config(claims="nope.yaml"))
    proc = snakemake(tmp_path, "-n", "--cores", "1", "--configfile", str(config))
    assert proc.returncode != 0
    assert f"config error in {config} at workflow.claims: 'nope.yaml' does not exist" in proc.stdout
    assert "Job stats" not in proc.stdout

"""Helpers for the workflow tests: run the real ``snakemake`` on the real Snakefile.

Every run works in a temporary directory (``--directory``), so results, locks and Snakemake's
metadata never touch the repository's own ``results/`` and ``figures/``.
"""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
SNAKEFILE = REPO / "Snakefile"
SNAKEMAKE = Path(sys.executable).parent / "snakemake"
TEST_CONFIG = REPO / "config" / "test.yaml"
PROFILE = REPO / "workflow" / "profiles" / "default"
# The workflow's own files: what "adding a baseline without touching the workflow" must not edit.
WORKFLOW_FILES = ("Snakefile", "workflow")


def snakemake(
    workdir: Path,
    *args: str,
    snakefile: Path = SNAKEFILE,
    timeout: float = 600,
    check: bool = False,
    profile: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Run snakemake on ``snakefile`` in ``workdir`` with the workflow's default profile (found
    automatically from the repo root, but not from a temporary directory); stdout and stderr
    merged into ``stdout``."""
    cmd = [str(SNAKEMAKE), "-s", str(snakefile), "--directory", str(workdir)]
    if profile and not any(a.startswith("--profile") for a in args):
        cmd += ["--workflow-profile", str(PROFILE)]
    cmd += list(args)
    proc = subprocess.run(
        cmd,
        cwd=workdir,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}")
    return proc


def load_yaml(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def write_config(path: Path, config: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def tiny_config(**workflow: Any) -> dict[str, Any]:
    """config/test.yaml as a dict, with workflow settings overridden."""
    cfg = copy.deepcopy(load_yaml(TEST_CONFIG))
    cfg.setdefault("workflow", {}).update(workflow)
    return cfg


def copy_workflow(dest: Path) -> Path:
    """A copy of the Snakefile, workflow/, baselines/ and the default claims file in ``dest`` (the
    library itself is the installed one); returns the copied Snakefile."""
    (dest / "config").mkdir(parents=True, exist_ok=True)
    shutil.copy2(REPO / "config" / "claims.yaml", dest / "config" / "claims.yaml")
    for name in (*WORKFLOW_FILES, "baselines"):
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, dest / name)
    return dest / "Snakefile"


# A train/evaluate job as the console shows it: its rule's message (the default profile hides the
# rule blocks), e.g. "Job 12: train digits-mini/tiny/splitmix/seed1 (log: ...)".
JOB_MESSAGE = re.compile(
    r"^Job (?P<jobid>\d+): (?P<rule>train|evaluate) (?P<dataset>[^/\s]+)/(?P<split>[^/\s]+)/"
    r"(?P<method>[^/\s]+)/seed(?P<seed>\d+)"
)
REPORT_MESSAGE = re.compile(r"^Job (?P<jobid>\d+): report (?P<report>\S+)/ from \d+ runs")


def jobs_by_rule(dry_run_output: str) -> dict[str, list[dict[str, str]]]:
    """Wildcards (and job id) of every job the output lists, grouped by rule name: from the
    rules' messages, or from Snakemake's rule blocks for rules without one."""
    jobs: dict[str, list[dict[str, str]]] = {}
    rule = None
    for line in dry_run_output.splitlines():
        stripped = line.strip()
        if match := JOB_MESSAGE.match(stripped):
            rule = None
            fields = match.groupdict()
            jobs.setdefault(fields.pop("rule"), []).append(fields)
        elif match := REPORT_MESSAGE.match(stripped):
            rule = None
            jobs.setdefault("report", []).append(match.groupdict())
        elif stripped.startswith(("rule ", "localrule ")) and stripped.endswith(":"):
            rule = stripped.split()[1].rstrip(":")
            jobs.setdefault(rule, []).append({})
        elif rule and stripped.startswith("jobid:"):
            jobs[rule][-1]["jobid"] = stripped.split()[1]
        elif rule and stripped.startswith("wildcards:"):
            pairs = stripped.removeprefix("wildcards:").split(", ")
            jobs[rule][-1].update(dict(p.strip().split("=", 1) for p in pairs))
    return jobs


def job_counts(output: str) -> dict[str, int]:
    """The "Job stats" table Snakemake prints: jobs per rule."""
    counts: dict[str, int] = {}
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("Job stats:"))
    for line in lines[start + 3 :]:
        parts = line.split()
        if len(parts) != 2 or parts[0] == "total":
            break
        counts[parts[0]] = int(parts[1])
    return counts

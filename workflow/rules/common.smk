"""Config handling shared by every rule: validate once, resolve every run, name every file.

Everything here runs when Snakemake parses the workflow (also for a dry run and inside every
cluster job), so a bad config fails before any job starts, with the key and the allowed values.
"""

import copy
import fnmatch
import glob
import importlib.util
import json
import os
import re
import sys
from pathlib import Path

import jsonschema
import yaml
from snakemake.exceptions import WorkflowError
from snakemake.logging import logger
from snakemake.utils import min_version, validate

min_version("9.0")

# The library beside this Snakefile is the one both the parse and the jobs use, also when
# snakemake runs with --directory elsewhere (jobs get it through PYTHONPATH, set below).
REPO = Path(workflow.basedir).resolve()
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from splitmix.config import InvalidValue, device_problem  # noqa: E402
from splitmix.data.catalog import DATASETS  # noqa: E402
from splitmix.data.store import MANIFEST, data_root, prepared_dir  # noqa: E402
from splitmix.errors import SplitmixError  # noqa: E402
from splitmix.experiment import RESERVED, iter_runs, resolve_run  # noqa: E402
from splitmix.runfolder import (  # noqa: E402
    BEST,
    COMM,
    EVAL,
    EVAL_RECORD,
    LOG,
    RESUME_STATE,
    RUN_RECORD,
)
from splitmix.schemas import SCHEMA_PATH, explain  # noqa: E402


def _prepend_env(name, value):
    """Put ``value`` first on the path-like environment variable ``name``."""
    rest = os.environ.get(name)
    os.environ[name] = os.pathsep.join([value, rest] if rest else [value])


# Jobs inherit this environment (locally, and on a cluster node where the job's snakemake parses
# this file again): `python` is the interpreter running snakemake, so `.venv/bin/snakemake` works
# without activating the venv, and `-m splitmix` imports the library beside this Snakefile.
_prepend_env("PATH", str(Path(sys.executable).parent))
_prepend_env("PYTHONPATH", str(REPO))


def _config_source():
    files = workflow.config_settings.configfiles
    return ", ".join(map(str, files)) if files else "config/config.yaml"


# --configfile FILE *replaces* config/config.yaml instead of being deep-merged into it (Snakemake's
# default), so a grid never inherits methods or datasets from the quick default.
if workflow.config_settings.configfiles:
    config.clear()
    config.update(copy.deepcopy(workflow.config_settings.overwrite_config))


def _validate_schema():
    """The whole file against the schema the library ships (the same one every run is checked
    against, see splitmix.config.validate_run); also fills in the workflow section's defaults."""
    try:
        validate(config, str(SCHEMA_PATH))
    except WorkflowError as exc:
        # snakemake formats the jsonschema error into a multi-line text; the original is the
        # exception being handled when it raised, and gives the key path and the allowed values
        cause = exc.__context__ or exc.__cause__
        if isinstance(cause, jsonschema.ValidationError):
            raise WorkflowError(explain(cause, _config_source())) from None
        raise


def _check_names():
    """Names a run entry refers to must exist, and methods must name a registered algorithm
    (their parameters are checked with every resolved run)."""
    from splitmix.methods import available_algorithms

    datasets, methods = config["datasets"], config["methods"]
    for i, run in enumerate(config["runs"]):
        where = f"config error in {_config_source()} at runs.{i}"
        if run["dataset"] not in datasets:
            raise WorkflowError(
                f"{where}.dataset: {run['dataset']!r} is not in datasets; "
                f"allowed: {', '.join(datasets)}"
            )
        if run["split"] not in datasets[run["dataset"]]["splits"]:
            raise WorkflowError(
                f"{where}.split: {run['split']!r} is not a split of {run['dataset']}; "
                f"allowed: {', '.join(datasets[run['dataset']]['splits'])}"
            )
        for m in run.get("methods") or []:
            if m not in methods:
                raise WorkflowError(
                    f"{where}.methods: {m!r} is not in methods; allowed: {', '.join(methods)}"
                )
    for name in datasets:
        if name not in DATASETS:
            raise WorkflowError(
                f"config error in {_config_source()} at datasets.{name}: unknown dataset; "
                f"allowed: {', '.join(DATASETS)}"
            )
    registered = available_algorithms()
    for name, m in methods.items():
        where = f"config error in {_config_source()} at methods.{name}"
        if m["algorithm"] not in registered:
            raise WorkflowError(
                f"{where}.algorithm: {m['algorithm']!r} is not registered; allowed: "
                f"{', '.join(registered)} (a new method is one file in baselines/)"
            )


def _experiment():
    """The experiment as the training CLI reads it: the config minus the workflow section."""
    return {k: copy.deepcopy(v) for k, v in config.items() if k != "workflow"}


def _resolve_all(exp):
    """Validated RunConfig of every (dataset, split, method, seed) the config asks for.

    Whether this machine can use a run's device is only warned about: the parse (and a dry run)
    may happen where the jobs do not run, e.g. a login node; each train job refuses it where it
    runs, with the same one-line error, before writing anything.
    """
    out = {}
    for key in iter_runs(exp):
        source = f"{_config_source()} (run {'/'.join(map(str, key[:3]))} seed {key[3]})"
        try:
            out[key] = resolve_run(exp, *key, source=source, check_device=False)
        except InvalidValue as exc:
            raise WorkflowError(str(exc)) from None
        except SplitmixError as exc:
            raise WorkflowError(f"config error in {_config_source()} for run {key}: {exc}") from None
    unusable = {c.device: device_problem(c.device) for c in out.values()}
    for device, problem in unusable.items():
        if problem:
            runs = sum(c.device == device for c in out.values())
            logger.warning(
                f"{runs} run(s) train on device {device!r}, which cannot be used here: {problem}; "
                "their train jobs will fail unless they run where it can (e.g. a GPU node)"
            )
    return out


def _plain(value):
    """``value`` with tuples as lists: what YAML can write and the library reads back the same."""
    return json.loads(json.dumps(value))


def run_experiment(cfg):
    """An experiment file's content holding exactly one run, ``cfg``, as the training CLI reads
    it: the resolved values, so no later edit of the workflow's config can change them."""
    values = cfg.to_dict()
    training = {k: v for k, v in values.items() if k not in RESERVED}
    exp = {
        "training": training,
        "datasets": {cfg.dataset: {"splits": {cfg.split: values["split_config"]}}},
        "methods": {cfg.method: {"algorithm": cfg.algorithm, "params": values["method_params"]}},
        "seeds": [cfg.seed],
        "runs": [{"dataset": cfg.dataset, "split": cfg.split, "methods": [cfg.method]}],
    }
    if cfg.data_root is not None:
        exp["data_root"] = cfg.data_root
    return yaml.safe_dump(_plain(exp), sort_keys=True)


def run_config_path(cfg):
    return f"{RUN_CONFIG_DIR}/{cfg.config_hash()}.yaml"


def _write_run_configs(runs):
    """One file per run, named by the run's config hash and never rewritten.

    Parsing (also a dry run, or a run Snakemake's lock refuses) only ever adds files here: a file
    a running job reads keeps its content, whatever another `snakemake` parses meanwhile. The
    name is the config_hash param of rule train, so it reruns nothing by itself.
    """
    for cfg in runs.values():
        path = Path(run_config_path(cfg))
        if path.is_file():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(run_experiment(cfg))
        tmp.replace(path)


_validate_schema()
_check_names()
WF = config["workflow"]
EXP = _experiment()
RUNS = _resolve_all(EXP)
RUN_CONFIG_DIR = "results/config/runs"
_write_run_configs(RUNS)

RUN_DIR = "results/{dataset}/{split}/{method}/seed{seed}"
DATA_ROOT = str(data_root(config.get("data_root")))  # config > $SPLITMIX_DATA > data
REPORT_DIR = f"figures/{WF['name']}"


def _alternatives(names):
    return "|".join(re.escape(n) for n in sorted(set(names), key=len, reverse=True))


wildcard_constraints:
    dataset=_alternatives(config["datasets"]),
    split=_alternatives(s for d in config["datasets"].values() for s in d["splits"]),
    method=_alternatives(config["methods"]),
    seed=r"\d+",


def run_cfg(wildcards):
    key = (wildcards.dataset, wildcards.split, wildcards.method, int(wildcards.seed))
    try:
        return RUNS[key]
    except KeyError:
        raise WorkflowError(
            f"{RUN_DIR.format(**wildcards)} is not part of the runs section of {_config_source()}"
        ) from None


def run_dirs():
    return [RUN_DIR.format(dataset=d, split=s, method=m, seed=n) for d, s, m, n in RUNS]


# ---- progress ----------------------------------------------------------------------------------
def _parallel_jobs():
    """Training jobs that run at a time: the cores over a run's threads (1 where unknown)."""
    try:
        cores = int(workflow.cores)
    except (TypeError, ValueError, AttributeError, WorkflowError):
        return 1  # e.g. `snakemake --report`, which defines no cores
    threads = sorted(cfg.threads for cfg in RUNS.values()) or [1]
    return max(1, min(len(RUNS), cores // max(1, threads[len(threads) // 2])))


def _load_eta():
    spec = importlib.util.spec_from_file_location("eta", REPO / "workflow" / "scripts" / "eta.py")
    eta = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(eta)
    return eta


# The train rule's message shows this: the training time left, estimated when each job starts
# from the finished runs' wall times (workflow/scripts/eta.py).
ETA = _load_eta().Eta(run_dirs(), _parallel_jobs())


# ---- data ------------------------------------------------------------------------------------
def data_manifests(cfg):
    """Prepared-data manifests a run needs (none for bundled datasets)."""
    spec = DATASETS[cfg.dataset]
    if spec.bundled:
        return []
    size = cfg.image_size or spec.image_size
    domains = cfg.split_config.domains or spec.domains
    return [str(prepared_dir(cfg.dataset, d, size, cfg.data_root) / MANIFEST) for d in domains]


def prepare_command(dataset, domain, size):
    spec = DATASETS[dataset]
    extra = "" if int(size) == spec.image_size else f" --size {size}"
    root = config.get("data_root")
    extra += f" --root {root}" if root else ""
    return f"python -m splitmix data prepare {dataset} --domain {domain}{extra}"


def _missing_data():
    missing = sorted({m for cfg in RUNS.values() for m in data_manifests(cfg)})
    return [m for m in missing if not Path(m).is_file()]


MISSING_DATA = _missing_data()
if MISSING_DATA and not WF["prepare_data"]:
    logger.warning(
        f"{len(MISSING_DATA)} prepared data folder(s) missing; the data jobs will fail with the "
        "command to run (or set workflow: {prepare_data: true}):\n  "
        + "\n  ".join(str(Path(m).parent) for m in MISSING_DATA)
    )


# ---- resources ---------------------------------------------------------------------------------
# Rough peak memory (MB) of one training process per model family on CPU, measured with the quick
# default's client counts; the paper grids override them in workflow.resources.
_MEM_MB = {"digits": 3000, "cifar10": 4000, "domainnet": 16000}


def _family(dataset):
    return next((f for f in _MEM_MB if dataset.startswith(f)), "digits")


def mem_mb(wildcards):
    own = WF["resources"].get(wildcards.dataset, {})
    return own.get("mem_mb", _MEM_MB[_family(wildcards.dataset)])


def runtime(wildcards):
    return WF["resources"].get(wildcards.dataset, {}).get("runtime", 60)


def train_priority(wildcards):
    """Snakemake priority of a train job: workflow.start_first's first match ranks highest, every
    other run 0. Snakemake otherwise picks among ready jobs in no useful order, and a long run
    picked last runs alone while the other cores idle."""
    first = WF["start_first"]
    for i, pattern in enumerate(first):
        if fnmatch.fnmatchcase(wildcards.method, pattern):
            return len(first) - i
    return 0


def attack_flag(wildcards):
    """PGD at evaluation for the runs workflow.attack selects (it costs (steps + 1) passes), with
    the one attack of workflow.pgd for every run."""
    mode = WF["attack"]
    on = mode == "all" or (mode == "adversarial" and run_cfg(wildcards).adv.lam > 0)
    if not on:
        return "--no-attack"
    pgd = WF["pgd"]  # the schema fills in its defaults
    flags = f"--attack --pgd-steps {pgd['steps']} --pgd-eps {float(pgd['eps'])!r}"
    if pgd["step_size"] is not None:
        flags += f" --pgd-step-size {float(pgd['step_size'])!r}"
    return flags


def gpus(wildcards):
    return 1 if run_cfg(wildcards).device.startswith("cuda") else 0


# workflow.claims: files or globs, each looked up in the working directory, then in this repository
# (the default: the Split-Mix paper's claims and one file per other paper); null = no check.
def claims_files(entries):
    if entries is None:
        return []
    out = []
    for entry in [entries] if isinstance(entries, str) else entries:
        pattern = glob.has_magic(entry)
        for base in (Path(), REPO):
            found = sorted(base.glob(entry)) if pattern else [base / entry]
            found = [str(f) for f in found if f.is_file()]
            if found:
                break
        if not found and not pattern:  # a glob may match nothing (no other paper's file here)
            raise WorkflowError(
                f"config error in {_config_source()} at workflow.claims: {entry!r} does not exist "
                f"(in the working directory or in {REPO}); name claims files (docs/claims.md) "
                "or set it to null"
            )
        out += [f for f in found if f not in out]
    return out

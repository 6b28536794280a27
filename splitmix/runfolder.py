"""The files of one run folder in one place: their names, the columns of the training logs, and
reading and writing the run record ``run.json``.

Training (``splitmix.fl.engine``) writes the folder, the evaluation and the report read it, and the
workflow declares its files as job outputs and inputs. All of them take the names from here, so a
renamed file or column cannot leave one reader behind. No torch import: Snakemake imports this
module while it parses the workflow.

Layout of ``results/<dataset>/<split>/<method>/seed<N>/``:

``checkpoint.pt``, ``checkpoint-best.pt``
    Resume state (latest state, best state so far); the workflow deletes both once a job succeeds.
``best.pt``
    The best-validation model, published when the run finishes.
``log.csv``
    One row per round: ``LOG_COLUMNS``, then ``<kind>@<width>`` per validated width and kind
    (``curve_column``), then ``metric`` (the selection metric).
``comm.csv``
    One row per (round, client that took part): ``COMM_COLUMNS``.
``run.json``
    The run record, written last: its presence means the run is complete.
``eval.csv``
    The evaluation's rows (``splitmix.evaluate.rows``).
``eval.json``
    The evaluation record: the machine, device and thread count its latencies were measured
    on (``eval_record_path`` of the rows file).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from splitmix.atomic import atomic_write_text
from splitmix.errors import DataError

CHECKPOINT = "checkpoint.pt"
BEST_STATE = "checkpoint-best.pt"  # best model so far; becomes best.pt when the run finishes
BEST = "best.pt"
LOG = "log.csv"
COMM = "comm.csv"
RUN_RECORD = "run.json"
EVAL = "eval.csv"
EVAL_RECORD = "eval.json"
# everything training writes (a restart deletes all of it)
OUTPUTS = (CHECKPOINT, BEST_STATE, BEST, LOG, COMM, RUN_RECORD)
# what a finished run keeps; the rest is resume state, deleted once the workflow's job succeeds
PUBLISHED = (BEST, LOG, COMM, RUN_RECORD)
RESUME_STATE = (CHECKPOINT, BEST_STATE)

COMM_COLUMNS = ("round", "client", "bytes_down", "bytes_up", "seconds")
# log.csv: these columns first, then the validation curves, then METRIC
LOG_COLUMNS = ("round", "lr", "seconds", "train_loss", "bytes_up", "bytes_down", "n_clients")
METRIC = "metric"
VAL_ACC, VAL_LOSS, VAL_RA = "val_acc", "val_loss", "val_ra"  # kinds of validation curve
_AT = "@"

# Key of run.json's ``algorithm`` entry: the method trains one model of one width per run (its
# widths are separate runs, e.g. FedAvg). The report merges such runs into one column by it.
ONE_RUN_PER_WIDTH = "one_run_per_width"


# ---- log.csv column names ---------------------------------------------------------------------
def width_key(width: float) -> str:
    """Column suffix of a width: ``0.125``, ``0.5``, ``1``."""
    return f"{width:g}"


def curve_prefix(kind: str) -> str:
    """``val_acc@``: the start of every column of that kind of validation curve."""
    return f"{kind}{_AT}"


def curve_column(kind: str, width: float) -> str:
    """log.csv column of a validation curve at one width, e.g. ``val_acc@0.125``."""
    return f"{curve_prefix(kind)}{width_key(width)}"


def log_columns(widths: Iterable[float], robust: bool) -> list[str]:
    """Every log.csv column of a run validating ``widths`` (``robust``: with ``val_ra``)."""
    kinds = (VAL_ACC, VAL_LOSS) + ((VAL_RA,) if robust else ())
    ws = list(widths)
    return [*LOG_COLUMNS, *(curve_column(k, w) for k in kinds for w in ws), METRIC]


# ---- run.json ---------------------------------------------------------------------------------
def read_record(run_dir: str | Path, *, missing_ok: bool = False) -> dict[str, Any] | None:
    """The run record of ``run_dir``; one-line ``DataError`` naming the file if it is absent
    (None instead with ``missing_ok``), not JSON or not a run record."""
    path = Path(run_dir) / RUN_RECORD
    if not path.is_file():
        if missing_ok:
            return None
        raise DataError(
            f"{path}: missing; the run is not finished (run.json is written last) - complete it "
            "with `python -m splitmix train` first"
        )
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(record, dict) or "config" not in record:
        raise DataError(f"{path}: has no 'config' entry; it is not a splitmix run record")
    return record


def write_record(run_dir: str | Path, record: dict[str, Any]) -> Path:
    """Write ``record`` as ``run_dir/run.json``, atomically and durably: its presence marks the
    run complete, so it must never be seen half-written or be lost after a crash."""
    path = Path(run_dir) / RUN_RECORD
    text = json.dumps(record, indent=2, default=_json_default) + "\n"
    atomic_write_text(path, text, durable=True)
    return path


def _json_default(obj: Any) -> Any:
    """JSON for what a record may hold besides JSON types: numpy values, tuples and sets."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray | tuple | set):
        return list(obj.tolist() if isinstance(obj, np.ndarray) else obj)
    return str(obj)


# ---- eval.json --------------------------------------------------------------------------------
def eval_record_path(rows_file: str | Path) -> Path:
    """The evaluation record beside a rows file: ``eval.csv`` -> ``eval.json``."""
    return Path(rows_file).with_suffix(".json")


def write_eval_record(rows_file: str | Path, record: dict[str, Any]) -> Path:
    """Write the evaluation record of ``rows_file`` atomically."""
    path = eval_record_path(rows_file)
    atomic_write_text(path, json.dumps(record, indent=2, default=_json_default) + "\n")
    return path


def read_eval_record(rows_file: str | Path) -> dict[str, Any] | None:
    """The evaluation record of ``rows_file``, or None if it has none (rows written before
    records existed) or it is unreadable (the report then names no machine for it)."""
    path = eval_record_path(rows_file)
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return record if isinstance(record, dict) else None

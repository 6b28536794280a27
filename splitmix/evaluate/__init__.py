"""Evaluation: accuracy per width/lambda/client/domain, PGD robustness, cost (MACs, FLOPs, params,
bytes), communication and time, written as schema-checked long-format rows (docs/evaluation.md).

Entry points: ``evaluate_run(run_dir, EvalOptions(...))`` and ``read_rows(path)``.
"""

from splitmix.evaluate.cost import ModelCost, count_flops, model_cost
from splitmix.evaluate.rows import COLUMNS, METRICS, RunKey, check_rows, read_rows, write_rows
from splitmix.evaluate.run import EvalOptions, evaluate_run, restore_run

__all__ = [
    "COLUMNS",
    "METRICS",
    "EvalOptions",
    "ModelCost",
    "RunKey",
    "check_rows",
    "count_flops",
    "evaluate_run",
    "restore_run",
    "model_cost",
    "read_rows",
    "write_rows",
]

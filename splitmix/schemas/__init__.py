"""The config schema of splitmix-bench and the one-line messages that explain its failures.

``config.schema.yaml`` beside this file is the one statement of which values a config may hold.
It ships inside the package so that an installed library checks a run exactly as the workflow
does: Snakemake validates a whole experiment file against it (``workflow/rules/common.smk``), and
``splitmix.config.validate_run`` checks every resolved run against its ``training`` part. Both
phrase a failure with ``explain``, so the CLI and the workflow print the same kind of line.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from jsonschema.exceptions import ValidationError, best_match

# A real file (not an importlib.resources handle): Snakemake's validate() opens it by path.
SCHEMA_PATH = Path(__file__).with_name("config.schema.yaml")

# Validators whose own message says what is wrong but not what would be right.
_LEAF = ("type", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "const")


@cache
def load_schema() -> dict[str, Any]:
    """The schema as a dict (read once; callers must not modify it)."""
    return yaml.safe_load(SCHEMA_PATH.read_text())


def where(error: ValidationError, prefix: str = "") -> str:
    """The dotted key path of ``error`` (``adv.lam``), as a user would write it in ``--set``."""
    path = ".".join(str(p) for p in error.absolute_path)
    return ".".join(p for p in (prefix, path) if p) or "(top level)"


def option(schema: dict[str, Any]) -> str:
    """A (sub)schema as a short phrase: -1, null, 'integer >= 1', 'number > 0 and <= 1', ..."""
    if "const" in schema:
        return repr(schema["const"])
    if "enum" in schema:
        return " | ".join(map(repr, schema["enum"]))
    bounds = [
        f"{sign} {schema[key]}"
        for key, sign in (
            ("minimum", ">="),
            ("exclusiveMinimum", ">"),
            ("maximum", "<="),
            ("exclusiveMaximum", "<"),
        )
        if key in schema
    ]
    head = str(schema.get("type", "value"))
    if bounds:
        head += f" {bounds[0]}"
    return " and ".join([head, *bounds[1:]])


def explain(error: ValidationError, source: str = "", prefix: str = "") -> str:
    """One line naming the key, what is wrong and what is allowed.

    ``source`` names where the values came from (a config file, ``--set``); ``prefix`` is put
    before the error's own key path when the instance validated was part of a larger document.
    """
    message, schema = error.message, error.schema
    if error.parent is not None and error.parent.validator in ("oneOf", "anyOf"):
        # best_match picked the complaint of one alternative; all of them say what is allowed
        error, schema = error.parent, error.parent.schema
        message += f"; allowed: {' or '.join(option(s) for s in error.validator_value)}"
    elif error.validator == "additionalProperties":
        allowed = sorted(schema.get("properties", {}))
        if allowed:
            message += f"; allowed keys: {', '.join(allowed)}"
    elif error.validator in ("oneOf", "anyOf"):
        message += f"; allowed: {' or '.join(option(s) for s in error.validator_value)}"
    elif error.validator in _LEAF:
        message += f"; allowed: {option(schema)}"
    elif error.validator == "pattern" and schema.get("description"):
        # the description says in words what the regex allows; the regex itself helps nobody
        allowed = " ".join(schema["description"].split())
        message = f"{error.instance!r} is not of the allowed form; allowed: {allowed}"
        return _line(message, error, source, prefix)
    if schema.get("description") and error.validator != "additionalProperties":
        message += f" ({' '.join(schema['description'].split())})"
    return _line(message, error, source, prefix)


def _line(message: str, error: ValidationError, source: str, prefix: str) -> str:
    origin = f" in {source}" if source else ""
    return f"config error{origin} at {where(error, prefix)}: {message}"


def first_error(instance: Any, schema: dict[str, Any]) -> ValidationError | None:
    """The error jsonschema itself would raise for ``instance`` (its best match), or None.

    ``schema`` may ``$ref`` the definitions of the config schema (``#/$defs/training``).
    """
    full = {**schema, "$defs": load_schema()["$defs"]}
    validator = jsonschema.Draft202012Validator(full)
    return best_match(validator.iter_errors(instance))

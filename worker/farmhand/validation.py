"""JSON Schema validation that names every bad field in words an operator can act on."""

from __future__ import annotations

import json
import re
from functools import cache
from importlib import resources
from typing import Any, Iterator

from jsonschema import Draft202012Validator, validators
from jsonschema.exceptions import ValidationError


def _ecma_pattern(validator: Any, pattern: str, instance: Any, schema: dict[str, Any]) -> Iterator[ValidationError]:
    """``pattern`` as JSON Schema means it (ECMA-262): a final ``$`` is the end of the string.

    Python's ``$`` also matches before a trailing newline, which would let
    "512m\n" or "name\n" through every anchored pattern of our schemas.
    """
    if not validator.is_type(instance, "string"):
        return
    match = re.search(pattern, instance)
    anchored = pattern.endswith("$") and not pattern.endswith("\\$")
    if match is None or (anchored and match.end() != len(instance)):
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


#: Draft 2020-12 with ECMA end-anchor semantics for "pattern".
StrictValidator = validators.extend(Draft202012Validator, {"pattern": _ecma_pattern})


@cache
def load_schema(name: str) -> dict[str, Any]:
    """Schemas ship inside the package so the worker and its clients agree on one contract."""
    text = resources.files("farmhand.schemas").joinpath(name).read_text(encoding="utf-8")
    schema = json.loads(text)
    Draft202012Validator.check_schema(schema)
    return schema


@cache
def validator(name: str) -> Any:
    return StrictValidator(load_schema(name))


def field_path(error: ValidationError, root: str) -> str:
    parts = [root]
    for p in error.absolute_path:
        parts.append(f"[{p}]" if isinstance(p, int) else f".{p}")
    return "".join(parts)


def describe(error: ValidationError, root: str) -> list[str]:
    """One line per problem, starting with the field it concerns.

    jsonschema reports an unknown key against its parent object and a oneOf
    failure without saying which branch was meant; both are rewritten so that
    the line starts with the offending field itself.
    """
    path = field_path(error, root)
    if _is_secret(error):
        # A password's value never goes into a message, whatever is wrong with it.
        kind = error.validator if error.validator in ("type", "enum", "const") else "value"
        expected = error.schema.get("type") if kind == "type" else None
        return [f"{path}: invalid {kind}" + (f" (expected {expected})" if expected else "")]
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        allowed = set(error.schema.get("properties", {}))
        extra = sorted((k for k in error.instance if k not in allowed), key=str)
        return [f"{path}.{k}: unknown field" for k in extra]
    if error.validator == "required":
        missing = error.message.split("'")[1] if "'" in error.message else error.message
        return [f"{path}.{missing}: required field is missing"]
    if error.validator == "propertyNames":
        return [f"{path}: key {error.instance!r} is not allowed ({error.message})"]
    if error.validator in ("oneOf", "anyOf"):
        desc = error.schema.get("description") or _describe_branches(error.schema)
        return [f"{path}: {error.instance!r} is not valid: expected {desc}"]
    return [f"{path}: {error.message}"]


def _is_secret(error: ValidationError) -> bool:
    return any(isinstance(part, str) and "password" in part.lower() for part in error.absolute_path)


def _describe_branches(schema: dict[str, Any]) -> str:
    kinds = []
    for branch in schema.get("oneOf", schema.get("anyOf", [])):
        kinds.append(str(branch.get("type", "value")))
    return " or ".join(kinds)


def errors_for(schema_name: str, document: Any, root: str) -> list[str]:
    """All schema problems of ``document``, sorted by field, empty when it is valid."""
    lines: list[str] = []
    for err in validator(schema_name).iter_errors(document):
        lines.extend(describe(err, root))
    return sorted(set(lines))

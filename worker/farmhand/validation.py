"""JSON Schema validation that names every bad field in words an operator can act on.

Documents may be hostile, so checking one is bounded work with a bounded
answer: before the schema sees a document, an iterative walk refuses what the
schema cannot judge safely (nesting too deep for recursion, more values than
any real document has, numbers that are not finite, keys that are not
strings, values JSON has no word for). Messages quote a bounded prefix of a
bad value, never a secret, and the list of problems is cut after
``MAX_LINES`` with a line that says how many more there are.
"""

from __future__ import annotations

import itertools
import json
import math
import re
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any, Iterable, Iterator, Mapping

from jsonschema import Draft202012Validator, validators
from jsonschema.exceptions import ValidationError

#: How deep a document may nest (the deepest real task field is 5 levels down).
MAX_DEPTH = 32
#: How many values (scalars and containers) a document may hold in all.
MAX_VALUES = 100_000
#: Integers longer than this many bits are no count, size or time any host has.
MAX_INT_BITS = 128
#: Problems listed in one refusal; the rest are counted.
MAX_LINES = 50
#: How much of a bad value a message quotes.
QUOTE_CHARS = 60
#: Schema errors looked at, at most, for one document.
MAX_SCHEMA_ERRORS = 1000

_NOT_SHOWN = "(secret, not shown)"
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")


# -- quoting -------------------------------------------------------------------------------


def clip(text: str, limit: int = QUOTE_CHARS) -> str:
    """``text`` itself when short, else its first ``limit`` characters and how long it was."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text)} chars)"


def quote(value: Any, secrets: Iterable[str] = ()) -> str:
    """A short, one-line rendering of ``value`` for a message: a string's first characters, a container's size."""
    if isinstance(value, str):
        masked = _mask(value, secrets)
        if len(masked) <= QUOTE_CHARS:
            return repr(masked)
        return f"{masked[:QUOTE_CHARS]!r}... ({len(masked)} chars)"
    if isinstance(value, bool) or value is None:
        return repr(value)
    if isinstance(value, int):
        if value.bit_length() > MAX_INT_BITS:
            return f"an integer of about {int(value.bit_length() * 0.30103) + 1} digits"
        return _mask(repr(value), secrets)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return f"a list of {len(value)} item{'s' if len(value) != 1 else ''}"
    if isinstance(value, dict):
        return f"a mapping of {len(value)} key{'s' if len(value) != 1 else ''}"
    try:
        text = repr(value)
    except Exception:  # a hostile object's repr: say what it is, no more
        text = f"<{type(value).__name__}>"
    return clip(_mask(text, secrets))


def _mask(text: str, secrets: Iterable[str]) -> str:
    for value in sorted({s for s in secrets if s}, key=len, reverse=True):
        text = text.replace(value, "***")
    return text


def path_part(key: Any) -> str:
    """One step of a field path: ``[3]`` for a list index, ``.name`` for a key (a long key is cut)."""
    if isinstance(key, int) and not isinstance(key, bool):
        return f"[{key}]"
    if isinstance(key, str):
        return "." + clip(key)
    return "." + quote(key)


def _short_path(path: str) -> str:
    if len(path) <= 3 * QUOTE_CHARS:
        return path
    return f"{path[:QUOTE_CHARS]}...{path[-QUOTE_CHARS:]}"


def bounded(lines: list[str], root: str) -> list[str]:
    """At most ``MAX_LINES`` lines; past that, one more line saying how many were left out."""
    if len(lines) <= MAX_LINES:
        return lines
    return lines[:MAX_LINES] + [f"{root}: and {len(lines) - MAX_LINES} more problems not shown"]


# -- secrets -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Secrets:
    """What a message must not show: the values under env of the names a task lists in secret_env.

    ``names`` is None when secret_env itself is unreadable: then every env value is secret.
    """

    names: frozenset[str] | None = frozenset()
    values: tuple[str, ...] = ()

    def covers(self, parts: tuple[Any, ...]) -> bool:
        if any(isinstance(p, str) and "password" in p.lower() for p in parts):
            return True
        # task.env.NAME... and task.services[i].env.NAME...
        for i in range(len(parts) - 1):
            if parts[i] == "env" and (i == 0 or (i == 2 and parts[0] == "services")):
                name = parts[i + 1]
                return self.names is None or name in self.names
        return False


def secrets_of(document: Any) -> Secrets:
    """The secrets of a task document, however malformed it is."""
    if not isinstance(document, dict):
        return Secrets()
    listed = document.get("secret_env")
    if listed is None:
        names: frozenset[str] | None = frozenset()
    elif isinstance(listed, list) and all(isinstance(n, str) for n in listed):
        names = frozenset(listed)
    else:
        names = None
    if names == frozenset():
        return Secrets()
    values: list[str] = []
    envs = [document.get("env")]
    services = document.get("services")
    if isinstance(services, list):
        envs += [s.get("env") for s in services if isinstance(s, dict)]
    for env in envs:
        if not isinstance(env, dict):
            continue
        for name, value in env.items():
            if names is not None and name not in names:
                continue
            if isinstance(value, str):
                values.append(value)
            elif isinstance(value, (int, float)) and not isinstance(value, bool) and (not isinstance(value, int) or value.bit_length() <= MAX_INT_BITS):
                values.append(repr(value))
    return Secrets(names, tuple(values))


# -- the walk before the schema ------------------------------------------------------------


def document_problems(document: Any, root: str, secrets: Secrets = Secrets()) -> tuple[list[str], bool]:
    """What the schema cannot be asked about; ``fatal`` when the schema must not see the document at all.

    Iterative, so that no nesting depth can exhaust the stack; stops at the
    first value past ``MAX_VALUES`` and does not descend past ``MAX_DEPTH``.
    """
    problems: list[str] = []
    fatal = False
    count = 0
    stack: list[tuple[Any, str, tuple[Any, ...]]] = [(document, root, ())]
    while stack:
        value, path, parts = stack.pop()
        count += 1
        if count > MAX_VALUES:
            problems.append(f"{root}: holds more than {MAX_VALUES} values; no task needs that many")
            return problems, True
        secret = secrets.covers(parts)
        if isinstance(value, (dict, list)):
            if len(parts) >= MAX_DEPTH:
                problems.append(f"{_short_path(path)}: nested more than {MAX_DEPTH} levels deep")
                fatal = True
                continue
            if isinstance(value, dict):
                children = []
                for key, child in value.items():
                    if not isinstance(key, str):
                        shown = _NOT_SHOWN if secret else quote(key, secrets.values)
                        problems.append(f"{_short_path(path)}: key {shown} is a {_kind(key)}, but keys must be strings")
                    elif _SURROGATE.search(key):
                        problems.append(f"{_short_path(path)}: key {quote(key)} holds a lone surrogate, which is not Unicode text")
                    children.append((child, path + path_part(key), parts + (key,)))
            else:
                children = [(child, f"{path}[{i}]", parts + (i,)) for i, child in enumerate(value)]
            stack.extend(reversed(children))
            continue
        if isinstance(value, str):
            if _SURROGATE.search(value):
                problems.append(f"{_short_path(path)}: {_NOT_SHOWN if secret else quote(value, secrets.values)} holds a lone surrogate, which is not Unicode text")
            continue
        if isinstance(value, bool) or value is None:
            continue
        if isinstance(value, int):
            if value.bit_length() > MAX_INT_BITS:
                problems.append(f"{_short_path(path)}: {_NOT_SHOWN if secret else quote(value)} is far too large a number")
                fatal = True  # the schema's messages would try to print it
            continue
        if isinstance(value, float):
            if not math.isfinite(value):
                shown = _NOT_SHOWN if secret else repr(value)
                problems.append(f"{_short_path(path)}: {shown} is not a finite number")
            continue
        shown = "" if secret else f" {quote(value, secrets.values)}"
        problems.append(f"{_short_path(path)}: a {_kind(value)} value{shown} is not allowed (JSON values only: string, number, boolean, null, list, mapping){' ' + _NOT_SHOWN if secret else ''}")
    return problems, fatal


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if value is None:
        return "null"
    return type(value).__name__


# -- the schema ----------------------------------------------------------------------------


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


_BASE = Draft202012Validator.VALIDATORS


def _unless_too_many(keyword: str, kind: str, limit: str) -> Any:
    """``keyword`` as usual, skipped when the container already breaks its size ``limit``.

    That error says all that matters, and skipping keeps the work bounded: no
    uniqueItems over a hundred thousand objects (quadratic), no error per item.
    """
    base = _BASE[keyword]

    def check(validator: Any, value: Any, instance: Any, schema: dict[str, Any]) -> Iterator[ValidationError]:
        if validator.is_type(instance, kind) and len(instance) > schema.get(limit, math.inf):
            return
        yield from base(validator, value, instance, schema)

    return check


#: Draft 2020-12 with ECMA end-anchor semantics for "pattern" and size limits checked first.
StrictValidator = validators.extend(
    Draft202012Validator,
    {
        "pattern": _ecma_pattern,
        "items": _unless_too_many("items", "array", "maxItems"),
        "uniqueItems": _unless_too_many("uniqueItems", "array", "maxItems"),
        "additionalProperties": _unless_too_many("additionalProperties", "object", "maxProperties"),
        "propertyNames": _unless_too_many("propertyNames", "object", "maxProperties"),
    },
)


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
    return _short_path(root + "".join(path_part(p) for p in error.absolute_path))


def describe(error: ValidationError, root: str, secrets: Secrets = Secrets()) -> list[str]:
    """One line per problem, starting with the field it concerns.

    jsonschema reports an unknown key against its parent object and a oneOf
    failure without saying which branch was meant; both are rewritten so that
    the line starts with the offending field itself. Values are quoted by a
    bounded prefix, and never where they are secret.
    """
    path = field_path(error, root)
    if secrets.covers(tuple(error.absolute_path)):
        # A secret's value never goes into a message, whatever is wrong with it.
        kind = error.validator if error.validator in ("type", "enum", "const") else "value"
        expected = error.schema.get("type") if kind == "type" else None
        return [f"{path}: invalid {kind}" + (f" (expected {expected})" if expected else "") + f" {_NOT_SHOWN}"]
    instance, value, schema = error.instance, error.validator_value, error.schema
    shown = quote(instance, secrets.values)
    kind = error.validator
    if kind == "additionalProperties" and isinstance(instance, dict):
        allowed = set(schema.get("properties", {}))
        extra = sorted((k for k in instance if k not in allowed), key=str)
        return [f"{_short_path(path + path_part(k))}: unknown field" for k in extra]
    if kind == "required":
        missing = error.message.split("'")[1] if "'" in error.message else error.message
        return [f"{path}.{missing}: required field is missing"]
    if kind == "propertyNames":
        return [f"{path}: key {quote(instance, secrets.values)} is not allowed ({_reason(error, secrets)})"]
    if kind in ("oneOf", "anyOf"):
        desc = schema.get("description") or _describe_branches(schema)
        return [f"{path}: {shown} is not valid: expected {desc}"]
    return [f"{path}: {_reason(error, secrets)}"]


def _reason(error: ValidationError, secrets: Secrets) -> str:
    """Why ``error.instance`` fails ``error.validator``, in words that quote it by a bounded prefix."""
    instance, value, kind = error.instance, error.validator_value, error.validator
    shown = quote(instance, secrets.values)
    if kind == "type":
        expected = " or ".join(value) if isinstance(value, list) else value
        return f"{shown} is not of type {expected!r}"
    if kind == "enum":
        return f"{shown} is not one of {', '.join(quote(v) for v in value)}"
    if kind == "const":
        return f"{shown} is not {quote(value)}"
    if kind == "pattern":
        control = _CONTROL.search(instance) if isinstance(instance, str) else None
        if control is not None:
            return f"{shown} holds a control character ({control.group()!r} at {control.start()}), which is not allowed here"
        return f"{shown} does not match {value!r}"
    if kind == "maxLength":
        return f"{shown} is too long (at most {value} characters)"
    if kind == "minLength":
        return f"{shown} is too short (at least {value} character{'s' if value != 1 else ''})"
    if kind in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        words = {"minimum": "less than the minimum of", "maximum": "more than the maximum of", "exclusiveMinimum": "not above", "exclusiveMaximum": "not below"}
        return f"{shown} is {words[kind]} {value}"
    if kind == "maxItems":
        return f"{len(instance)} items, more than the {value} allowed"
    if kind == "minItems":
        return f"{shown} has fewer than {value} item{'s' if value != 1 else ''}"
    if kind == "uniqueItems":
        return "has repeated items"
    if kind == "maxProperties":
        return f"{len(instance)} keys, more than the {value} allowed"
    if kind == "minProperties":
        return f"has fewer than {value} keys"
    return f"{shown} is not valid ({kind})"


def _describe_branches(schema: dict[str, Any]) -> str:
    kinds = []
    for branch in schema.get("oneOf", schema.get("anyOf", [])):
        kinds.append(str(branch.get("type", "value")))
    return " or ".join(kinds)


def errors_for(schema_name: str, document: Any, root: str, secrets: Secrets | None = None) -> list[str]:
    """All problems of ``document``, sorted by field and cut to a readable few; empty when it is valid.

    ``secrets`` defaults to those the document itself declares (secret_env).
    """
    if secrets is None:
        secrets = secrets_of(document)
    problems, fatal = document_problems(document, root, secrets)
    if fatal:
        return bounded(problems, root)
    lines: list[str] = list(problems)
    for err in itertools.islice(validator(schema_name).iter_errors(document), MAX_SCHEMA_ERRORS):
        if isinstance(err.instance, float) and not math.isfinite(err.instance):
            continue  # already said: not a finite number
        lines.extend(describe(err, root, secrets))
    return bounded(sorted(set(lines)), root)


def mask_secrets(value: Any, secrets: Iterable[str]) -> Any:
    """A copy of ``value`` with every occurrence of every secret replaced by ``***``, in keys and strings alike."""
    ordered = sorted({s for s in secrets if s}, key=len, reverse=True)
    if not ordered:
        return value

    def mask(text: str) -> str:
        for secret in ordered:
            text = text.replace(secret, "***")
        return text

    def walk(node: Any) -> Any:
        if isinstance(node, str):
            return mask(node)
        if isinstance(node, Mapping):
            return {mask(k) if isinstance(k, str) else k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    return walk(value)

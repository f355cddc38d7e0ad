"""Reading task and config files that may be hostile: bounded size, bounded depth, no expansion.

A document is JSON when its text parses as JSON (so tab-indented JSON is
JSON, and ``5e0`` is a number), YAML otherwise. Either way:

- the file is read only up to ``MAX_DOCUMENT_BYTES``: a bigger one is refused
  unread;
- nesting deeper than ``validation.MAX_DEPTH`` is refused while parsing,
  without recursion (the YAML composer here is a loop over libyaml's events);
- YAML anchors and aliases are refused where they appear (line, column):
  no billion laughs, no document that is small on disk and huge in memory;
- every mapping key must be a string, and given once: duplicate keys are
  refused naming the field instead of the last one silently winning;
- YAML values must be what JSON has: strings, numbers, booleans, null, lists
  and mappings. A date, binary, set or custom tag is refused naming the field.

Problems of the text as a whole start with the file's name; problems of one
field start with its path (``task.labels``), like the schema's.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml
import yaml.reader
from yaml.constructor import SafeConstructor
from yaml.events import (
    AliasEvent,
    DocumentEndEvent,
    DocumentStartEvent,
    MappingEndEvent,
    MappingStartEvent,
    ScalarEvent,
    SequenceEndEvent,
    SequenceStartEvent,
    StreamEndEvent,
    StreamStartEvent,
)
from yaml.nodes import MappingNode, ScalarNode, SequenceNode
from yaml.resolver import Resolver

from farmhand.validation import MAX_DEPTH, MAX_VALUES, bounded, clip, path_part

#: Bigger files are refused without being read (a real task is a few KiB).
MAX_DOCUMENT_BYTES = 1024 * 1024
#: Integers written with more digits than this are refused as they are read.
MAX_INT_DIGITS = 40

try:  # libyaml: events at C speed; the composing is ours either way
    from yaml._yaml import CParser as _EventParser
except ImportError:  # pragma: no cover - PyYAML built without libyaml
    from yaml.parser import Parser
    from yaml.reader import Reader
    from yaml.scanner import Scanner

    class _EventParser(Reader, Scanner, Parser):  # type: ignore[no-redef]
        def __init__(self, stream: str) -> None:
            Reader.__init__(self, stream)
            Scanner.__init__(self)
            Parser.__init__(self)


class DocumentError(ValueError):
    """A document that cannot be used; ``errors`` are lines, each starting with what it concerns.

    ``what`` is the document when every line names one of its fields, the
    file when a line concerns the text as a whole.
    """

    def __init__(self, what: str, errors: list[str]) -> None:
        self.what = what
        self.errors = errors
        super().__init__(f"{what} is invalid:\n" + "\n".join(f"  - {e}" for e in errors))


def read_document(path: str | Path, *, root: str = "task", max_bytes: int = MAX_DOCUMENT_BYTES) -> Any:
    """The document in file ``path``: read at most ``max_bytes`` (+1, to know it is bigger), then parsed."""
    p = Path(path)
    what = f"{root} file"
    try:
        with p.open("rb") as f:
            data = f.read(max_bytes + 1)
    except OSError as exc:
        raise DocumentError(what, [f"{p}: cannot be read: {exc.strerror or exc}"]) from None
    if len(data) > max_bytes:
        raise DocumentError(what, [f"{p}: is larger than {max_bytes} bytes; a {root} document is refused unread past that"])
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DocumentError(what, [f"{p}: is not UTF-8 text: {exc.reason} at byte {exc.start}"]) from None
    return load_document(text, root=root, source=str(p))


def load_document(text: str, *, root: str = "task", source: str = "document") -> Any:
    """``text`` as JSON when it is JSON, else as (safe, alias-free) YAML."""
    what = f"{root} file" if source != "document" else root
    if len(text) > MAX_DOCUMENT_BYTES:
        raise DocumentError(what, [f"{source}: is larger than {MAX_DOCUMENT_BYTES} characters"])
    found, value = _json(text, root, source, what)
    if found:
        return value
    return _yaml(text, root, source, what)


# -- JSON ----------------------------------------------------------------------------------

# What can hide a bracket (a double-quoted string, a YAML single-quoted one, a YAML comment),
# or a bracket. An unterminated string runs to the end: no rescanning, linear time.
_BRACKETS = re.compile(r"""
    "[^"\\]*(?:\\.[^"\\]*)*(?:"|\Z)
  | '[^']*(?:''[^']*)*(?:'|\Z)
  | (?:^|(?<=\s))\#[^\n]*
  | [\[\]{}]
""", re.DOTALL | re.MULTILINE | re.VERBOSE)


class _LongNumber:
    """An integer literal too long to be one; named with its field once the document is built."""

    def __init__(self, digits: int) -> None:
        self.digits = digits


def _json_int(literal: str) -> Any:
    digits = len(literal.lstrip("-"))
    return int(literal) if digits <= MAX_INT_DIGITS else _LongNumber(digits)


def _too_deep(text: str) -> int | None:
    """Where brackets first nest past ``MAX_DEPTH`` (an offset in ``text``), counted before any parser recurses."""
    depth = 0
    for match in _BRACKETS.finditer(text):
        token = match.group()
        if token in ("[", "{"):
            depth += 1
            if depth > MAX_DEPTH:
                return match.start()
        elif token in ("]", "}"):
            depth -= 1
    return None


def _json(text: str, root: str, source: str, what: str) -> tuple[bool, Any]:
    """(True, value) when ``text`` is JSON; (False, None) when it is not, for YAML to try.

    Raises ``DocumentError`` for JSON (or JSON-looking text) that nests too
    deep, repeats a key or writes an integer of absurd length.
    """
    if text.lstrip()[:1] not in ("{", "["):
        return False, None  # a task or a config is a mapping; anything else is YAML's to judge
    deep = _too_deep(text)
    if deep is not None:
        line = text.count("\n", 0, deep) + 1
        column = deep - (text.rfind("\n", 0, deep) + 1) + 1
        raise DocumentError(what, [f"{source}: line {line}, column {column}: nested more than {MAX_DEPTH} levels deep"])
    duplicates: list[tuple[dict[str, Any], str]] = []

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        obj: dict[str, Any] = {}
        for key, value in items:
            if key in obj:
                duplicates.append((obj, key))
            obj[key] = value
        return obj

    try:
        value = json.loads(text, object_pairs_hook=pairs, parse_int=_json_int)
    except RecursionError:  # not reached after the depth scan; kept so no input can crash the reader
        raise DocumentError(what, [f"{source}: nested more than {MAX_DEPTH} levels deep"]) from None
    except ValueError:
        return False, None
    errors = _json_problems(value, root, duplicates)
    if errors:
        raise DocumentError(root, bounded(errors, root))
    return True, value


def _json_problems(document: Any, root: str, duplicates: list[tuple[dict[str, Any], str]]) -> list[str]:
    """Duplicate keys and over-long integers, each named by its field."""
    dup_keys: dict[int, list[str]] = {}
    for obj, key in duplicates:
        dup_keys.setdefault(id(obj), []).append(key)
    errors: list[str] = []
    stack: list[tuple[Any, str]] = [(document, root)]
    seen = 0
    while stack and seen <= MAX_VALUES:
        value, path = stack.pop()
        seen += 1
        if isinstance(value, dict):
            for key in sorted(set(dup_keys.get(id(value), ()))):
                errors.append(f"{path}{path_part(key)}: given more than once; each key may appear only once")
            stack.extend((v, path + path_part(k)) for k, v in value.items())
        elif isinstance(value, list):
            stack.extend((v, f"{path}[{i}]") for i, v in enumerate(value))
        elif isinstance(value, _LongNumber):
            errors.append(f"{path}: an integer of {value.digits} digits is far too large a number")
    return sorted(errors)


# -- YAML ----------------------------------------------------------------------------------

_TAG = "tag:yaml.org,2002:"
_SCALAR_TAGS = {_TAG + t for t in ("str", "int", "float", "bool", "null")}
_NAMES = {
    "timestamp": "date",
    "binary": "binary value",
    "merge": "merge key (<<)",
    "value": "value key (=)",
    "set": "set",
    "omap": "ordered map",
    "pairs": "list of pairs",
}


class _Refused(yaml.MarkedYAMLError):
    pass


def _tag_name(tag: str) -> str:
    if tag.startswith(_TAG):
        short = tag[len(_TAG):]
        return f"YAML {_NAMES.get(short, short)}"
    return f"value tagged {clip(tag, 40)!r}"


class _Frame:
    __slots__ = ("container", "path", "key", "key_line", "lines")

    def __init__(self, container: Any, path: str) -> None:
        self.container = container
        self.path = path
        self.key: Any = _NO_KEY  # for a mapping: the key whose value comes next
        self.key_line = 0
        self.lines: dict[str, int] = {}  # for a mapping: the line each key was first given on


_NO_KEY = object()
_BAD_KEY = object()


def _yaml(text: str, root: str, source: str, what: str) -> Any:
    parser = None
    try:
        parser = _EventParser(text)
        return _compose(parser, root)
    except _Refused as exc:
        raise DocumentError(what, [f"{source}: {_where(exc.problem_mark)}{exc.problem}"]) from None
    except yaml.reader.ReaderError as exc:  # a character YAML refuses outright (control characters...)
        line = text.count("\n", 0, exc.position) + 1 if isinstance(exc.position, int) else "?"
        char = f"U+{exc.character:04X}" if isinstance(exc.character, int) else repr(exc.character)
        raise DocumentError(what, [f"{source}: line {line}: not valid YAML or JSON: character {char} is not allowed ({exc.reason})"]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = " ".join(str(getattr(exc, "problem", None) or exc).split())
        raise DocumentError(what, [f"{source}: {_where(mark)}not valid YAML or JSON: {clip(problem, 200)}"]) from None
    finally:
        dispose = getattr(parser, "dispose", None) if parser is not None else None
        if dispose is not None:
            dispose()


def _where(mark: Any) -> str:
    return f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""


def _compose(parser: Any, root: str) -> Any:
    """Build the document from parser events in a loop: no recursion, so no depth can crash it.

    Refuses anchors and aliases as soon as they appear, and nesting past
    ``MAX_DEPTH``; collects the field problems (keys, tags, numbers) and
    raises them together once the document is read.
    """
    resolver = Resolver()
    constructor = SafeConstructor()
    errors: list[str] = []
    stack: list[_Frame] = []
    result: Any = None
    values = 0

    event = parser.get_event()
    assert isinstance(event, StreamStartEvent)
    if parser.check_event(StreamEndEvent):
        return None
    event = parser.get_event()
    assert isinstance(event, DocumentStartEvent)

    while True:
        event = parser.get_event()
        if isinstance(event, DocumentEndEvent):
            break
        if isinstance(event, AliasEvent):
            raise _Refused(problem=f"alias *{clip(event.anchor, 40)} is not allowed (no anchors or aliases in a {root} document)", problem_mark=event.start_mark)
        anchor = getattr(event, "anchor", None)
        if anchor is not None:
            raise _Refused(problem=f"anchor &{clip(anchor, 40)} is not allowed (no anchors or aliases in a {root} document)", problem_mark=event.start_mark)
        values += 1
        if values > MAX_VALUES:
            raise _Refused(problem=f"holds more than {MAX_VALUES} values; no {root} needs that many", problem_mark=event.start_mark)

        parent = stack[-1] if stack else None
        is_key = parent is not None and isinstance(parent.container, dict) and parent.key is _NO_KEY
        path = _child_path(parent, root)

        if isinstance(event, (SequenceStartEvent, MappingStartEvent)):
            if len(stack) >= MAX_DEPTH:
                raise _Refused(problem=f"nested more than {MAX_DEPTH} levels deep", problem_mark=event.start_mark)
            is_seq = isinstance(event, SequenceStartEvent)
            tag = event.tag
            if tag is None or tag == "!":
                tag = resolver.resolve(SequenceNode if is_seq else MappingNode, None, event.implicit)
            if tag != _TAG + ("seq" if is_seq else "map"):
                errors.append(f"{path}: a {_tag_name(tag)} is not allowed (JSON values only: string, number, boolean, null, list, mapping)")
            frame = _Frame([] if is_seq else {}, path)
            if is_key:
                errors.append(f"{parent.path}: key at line {event.start_mark.line + 1} is a {'list' if is_seq else 'mapping'}, but keys must be strings")
                frame.path = f"{parent.path}.<key>"
            stack.append(frame)
            continue

        if isinstance(event, (SequenceEndEvent, MappingEndEvent)):
            frame = stack.pop()
            value = frame.container
            parent = stack[-1] if stack else None
            is_key = parent is not None and isinstance(parent.container, dict) and parent.key is _NO_KEY
            if is_key:
                value = _BAD_KEY  # already reported when it started
        elif isinstance(event, ScalarEvent):
            value = _scalar(event, resolver, constructor, parent, path, is_key, errors)
        else:  # pragma: no cover - the parser yields nothing else inside a document
            raise _Refused(problem=f"unexpected {type(event).__name__}", problem_mark=event.start_mark)

        if parent is None:
            result = value
        elif isinstance(parent.container, list):
            parent.container.append(value)
        elif is_key:
            parent.key = value
            parent.key_line = event.start_mark.line + 1
        else:
            key, parent.key = parent.key, _NO_KEY
            if key is _BAD_KEY:
                continue
            if key in parent.lines:
                errors.append(f"{parent.path}{path_part(key)}: given more than once (lines {parent.lines[key]} and {parent.key_line}); each key may appear only once")
            else:
                parent.lines[key] = parent.key_line
            parent.container[key] = value

    if not parser.check_event(StreamEndEvent):
        event = parser.get_event()
        raise _Refused(problem=f"a second document starts here; a {root} file holds one", problem_mark=event.start_mark)
    if errors:
        raise DocumentError(root, bounded(sorted(set(errors)), root))
    return result


def _child_path(parent: _Frame | None, root: str) -> str:
    if parent is None:
        return root
    if isinstance(parent.container, list):
        return f"{parent.path}[{len(parent.container)}]"
    if parent.key is _NO_KEY or parent.key is _BAD_KEY:
        return parent.path
    return parent.path + path_part(parent.key)


def _scalar(event: ScalarEvent, resolver: Resolver, constructor: SafeConstructor, parent: _Frame | None, path: str, is_key: bool, errors: list[str]) -> Any:
    tag = event.tag
    if tag is None or tag == "!":
        tag = resolver.resolve(ScalarNode, event.value, event.implicit)
    if is_key:
        assert parent is not None
        if tag != _TAG + "str":
            errors.append(f"{parent.path}: key {clip(event.value)!r} (line {event.start_mark.line + 1}) is a {_tag_name(tag)}, but keys must be strings; quote it")
            return _BAD_KEY
        return event.value
    if tag not in _SCALAR_TAGS:
        errors.append(f"{path}: a {_tag_name(tag)} is not allowed (JSON values only: string, number, boolean, null, list, mapping); quote it to make it a string")
        return None
    if tag == _TAG + "str":
        return event.value
    if tag == _TAG + "int" and sum(c.isalnum() for c in event.value) > MAX_INT_DIGITS:
        errors.append(f"{path}: an integer of {len(event.value)} characters is far too large a number")
        return None
    node = ScalarNode(tag, event.value, event.start_mark, event.end_mark, event.style)
    try:
        return constructor.yaml_constructors[tag](constructor, node)
    except (ValueError, yaml.YAMLError):
        errors.append(f"{path}: {clip(event.value)!r} is not a usable {_tag_name(tag)}")
        return None

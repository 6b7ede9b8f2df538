"""Reading task descriptor files strictly: the YAML before the schema sees it.

A descriptor is user input that may come from anywhere, so reading it refuses what a schema
cannot see: bytes that are not UTF-8 (the line is named), files far too large to be a
descriptor, YAML aliases (a few nested ones expand to billions of nodes), keys given twice, deep
nesting. ``include:`` chains are followed (relative to the including file, with cycles refused)
and merged, and path-valued keys are resolved against the file that sets them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from selfunet.artifacts import read_user_text
from selfunet.errors import SelfUNetError, clip, quote

#: a descriptor is a few hundred bytes; anything this big is not one (and would be slow to parse).
MAX_DESCRIPTOR_BYTES = 256 * 1024


class _NoAliasLoader(yaml.SafeLoader):
    """Safe loading without aliases (``*name``): a handful of nested aliases expands to billions of
    nodes (the "billion laughs"), and a descriptor shares values through ``include:`` instead."""

    def compose_node(self, parent, index):  # type: ignore[no-untyped-def]
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None, None, f"found the alias *{clip(str(event.anchor), 50)}; YAML aliases are not allowed in "
                "descriptors (write the value out, or share it through `include:`)", event.start_mark)
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):  # type: ignore[no-untyped-def]
        """PyYAML keeps the last of two equal keys without a word; a descriptor must not lose one silently."""
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.setdefault(key, key_node.start_mark.line + 1)
            except TypeError:  # an unhashable key: the base class reports it
                continue
            if first != key_node.start_mark.line + 1:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {quote(key, 60)} appears twice (line {first} and line "
                    f"{key_node.start_mark.line + 1}); keep one", key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


def _read_yaml(path: Path, included_from: Path | None) -> dict:
    if not path.is_file():
        where = f" (included from {included_from})" if included_from else ""
        raise SelfUNetError(f"{path}: descriptor not found{where}; fix the path (includes are relative to the "
                            "including file) or create the file.")
    text = read_user_text(path, "a task descriptor", MAX_DESCRIPTOR_BYTES, "save the file as UTF-8.")
    try:
        raw = yaml.load(text, Loader=_NoAliasLoader)  # a SafeLoader without aliases
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = clip(str(getattr(exc, "problem", None) or exc))
        raise SelfUNetError(f"{path}: not valid YAML{at} ({problem}); fix the syntax.") from None
    except RecursionError:
        raise SelfUNetError(f"{path}: not valid YAML (nested too deeply); a descriptor is a flat mapping of a few "
                            "keys.") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise SelfUNetError(f"{path}: a descriptor must be a mapping of keys (name: ..., dataset: ...), "
                            f"not a {type(raw).__name__}.")
    return raw


def _merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for key, value in top.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def load_raw(path: Path, chain: tuple[Path, ...] = ()) -> dict:
    """The merged mapping of ``path`` and its includes (recursively), relative dataset resolved."""
    path = path.resolve()
    if path in chain:
        cycle = " -> ".join(str(p) for p in (*chain, path))
        raise SelfUNetError(f"{chain[-1]}: key 'include': include cycle {cycle}; remove one of these includes.")
    raw = _read_yaml(path, chain[-1] if chain else None)
    includes = raw.pop("include", [])
    if isinstance(includes, str):
        includes = [includes]
    if not isinstance(includes, list) or not all(isinstance(i, str) for i in includes):
        raise SelfUNetError(f"{path}: key 'include': expected a file path or a list of file paths, got "
                            f"{quote(includes)}.")
    merged: dict = {}
    for include in includes:
        merged = _merge(merged, load_raw(path.parent / include, (*chain, path)))
    if raw.get("dataset") == "":
        raise SelfUNetError(f"{path}: key 'dataset': empty; set it to the dataset folder (relative to {path.parent}).")
    for key in ("dataset", "test_labels"):
        if isinstance(raw.get(key), str):
            try:
                raw[key] = str((path.parent / Path(raw[key]).expanduser()).resolve())
            except (OSError, RuntimeError, ValueError) as exc:  # a name too long, a symlink loop, a NUL byte
                raise SelfUNetError(f"{path}: key '{key}': {quote(raw[key])} is not a usable path ({exc}); "
                                    "set it to a folder.") from None
    return _merge(merged, raw)

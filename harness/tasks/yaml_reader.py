"""Reading task descriptor files strictly: the YAML before the schema sees it.

A descriptor is user input that may come from anywhere, so reading it refuses what a schema
cannot see: bytes that are not UTF-8 (the line is named), files far too large to be a
descriptor, YAML aliases (a few nested ones expand to billions of nodes), keys given twice, deep
nesting. ``include:`` chains are followed (relative to the including file, with cycles refused)
and merged, and path-valued keys are resolved against the file that sets them; ``dataset`` may also
be an nnU-Net dataset name or id, looked up under the nnU-Net raw folder
(:mod:`selfunet.data.dataset_locator`).

Includes stay inside the *tasks root*: the folder the descriptors were found in (or the named
descriptor file's own folder), or the folder given with ``--tasks-root``. Each path is checked as
written and with every link resolved, before the file is opened or even looked for, so neither
``include: /home/me/.ssh/config`` nor a link in the tasks folder that points out of it is read,
and a refused include is named by its path only, never by anything it holds. Each file is read
and parsed once per load (a diamond of includes costs one read per file, not 2^depth), at most
:data:`MAX_INCLUDE_FILES` of them; the size is checked before reading
(:func:`~selfunet.artifacts.read_user_text`).
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import yaml

from selfunet.artifacts import read_user_text
from selfunet.data.dataset_locator import DatasetLookup, lookup_dataset
from selfunet.errors import SelfUNetError, clip, quote

#: where :func:`load_raw` leaves the :class:`DatasetLookup` of ``dataset`` (popped by the loader before validation).
LOOKUP_KEY = "\0dataset_lookup"
#: a descriptor is a few hundred bytes; anything this big is not one (and would be slow to parse).
MAX_DESCRIPTOR_BYTES = 256 * 1024
#: distinct files one descriptor may pull in through ``include:`` (the shipped tasks use 1).
MAX_INCLUDE_FILES = 64


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
    if not path.exists():  # a folder, FIFO or device is named as such by read_user_text
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


def inside(path: Path, root: Path) -> bool:
    """Whether ``path`` lies in ``root`` (both absolute and normalised), by whole path components."""
    try:
        return os.path.commonpath([str(path), str(root)]) == str(root)
    except ValueError:  # different drives
        return False


def check_inside_root(path: Path, root: Path, included_from: Path | None) -> Path:
    """``path`` with links resolved; refused when it leaves ``root`` as written or once links are
    resolved. Only paths are named in the message: a file outside is never opened."""
    root = Path(os.path.realpath(root))
    lexical = Path(os.path.normpath(os.path.abspath(path)))
    real = Path(os.path.realpath(path))
    if inside(lexical, root) and inside(real, root):
        return real
    where = f"{included_from}: key 'include': " if included_from else ""
    via = f" (a link to {real})" if inside(lexical, root) else ""
    raise SelfUNetError(f"{where}{path}{via} lies outside the tasks root {root}; a descriptor may include only "
                        "files under it. Move the file into the tasks folder, or name a folder that holds both "
                        "with --tasks-root DIR.")


class _Loader:
    """One descriptor's include graph: every file inside ``root``, each read once, cycles refused,
    at most :data:`MAX_INCLUDE_FILES` files."""

    def __init__(self, root: Path, nnunet_raw: Path | None = None) -> None:
        self.root = Path(os.path.realpath(root))
        self.nnunet_raw = nnunet_raw
        self.done: dict[Path, dict] = {}

    def load(self, path: Path, chain: tuple[Path, ...]) -> dict:
        path = check_inside_root(path, self.root, chain[-1] if chain else None)
        if path in chain:
            cycle = " -> ".join(str(p) for p in (*chain, path))
            raise SelfUNetError(f"{chain[-1]}: key 'include': include cycle {cycle}; remove one of these includes.")
        if path in self.done:  # a diamond: a base reached twice is read once
            return copy.deepcopy(self.done[path])
        if len(self.done) + len(chain) >= MAX_INCLUDE_FILES:
            raise SelfUNetError(f"{chain[-1]}: key 'include': more than {MAX_INCLUDE_FILES} descriptor files in one "
                                "include graph; a task needs a base or two.")
        raw = _read_yaml(path, chain[-1] if chain else None)
        includes = raw.pop("include", [])
        if isinstance(includes, str):
            includes = [includes]
        if not isinstance(includes, list) or not all(isinstance(i, str) and i and "\0" not in i for i in includes):
            raise SelfUNetError(f"{path}: key 'include': expected a file path or a list of file paths, got "
                                f"{quote(includes)}.")
        merged: dict = {}
        for include in includes:
            merged = _merge(merged, self.load(path.parent / Path(include).expanduser(), (*chain, path)))
        if raw.get("dataset") == "":
            raise SelfUNetError(f"{path}: key 'dataset': empty; set it to the dataset folder (relative to "
                                f"{path.parent}).")
        if isinstance(raw.get("dataset"), int) and not isinstance(raw["dataset"], bool):
            raw["dataset"] = str(raw["dataset"])  # `dataset: 4`: an nnU-Net dataset id
        if isinstance(raw.get("dataset"), str):
            try:
                lookup: DatasetLookup = lookup_dataset(raw["dataset"], base=path.parent, nnunet_raw=self.nnunet_raw)
            except SelfUNetError as exc:
                raise SelfUNetError(f"{path}: key 'dataset': {exc}") from None
            raw["dataset"], raw[LOOKUP_KEY] = str(lookup.path), lookup
        if isinstance(raw.get("test_labels"), str):
            try:
                raw["test_labels"] = str((path.parent / Path(raw["test_labels"]).expanduser()).resolve())
            except (OSError, RuntimeError, ValueError) as exc:  # a name too long, a symlink loop, a NUL byte
                raise SelfUNetError(f"{path}: key 'test_labels': {quote(raw['test_labels'])} is not a usable path "
                                    f"({exc}); set it to a folder.") from None
        out = _merge(merged, raw)
        self.done[path] = copy.deepcopy(out)
        return out


def load_raw(path: Path, root: Path | None = None, nnunet_raw: Path | None = None) -> dict:
    """The merged mapping of ``path`` and its includes (recursively), relative dataset resolved.

    ``root``: the tasks root every file must lie in; default the folder ``path`` really lies in
    (links resolved), so naming a descriptor file always works and its includes stay beside it.
    ``dataset`` (a path relative to the file that sets it, ``Dataset004_Hippocampus`` or an id, then
    under ``nnunet_raw``) becomes an absolute path; where it was looked for is left under
    :data:`LOOKUP_KEY`.
    """
    path = Path(path)
    return _Loader(Path(os.path.realpath(path)).parent if root is None else Path(root), nnunet_raw).load(path, ())

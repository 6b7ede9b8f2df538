"""Typed, versioned JSON artifacts written atomically.

Every stage of the pipeline writes one artifact. Writing goes to a temporary file in the same
folder followed by ``os.replace`` so a killed process never leaves a half-written file that a
rerun would trust. Reading validates the schema and turns any problem into a
:class:`~selfunet.errors.SelfUNetError` naming the file, the field and what to do.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError

from selfunet.errors import SelfUNetError


class Artifact(BaseModel):
    """Base of every on-disk object: frozen, no unknown keys, with a schema version."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    #: bump when a field changes meaning; readers refuse newer versions.
    SCHEMA_VERSION: ClassVar[int] = 1
    #: how the user recreates this artifact (used in error messages).
    PRODUCED_BY: ClassVar[str] = "the stage that writes it"

    schema_version: int = 1

    def save(self, path: Path) -> None:
        atomic_write_text(Path(path), self.model_dump_json(indent=2) + "\n")

    @classmethod
    def load(cls: type[A], path: Path) -> A:
        path = Path(path)
        if not path.is_file():
            raise SelfUNetError(f"{path} does not exist: run {cls.PRODUCED_BY} first.")
        try:
            raw = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise SelfUNetError(
                f"{path} is not readable JSON ({exc}); delete it and rerun {cls.PRODUCED_BY}."
            ) from exc
        return cls.from_dict(raw, source=str(path))

    @classmethod
    def from_dict(cls: type[A], raw: Any, source: str = "<dict>") -> A:
        if isinstance(raw, dict):
            version = raw.get("schema_version", 1)
            if isinstance(version, int) and version > cls.SCHEMA_VERSION:
                raise SelfUNetError(
                    f"{source}: schema_version {version} is newer than this selfunet understands "
                    f"({cls.SCHEMA_VERSION}); upgrade selfunet or rerun {cls.PRODUCED_BY}."
                )
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            problems = "; ".join(
                f"field '{'.'.join(str(p) for p in err['loc'])}': {err['msg']}" for err in exc.errors()
            )
            raise SelfUNetError(f"{source} is not a valid {cls.__name__}: {problems}") from exc


A = TypeVar("A", bound=Artifact)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see either the old or the complete new file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def atomic_save_npy(path: Path, array: np.ndarray) -> None:
    """``np.save`` through a temporary file, so a memory-mapped reader never sees a torn array."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            np.save(handle, np.ascontiguousarray(array), allow_pickle=False)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_save_npz(path: Path, **arrays: np.ndarray) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            np.savez(handle, **arrays)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise

"""An algorithm's separate model, as grand-challenge takes it: a tarball uploaded beside the image and
extracted to ``/opt/ml/model`` in the container (``harness export gc --model-tarball`` writes one).

``harness score --submission NAME=IMAGE --model NAME=model.tar.gz`` extracts it once per submission
(regular files and folders only, nothing leaving the folder, readable by any container user) and
the algorithm sandbox mounts it read-only there (:data:`harness.sandboxes.algorithm.MODEL_MOUNT`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from selfunet.errors import SelfUNetError


def parse_model(text: str) -> tuple[str, Path]:
    """``--model NAME=PATH``: the model tarball (or extracted folder) of the container submission NAME."""
    name, sep, ref = text.partition("=")
    path = Path(ref.strip())
    if not sep or not name.strip() or not ref.strip():
        raise SelfUNetError(f"--model {text!r}: expected NAME=MODEL.tar.gz (the submission's name, then its model "
                            "tarball, e.g. team-a=model.tar.gz).")
    if not (path.is_dir() or path.is_file()):
        raise SelfUNetError(f"--model {text!r}: {path} is neither a file nor a folder.")
    return name.strip(), path


def with_models(submissions: list, models: list[str]) -> list:
    """Attach each ``--model NAME=PATH`` to the container submission NAME."""
    by_name = {s.name: s for s in submissions}
    for text in models:
        name, path = parse_model(text)
        sub = by_name.get(name)
        if sub is None or sub.kind != "container":
            raise SelfUNetError(f"--model {text!r}: no container submission named '{name}' (--submission "
                                f"{name}=IMAGE); a model tarball goes with an algorithm image.")
        by_name[name] = dataclasses.replace(sub, model=path)
    return [by_name[s.name] for s in submissions]


def extract_model(model: Path, into: Path) -> Path:
    """The model folder to mount: ``model`` itself when it is a folder, else the tarball extracted into
    ``into`` (regular files and folders only: no links, devices or paths leaving it), readable by
    the container's user."""
    import tarfile

    if model.is_dir():
        return model
    into.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(model) as tar:
            for member in tar.getmembers():
                target = (into / member.name).resolve()
                if not (member.isfile() or member.isdir()) or not target.is_relative_to(into.resolve()):
                    raise SelfUNetError(f"--model {model}: member {member.name!r} is not a plain file or folder "
                                        "inside the archive; refusing to extract it.")
            tar.extractall(into, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    except (tarfile.TarError, OSError) as exc:
        raise SelfUNetError(f"--model {model}: not a readable model tarball ({exc}).") from None
    for folder, _dirs, files in os.walk(into):
        os.chmod(folder, 0o755)
        for name in files:
            os.chmod(os.path.join(folder, name), 0o644)
    return into


@contextlib.contextmanager
def mounted_model(model: Path | None) -> Iterator[Path | None]:
    """The folder to mount at /opt/ml/model while the block runs (None without a model); an extracted
    tarball is removed afterwards."""
    if model is None or Path(model).is_dir():
        yield None if model is None else Path(model)
        return
    with tempfile.TemporaryDirectory(prefix="selfunet-model-", ignore_cleanup_errors=True) as tmp:
        os.chmod(tmp, 0o755)  # the container's user reaches the mount through it
        yield extract_model(Path(model), Path(tmp) / "model")

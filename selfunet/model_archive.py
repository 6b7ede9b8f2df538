"""A trained model as one shareable file: ``selfunet export-model WORK -o model.zip``.

What a colleague (or a challenge container) needs to predict, and nothing else: no preprocessed
data, no validation outputs, no optimizer state. Layout of the zip (docs/reference/formats.md)::

    manifest.json                  format, versions, members, folds, sha256 of every other file
    plan.json                      the plan (configurations, labels, regions, ignore label)
    fingerprint.json               the dataset facts inference needs: name, channels, labels,
                                   file ending, label scheme, foreground intensity statistics
    selection.json                 members and postprocessing rule (the cross-validation evidence)
    weights/<configuration>/fold_<k>.pt   the final network weights of every fold, a plain
                                   state dict of tensors (``torch.save``)

Nothing in it is a pickled object: JSON, and state dicts that are read with
``torch.load(weights_only=True)``, which refuses anything but tensors and plain containers. Every
file's sha256 is checked against the manifest before it is used, so a truncated or edited archive
fails with a message naming the file.

This module sits above inference and evaluation (it reads the selection and builds the models),
like :mod:`selfunet.pipeline`.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import platform
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

import selfunet
from selfunet.artifacts import atomic_write_bytes
from selfunet.errors import SelfUNetError
from selfunet.workdir import WorkDir

log = logging.getLogger(__name__)

FORMAT = "selfunet-model-1"
CHECKPOINT = "checkpoint_final.pt"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _json_bytes(value: object) -> bytes:
    return (json.dumps(value, indent=2, sort_keys=False) + "\n").encode()


def _stages(plan, members: list[str], source: Path) -> list[str]:
    """The members and every previous (cascade) stage they need, each once."""
    stages: list[str] = []
    pending = list(members)
    while pending:
        stage = pending.pop(0)
        if stage in stages:
            continue
        if stage not in plan.configurations:
            raise SelfUNetError(f"{source}: member '{stage}' is not a configuration of the plan.")
        stages.append(stage)
        previous = plan.configurations[stage].previous_stage
        if previous is not None:
            pending.append(previous)
    return stages


def export_model(work: Path, output: Path, selection_path: Path | None = None) -> Path:
    """Write ``output`` (a zip) from a work directory with a selection and trained folds."""
    from selfunet.evaluation.ensemble import Selection
    from selfunet.planning.fingerprint_types import Fingerprint
    from selfunet.planning.plan_types import Plan
    from selfunet.runtime import load_checkpoint

    workdir = WorkDir(Path(work))
    selection_path = Path(selection_path) if selection_path else workdir.root / "selection.json"
    if not selection_path.is_file():
        raise SelfUNetError(
            f"{selection_path} not found: run the pipeline to its end (`selfunet run`) or `selfunet select "
            f"{workdir.root}` first."
        )
    selection = Selection.load(selection_path)
    plan = Plan.load(workdir.plan)
    fingerprint = Fingerprint.load(workdir.fingerprint)
    files: dict[str, bytes] = {
        "plan.json": _json_bytes(plan.model_dump(mode="json")),
        "fingerprint.json": _json_bytes({
            "dataset": fingerprint.dataset.model_dump(mode="json", exclude={"root"}),
            "intensity": [c.model_dump(mode="json") for c in fingerprint.intensity],
            "median_relative_size_after_crop": fingerprint.median_relative_size_after_crop,
        }),
        "selection.json": _json_bytes(selection.model_dump(mode="json")),
    }
    folds: dict[str, list[int]] = {}
    for stage in _stages(plan, list(selection.members), selection_path):
        checkpoints = sorted((workdir.root / "train" / stage).glob(f"fold_*/{CHECKPOINT}"))
        if not checkpoints:
            raise SelfUNetError(
                f"{workdir.root / 'train' / stage}: no {CHECKPOINT}; train every fold of '{stage}' first."
            )
        folds[stage] = []
        for checkpoint in checkpoints:
            fold = int(checkpoint.parent.name.removeprefix("fold_"))
            payload = load_checkpoint(checkpoint)
            state = {k: v.detach().cpu().contiguous() for k, v in payload["network"].items()}
            buffer = io.BytesIO()
            torch.save(state, buffer)
            files[f"weights/{stage}/fold_{fold}.pt"] = buffer.getvalue()
            folds[stage].append(fold)
    manifest = {
        "format": FORMAT,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "versions": {"selfunet": selfunet.__version__, "torch": torch.__version__, "numpy": np.__version__,
                     "python": platform.python_version()},
        "dataset": plan.dataset_name,
        "selected": selection.selected,
        "members": list(selection.members),
        "folds": folds,
        "files": {name: _sha256(data) for name, data in files.items()},
    }
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("manifest.json", _json_bytes(manifest))
        for name, data in files.items():
            archive.writestr(name, data)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(output, buffer.getvalue())
    log.info("wrote %s (%s; %d weight files)", output, selection.selected, sum(len(f) for f in folds.values()))
    return output


@dataclass
class LoadedModel:
    """What ``selfunet predict --model`` needs, read from a model.zip."""

    plan: object
    members: list[str]
    postprocessing: object
    models: dict
    """configuration -> list of :class:`selfunet.inference.predict.TrainedModel` (one per fold)."""
    manifest: dict


def _read_verified(archive: zipfile.ZipFile, name: str, expected: str | None, source: Path) -> bytes:
    try:
        data = archive.read(name)
    except KeyError:
        raise SelfUNetError(f"{source}: '{name}' is missing from the model archive; export it again.") from None
    if expected is None or _sha256(data) != expected:
        raise SelfUNetError(
            f"{source}: '{name}' does not match the sha256 in manifest.json; the archive is damaged or was "
            "edited: export it again."
        )
    return data


def read_manifest(path: Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise SelfUNetError(f"{path}: model archive not found; make one with `selfunet export-model WORK -o {path}`.")
    try:
        with zipfile.ZipFile(path) as archive:
            manifest = json.loads(archive.read("manifest.json"))
    except (zipfile.BadZipFile, KeyError, json.JSONDecodeError) as exc:
        raise SelfUNetError(f"{path}: not a selfunet model archive ({exc}).") from exc
    if manifest.get("format") != FORMAT:
        raise SelfUNetError(f"{path}: archive format {manifest.get('format')!r}, this selfunet reads {FORMAT!r}.")
    return manifest


def load_model_archive(path: Path, device: torch.device, folds: list[int] | None = None) -> LoadedModel:
    """Verify and read a model.zip; networks are built from its plan and loaded on ``device``."""
    from selfunet.inference.postprocess import PostprocessingRule
    from selfunet.inference.predict import TrainedModel
    from selfunet.planning.plan_types import Plan
    from selfunet.training.network import build_network

    path = Path(path)
    manifest = read_manifest(path)
    expected = manifest.get("files", {})
    with zipfile.ZipFile(path) as archive:
        plan = Plan.model_validate_json(_read_verified(archive, "plan.json", expected.get("plan.json"), path))
        selection = json.loads(_read_verified(archive, "selection.json", expected.get("selection.json"), path))
        models: dict[str, list] = {}
        for stage, stage_folds in manifest["folds"].items():
            chosen = stage_folds if folds is None else [f for f in stage_folds if f in folds]
            if not chosen:
                raise SelfUNetError(f"{path}: configuration '{stage}' has folds {stage_folds}, none of {folds}.")
            configuration = plan.configurations[stage]
            models[stage] = []
            for fold in chosen:
                name = f"weights/{stage}/fold_{fold}.pt"
                data = _read_verified(archive, name, expected.get(name), path)
                state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
                network = build_network(configuration.topology, plan.input_channels(stage), plan.num_outputs,
                                        deep_supervision=False)
                network.load_state_dict(state)
                network.to(device).eval()
                models[stage].append(TrainedModel(network, plan, configuration, path / name))
    rule = PostprocessingRule.model_validate(selection.get("postprocessing", {}))
    return LoadedModel(plan, list(selection["members"]), rule, models, manifest)


def unpack_model_archive(path: Path, folder: Path) -> Path:
    """Verify ``path`` and lay it out in ``folder`` as the minimal work directory that
    ``selfunet predict -w FOLDER --selection FOLDER/selection.json`` reads: plan.json,
    selection.json, dataset_facts.json (the archive's fingerprint.json) and
    ``train/<configuration>/fold_<k>/checkpoint_final.pt`` (weights + plan + configuration name, plain
    values only). Used where a consumer expects that layout (the grand-challenge build context)."""
    from selfunet.runtime import save_checkpoint

    path, folder = Path(path), Path(folder)
    manifest = read_manifest(path)
    expected = manifest.get("files", {})
    folder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path) as archive:
        plan_bytes = _read_verified(archive, "plan.json", expected.get("plan.json"), path)
        (folder / "plan.json").write_bytes(plan_bytes)
        (folder / "selection.json").write_bytes(
            _read_verified(archive, "selection.json", expected.get("selection.json"), path))
        (folder / "dataset_facts.json").write_bytes(
            _read_verified(archive, "fingerprint.json", expected.get("fingerprint.json"), path))
        plan = json.loads(plan_bytes)
        for stage, folds in manifest["folds"].items():
            for fold in folds:
                name = f"weights/{stage}/fold_{fold}.pt"
                state = torch.load(io.BytesIO(_read_verified(archive, name, expected.get(name), path)),
                                   map_location="cpu", weights_only=True)
                target = folder / "train" / stage / f"fold_{fold}" / CHECKPOINT
                target.parent.mkdir(parents=True, exist_ok=True)
                save_checkpoint(target, {"format": "selfunet-checkpoint-1", "network": state, "plan": plan,
                                         "configuration": stage, "fold": int(fold)})
    return folder

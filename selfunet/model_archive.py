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

Reading is defensive (docs/guide/security.md): an archive is data from someone else. Before any
path is built or any member read, every member name and manifest key is matched against a strict
pattern (:data:`WEIGHTS_MEMBER`, :data:`selfunet.planning.plan_types.NAME_PATTERN`), the sizes in the
zip's central directory are checked against per-member bounds, and every read is bounded (a
directory that lies about a size cannot inflate past the bound). The plan is validated with its
bounds (:mod:`selfunet.planning.plan_types`), and each weight file must hold exactly the tensors, of
exactly the shapes, of the network the plan builds. Every malformed piece is a
:class:`SelfUNetError` naming the archive and the member or field.

This module sits above inference and evaluation (it reads the selection and builds the models),
like :mod:`selfunet.pipeline`.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import platform
import re
import time
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

import selfunet
from selfunet.artifacts import atomic_write_bytes
from selfunet.errors import SelfUNetError, clip, quote
from selfunet.planning.plan_types import NAME_PATTERN
from selfunet.workdir import WorkDir

log = logging.getLogger(__name__)

FORMAT = "selfunet-model-1"
CHECKPOINT = "checkpoint_final.pt"

#: the JSON members of an archive; with the weight files, nothing else is accepted.
JSON_MEMBERS = ("manifest.json", "plan.json", "fingerprint.json", "selection.json")
#: ``weights/<configuration>/fold_<k>.pt``: a configuration name as plans allow it, a fold 0..999.
WEIGHTS_MEMBER = re.compile(r"weights/(?P<stage>[A-Za-z0-9][A-Za-z0-9_.-]{0,63})/fold_(?P<fold>0|[1-9][0-9]{0,2})\.pt")
_NAME = re.compile(NAME_PATTERN)
_SHA256 = re.compile(r"[0-9a-f]{64}")
#: bounds on what an archive may declare (an exported archive's JSON is kilobytes, a fold's weights
#: are 0.1 to 1 GB for the largest planner presets).
MAX_JSON_BYTES = 16 * 2**20
MAX_WEIGHTS_BYTES = 4 * 2**30
MAX_TOTAL_BYTES = 64 * 2**30
MAX_MEMBERS = 1024
MAX_FOLDS = 100


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
            if not re.fullmatch(r"fold_(0|[1-9][0-9]{0,2})", checkpoint.parent.name):
                continue  # not a fold folder this layout writes (fold_<0..999>)
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


class _Archive:
    """An opened, checked archive: member names and sizes already validated (see :func:`_open_archive`)."""

    def __init__(self, zip_file: zipfile.ZipFile, source: Path) -> None:
        self.zip, self.source = zip_file, source

    def error(self, what: str, fix: str = "export it again with `selfunet export-model`") -> SelfUNetError:
        return SelfUNetError(f"{self.source}: {what}; {fix}.")

    def read(self, name: str, expected: str | None = None) -> bytes:
        """The member's bytes, read with its bound and checked against the manifest's sha256 when given."""
        try:
            info = self.zip.getinfo(name)
        except KeyError:
            raise self.error(f"'{name}' is missing from the model archive") from None
        limit = MAX_WEIGHTS_BYTES if name.endswith(".pt") else MAX_JSON_BYTES
        try:
            with self.zip.open(info) as stream:
                data = stream.read(limit + 1)
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError, RuntimeError,
                ValueError) as exc:
            raise self.error(f"'{name}' cannot be read ({type(exc).__name__}: {clip(str(exc), 120)}); the archive is "
                             "damaged") from None
        if len(data) > limit:
            raise self.error(f"'{name}' inflates to more than {limit:,} bytes (its directory entry says "
                             f"{info.file_size:,}); refused")
        if expected is not None and _sha256(data) != expected:
            raise self.error(f"'{name}' does not match the sha256 in manifest.json; the archive is damaged or was "
                             "edited")
        return data

    def json(self, name: str, expected: str | None = None) -> dict:
        try:
            value = json.loads(self.read(name, expected))
        except (ValueError, RecursionError) as exc:  # bad JSON, bytes that are not UTF-8, nesting
            raise self.error(f"'{name}' is not valid JSON ({clip(str(exc), 120)})") from None
        if not isinstance(value, dict):
            raise self.error(f"'{name}' must be a JSON object, not a {type(value).__name__}")
        return value


def _member_problem(info: zipfile.ZipInfo) -> str | None:
    name = info.filename
    if name not in JSON_MEMBERS and not WEIGHTS_MEMBER.fullmatch(name):
        return (f"member {quote(clip(name, 120))} is not part of a model archive (only {', '.join(JSON_MEMBERS)} and "
                "weights/<configuration>/fold_<k>.pt are)")
    if info.flag_bits & 0x1:
        return f"member '{name}' is encrypted"
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        return f"member '{name}' uses compression method {info.compress_type} (stored or deflated only)"
    limit = MAX_WEIGHTS_BYTES if name.endswith(".pt") else MAX_JSON_BYTES
    if info.file_size > limit:
        return f"member '{name}' declares {info.file_size:,} bytes, more than the bound of {limit:,}"
    return None


@contextmanager
def _open_archive(path: Path) -> Iterator[_Archive]:
    """Open ``path`` after checking its directory: entry count (before the directory is parsed),
    unique names that are all archive members, and declared sizes within the bounds."""
    path = Path(path)
    if not path.is_file():
        raise SelfUNetError(f"{path}: model archive not found; make one with `selfunet export-model WORK -o {path}`.")
    not_archive = f"{path}: not a selfunet model archive"
    try:
        with open(path, "rb") as stream:
            end = zipfile._EndRecData(stream)  # the end record only: how big is the directory?
    except OSError as exc:
        raise SelfUNetError(f"{path}: cannot be read ({exc.strerror or exc}); check its permissions.") from None
    if not end:
        raise SelfUNetError(f"{not_archive} (no zip directory); pass the model.zip `selfunet export-model` wrote.")
    if end[zipfile._ECD_ENTRIES_TOTAL] > MAX_MEMBERS or end[zipfile._ECD_SIZE] > MAX_MEMBERS * 1024:
        raise SelfUNetError(f"{not_archive}: its directory lists {end[zipfile._ECD_ENTRIES_TOTAL]:,} members "
                            f"({end[zipfile._ECD_SIZE]:,} bytes; at most {MAX_MEMBERS}); refused unread.")
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, NotImplementedError) as exc:
        raise SelfUNetError(f"{not_archive} ({clip(str(exc), 120)}); pass the model.zip `selfunet export-model` "
                            "wrote.") from None
    with archive:
        infos = archive.infolist()
        names = [i.filename for i in infos]
        duplicates = sorted({n for n in names if names.count(n) > 1}) if len(set(names)) != len(names) else []
        problems = [f"member {quote(clip(n, 120))} appears more than once" for n in duplicates[:3]]
        problems += [p for p in map(_member_problem, infos) if p is not None]
        total = sum(i.file_size for i in infos)
        if total > MAX_TOTAL_BYTES:
            problems.append(f"its members declare {total:,} bytes in all, more than the bound of {MAX_TOTAL_BYTES:,}")
        if problems:
            more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
            raise SelfUNetError(f"{path}: refused: {'; '.join(problems[:3])}{more}; export the model again with "
                                "`selfunet export-model`.")
        yield _Archive(archive, path)


def _check_manifest(archive: _Archive, manifest: dict) -> dict:
    """The manifest's fields, checked before any of them names a member or a path."""
    if manifest.get("format") != FORMAT:
        raise archive.error(f"archive format {quote(manifest.get('format'), 60)}, this selfunet reads {FORMAT!r}",
                            "export it again with this selfunet's `selfunet export-model`")
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise archive.error("manifest.json field 'files' must map member names to their sha256")
    for name, digest in files.items():
        if (name not in JSON_MEMBERS[1:] and not WEIGHTS_MEMBER.fullmatch(name)) or not (
                isinstance(digest, str) and _SHA256.fullmatch(digest)):
            raise archive.error(f"manifest.json field 'files': entry {quote(clip(str(name), 120))} is not a member "
                                "name with a sha256 (64 hex digits)")
    folds = manifest.get("folds")
    if not isinstance(folds, dict) or not folds or len(folds) > 64:
        raise archive.error("manifest.json field 'folds' must map each configuration to its list of folds")
    for stage, stage_folds in folds.items():
        if not isinstance(stage, str) or not _NAME.fullmatch(stage):
            raise archive.error(f"manifest.json field 'folds': {quote(clip(str(stage), 120))} is not a configuration "
                                "name (letters, digits, '_', '.', '-', at most 64)")
        if not isinstance(stage_folds, list) or not 0 < len(stage_folds) <= MAX_FOLDS or not all(
                type(f) is int and 0 <= f <= 999 for f in stage_folds) or len(set(stage_folds)) != len(stage_folds):
            raise archive.error(f"manifest.json field 'folds.{stage}' must be a list of distinct fold numbers 0..999 "
                                f"(at most {MAX_FOLDS}), got {quote(stage_folds, 80)}")
        for fold in stage_folds:
            if f"weights/{stage}/fold_{fold}.pt" not in files:
                raise archive.error(f"manifest.json lists fold {fold} of '{stage}' but no sha256 for "
                                    f"'weights/{stage}/fold_{fold}.pt' in 'files'")
    return manifest


def _plan(archive: _Archive, manifest: dict):
    from selfunet.planning.plan_types import Plan

    raw = archive.json("plan.json", manifest["files"].get("plan.json"))
    plan = Plan.from_dict(raw, source=f"{archive.source}: plan.json")
    for stage in manifest["folds"]:
        if stage not in plan.configurations:
            raise archive.error(f"manifest.json field 'folds' names configuration '{stage}', which plan.json does "
                                "not have")
        previous = plan.configurations[stage].previous_stage
        if previous is not None and previous not in manifest["folds"]:
            raise archive.error(f"configuration '{stage}' needs its previous stage '{previous}', whose weights are "
                                "not in the archive ('folds' in manifest.json)")
    return plan


def _selection(archive: _Archive, manifest: dict):
    from selfunet.evaluation.ensemble import Selection

    raw = archive.json("selection.json", manifest["files"].get("selection.json"))
    selection = Selection.from_dict(raw, source=f"{archive.source}: selection.json")
    missing = [m for m in selection.members if m not in manifest["folds"]]
    if not selection.members or missing:
        raise archive.error(f"selection.json field 'members' names {quote(clip(', '.join(missing), 120))}, which the "
                            "archive holds no weights for ('folds' in manifest.json)" if missing else
                            "selection.json field 'members' is empty")
    return selection


def _weights(archive: _Archive, manifest: dict, name: str, network: torch.nn.Module) -> dict:
    """One fold's state dict: a torch zip of stored tensors only, loaded with ``weights_only=True``,
    holding exactly the tensors (names, shapes, float dtypes) of ``network``."""
    data = archive.read(name, manifest["files"].get(name))
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as inner:
            records = inner.infolist()
    except (zipfile.BadZipFile, ValueError, EOFError) as exc:
        raise archive.error(f"'{name}' is not a torch weights file ({clip(str(exc), 120)})") from None
    if len(records) > 100_000 or any(r.compress_type != zipfile.ZIP_STORED for r in records) or sum(
            r.file_size for r in records) > len(data):
        raise archive.error(f"'{name}' holds compressed or oversized records; a torch state dict stores its "
                            "tensors uncompressed")
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle.UnpicklingError for objects, RuntimeError for broken files
        raise archive.error(f"'{name}' is not a plain state dict of tensors ({type(exc).__name__}: "
                            f"{clip(str(exc).strip().splitlines()[0] if str(exc).strip() else '', 160)})") from None
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        raise archive.error(f"'{name}' must hold a mapping of parameter names to tensors, not a "
                            f"{type(state).__name__} of other values")
    expected = network.state_dict()
    problems = [f"missing {k}" for k in expected if k not in state]
    problems += [f"extra tensor {quote(clip(k, 80))}" for k in state if k not in expected]
    problems += [f"{k} has shape {tuple(state[k].shape)}, the plan's network {tuple(v.shape)}"
                 for k, v in expected.items() if k in state and state[k].shape != v.shape]
    problems += [f"{k} is {state[k].dtype}, expected a floating-point tensor"
                 for k, v in expected.items() if k in state and v.is_floating_point() and not
                 state[k].is_floating_point()]
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise archive.error(f"'{name}' does not fit the network plan.json builds: {'; '.join(problems[:3])}{more}")
    return state


@dataclass
class LoadedModel:
    """What ``selfunet predict --model`` needs, read from a model.zip."""

    plan: object
    members: list[str]
    postprocessing: object
    models: dict
    """configuration -> list of :class:`selfunet.inference.predict.TrainedModel` (one per fold)."""
    manifest: dict


def read_manifest(path: Path) -> dict:
    """The archive's manifest, every field checked (format, member names, folds, sha256 values)."""
    with _open_archive(Path(path)) as archive:
        return _check_manifest(archive, archive.json("manifest.json"))


def _build(plan, stage: str) -> torch.nn.Module:
    from selfunet.training.network import build_network

    return build_network(plan.configurations[stage].topology, plan.input_channels(stage), plan.num_outputs,
                         deep_supervision=False)


def load_model_archive(path: Path, device: torch.device, folds: list[int] | None = None) -> LoadedModel:
    """Verify and read a model.zip; networks are built from its plan and loaded on ``device``."""
    from selfunet.inference.predict import TrainedModel

    path = Path(path)
    with _open_archive(path) as archive:
        manifest = _check_manifest(archive, archive.json("manifest.json"))
        plan = _plan(archive, manifest)
        selection = _selection(archive, manifest)
        models: dict[str, list] = {}
        for stage, stage_folds in manifest["folds"].items():
            chosen = stage_folds if folds is None else [f for f in stage_folds if f in folds]
            if not chosen:
                raise SelfUNetError(f"{path}: configuration '{stage}' has folds {stage_folds}, none of {folds}.")
            configuration = plan.configurations[stage]
            models[stage] = []
            for fold in chosen:
                name = f"weights/{stage}/fold_{fold}.pt"
                network = _build(plan, stage)
                network.load_state_dict(_weights(archive, manifest, name, network))
                network.to(device).eval()
                models[stage].append(TrainedModel(network, plan, configuration, path / name))
    return LoadedModel(plan, list(selection.members), selection.postprocessing, models, manifest)


def unpack_model_archive(path: Path, folder: Path) -> Path:
    """Verify ``path`` and lay it out in ``folder`` as the minimal work directory that
    ``selfunet predict -w FOLDER --selection FOLDER/selection.json`` reads: plan.json,
    selection.json, dataset_facts.json (the archive's fingerprint.json) and
    ``train/<configuration>/fold_<k>/checkpoint_final.pt`` (weights + plan + configuration name, plain
    values only). Used where a consumer expects that layout (the grand-challenge build context).

    Everything is checked before anything is written (names, plan, selection, every fold's tensors
    against the plan's network), and every path is built from checked names only."""
    from selfunet.runtime import save_checkpoint

    path, folder = Path(path), Path(folder)
    with _open_archive(path) as archive:
        manifest = _check_manifest(archive, archive.json("manifest.json"))
        files = manifest["files"]
        plan_bytes = archive.read("plan.json", files.get("plan.json"))
        plan = _plan(archive, manifest)
        selection_bytes = archive.read("selection.json", files.get("selection.json"))
        _selection(archive, manifest)
        facts = archive.json("fingerprint.json", files.get("fingerprint.json"))
        states = {}
        for stage, folds in manifest["folds"].items():
            network = _build(plan, stage)
            for fold in folds:
                states[stage, fold] = _weights(archive, manifest, f"weights/{stage}/fold_{fold}.pt", network)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "plan.json").write_bytes(plan_bytes)
    (folder / "selection.json").write_bytes(selection_bytes)
    (folder / "dataset_facts.json").write_bytes(_json_bytes(facts))
    plain_plan = json.loads(plan_bytes)
    for (stage, fold), state in states.items():
        target = folder / "train" / stage / f"fold_{fold}" / CHECKPOINT
        target.parent.mkdir(parents=True, exist_ok=True)
        save_checkpoint(target, {"format": "selfunet-checkpoint-1", "network": state, "plan": plain_plan,
                                 "configuration": stage, "fold": int(fold)})
    return folder

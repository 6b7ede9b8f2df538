"""Where an nnU-Net v2 model lives: trainer folders, dataset results folders, exported zips.

nnU-Net writes ``nnUNet_results/Dataset###_Name/<Trainer>__<Plans>__<configuration>/`` (the
*trainer folder*: ``plans.json``, ``dataset.json``, ``dataset_fingerprint.json``, ``fold_<k>/``,
``crossval_results_folds_<k_l_...>/``), ensembles under ``Dataset###_Name/ensembles/`` and the
outcome of ``nnUNetv2_find_best_configuration`` as ``Dataset###_Name/inference_information.json``.
``nnUNetv2_export_model_to_zip`` packs the same tree (paths relative to ``nnUNet_results``).

A zip is unpacked with bounds (member count, sizes, names: no absolute path, no ``..``, only the
file types a model folder holds) before anything in it is read.
"""

from __future__ import annotations

import re
import shutil
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from selfunet.errors import SelfUNetError, clip, quote

#: trainer classes whose models predict exactly like nnUNetTrainer's: the class itself and the
#: training-length variants nnU-Net ships (nnUNetTrainer_1epoch, _5epochs, ... _8000epochs), which
#: change the number of epochs and nothing else.
ACCEPTED_TRAINER = re.compile(r"nnUNetTrainer(_[0-9]{1,5}epochs?)?")
FOLD_FOLDER = re.compile(r"fold_(all|0|[1-9][0-9]{0,2})")
CHECKPOINTS = {"final": "checkpoint_final.pth", "best": "checkpoint_best.pth"}
#: bounds on an exported zip (a model of 5 folds is a few GB; its files are tens).
MAX_ZIP_MEMBERS = 10_000
MAX_ZIP_BYTES = 128 * 2**30
_ZIP_KEEP = (".json", ".pth", ".pkl")


@dataclass(frozen=True)
class TrainerFolder:
    path: Path
    trainer: str
    plans: str
    configuration: str

    @property
    def identifier(self) -> str:
        return f"{self.trainer}__{self.plans}__{self.configuration}"


def trainer_folder(path: Path) -> TrainerFolder | None:
    """``path`` as a trainer folder (``A__B__C`` holding plans.json), else None."""
    parts = path.name.split("__")
    if len(parts) != 3 or not all(parts) or not (path / "plans.json").is_file():
        return None
    return TrainerFolder(path, *parts)


def check_trainer(name: str, where: str) -> None:
    if not ACCEPTED_TRAINER.fullmatch(name):
        raise SelfUNetError(
            f"{where}: trainer {quote(name, 80)} is not nnUNetTrainer or one of its training-length variants "
            "(nnUNetTrainer_<N>epochs); a custom trainer can change how the network is built or how it predicts, "
            "so the model is refused. Retrain with nnUNetTrainer, or rename the folder and the checkpoints' "
            "trainer_name only if the class changes nothing but training.")


def fold_folders(folder: TrainerFolder, checkpoint: str, folds: list[str] | None) -> dict[str, Path]:
    """fold name -> checkpoint file: the requested folds, or every numbered fold with the checkpoint
    (``fold_all`` when it is the only one)."""
    found = {m.group(1): p / CHECKPOINTS[checkpoint] for p in sorted(folder.path.iterdir())
             if p.is_dir() and (m := FOLD_FOLDER.fullmatch(p.name))}
    if folds:
        missing = [f for f in folds if f not in found or not found[f].is_file()]
        if missing:
            raise SelfUNetError(f"{folder.path}: no {CHECKPOINTS[checkpoint]} for fold(s) {', '.join(missing)} "
                                f"(folds here: {', '.join(sorted(found)) or 'none'}).")
        return {f: found[f] for f in folds}
    with_file = {f: p for f, p in found.items() if p.is_file()}
    numbered = {f: p for f, p in with_file.items() if f != "all"}
    chosen = numbered or with_file
    if not chosen:
        other = "best" if checkpoint == "final" else "final"
        hint = (f" (fold folders hold {CHECKPOINTS[other]}: pass --checkpoint {other})"
                if any((p.parent / CHECKPOINTS[other]).is_file() for p in found.values()) else "")
        raise SelfUNetError(f"{folder.path}: no fold_*/{CHECKPOINTS[checkpoint]}{hint}; is training finished?")
    return dict(sorted(chosen.items(), key=lambda item: int(item[0]) if item[0].isdigit() else -1))


def find_trainer_folders(root: Path) -> list[TrainerFolder]:
    """Trainer folders at ``root``, below it, or two levels below (a results root / an unpacked zip)."""
    own = trainer_folder(root)
    if own is not None:
        return [own]
    found: list[TrainerFolder] = []
    for level in (root, *[p for p in sorted(root.iterdir()) if p.is_dir()]):
        for child in sorted(level.iterdir()) if level.is_dir() else []:
            if child.is_dir() and (folder := trainer_folder(child)) is not None:
                found.append(folder)
    return found


def dataset_folder(folders: list[TrainerFolder]) -> Path | None:
    """The ``Dataset###_Name`` folder the trainer folders share (ensembles, inference_information.json)."""
    parents = {f.path.parent for f in folders}
    return parents.pop() if len(parents) == 1 else None


def unpack_zip(path: Path, target: Path) -> Path:
    """The model files of an ``nnUNetv2_export_model_to_zip`` zip, unpacked with bounds into ``target``."""
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise SelfUNetError(f"{path}: not a zip file ({clip(str(exc), 120)}).") from None
    with archive:
        infos = archive.infolist()
        if len(infos) > MAX_ZIP_MEMBERS or sum(i.file_size for i in infos) > MAX_ZIP_BYTES:
            raise SelfUNetError(f"{path}: {len(infos):,} members of {sum(i.file_size for i in infos):,} bytes; more "
                                f"than a model zip holds ({MAX_ZIP_MEMBERS:,} / {MAX_ZIP_BYTES:,}); refused.")
        for info in infos:
            name = PurePosixPath(info.filename)
            if info.is_dir() or not info.filename.endswith(_ZIP_KEEP):
                continue  # progress.png, logs, debug files: not needed to predict
            if name.is_absolute() or ".." in name.parts or "\\" in info.filename or ":" in info.filename or len(
                    name.parts) > 8:
                raise SelfUNetError(f"{path}: member {quote(clip(info.filename, 120))} would be written outside the "
                                    "folder; refused.")
            if info.flag_bits & 0x1:
                raise SelfUNetError(f"{path}: member '{info.filename}' is encrypted.")
            destination = target.joinpath(*name.parts)
            destination.parent.mkdir(parents=True, exist_ok=True)
            try:
                with archive.open(info) as source, open(destination, "wb") as sink:
                    copied = _copy_bounded(source, sink, info.file_size)
            except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError) as exc:
                raise SelfUNetError(f"{path}: member '{info.filename}' cannot be read ({type(exc).__name__}); the zip "
                                    "is damaged.") from None
            if copied != info.file_size:
                raise SelfUNetError(f"{path}: member '{info.filename}' inflates to another size than its directory "
                                    "entry says; refused.")
    return target


def _copy_bounded(source, sink, declared: int) -> int:
    copied = 0
    while chunk := source.read(min(2**22, declared + 1 - copied) or 1):
        copied += len(chunk)
        if copied > declared:
            return copied
        sink.write(chunk)
    return copied


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)

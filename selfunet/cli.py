"""The ``selfunet`` command line: thin Typer commands over the library.

Library code raises :class:`~selfunet.errors.SelfUNetError`; only this module turns it into a
red message and exit code 1, so bad input never ends in a traceback.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Literal, Optional, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from selfunet.cli_options import AUGMENTATION, INFERENCE, TRAIN, Given, config_options
from selfunet.errors import SelfUNetError, clip, os_error_message

app = typer.Typer(
    name="selfunet",
    help="A self-configuring U-Net: dataset -> fingerprint -> plan -> preprocess -> train -> predict.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console(stderr=True)
F = TypeVar("F", bound=Callable)


class Verbosity:
    """Set by ``-v``/``--verbose`` of either command line: an unexpected error then shows its
    traceback. One process-wide setting, read when an error is reported."""

    show_tracebacks: bool = False


def set_verbose(verbose: bool) -> None:
    """Debug logging and tracebacks for unexpected errors (both command lines' ``-v``)."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    Verbosity.show_tracebacks = verbose


def errors_to(target: Console) -> Callable[[F], F]:
    """A decorator that turns :class:`SelfUNetError` and file-system errors (a full disk, a folder
    without write permission) into a message on ``target`` and exit code 1 (shared by the
    ``selfunet`` and ``harness`` command lines). Messages are printed escaped: a user's key or path
    like ``[/x]`` is text, not rich markup."""

    def decorate(func: F) -> F:
        @functools.wraps(func)
        def wrapper(*args, **kwargs):
            try:
                return func(*args, **kwargs)
            except SelfUNetError as exc:
                target.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
                raise typer.Exit(1) from None
            except OSError as exc:
                target.print(f"[bold red]error:[/] {escape(os_error_message(exc))}", highlight=False, soft_wrap=True)
                raise typer.Exit(1) from None
            except (typer.Exit, typer.Abort):
                raise
            except Exception as exc:  # a bug, not the user's input: one line, the traceback only with -v
                # click-style usage errors (from typer's copy of click or click itself) are typer's to report
                if Verbosity.show_tracebacks or hasattr(exc, "show"):
                    raise
                target.print(f"[bold red]error:[/] unexpected {type(exc).__name__}: {escape(clip(str(exc)))} (a bug, "
                             "not your input: please report it with the command; `-v` prints the traceback)",
                             highlight=False, soft_wrap=True)
                raise typer.Exit(1) from None

        return wrapper  # type: ignore[return-value]

    return decorate


user_errors = errors_to(console)


def print_version(program: str) -> Callable[[bool], None]:
    """An eager ``--version`` callback: prints ``PROGRAM VERSION`` and exits before any command runs."""

    def callback(value: bool) -> None:
        if value:
            from selfunet import __version__

            typer.echo(f"{program} {__version__}")
            raise typer.Exit()

    return callback


@app.callback()
def _root(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="debug logging")] = False,
    version: Annotated[bool, typer.Option("--version", is_eager=True, callback=print_version("selfunet"),
                                          help="print the version and exit")] = False,
) -> None:
    set_verbose(verbose)


def _device_name(value: Optional[str]) -> Optional[str]:
    """``--device`` checked when the command line is parsed (exit 2), not after hours of preprocessing."""
    if value is None:
        return value
    from selfunet.runtime import check_device_name

    try:
        return check_device_name(value)
    except SelfUNetError as exc:
        raise typer.BadParameter(str(exc)) from None


#: the closed sets of the command line, validated as choices when it is parsed.
AmpChoice = Literal["auto", "off", "bf16", "fp16"]
BudgetChoice = Literal["full", "ci", "demo"]  # the keys of selfunet.training.budgets.BUDGETS (a test checks)
#: checks of generated config options at parse time, by field name
CALLBACKS = {"device": _device_name}

DatasetArg = Annotated[Path, typer.Argument(
    help="dataset folder (MSD or nnU-Net v2 layout), or an nnU-Net dataset name or id (Dataset004_Hippocampus, 4) "
    "under --nnunet-raw")]
NnunetRawOpt = Annotated[Optional[Path], typer.Option(
    envvar="nnUNet_raw", help="nnU-Net's raw-data folder, where a dataset name or id is looked up")]
WorkArg = Annotated[Path, typer.Argument(help="work directory")]
ProcessesOpt = Annotated[int, typer.Option("--processes", "-p", min=1, help="worker processes")]
PresetOpt = Annotated[str, typer.Option(
    help="planner preset: default | resenc-m | resenc-l | resenc-xl (residual-encoder U-Nets for 8 / 24 / 40 GB)")]
GpuMemoryOpt = Annotated[Optional[float], typer.Option(
    help="GPU memory budget the plan is made for (default: the preset's: 8, resenc-l 24, resenc-xl 40)")]


def find_dataset(reference: Path, nnunet_raw: Optional[Path]) -> Path:
    """DATASET as typed: a folder, or an nnU-Net name or id under ``nnunet_raw``; a name that leads
    nowhere is an error naming every place looked at (a plain path is left to the stage's own check)."""
    from selfunet.data.dataset_locator import lookup_dataset

    lookup = lookup_dataset(reference, nnunet_raw=nnunet_raw)
    if not lookup.found and len(lookup.looked) > 1:
        raise SelfUNetError(lookup.message())
    return lookup.path


@app.command()
@user_errors
def check(dataset: DatasetArg, processes: ProcessesOpt = 2, nnunet_raw: NnunetRawOpt = None) -> None:
    """Validate a dataset and report every problem at once (exit 1 if any error)."""
    from selfunet.data.check import check_dataset, render_report

    report = check_dataset(find_dataset(dataset, nnunet_raw), processes=processes, console=console)
    render_report(report, console)
    if report.errors:
        raise typer.Exit(1)


@app.command()
@user_errors
def fingerprint(
    dataset: DatasetArg,
    work: Annotated[Path, typer.Option("--work", "-w", help="work directory to write fingerprint.json into")],
    processes: ProcessesOpt = 2,
    seed: Annotated[int, typer.Option(help="seed of the foreground intensity sampling")] = 1234,
    nnunet_raw: NnunetRawOpt = None,
) -> None:
    """Compute the dataset fingerprint (docs/explanation/design.md#fingerprint) into WORK/fingerprint.json."""
    from selfunet.planning.fingerprint import run_fingerprint

    run_fingerprint(find_dataset(dataset, nnunet_raw), work, processes=processes, seed=seed)


@app.command()
@user_errors
def plan(
    work: WorkArg,
    preset: PresetOpt = "default",
    gpu_memory_gb: GpuMemoryOpt = None,
    show: Annotated[bool, typer.Option("--show", help="print the plan as a table")] = False,
    nnunet_fingerprint: Annotated[
        Optional[Path], typer.Option(help="use an nnU-Net v2 dataset_fingerprint.json instead of WORK's")
    ] = None,
    nnunet_dataset_json: Annotated[
        Optional[Path], typer.Option(help="the nnU-Net v2 dataset.json that goes with --nnunet-fingerprint")
    ] = None,
    from_plan: Annotated[
        Optional[Path], typer.Option(help="transfer OTHER/plan.json to this dataset (keeps architecture, patch "
                                          "and spacing; normalization from this dataset's fingerprint)")
    ] = None,
    fingerprint: Annotated[
        Optional[Path], typer.Option(help="read the fingerprint from this file (copied into WORK) instead of WORK's")
    ] = None,
) -> None:
    """Derive the plan (docs/explanation/design.md#plan-rules) from WORK/fingerprint.json into WORK/plan.json."""
    from selfunet.planning.plan import run_plan

    if from_plan is not None:
        from selfunet.planning.transfer import run_plan_transfer

        if nnunet_fingerprint is not None or nnunet_dataset_json is not None:
            raise SelfUNetError("--from-plan uses WORK/fingerprint.json; leave out --nnunet-fingerprint.")
        run_plan_transfer(work, from_plan, show=show, console=console)
        return
    run_plan(
        work,
        preset=preset,
        gpu_memory_gb=gpu_memory_gb,
        show=show,
        nnunet_fingerprint=nnunet_fingerprint,
        nnunet_dataset_json=nnunet_dataset_json,
        console=console,
        fingerprint_file=fingerprint,
    )


@app.command()
@user_errors
def preprocess(
    work: WorkArg,
    configuration: Annotated[
        Optional[list[str]],
        typer.Option("--configuration", "-c", help="configuration(s) to preprocess (default: all in the plan)"),
    ] = None,
    processes: ProcessesOpt = 2,
) -> None:
    """Crop, normalize and resample the training cases into WORK/preprocessed/ (skips finished cases)."""
    from selfunet.preprocessing.preprocess import run_preprocess

    run_preprocess(work, configuration, processes=processes, console=console)


@app.command("demo-data")
@user_errors
def demo_data(
    out: Annotated[Path, typer.Argument(help="folder to write the synthetic MSD-layout task into")],
    cases: Annotated[int, typer.Option(min=2, help="training cases")] = 12,
    test_cases: Annotated[int, typer.Option(min=0, help="test cases (imagesTs)")] = 3,
    seed: Annotated[int, typer.Option()] = 0,
    variant: Annotated[
        str, typer.Option(help="default | regions (BraTS-like nested regions) | sparse (ignore label)")
    ] = "default",
) -> None:
    """Write the deterministic synthetic demo task (two channels, organ + lesion)."""
    from selfunet.data.demo import make_demo_dataset

    make_demo_dataset(out, num_training=cases, num_test=test_cases, seed=seed, variant=variant)


@app.command()
@user_errors
@config_options(TRAIN, AUGMENTATION, INFERENCE, callbacks=CALLBACKS)
def train(
    work: WorkArg,
    configuration: Annotated[str, typer.Option("--configuration", "-c", help="e.g. 3d_fullres, 2d")],
    fold: Annotated[int, typer.Option("--fold", "-f", help="cross-validation fold")],
    resume: Annotated[bool, typer.Option("--resume", help="continue from checkpoint_latest.pt")] = False,
    restart: Annotated[bool, typer.Option("--restart", help="discard this fold's checkpoints and start over")] = False,
    given: Given = Given(),
) -> None:
    """Train one configuration on one fold (docs/explanation/design.md#training); every TrainConfig and
    AugmentationConfig field is
    an option, and the InferenceConfig options apply to the out-of-fold validation predictions. --resume
    continues with the checkpoint's settings."""
    from selfunet.pipeline import run_training
    from selfunet.training.train import config_to_resume
    from selfunet.training.train_config import TrainConfig

    overrides = given.train_overrides()
    if overrides.get("pretrained_weights"):  # relative to where the command runs, not to the job's folder
        overrides["pretrained_weights"] = str(Path(overrides["pretrained_weights"]).resolve())
    config = config_to_resume(work, configuration, fold, overrides) if resume and not restart else None
    if config is None:
        config = TrainConfig.from_dict(overrides, source="command line")
    run_training(work, configuration, fold, config, resume=resume, restart=restart, inference=given.inference,
                 console=console)


@app.command()
@user_errors
@config_options(INFERENCE, callbacks=CALLBACKS)
def predict(
    inputs: Annotated[list[Path], typer.Argument(help="image files and/or folders (MSD or nnU-Net v2 naming)")],
    output: Annotated[Path, typer.Option("--output", "-o", help="folder for the label maps")],
    work: Annotated[
        Optional[Path], typer.Option("--work", "-w", help="work directory holding the trained folds")
    ] = None,
    model: Annotated[
        Optional[Path], typer.Option("--model", help="a model.zip from `selfunet export-model` (instead of --work), "
                                     "or an nnU-Net v2 model folder or zip (imported first: `selfunet import-nnunet`)")
    ] = None,
    configurations: Annotated[
        Optional[list[str]], typer.Option("--configuration", "-c", help="repeat for an ensemble (default 3d_fullres)")
    ] = None,
    selection: Annotated[
        Optional[Path], typer.Option(help="selection.json: use its members and postprocessing rule")
    ] = None,
    folds: Annotated[Optional[list[int]], typer.Option("--fold", "-f", help="folds to average (default: all)")] = None,
    checkpoint: Annotated[str, typer.Option(help="checkpoint file name in each fold folder")] = "checkpoint_final.pt",
    mirroring: Annotated[bool, typer.Option("--mirroring/--no-mirroring",
                                            help="mirror TTA (--no-mirroring = --mirror-axes none)")] = True,
    amp: Annotated[AmpChoice, typer.Option(help="mixed precision: auto | off | bf16 | fp16")] = "auto",
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N", callback=_device_name)] = "auto",
    save_probabilities: Annotated[bool, typer.Option("--save-probabilities", help="also write <case>.npz")] = False,
    given: Given = Given(),
) -> None:
    """Predict images with trained folds (sliding window, mirror TTA, fold and ensemble averaging); every
    InferenceConfig field is an option."""
    from selfunet.inference.predict import predict_cases

    if (work is None) == (model is None):
        raise SelfUNetError("predict: give either --work WORK or --model model.zip.")
    from selfunet.inference.predict import refuse_overlapping_output

    refuse_overlapping_output(inputs, output)  # before the model is even read
    rule = None
    members = list(configurations or [])
    if model is not None:
        if selection is not None or checkpoint != "checkpoint_final.pt":
            raise SelfUNetError("predict --model takes its members, folds and postprocessing from the archive; "
                                "leave out --selection and --checkpoint (use -c/--fold to choose among them).")
        import tempfile

        from selfunet.interop.nnunet_import import model_archive_for
        from selfunet.model_archive import load_model_archive
        from selfunet.runtime import resolve_device

        with tempfile.TemporaryDirectory(prefix="selfunet-model-") as tmp:  # an nnU-Net model is imported first
            loaded = load_model_archive(model_archive_for(model, Path(tmp)), resolve_device(device), folds or None)
        predict_cases(inputs, output, None, members or loaded.members, mirroring=mirroring, amp=amp, device=device,
                      save_probabilities_files=save_probabilities, postprocessing=loaded.postprocessing,
                      inference=given.inference, console=console, models=loaded.models)
        return
    if selection is not None:
        from selfunet.evaluation.ensemble import Selection

        chosen = Selection.load(selection)
        members = members or list(chosen.members)
        rule = chosen.postprocessing
    predict_cases(inputs, output, work, members or ["3d_fullres"], folds or None, checkpoint, mirroring, amp,
                  device, save_probabilities, postprocessing=rule, inference=given.inference, console=console)


ExportFormat = Literal["selfunet", "nnunet"]


@app.command("export-model")
@user_errors
def export_model(
    work: Annotated[Path, typer.Argument(help="work directory (with --format nnunet also a model.zip)")],
    output: Annotated[Path, typer.Option("--output", "-o", help="the model archive to write (model.zip); with "
                                         "--format nnunet the nnUNet_results folder to write into")],
    selection: Annotated[
        Optional[Path], typer.Option(help="selection.json to export (default: WORK/selection.json)")
    ] = None,
    format_: Annotated[ExportFormat, typer.Option("--format", help="selfunet (model.zip) | nnunet (an nnU-Net v2 "
                                                  "trainer folder per configuration)")] = "selfunet",
    nnunet_dataset: Annotated[Optional[str], typer.Option(
        help="--format nnunet: the Dataset###_Name folder (default: the plan's dataset name if it has that form, "
             "else Dataset999_<name>)")] = None,
) -> None:
    """Pack plan, dataset facts, every fold's weights, selection and postprocessing into one zip; or
    (--format nnunet) write them as nnU-Net v2 trainer folders that nnUNetv2_predict loads."""
    if format_ == "nnunet":
        from selfunet.interop.nnunet_export import export_nnunet

        report = export_nnunet(work, output, selection, nnunet_dataset)
        console.print(escape(report.summary()), highlight=False)
        return
    from selfunet.model_archive import export_model as export

    console.print(f"wrote {export(work, output, selection)}")


@app.command("import-nnunet")
@user_errors
def import_nnunet(
    model_folder: Annotated[Path, typer.Argument(
        help="an nnU-Net v2 trainer folder (<Trainer>__<Plans>__<config>), a Dataset###_Name results folder, or an "
             "nnUNetv2_export_model_to_zip zip")],
    output: Annotated[Path, typer.Option("--output", "-o", help="the model archive to write (model.zip)")],
    configurations: Annotated[Optional[list[str]], typer.Option(
        "--configuration", "-c", help="choose among several trainer folders (repeat for an ensemble); a "
        "configuration or <Trainer>__<Plans>__<config>")] = None,
    folds: Annotated[Optional[list[str]], typer.Option(
        "--fold", "-f", help="folds to import (default: every fold with the checkpoint; 'all' for fold_all)")] = None,
    checkpoint: Annotated[Literal["final", "best"], typer.Option(
        help="checkpoint_final.pth or checkpoint_best.pth")] = "final",
    postprocessing: Annotated[str, typer.Option(
        help="auto (the folder's postprocessing.pkl for these folds, if any) | none | a postprocessing.pkl")] = "auto",
) -> None:
    """Check an nnU-Net v2 trained model and write it as a selfunet model archive (predict --model,
    harness export gc --model, harness score -s NAME=model.zip)."""
    from selfunet.interop.nnunet_import import import_nnunet as run_import

    report = run_import(model_folder, output, configurations or None, folds or None, checkpoint, postprocessing)
    folds_text = "; ".join(f"{c}: folds {', '.join(f)}" for c, f in report.folds.items())
    console.print(escape(f"wrote {report.output}: {'+'.join(report.members)} ({folds_text}; trainer "
                         f"{', '.join(sorted(set(report.trainers.values())))}; postprocessing "
                         f"{report.postprocessing})"), highlight=False)


@app.command()
@user_errors
@config_options(TRAIN, AUGMENTATION, INFERENCE, callbacks=CALLBACKS)
def run(
    dataset: DatasetArg,
    work: Annotated[Path, typer.Option("--work", "-w", help="work directory (created if missing)")],
    configurations: Annotated[
        Optional[list[str]], typer.Option("--configuration", "-c", help="repeat; default: all the plan makes")
    ] = None,
    budget: Annotated[BudgetChoice, typer.Option(
        help="full (the method's 1000 x 250) | ci | demo; the options below override it")] = "full",
    preset: PresetOpt = "default",
    gpu_memory_gb: GpuMemoryOpt = None,
    processes: ProcessesOpt = 2,
    nsd_tolerance_mm: Annotated[Optional[float], typer.Option(help="also compute NSD at this tolerance")] = None,
    hd95: Annotated[bool, typer.Option("--hd95", help="also compute HD95")] = False,
    nnunet_raw: NnunetRawOpt = None,
    given: Given = Given(),
) -> None:
    """The whole pipeline for one dataset; a rerun resumes where the last one stopped. Every TrainConfig,
    AugmentationConfig and InferenceConfig field is an option (a shown default is the field's; --budget
    presets change some)."""
    from selfunet.pipeline import RunOptions, run_pipeline
    from selfunet.planning.presets import planner_settings
    from selfunet.training.budgets import budget_config

    config = budget_config(budget, **given.train_overrides())
    options = RunOptions(
        configurations=tuple(configurations) if configurations else None, train=config,
        inference=given.inference, planner=planner_settings(preset, gpu_memory_gb), processes=processes,
        nsd_tolerance_mm=nsd_tolerance_mm, hd95=hd95,
    )
    run_pipeline(find_dataset(dataset, nnunet_raw), work, options, console=console)


@app.command()
@user_errors
def demo(
    work: Annotated[Path, typer.Argument(help="work directory; the demo data go to WORK/data")] = Path("work/demo"),
    budget: Annotated[BudgetChoice, typer.Option(help="demo | ci | full")] = "demo",
    processes: ProcessesOpt = 2,
) -> None:
    """The embedded demo: generate the synthetic task and run the whole pipeline on it (CPU, minutes)."""
    from selfunet.data.demo import make_demo_dataset
    from selfunet.pipeline import RunOptions, run_pipeline
    from selfunet.training.budgets import budget_config

    data = make_demo_dataset(work / "data", num_training=8, num_test=2, seed=0)
    run_pipeline(data.root, work, RunOptions(train=budget_config(budget), processes=processes), console=console)


@app.command()
@user_errors
def crossval(
    work: WorkArg,
    configuration: Annotated[str, typer.Option("--configuration", "-c", help="e.g. 3d_fullres")],
    nsd_tolerance_mm: Annotated[Optional[float], typer.Option(help="also compute NSD at this tolerance")] = None,
    hd95: Annotated[bool, typer.Option("--hd95", help="also compute HD95")] = False,
    processes: ProcessesOpt = 1,
) -> None:
    """Merge one configuration's out-of-fold predictions into WORK/crossval/CONFIG and evaluate them."""
    from selfunet.evaluation.crossval import render_crossval, run_crossval

    run_crossval(work, configuration, nsd_tolerance_mm=nsd_tolerance_mm, hd95=hd95, processes=processes)
    render_crossval(work, configuration, console)


@app.command()
@user_errors
def select(
    work: WorkArg,
    configurations: Annotated[
        Optional[list[str]],
        typer.Option("--configuration", "-c", help="repeat; default: every configuration with complete folds"),
    ] = None,
    processes: ProcessesOpt = 1,
) -> None:
    """Rank configurations and pairs on the cross-validation, decide postprocessing -> WORK/selection.json."""
    from selfunet.evaluation.ensemble import render_selection, select_model

    render_selection(select_model(work, configurations or None, processes=processes, console=console), console)


@app.command()
@user_errors
def postprocess(
    input_dir: Annotated[Path, typer.Argument(help="folder of label maps")],
    output_dir: Annotated[Path, typer.Argument(help="folder for the postprocessed label maps")],
    selection: Annotated[Path, typer.Option(help="WORK/selection.json holding the postprocessing rule")],
) -> None:
    """Apply the connected-component rule decided by `selfunet select` to a folder of label maps."""
    from selfunet.evaluation.ensemble import Selection
    from selfunet.inference.postprocess import postprocess_folder

    written = postprocess_folder(input_dir, output_dir, Selection.load(selection).postprocessing, console=console)
    console.print(escape(f"wrote {len(written)} label map(s) to {output_dir}"), highlight=False)


@app.command()
@user_errors
def evaluate(
    prediction_dir: Annotated[Path, typer.Argument(help="folder of predicted label maps (<case><ending>)")],
    reference_dir: Annotated[Path, typer.Argument(help="folder of reference label maps, e.g. DATASET/labelsTr")],
    dataset: Annotated[Optional[Path], typer.Option(help="take the labels from this dataset's dataset.json")] = None,
    labels: Annotated[Optional[str], typer.Option(help="label values to evaluate: '1,2' or '1:liver,2:tumour'")] = None,
    nsd_tolerance_mm: Annotated[Optional[float], typer.Option(min=0, help="also report NSD at this tolerance")] = None,
    hd95: Annotated[bool, typer.Option("--hd95", help="also report HD95 in mm")] = False,
    processes: ProcessesOpt = 1,
    output: Annotated[
        Optional[Path], typer.Option("--output", "-o", help="folder for the outputs (default: PREDICTION_DIR)")
    ] = None,
) -> None:
    """Dice, IoU, TP/FP/FN (+ NSD, HD95) per case and class, per-class means (docs/explanation/design.md#evaluation)."""
    from selfunet.evaluation.evaluate import run_evaluate

    run_evaluate(prediction_dir, reference_dir, output, labels, dataset, nsd_tolerance_mm, hd95, processes,
                 console=console, table_console=Console())


def main() -> None:
    app()


if __name__ == "__main__":
    main()

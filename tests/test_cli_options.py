"""Every config field is a command-line option, shown with the field's default, and reaches the run.

The fields are enumerated here from the config classes themselves (not from the generator), so a
field that the generator skips or shows with a wrong default fails this test.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from selfunet.cli import app
from selfunet.cli_options import (
    ARTIFACT_FIELDS,
    AUGMENTATION,
    INFERENCE,
    TRAIN,
    Given,
    OptionGroup,
    config_options,
    group_options,
    train_argv,
)
from selfunet.inference.inference_config import InferenceConfig
from selfunet.training.augment_config import AugmentationConfig
from selfunet.training.train_config import TrainConfig

runner = CliRunner()
COMMANDS = {"train": (TRAIN, AUGMENTATION, INFERENCE), "run": (TRAIN, AUGMENTATION, INFERENCE),
            "predict": (INFERENCE,)}
INSTANCES = {"train": TrainConfig(), "augmentation": AugmentationConfig(), "inference": InferenceConfig()}


def field_defaults(group: OptionGroup) -> dict[str, Any]:
    instance = INSTANCES[group.key]
    if dataclasses.is_dataclass(instance):
        names = [f.name for f in dataclasses.fields(instance)]
    else:
        names = [n for n in type(instance).model_fields if n not in ARTIFACT_FIELDS]
    return {name: getattr(instance, name) for name in names}


def help_rows(command: str) -> dict[str, str]:
    """``--option`` -> the whole text of its row in ``selfunet COMMAND --help`` (wrapped lines joined)."""
    import typer.rich_utils

    # typer reads TERMINAL_WIDTH once, when rich_utils is first imported (maybe by an earlier test):
    # set the width it uses directly, so the rows do not depend on the order tests run in
    width = typer.rich_utils.MAX_WIDTH
    typer.rich_utils.MAX_WIDTH = 240
    try:
        result = runner.invoke(app, [command, "--help"], env={"TERMINAL_WIDTH": "240", "NO_COLOR": "1"})
    finally:
        typer.rich_utils.MAX_WIDTH = width
    assert result.exit_code == 0, result.output
    rows: dict[str, str] = {}
    current = None
    for line in result.output.splitlines():
        body = line.strip().strip("│").strip()
        start = re.match(r"^(?:\*\s+)?(--[a-z0-9-]+)", body)
        if start:
            current = start.group(1)
            rows[current] = body
        elif current is not None and body and not line.lstrip().startswith(("╭", "╰")):
            rows[current] += " " + body
        elif line.lstrip().startswith("╰"):
            current = None
    return rows


def shown_default(row: str) -> str:
    found = re.search(r"\[default: (.*?)\]", " ".join(row.split()))
    assert found, f"no default shown in: {row}"
    return found.group(1)


def read_back(kind: str, text: str, option) -> Any:
    """The value a default shown in --help stands for (parsed here, not by the generator)."""
    if kind == "bool":
        return not text.startswith("no-")
    if kind == "range":
        return tuple(float(v) for v in text.split(","))
    if kind in ("float",):
        return float(text)
    if kind == "int":
        return int(text)
    if kind == "axes":
        return None if text == "all" else () if text == "none" else tuple(int(a) for a in text.split(","))
    if kind == "tristate":
        return {"auto": None, "on": True, "off": False}[text]
    if kind == "optional_int":
        return None if text == "none" else int(text)
    if kind == "optional_str":
        return None if text == "none" else text
    return text


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_config_field_has_an_option_showing_its_default(command: str) -> None:
    rows = help_rows(command)
    options = {o.field: o for group in COMMANDS[command] for o in group_options(group) if o.group == group.key}
    for group in COMMANDS[command]:
        for name, default in field_defaults(group).items():
            if name in group.set_by:
                setter = group.set_by[name]
                assert setter.endswith("*") or setter in rows, f"{command}: {name} is set by {setter}, not an option"
                continue
            option = next((o for o in group_options(group) if o.field == name), None)
            assert option is not None, f"{command}: {group.key} field {name} has no option"
            assert option.option in rows, f"{command} --help does not show {option.option} ({group.key}.{name})"
            shown = shown_default(rows[option.option])
            assert read_back(option.kind, shown, option) == default, (
                f"{command} {option.option}: --help shows default {shown!r}, the field's is {default!r}")
    assert options  # the command has generated options at all


def test_train_argv_reproduces_a_config_through_the_command_line() -> None:
    probe = typer.Typer()
    seen: list[Given] = []

    @probe.command()
    @config_options(TRAIN, AUGMENTATION)
    def main(given: Given = Given()) -> None:
        seen.append(given)

    config = TrainConfig.from_dict({
        "momentum": 0.9, "weight_decay": 1e-4, "grad_clip_norm": 5.0, "oversample_foreground": 0.5,
        "split_seed": 7, "loader_threads": 3, "compile": True, "amp": "off", "max_voxels_per_batch": 4096,
        "augmentation": {"p_rotation": 0.0, "scale_range": (0.8, 1.25), "mirror_axes": (0, 2), "per_slice": False},
    })
    argv = train_argv(config)
    assert "--momentum" in argv and "--aug-scale-range" in argv and "--epochs" not in argv
    result = runner.invoke(probe, argv)
    assert result.exit_code == 0, result.output
    assert TrainConfig.from_dict(seen[0].train_overrides()) == config
    assert seen[0].inference == {}


def test_only_options_typed_on_the_command_line_count_as_given() -> None:
    probe = typer.Typer()
    seen: list[Given] = []

    @probe.command()
    @config_options(TRAIN, AUGMENTATION, INFERENCE)
    def main(given: Given = Given()) -> None:
        seen.append(given)

    # giving a default value explicitly still counts (a resume must compare it), absent ones do not
    result = runner.invoke(probe, ["--momentum", "0.99", "--aug-per-slice", "auto", "--mirror-axes", "none",
                                   "--step-fraction", "0.25"])
    assert result.exit_code == 0, result.output
    assert seen[0].train == {"momentum": 0.99}
    assert seen[0].augmentation == {"per_slice": None}
    assert seen[0].inference == {"mirror_axes": (), "step_fraction": 0.25}


def test_bad_values_are_refused_naming_the_option() -> None:
    result = runner.invoke(app, ["predict", "x.nii.gz", "-o", "out", "-w", "work", "--mirror-axes", "x,y"])
    assert result.exit_code == 1 and "--mirror-axes" in result.output
    result = runner.invoke(app, ["train", "work", "-c", "2d", "-f", "0", "--amp", "fp8"])
    assert result.exit_code == 2 and "fp8" in result.output


def test_predict_hands_the_inference_options_to_the_predictor(monkeypatch) -> None:
    """The seam is predict_cases; that it builds its InferenceConfig from them is tested below."""
    import selfunet.inference.predict as predict

    calls: list[dict] = []
    monkeypatch.setattr(predict, "predict_cases", lambda *args, **kwargs: calls.append(kwargs))
    result = runner.invoke(app, ["predict", "x.nii.gz", "-o", "out", "-w", "work", "--step-fraction", "0.25",
                                 "--gaussian-sigma-fraction", "0.2", "--mirror-axes", "0,1",
                                 "--windows-per-batch", "2"])
    assert result.exit_code == 0, result.output
    assert calls[0]["inference"] == {"step_fraction": 0.25, "gaussian_sigma_fraction": 0.2, "mirror_axes": (0, 1),
                                     "windows_per_batch": 2}


def test_inference_config_takes_the_overrides_and_no_mirroring_wins() -> None:
    import torch

    from selfunet.inference.predict import inference_config

    config = inference_config(None, True, torch.bfloat16, torch.device("cpu"),  # type: ignore[arg-type]
                              {"step_fraction": 0.25, "mirror_axes": (1,), "gaussian_sigma_fraction": 0.2})
    assert (config.step_fraction, config.mirror_axes, config.gaussian_sigma_fraction) == (0.25, (1,), 0.2)
    assert config.amp_dtype is torch.bfloat16
    assert inference_config(None, False, None, torch.device("cpu"), {"mirror_axes": (1,)}).mirror_axes == ()  # type: ignore[arg-type]


def test_the_command_line_does_not_load_torch() -> None:
    import subprocess
    import sys

    code = "import sys, selfunet.cli, harness.cli; print('torch' in sys.modules)"
    found = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert found.strip() == "False"

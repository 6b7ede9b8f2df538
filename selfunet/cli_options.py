"""Command-line options generated from the config objects' fields.

Every field of :class:`~selfunet.training.train_config.TrainConfig`,
:class:`~selfunet.training.augment_config.AugmentationConfig` and
:class:`~selfunet.inference.inference_config.InferenceConfig` becomes an option of the commands
that use it (``selfunet train``, ``run``, ``predict``), with the field's docstring as help and the
field's default shown in ``--help``. A field added to a config is an option the moment it exists:
nothing here lists fields by hand except the few set by another option (``amp_dtype`` by ``--amp``).

A command receives only the options the user actually typed (the click context's parameter source
tells them from defaults), so ``selfunet train --resume`` continues with the checkpoint's settings and refuses
an option that contradicts them, instead of silently falling back to the defaults.

Names: training fields keep their name (``--weight-decay``), augmentation fields get ``--aug-``
(``--aug-p-rotation``), inference fields keep theirs (``--step-fraction``). Values: a range is two
numbers (``--aug-scale-range 0.7 1.4``), axes are ``all``, ``none`` or ``0,1,2``, a yes/no/auto
field is ``auto``/``on``/``off``.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import itertools
import sys
import textwrap
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, TypeVar

import typer

from selfunet.artifacts import Artifact
from selfunet.errors import SelfUNetError
from selfunet.inference.inference_config import InferenceConfig
from selfunet.training.augment_config import AugmentationConfig
from selfunet.training.train_config import TrainConfig

F = TypeVar("F", bound=Callable)
#: bookkeeping every stored config has (the file format's version): not a setting.
ARTIFACT_FIELDS = frozenset(Artifact.model_fields)
#: the parameter through which Typer hands the click context to a generated command.
CONTEXT_PARAM = "_cli_context"
AUTO_ON_OFF = {"auto": None, "on": True, "off": False}


@dataclass(frozen=True)
class FieldOption:
    """One config field as one option: how it is named, typed, parsed back and shown."""

    group: str
    field: str
    param: str
    """the Python parameter name of the generated option (unique per command)."""
    flags: tuple[str, ...]
    """``("--name",)`` or, for a boolean, ``("--name/--no-name",)``."""
    kind: str
    """bool, int, float, str, choice, range, axes, tristate, optional_int, optional_str."""
    default: Any
    help: str
    choices: tuple[str, ...] = ()
    bounds: tuple[float | None, float | None] = (None, None)
    """the field's ``ge``/``le`` limits, checked when the command line is parsed."""

    @property
    def option(self) -> str:
        return self.flags[0].split("/")[0]

    def cli_default(self) -> Any:
        """The option's default as the command line writes it (what ``--help`` shows)."""
        if self.kind in ("axes", "tristate", "optional_int", "optional_str"):
            return format_value(self, self.default)
        return self.default

    def annotation(self, callback: Callable | None = None) -> Any:
        """The ``Annotated[...]`` type Typer builds the option from (``callback`` checks the value)."""
        python_type: Any = {"bool": bool, "int": int, "float": float, "range": tuple[float, float]}.get(self.kind, str)
        if self.kind in ("choice", "tristate"):
            python_type = Literal[self.choices]  # type: ignore[valid-type]
        limits = {"min": self.bounds[0], "max": self.bounds[1]} if self.kind in ("int", "float") else {}
        info = typer.Option(*self.flags, help=self.help, rich_help_panel=PANELS[self.group], callback=callback,
                            **limits)
        return Annotated[python_type, info]

    def parse(self, value: Any) -> Any:
        """The field value of a value given on the command line."""
        if self.kind == "range":
            return (float(value[0]), float(value[1]))
        if self.kind == "tristate":
            return AUTO_ON_OFF[value]
        if self.kind == "axes":
            return parse_axes(value, self.option)
        if self.kind == "optional_int":
            return parse_optional_int(value, self.option)
        if self.kind == "optional_str":
            return None if value.strip().lower() == "none" else value
        return value


#: the help panel of each group in ``--help``.
PANELS = {"train": "Training (TrainConfig)", "augmentation": "Augmentation (AugmentationConfig)",
          "inference": "Inference (InferenceConfig)"}


@dataclass(frozen=True)
class OptionGroup:
    """A config class whose fields become options."""

    key: str
    config: type
    prefix: str = ""
    set_by: Mapping[str, str] = field(default_factory=dict)
    """fields that are not options of their own, and the option that sets each instead."""
    names: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """option names that differ from the field's (e.g. a short alias)."""


TRAIN = OptionGroup("train", TrainConfig, set_by={"augmentation": "--aug-*"},
                    names={"initial_lr": ("--initial-lr", "--lr")})
AUGMENTATION = OptionGroup("augmentation", AugmentationConfig, prefix="aug-")
INFERENCE = OptionGroup("inference", InferenceConfig, set_by={"amp_dtype": "--amp", "device": "--device"})


def parse_axes(text: str, option: str = "--mirror-axes") -> tuple[int, ...] | None:
    """``all`` -> None (every axis), ``none`` -> (), ``0,2`` -> (0, 2)."""
    text = text.strip().lower()
    if text == "all":
        return None
    if text in ("none", ""):
        return ()
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise SelfUNetError(f"{option} {text!r}: write 'all', 'none' or axes like '0,1,2'.") from None


def parse_optional_int(text: str, option: str) -> int | None:
    """``none`` -> None, ``123`` -> 123."""
    if text.strip().lower() == "none":
        return None
    try:
        return int(text)
    except ValueError:
        raise SelfUNetError(f"{option} {text!r}: write a whole number or 'none'.") from None


def format_value(option: FieldOption, value: Any) -> str:
    """A field value as the command line writes it (also what ``--help`` shows as the default)."""
    if option.kind == "bool":
        name = option.flags[0].split("/")
        return name[0] if value else name[1]
    if option.kind == "range":
        return " ".join(repr(float(v)) for v in value)
    if option.kind == "axes":
        return "all" if value is None else (",".join(str(int(a)) for a in value) or "none")
    if option.kind == "tristate":
        return {None: "auto", True: "on", False: "off"}[value]
    if option.kind == "optional_int":
        return "none" if value is None else str(int(value))
    if option.kind == "optional_str":
        return "none" if value is None else str(value)
    if isinstance(value, float):
        return repr(value)
    return str(value)


def argv_of(option: FieldOption, value: Any) -> list[str]:
    """The command-line words that set ``option``'s field to ``value``."""
    shown = format_value(option, value)
    if option.kind == "bool":
        return [shown]
    if option.kind == "range":
        return [option.option, *shown.split()]
    return [option.option, shown]


# ---------------------------------------------------------------------------------------------
# fields -> options


def _attribute_docstrings(cls: type) -> dict[str, str]:
    """The string literal under each annotated attribute of ``cls``'s body (its field docs)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        try:
            source = textwrap.dedent(inspect.getsource(klass))
        except (OSError, TypeError):
            continue
        body = ast.parse(source).body
        if not body or not isinstance(body[0], ast.ClassDef):
            continue
        statements = body[0].body
        for node, following in itertools.pairwise(statements):
            if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                    and isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant)
                    and isinstance(following.value.value, str)):
                docs[node.target.id] = " ".join(following.value.value.split())
    return docs


def _fields(cls: type) -> list[tuple[str, Any, Any, tuple[float | None, float | None]]]:
    """``(name, annotation, default, (ge, le))`` of every field of a pydantic model or a dataclass."""
    if dataclasses.is_dataclass(cls):
        namespace = vars(sys.modules[cls.__module__])
        out = []
        for f in dataclasses.fields(cls):
            try:
                annotation = eval(f.type, namespace) if isinstance(f.type, str) else f.type
            except NameError:  # names a type only imported for checkers (e.g. torch.device)
                annotation = None
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
            out.append((f.name, annotation, default, (None, None)))
        return out
    out = []
    for name, info in cls.model_fields.items():  # type: ignore[attr-defined]
        ge = next((m.ge for m in info.metadata if hasattr(m, "ge")), None)
        le = next((m.le for m in info.metadata if hasattr(m, "le")), None)
        out.append((name, info.annotation, info.get_default(call_default_factory=True), (ge, le)))
    return out


def _kind(annotation: Any, default: Any) -> tuple[str, tuple[str, ...]]:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is bool:
        return "bool", ()
    if annotation in (int, float, str):
        return annotation.__name__, ()
    if origin is Literal:
        return "choice", tuple(str(a) for a in args)
    if origin is tuple and args == (float, float):
        return "range", ()
    if origin in (typing.Union, types.UnionType):
        non_none = [a for a in args if a is not type(None)]
        if len(non_none) == 1 and non_none[0] is bool:
            return "tristate", tuple(AUTO_ON_OFF)
        if len(non_none) == 1 and non_none[0] is int:
            return "optional_int", ()
        if len(non_none) == 1 and non_none[0] is str:
            return "optional_str", ()
        if len(non_none) == 1 and typing.get_origin(non_none[0]) is tuple and typing.get_args(non_none[0]) == (
                int, ...):
            return "axes", ()
    if annotation is None and isinstance(default, str):
        return "str", ()
    raise TypeError(f"config field type {annotation!r} has no command-line form; teach selfunet.cli_options it")


def _help(name: str, docs: dict[str, str]) -> str:
    text = docs.get(name) or (f"probability of {name[2:].replace('_', ' ')}" if name.startswith("p_")
                              else name.replace("_", " "))
    return text.replace("[", r"\[")  # rich markup: keep "[0, 1]" literal


_OPTIONS: dict[str, tuple[FieldOption, ...]] = {}


def group_options(group: OptionGroup) -> tuple[FieldOption, ...]:
    """One option per field of the group's config (except those set by another option)."""
    if group.key not in _OPTIONS:
        _OPTIONS[group.key] = _make_options(group)
    return _OPTIONS[group.key]


def _make_options(group: OptionGroup) -> tuple[FieldOption, ...]:
    docs = _attribute_docstrings(group.config)
    options = []
    for name, annotation, default, bounds in _fields(group.config):
        if name in group.set_by or name in ARTIFACT_FIELDS:
            continue
        kind, choices = _kind(annotation, default)
        flags = group.names.get(name) or (f"--{group.prefix}{name.replace('_', '-')}",)
        if kind == "bool":
            flags = (f"{flags[0]}/--no-{flags[0][2:]}",)
        param = f"{group.prefix.replace('-', '_')}{name}"
        options.append(FieldOption(group.key, name, param, flags, kind, default, _help(name, docs), choices, bounds))
    return tuple(options)


# ---------------------------------------------------------------------------------------------
# commands


@dataclass(frozen=True)
class Given:
    """The config fields a command line set explicitly, per group (nothing else)."""

    train: dict[str, Any] = field(default_factory=dict)
    augmentation: dict[str, Any] = field(default_factory=dict)
    inference: dict[str, Any] = field(default_factory=dict)

    def train_overrides(self) -> dict[str, Any]:
        """TrainConfig overrides, the augmentation ones nested under ``augmentation``."""
        out = dict(self.train)
        if self.augmentation:
            out["augmentation"] = dict(self.augmentation)
        return out


def config_options(*groups: OptionGroup, callbacks: Mapping[str, Callable] | None = None) -> Callable[[F], F]:
    """Add one option per field of ``groups`` to a command, which receives them as ``given: Given``.

    ``callbacks`` maps a field name to a Typer callback that checks its value when the command line
    is parsed (e.g. ``device``).
    The command's own parameters come first in ``--help``; options the command already declares
    itself (e.g. ``--device`` with a different help) are not generated twice.
    """

    def decorate(func: F) -> F:
        signature = inspect.signature(func, eval_str=True)
        own = [p for name, p in signature.parameters.items() if name != "given"]
        taken = {p.name for p in own}
        generated = [o for g in groups for o in group_options(g) if o.param not in taken]
        params = {o.param: o for o in generated}
        if len(params) != len(generated):
            raise TypeError(f"{func.__name__}: two config fields map to one option")

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            values: dict[str, dict[str, Any]] = {g.key: {} for g in groups}
            context = kwargs.pop(CONTEXT_PARAM, None)
            for name, option in params.items():
                raw = kwargs.pop(name, None)
                source = context.get_parameter_source(name) if context is not None else None
                if getattr(source, "name", None) in ("COMMANDLINE", "ENVIRONMENT"):
                    values[option.group][option.field] = option.parse(raw)
            return func(*args, given=Given(**values), **kwargs)

        checks = callbacks or {}
        extra = [inspect.Parameter(o.param, inspect.Parameter.KEYWORD_ONLY, default=o.cli_default(),
                                   annotation=o.annotation(checks.get(o.field)))
                 for o in generated]
        keyword = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own]
        context = inspect.Parameter(CONTEXT_PARAM, inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context)
        wrapper.__signature__ = signature.replace(parameters=[*keyword, context, *extra])  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]

    return decorate


def train_argv(config: TrainConfig) -> list[str]:
    """``selfunet train`` options that reproduce ``config`` (its non-default fields only)."""
    defaults = TrainConfig()
    argv: list[str] = []
    for option in group_options(TRAIN):
        value = getattr(config, option.field)
        if value != getattr(defaults, option.field):
            argv += argv_of(option, value)
    for option in group_options(AUGMENTATION):
        value = getattr(config.augmentation, option.field)
        if value != getattr(defaults.augmentation, option.field):
            argv += argv_of(option, value)
    return argv

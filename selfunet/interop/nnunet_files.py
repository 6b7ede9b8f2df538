"""nnU-Net v2's files, read without running any of their code, and written so nnU-Net reads them.

* JSON (``plans.json``, ``dataset.json``, ...): bounded in size, must be an object.
* Checkpoints (``checkpoint_final.pth``): ``torch.load(weights_only=True)``, which builds tensors,
  containers and plain values only. nnU-Net's checkpoints also hold numpy scalars in their training
  log (``np.float32`` Dice values); the numpy scalar constructor and numeric dtypes are allowed for
  the duration of the load (``torch.serialization.safe_globals``, no global change), nothing else.
* ``postprocessing.pkl``: a pickle of ``(functions, keyword arguments)``. It is read by an unpickler
  that knows exactly one global, nnU-Net's ``remove_all_but_largest_component_from_segmentation``
  (a marker, never the function), numpy's scalar constructor (numeric scalars only: nnU-Net's label
  lists hold ``np.int64``), ``numpy.dtype`` and, for protocol 2, latin-1 ``_codecs.encode``; any
  other global is refused, so nothing is executed.
  The same file is written for the other direction by emitting the pickle opcodes directly
  (:func:`postprocessing_pickle`): nnunetv2 need not be installed for that either.
"""

from __future__ import annotations

import io
import json
import pickle
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from selfunet.errors import SelfUNetError, clip, quote

#: a plans.json / dataset.json is kilobytes, a fingerprint of a large dataset megabytes.
MAX_JSON_BYTES = 64 * 2**20
#: a checkpoint holds the weights twice more (optimizer momentum); the largest presets' are ~2 GB.
MAX_CHECKPOINT_BYTES = 32 * 2**30
MAX_PICKLE_BYTES = 2**20

#: nnU-Net's one postprocessing function (``nnunetv2.postprocessing.remove_connected_components``).
PP_MODULE = "nnunetv2.postprocessing.remove_connected_components"
PP_FUNCTION = "remove_all_but_largest_component_from_segmentation"


def read_json(path: Path, what: str) -> dict:
    """The JSON object in ``path`` (an nnU-Net ``what``), size-bounded; a SelfUNetError names the file."""
    path = Path(path)
    if not path.is_file():
        raise SelfUNetError(f"{path} not found: an nnU-Net v2 model folder has its {what} there.")
    if path.stat().st_size > MAX_JSON_BYTES:
        raise SelfUNetError(f"{path}: {path.stat().st_size:,} bytes, more than {MAX_JSON_BYTES:,} for a {what}; "
                            "refused.")
    try:
        raw = json.loads(path.read_bytes())
    except (ValueError, RecursionError) as exc:
        raise SelfUNetError(f"{path} is not valid JSON ({clip(str(exc), 120)}); it should be nnU-Net's "
                            f"{what}.") from None
    if not isinstance(raw, dict):
        raise SelfUNetError(f"{path}: expected a JSON object (nnU-Net's {what}), got a {type(raw).__name__}.")
    return raw


# -- checkpoints ----------------------------------------------------------------------------------
def _numeric_safe_globals() -> list:
    """numpy's scalar constructor and numeric dtypes, under numpy 2's and numpy 1's names."""
    scalar = np._core.multiarray.scalar if hasattr(np, "_core") else np.core.multiarray.scalar
    allowed: list = [scalar, (scalar, "numpy.core.multiarray.scalar"), (scalar, "numpy._core.multiarray.scalar"),
                     np.dtype]
    for name in ("Float16DType", "Float32DType", "Float64DType", "Int8DType", "Int16DType", "Int32DType",
                 "Int64DType", "UInt8DType", "UInt16DType", "UInt32DType", "UInt64DType", "BoolDType"):
        dtype_class = getattr(getattr(np, "dtypes", None), name, None)
        if dtype_class is not None:
            allowed.append(dtype_class)
    return allowed


def load_nnunet_checkpoint(path: Path) -> dict:
    """An nnU-Net checkpoint's payload (``network_weights``, ``trainer_name``, ``init_args``, ...),
    loaded with ``weights_only=True``; pickled objects are refused, naming their class."""
    path = Path(path)
    if not path.is_file():
        raise SelfUNetError(f"{path}: checkpoint not found.")
    if path.stat().st_size > MAX_CHECKPOINT_BYTES:
        raise SelfUNetError(f"{path}: {path.stat().st_size:,} bytes, more than {MAX_CHECKPOINT_BYTES:,}; refused.")
    try:
        with torch.serialization.safe_globals(_numeric_safe_globals()):
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL ([\w.]+)|got <class '([\w.]+)'>", str(exc))
        what = next((g for g in found.groups() if g), "?") if found else "an object"
        raise SelfUNetError(
            f"{path}: refused: the checkpoint holds a pickled {clip(what, 120)}, not only tensors and plain values; "
            "selfunet never unpickles objects (that can run code). Load it once in a trusted nnU-Net installation "
            "and save `{'network_weights': ..., 'trainer_name': ..., 'init_args': ..., "
            "'inference_allowed_mirroring_axes': ...}` again with plain values.") from None
    except Exception as exc:  # a truncated or foreign file
        raise SelfUNetError(f"{path}: not a readable PyTorch checkpoint ({type(exc).__name__}: "
                            f"{clip(str(exc).strip().splitlines()[0] if str(exc).strip() else '', 160)}).") from None
    if not isinstance(payload, dict) or not isinstance(payload.get("network_weights"), dict):
        raise SelfUNetError(f"{path}: not an nnU-Net v2 checkpoint (no 'network_weights' state dict).")
    weights = payload["network_weights"]
    if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in weights.items()):
        raise SelfUNetError(f"{path}: 'network_weights' must map parameter names to tensors.")
    return payload


def save_nnunet_checkpoint(path: Path, payload: dict) -> None:
    """``torch.save`` of plain values (what nnU-Net's predictor reads), written atomically."""
    from selfunet.runtime import save_checkpoint

    save_checkpoint(Path(path), payload)


# -- postprocessing.pkl ---------------------------------------------------------------------------
@dataclass(frozen=True)
class PostprocessingStep:
    """One ``remove_all_but_largest_component_from_segmentation`` call: keep the largest connected
    component of the voxels whose label is in ``labels`` (the union of nnU-Net's ``labels_or_regions``),
    set the rest of them to ``background_label``."""

    labels: tuple[int, ...]
    background_label: int = 0


class _RemoveAllButLargest:
    """Stands for nnU-Net's function in an unpickled list; never called."""


def _numeric_scalar(dtype: Any, data: Any = None) -> int | float:
    scalar = np._core.multiarray.scalar if hasattr(np, "_core") else np.core.multiarray.scalar
    if not isinstance(dtype, np.dtype) or dtype.kind not in "biuf" or not isinstance(data, bytes):
        raise pickle.UnpicklingError(f"a numpy scalar of dtype {dtype!r}")
    return scalar(dtype, data).item()


def _latin1(text: Any, encoding: Any = None) -> bytes:
    if not isinstance(text, str) or encoding != "latin1":
        raise pickle.UnpicklingError("_codecs.encode of something other than latin-1 text")
    return text.encode("latin1")


class _PlainUnpickler(pickle.Unpickler):
    """Builds containers and plain values; knows nnU-Net's postprocessing function as a marker."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == (PP_MODULE, PP_FUNCTION):
            return _RemoveAllButLargest
        if module in ("numpy._core.multiarray", "numpy.core.multiarray") and name == "scalar":
            return _numeric_scalar
        if (module, name) == ("numpy", "dtype"):
            return np.dtype
        if (module, name) == ("_codecs", "encode"):  # bytes in protocol 2: encode(text, "latin1")
            return _latin1
        raise pickle.UnpicklingError(f"{module}.{name}")

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("a persistent id")


def _label_set(value: Any, where: str) -> tuple[int, ...]:
    """nnU-Net's ``labels_or_regions``: a label, a region (tuple), or a list of either -> label values."""
    items = value if isinstance(value, list) else [value]
    labels: set[int] = set()
    for item in items:
        for v in item if isinstance(item, (tuple, list)) else (item,):
            if isinstance(v, bool) or not isinstance(v, int):
                raise SelfUNetError(f"{where}: labels_or_regions {quote(value, 80)} holds {quote(v, 40)}, not a label "
                                    "value.")
            labels.add(int(v))
    if not labels:
        raise SelfUNetError(f"{where}: labels_or_regions is empty.")
    return tuple(sorted(labels))


def read_postprocessing_pickle(path: Path) -> list[PostprocessingStep]:
    """The steps of nnU-Net's ``postprocessing.pkl``, read without executing anything."""
    path = Path(path)
    data = path.read_bytes() if path.is_file() else None
    if data is None:
        raise SelfUNetError(f"{path} not found.")
    if len(data) > MAX_PICKLE_BYTES:
        raise SelfUNetError(f"{path}: {len(data):,} bytes, more than {MAX_PICKLE_BYTES:,} for a postprocessing "
                            "choice; refused.")
    try:
        raw = _PlainUnpickler(io.BytesIO(data)).load()
    except pickle.UnpicklingError as exc:
        raise SelfUNetError(
            f"{path}: refused: it pickles {clip(str(exc), 120)}, which is not nnU-Net's connected-component "
            "postprocessing; selfunet never unpickles other objects. Import without it "
            "(`--postprocessing none`) and decide postprocessing again (nnUNetv2_find_best_configuration, or "
            "`selfunet select` on a selfunet cross-validation).") from None
    except (EOFError, ValueError, TypeError, IndexError, KeyError, AttributeError, RecursionError) as exc:
        raise SelfUNetError(f"{path}: not a readable postprocessing.pkl ({type(exc).__name__}).") from None
    if not (isinstance(raw, (tuple, list)) and len(raw) == 2 and all(isinstance(x, list) for x in raw)
            and len(raw[0]) == len(raw[1])):
        raise SelfUNetError(f"{path}: expected (functions, keyword arguments), two lists of equal length.")
    steps = []
    for index, (function, kwargs) in enumerate(zip(*raw)):
        where = f"{path}: step {index + 1}"
        if function is not _RemoveAllButLargest:
            raise SelfUNetError(f"{where}: {quote(function, 80)} is not nnU-Net's "
                                f"{PP_FUNCTION}; import with `--postprocessing none`.")
        if not isinstance(kwargs, dict) or "labels_or_regions" not in kwargs or set(kwargs) - {
                "labels_or_regions", "background_label"}:
            raise SelfUNetError(f"{where}: keyword arguments {quote(kwargs, 120)}; expected labels_or_regions "
                                "(and background_label).")
        background = kwargs.get("background_label", 0)
        if isinstance(background, bool) or not isinstance(background, int):
            raise SelfUNetError(f"{where}: background_label {quote(background, 40)} is not a label value.")
        steps.append(PostprocessingStep(_label_set(kwargs["labels_or_regions"], where), int(background)))
    return steps


def postprocessing_pickle(targets: Sequence[int | list[int] | tuple[int, ...]]) -> bytes:
    """``postprocessing.pkl`` bytes as nnU-Net writes it: ``([fn, ...], [{'labels_or_regions': t}, ...])``
    with ``fn`` nnU-Net's function (pickled by reference: a GLOBAL opcode, so nnunetv2 need not be
    importable here). ``targets``: a label, a list of labels, or a region tuple per step."""
    kwargs = [{"labels_or_regions": t} for t in targets]
    body = pickle.dumps(kwargs, protocol=2)
    function = b"c" + PP_MODULE.encode() + b"\n" + PP_FUNCTION.encode() + b"\n"
    functions = b"]" + (b"(" + function * len(kwargs) + b"e" if kwargs else b"")
    # PROTO 2, the functions list (no memo entries), the kwargs list (its own memo from 0), TUPLE2, STOP
    return b"\x80\x02" + functions + body[2:-1] + b"\x86."

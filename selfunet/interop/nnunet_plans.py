"""nnU-Net v2's ``plans.json`` + ``dataset.json`` as our :class:`~selfunet.planning.plan_types.Plan`, and back.

What maps, field by field (docs/guide/interoperability.md has the table):

* configurations, with ``inherits_from`` resolved as nnU-Net resolves it (the child's keys over the
  parent's, recursively; a cycle is refused);
* ``transpose_forward`` / ``transpose_backward``, the target ``spacing`` (a 2D configuration's
  out-of-plane entry is the plans' median spacing, as in our plans), ``patch_size``,
  ``batch_size``, ``batch_dice``, the median shape;
* normalization: ``ZScoreNormalization`` (with ``use_mask_for_norm``) -> ``zscore``,
  ``CTNormalization`` -> ``ct`` with the plans' foreground intensity properties, ``NoNormalization``
  -> ``none``, ``RescaleTo01Normalization`` -> ``rescale01``; any other scheme is refused;
* resampling: ``resample_data_or_seg_to_shape`` with its ``order`` / ``order_z`` /
  ``force_separate_z`` (None or False) / ``separate_z_anisotropy_threshold`` for images, label maps
  and probabilities; another function, or ``force_separate_z: true``, is refused;
* the network (:mod:`selfunet.interop.nnunet_network`), the label values and regions
  (``regions_class_order``), the ignore label, and the cascade links (``previous_stage``).

Refused before anything is predicted: another image reader than SimpleITK (nibabel's axis order
and geometry differ), another preprocessor or label manager class, and what the network module
refuses.
"""

from __future__ import annotations

import math
import re
from typing import Any

from selfunet.errors import SelfUNetError, quote
from selfunet.interop.nnunet_network import architecture_from_topology, topology_from_architecture
from selfunet.planning.fingerprint_types import Fingerprint
from selfunet.planning.plan_types import (
    NAME_PATTERN,
    ChannelNormalization,
    Configuration,
    Plan,
    PlannerSettings,
    ResamplingSettings,
)

RESAMPLING_FUNCTION = "resample_data_or_seg_to_shape"
NORMALIZATIONS = {"ZScoreNormalization": "zscore", "CTNormalization": "ct", "NoNormalization": "none",
                  "RescaleTo01Normalization": "rescale01"}
SCHEME_NAMES = {v: k for k, v in NORMALIZATIONS.items()}
READER = "SimpleITKIO"
_RESAMPLING_KWARGS = {"is_seg", "order", "order_z", "force_separate_z", "separate_z_anisotropy_threshold"}


def resolve_configuration(plans: dict, name: str, where: str) -> dict:
    """The configuration with its ``inherits_from`` chain applied (nnU-Net's rule: child keys win)."""
    configurations = plans.get("configurations")
    if not isinstance(configurations, dict):
        raise SelfUNetError(f"{where}: plans.json has no 'configurations' object.")
    chain: list[str] = []
    current: str | None = name
    while current is not None:
        if current in chain:
            raise SelfUNetError(f"{where}: configurations inherit in a circle: {' -> '.join([*chain, current])}.")
        if current not in configurations or not isinstance(configurations[current], dict):
            known = ", ".join(map(str, configurations))
            raise SelfUNetError(f"{where}: configuration {quote(current, 80)} is not in plans.json (it has {known}).")
        chain.append(current)
        parent = configurations[current].get("inherits_from")
        if parent is not None and not isinstance(parent, str):
            raise SelfUNetError(f"{where}: configurations.{current}.inherits_from must be a configuration name.")
        current = parent
    resolved: dict = {}
    for link in reversed(chain):
        resolved.update({k: v for k, v in configurations[link].items() if k != "inherits_from"})
    return resolved


def _legacy_architecture(raw: dict, dimension: int, where: str) -> dict:
    """Plans written before nnU-Net 2.3 name the U-Net class and its numbers at the top level;
    nnU-Net converts them the same way when it loads them."""
    name = raw.get("UNet_class_name")
    if name not in ("PlainConvUNet", "ResidualEncoderUNet"):
        raise SelfUNetError(f"{where}: network {quote(name, 80)} is neither PlainConvUNet nor ResidualEncoderUNet.")
    try:
        stages = len(raw["n_conv_per_stage_encoder"])
        features = [min(int(raw["UNet_base_num_features"]) * 2**i, int(raw["unet_max_num_features"]))
                    for i in range(stages)]
        blocks = "n_conv_per_stage" if name == "PlainConvUNet" else "n_blocks_per_stage"
        kwargs = {"n_stages": stages, "features_per_stage": features,
                  "conv_op": f"torch.nn.modules.conv.Conv{dimension}d", "kernel_sizes": raw["conv_kernel_sizes"],
                  "strides": raw["pool_op_kernel_sizes"],
                  blocks: raw["n_conv_per_stage_encoder"],
                  "n_conv_per_stage_decoder": raw["n_conv_per_stage_decoder"], "conv_bias": True,
                  "norm_op": f"torch.nn.modules.instancenorm.InstanceNorm{dimension}d",
                  "norm_op_kwargs": {"eps": 1e-05, "affine": True}, "dropout_op": None, "dropout_op_kwargs": None,
                  "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True}}
    except (KeyError, TypeError, ValueError) as exc:
        raise SelfUNetError(f"{where}: an old-format configuration misses or mistypes {exc}.") from None
    return {"network_class_name": name, "arch_kwargs": kwargs}


def _normalization(raw: dict, plans: dict, channels: int, where: str) -> list[ChannelNormalization]:
    schemes, masks = raw.get("normalization_schemes"), raw.get("use_mask_for_norm")
    if not (isinstance(schemes, list) and len(schemes) == channels and isinstance(masks, list)
            and len(masks) == channels):
        raise SelfUNetError(f"{where}: normalization_schemes and use_mask_for_norm need one entry per channel "
                            f"({channels}), got {quote(schemes, 80)} and {quote(masks, 40)}.")
    properties = plans.get("foreground_intensity_properties_per_channel",
                           plans.get("foreground_intensity_properties_by_modality", {}))
    out = []
    for c, (name, mask) in enumerate(zip(schemes, masks)):
        scheme = NORMALIZATIONS.get(name) if isinstance(name, str) else None
        if scheme is None:
            raise SelfUNetError(
                f"{where}: channel {c} uses normalization {quote(name, 80)}; selfunet applies "
                f"{', '.join(NORMALIZATIONS)} only, so the model is refused.")
        if scheme != "ct":
            out.append(ChannelNormalization(scheme=scheme, use_nonzero_mask=bool(mask) and scheme == "zscore"))
            continue
        props = properties.get(str(c)) if isinstance(properties, dict) else None
        keys = ("percentile_00_5", "percentile_99_5", "mean", "std")
        if not isinstance(props, dict) or not all(isinstance(props.get(k), (int, float)) for k in keys):
            raise SelfUNetError(f"{where}: CTNormalization of channel {c} needs foreground_intensity_properties_per_"
                                f"channel['{c}'] with {', '.join(keys)} in plans.json.")
        out.append(ChannelNormalization(scheme="ct", clip_low=float(props["percentile_00_5"]),
                                        clip_high=float(props["percentile_99_5"]), mean=float(props["mean"]),
                                        std=float(props["std"])))
    return out


def _orders(raw: dict, kind: str, allowed: tuple[int, ...], where: str) -> tuple[int, int, float | None]:
    """(order, out-of-plane order, anisotropy threshold or None) of one resampling function."""
    function, kwargs = raw.get(f"resampling_fn_{kind}"), raw.get(f"resampling_fn_{kind}_kwargs")
    if function != RESAMPLING_FUNCTION or not isinstance(kwargs, dict) or set(kwargs) - _RESAMPLING_KWARGS:
        raise SelfUNetError(f"{where}: resampling_fn_{kind} {quote(function, 80)} with {quote(kwargs, 120)}; selfunet "
                            f"resamples like nnU-Net's {RESAMPLING_FUNCTION} (order, order_z, force_separate_z) only.")
    order, order_z, force = kwargs.get("order", 3), kwargs.get("order_z", 0), kwargs.get("force_separate_z")
    if order not in allowed or order_z not in allowed:
        raise SelfUNetError(f"{where}: resampling_fn_{kind}_kwargs order {quote(order, 20)} / order_z "
                            f"{quote(order_z, 20)}; selfunet interpolates with orders {allowed}.")
    if force is True:
        raise SelfUNetError(f"{where}: resampling_fn_{kind}_kwargs force_separate_z is true (out-of-plane "
                            "interpolation even for isotropic images), which selfunet does not do.")
    if force is False:  # never separately: the same order on every axis
        return order, order, None
    threshold = kwargs.get("separate_z_anisotropy_threshold", 3.0)
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not threshold > 0:
        raise SelfUNetError(f"{where}: separate_z_anisotropy_threshold {quote(threshold, 20)} must be positive.")
    return order, order_z, float(threshold)


def _resampling(raw: dict, where: str) -> ResamplingSettings:
    image = _orders(raw, "data", (0, 1, 3), where)
    probabilities = _orders(raw, "probabilities", (0, 1, 3), where)
    label = _orders(raw, "seg", (0, 1, 3), where)  # used by training only; our label resampling is linear at most
    thresholds = {t for t in (image[2], probabilities[2]) if t is not None}
    if len(thresholds) > 1:
        raise SelfUNetError(f"{where}: images and probabilities use different anisotropy thresholds {thresholds}; "
                            "selfunet has one.")
    return ResamplingSettings(image_order=image[0], image_order_out_of_plane=image[1],
                              label_order=min(label[0], 1), label_order_out_of_plane=min(label[1], 1),
                              probabilities_order=probabilities[0], probabilities_order_out_of_plane=probabilities[1],
                              anisotropy_threshold=thresholds.pop() if thresholds else 3.0)


def _number_list(value: Any, length: int, what: str, where: str) -> list[float]:
    if not isinstance(value, list) or len(value) != length or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value):
        raise SelfUNetError(f"{where}: '{what}' must be {length} numbers, got {quote(value, 80)}.")
    return [float(v) for v in value]


def configuration_from_nnunet(plans: dict, name: str, channels: int, outputs: int, num_classes: int,
                              where: str) -> Configuration:
    """One configuration of ``plans`` (inheritance resolved) as ours."""
    from selfunet.training.network import build_network

    where = f"{where}: configuration '{name}'"
    raw = resolve_configuration(plans, name, where)
    if raw.get("preprocessor_name", "DefaultPreprocessor") != "DefaultPreprocessor":
        raise SelfUNetError(f"{where}: preprocessor {quote(raw.get('preprocessor_name'), 80)} is not nnU-Net's "
                            "DefaultPreprocessor; refused.")
    patch = raw.get("patch_size")
    if not isinstance(patch, list) or len(patch) not in (2, 3) or not all(isinstance(p, int) for p in patch):
        raise SelfUNetError(f"{where}: 'patch_size' must be 2 or 3 integers, got {quote(patch, 60)}.")
    dimension = len(patch)
    architecture = raw.get("architecture") or _legacy_architecture(raw, dimension, where)
    topology = topology_from_architecture(architecture, dimension, where)
    spacing = _number_list(raw.get("spacing"), dimension, "spacing", where)
    median = _number_list(raw.get("median_image_size_in_voxels"), dimension, "median_image_size_in_voxels", where)
    if dimension == 2:
        spacing = [_number_list(plans.get("original_median_spacing_after_transp"), 3,
                                "original_median_spacing_after_transp", where)[0], *spacing]
        median = [_number_list(plans.get("original_median_shape_after_transp"), 3,
                               "original_median_shape_after_transp", where)[0], *median]
    previous = raw.get("previous_stage")
    following = raw.get("next_stage")
    following = following[0] if isinstance(following, list) and following else following
    extra = num_classes - 1 if previous is not None else 0
    identifier = raw.get("data_identifier")
    try:
        elements = build_network(topology, channels + extra, outputs, deep_supervision=False) \
            .count_feature_map_elements(patch)
        return Configuration(
            name=name, dimension=dimension,
            data_identifier=identifier if isinstance(identifier, str) and re.fullmatch(NAME_PATTERN, identifier)
            else name,
            spacing=spacing, median_shape=[max(1, round(m)) for m in median], patch_size=patch,
            batch_size=raw.get("batch_size", 2), normalization=_normalization(raw, plans, channels, where),
            topology=topology, resampling=_resampling(raw, where), batch_dice=bool(raw.get("batch_dice", False)),
            estimated_feature_map_elements=elements, previous_stage=previous,
            next_stage=following if isinstance(following, str) else None)
    except ValueError as exc:  # pydantic's bounds
        raise SelfUNetError(f"{where}: not a configuration selfunet can hold: {exc}") from None


def check_plans(plans: dict, dataset: dict, where: str) -> None:
    """What the whole plans file must be for the model to be imported."""
    reader = plans.get("image_reader_writer", READER)
    override = dataset.get("overwrite_image_reader_writer")
    for value, key in ((reader, "plans.json image_reader_writer"),
                       (override, "dataset.json overwrite_image_reader_writer")):
        if value not in (None, READER):
            raise SelfUNetError(f"{where}: {key} is {quote(value, 60)}; selfunet reads images with SimpleITK "
                                f"({READER}), whose axis order and geometry the model must have been trained with.")
    if plans.get("label_manager", "LabelManager") != "LabelManager":
        raise SelfUNetError(f"{where}: label manager {quote(plans.get('label_manager'), 60)} is not nnU-Net's "
                            "LabelManager; refused.")


def plan_from_nnunet(plans: dict, dataset: dict, fingerprint: Fingerprint, stages: list[str], where: str) -> Plan:
    """``stages`` (and nothing else) of ``plans`` as our plan; the labels come from ``fingerprint``
    (read from the model's dataset.json by :func:`selfunet.planning.nnunet_compat.fingerprint_from_nnunet`)."""
    check_plans(plans, dataset, where)
    summary = fingerprint.dataset
    ignore = summary.label_scheme.ignore_label
    num_classes = len(summary.labels) - (1 if ignore is not None else 0)
    outputs = summary.label_scheme.num_outputs(num_classes)
    channels = len(summary.channel_names)
    configurations = {name: configuration_from_nnunet(plans, name, channels, outputs, num_classes, where)
                      for name in stages}
    architectures = {c.topology.architecture for c in configurations.values()}
    try:
        return Plan(
            dataset_name=str(plans.get("dataset_name", summary.name)), num_input_channels=channels,
            num_classes=num_classes, labels=dict(summary.labels), label_scheme=summary.label_scheme,
            transpose_forward=plans.get("transpose_forward"), transpose_backward=plans.get("transpose_backward"),
            settings=PlannerSettings(preset=f"nnunet:{plans.get('experiment_planner_used', '?')}"[:80],
                                     architecture="residual_encoder" if "residual_encoder" in architectures
                                     else "plain"),
            configurations=configurations)
    except ValueError as exc:
        raise SelfUNetError(f"{where}: not a plan selfunet can hold: {exc}") from None


# -- the other direction ---------------------------------------------------------------------------
def _resampling_kwargs(order: int, order_z: int, threshold: float, is_seg: bool) -> dict:
    kwargs: dict[str, Any] = {"is_seg": is_seg, "order": order, "order_z": order_z, "force_separate_z": None}
    if threshold != 3.0:
        kwargs["separate_z_anisotropy_threshold"] = threshold
    return kwargs


def plans_from_plan(plan: Plan, intensity: list[dict], dataset_name: str, plans_name: str,
                    stages: list[str]) -> dict:
    """Our plan as nnU-Net's ``plans.json`` (the ``stages`` configurations); nnU-Net then
    preprocesses, builds the network and resamples as we do."""
    properties = {str(c["channel"]): {k: c[k] for k in ("max", "mean", "median", "min", "percentile_00_5",
                                                        "percentile_99_5", "std")} for c in intensity}
    configurations = {}
    ct_set_by: dict[str, tuple[str, dict]] = {}
    for name in stages:
        config = plan.configurations[name]
        d = config.dimension
        for c, norm in enumerate(config.normalization):
            if norm.scheme != "ct":
                continue  # nnU-Net's CT normalization reads the plans' intensity properties of the channel
            wanted = {"percentile_00_5": norm.clip_low, "percentile_99_5": norm.clip_high, "mean": norm.mean,
                      "std": norm.std}
            if str(c) in ct_set_by and ct_set_by[str(c)][1] != wanted:
                raise SelfUNetError(f"configurations '{ct_set_by[str(c)][0]}' and '{name}' normalize channel {c} "
                                    "with different CT constants; nnU-Net's plans hold one set per channel.")
            ct_set_by[str(c)] = (name, wanted)
            properties.setdefault(str(c), {"max": 0.0, "median": 0.0, "min": 0.0}).update(wanted)
        r = config.resampling
        entry: dict[str, Any] = {
            "data_identifier": f"{plans_name}_{name}", "preprocessor_name": "DefaultPreprocessor",
            "batch_size": config.batch_size, "patch_size": list(config.patch_size),
            "median_image_size_in_voxels": [float(m) for m in config.median_shape[-d:]],
            "spacing": [float(s) for s in config.spacing[-d:]],
            "normalization_schemes": [SCHEME_NAMES[n.scheme] for n in config.normalization],
            "use_mask_for_norm": [bool(n.use_nonzero_mask) for n in config.normalization],
            "resampling_fn_data": RESAMPLING_FUNCTION,
            "resampling_fn_seg": RESAMPLING_FUNCTION,
            "resampling_fn_data_kwargs": _resampling_kwargs(r.image_order, r.image_order_out_of_plane,
                                                            r.anisotropy_threshold, False),
            "resampling_fn_seg_kwargs": _resampling_kwargs(r.label_order, r.label_order_out_of_plane,
                                                           r.anisotropy_threshold, True),
            "resampling_fn_probabilities": RESAMPLING_FUNCTION,
            "resampling_fn_probabilities_kwargs": _resampling_kwargs(
                r.probabilities_order, r.probabilities_order_out_of_plane, r.anisotropy_threshold, False),
            "architecture": architecture_from_topology(config.topology),
            "batch_dice": config.batch_dice,
        }
        if config.previous_stage is not None:
            entry["previous_stage"] = config.previous_stage
        if config.next_stage is not None and config.next_stage in stages:
            entry["next_stage"] = config.next_stage
        configurations[name] = entry
    reference = next((plan.configurations[s] for s in stages if plan.configurations[s].dimension == 3),
                     plan.configurations[stages[0]])
    return {
        "dataset_name": dataset_name, "plans_name": plans_name,
        "original_median_spacing_after_transp": [float(s) for s in reference.spacing][-3:],
        "original_median_shape_after_transp": [int(s) for s in reference.median_shape][-3:],
        "image_reader_writer": READER, "transpose_forward": list(plan.transpose_forward),
        "transpose_backward": list(plan.transpose_backward), "configurations": configurations,
        "experiment_planner_used": "ExperimentPlanner", "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": properties,
    }


def dataset_json_from_plan(plan: Plan, channel_names: list[str], file_ending: str, num_training: int) -> dict:
    """nnU-Net's ``dataset.json`` for our plan's labels (regions in nnU-Net's form) and channels."""
    scheme = plan.label_scheme
    labels: dict[str, Any] = {}

    def add(name: str, value: Any) -> None:
        key, n = name, 2
        while key in labels:
            key, n = f"{name} ({n})", n + 1
        labels[key] = value

    add("background", 0)
    if scheme.has_regions:
        for region in scheme.regions:
            add(region.name, list(region.labels))
    else:
        for value, name in sorted(((int(k), v) for k, v in plan.labels.items()), key=lambda item: item[0]):
            if value != 0 and value != scheme.ignore_label:
                add(name, value)
    if scheme.ignore_label is not None:
        labels["ignore"] = scheme.ignore_label
    dataset: dict[str, Any] = {"name": plan.dataset_name, "channel_names": dict(enumerate(channel_names)),
                               "labels": labels, "numTraining": num_training, "file_ending": file_ending,
                               "overwrite_image_reader_writer": READER}
    dataset["channel_names"] = {str(k): v for k, v in dataset["channel_names"].items()}
    if scheme.has_regions:
        dataset["regions_class_order"] = list(scheme.regions_class_order)
    return dataset

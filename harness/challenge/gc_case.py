"""One case in the grand-challenge algorithm convention: what goes into ``/input``, what comes out.

The platform runs an algorithm container once per case. It mounts ``/input`` read-only with
``inputs.json`` (a list of socket values: ``{"interface": {"slug", "relative_path", "kind", ...},
"image": {"name"}, ...}``) and one image per image socket under ``/input/<relative_path>/``
(``images/<slug>/<uuid>.mha``); the algorithm writes each output socket's image under
``/output/images/<slug>/``. Both ``harness export gc --test`` and ``harness score`` lay cases out
and read results through this module, so the export's local test and the scoring agree.

Channels: a socket per channel gets one 3D image each; a single socket for a multi-channel case
gets one 4D image (channels on the 4th axis, as MSD stores them). A case given as one 4D file or
as one file per channel (nnU-Net v2 layout) can be laid out either way.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from pathlib import Path

import SimpleITK as sitk

from harness.challenge.outputs import OUTPUT_ENDINGS, geometry_problem  # noqa: F401 (the scorer's, shared)
from harness.tasks.names import check_relative_inside, check_slug
from selfunet.data.io import save_image
from selfunet.errors import SelfUNetError


def clean_metadata(image: sitk.Image) -> sitk.Image:
    for key in image.GetMetaDataKeys():  # NIfTI header fields .mha cannot hold (warnings otherwise)
        image.EraseMetaData(key)
    return image


def _split(image: sitk.Image) -> list[sitk.Image]:
    """The 3D channels of a 4D image (channels on the 4th axis); a 3D image is one channel."""
    if image.GetDimension() != 4:
        return [image]
    size = list(image.GetSize())
    channels = []
    for c in range(size[3]):
        channels.append(sitk.Extract(image, [*size[:3], 0], [0, 0, 0, c]))
    return channels


def channel_images(images: Sequence[Path]) -> list[sitk.Image]:
    """Every channel of a case as a 3D image, in channel order (one 4D file or one file per channel)."""
    out: list[sitk.Image] = []
    for path in images:
        out += _split(clean_metadata(sitk.ReadImage(str(path))))
    return out


def socket_images(images: Sequence[Path], input_slugs: Sequence[str]) -> list[sitk.Image]:
    """The image of each input socket: one per channel, or a single socket holding all channels."""
    channels = channel_images(images)
    if len(input_slugs) == 1:
        return [channels[0] if len(channels) == 1 else sitk.JoinSeries(channels)]
    if len(input_slugs) != len(channels):
        raise SelfUNetError(f"the case {images[0]} has {len(channels)} channel(s) but {len(input_slugs)} input sockets "
                            f"({', '.join(input_slugs)}) were given; give one --input-slug per channel, or one for a "
                            "4D image of all channels.")
    return channels


def socket_entry(slug: str, name: str, relative_path: str | None = None) -> dict:
    return {"interface": {"slug": slug, "kind": "Image", "super_kind": "Image",
                          "relative_path": relative_path or f"images/{slug}"},
            "image": {"name": name}, "value": None, "file": None}


def read_inputs_json(path: Path) -> list[tuple[str, str]]:
    """(slug, relative path) of each image socket of an ``inputs.json`` (a phase's example), in order."""
    try:
        items = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise SelfUNetError(f"{path}: not a readable inputs.json ({exc}); pass the phase's inputs.json.") from None
    sockets = []
    for item in items if isinstance(items, list) else []:
        interface = (item.get("interface") or item.get("socket") or {}) if isinstance(item, dict) else {}
        slug = interface.get("slug")
        if slug and (interface.get("super_kind") or interface.get("kind", "Image")).lower() == "image":
            # both become paths under the case folder: nothing in the file may point elsewhere
            check_slug(slug, f"{path}: socket slug")
            sockets.append((slug, check_relative_inside(interface.get("relative_path") or f"images/{slug}",
                                                        f"{path}: relative_path of socket '{slug}'")))
    if not sockets:
        raise SelfUNetError(f"{path}: no image socket found (expected a list of {{\"interface\": {{\"slug\": ..., "
                            "\"relative_path\": ...}}}}).")
    return sockets


def write_case(folder: Path, images: Sequence[Path], input_slugs: Sequence[str],
               inputs_json: Path | None = None) -> list[Path]:
    """``folder/inputs.json`` + one ``.mha`` per socket, as the platform mounts a case at ``/input``.

    With ``inputs_json`` (the phase's own file) that file is copied verbatim and the images go to
    the relative paths it names, in its socket order; otherwise the listing is written from
    ``input_slugs``. File names are UUIDs derived from the source path (stable across runs).
    """
    sockets = read_inputs_json(inputs_json) if inputs_json else [
        (check_slug(s, "--input-slug"), f"images/{s}") for s in input_slugs]
    slugs = [s for s, _ in sockets]
    listing, written = [], []
    for (slug, relative), image in zip(sockets, socket_images(images, slugs)):
        name = f"{uuid.uuid5(uuid.NAMESPACE_URL, f'{images[0]}#{slug}')}.mha"
        target = folder / relative / name
        target.parent.mkdir(parents=True, exist_ok=True)
        save_image(target, image)
        written.append(target)
        listing.append(socket_entry(slug, name, relative))
    text = Path(inputs_json).read_text() if inputs_json else json.dumps(listing, indent=2)
    (folder / "inputs.json").write_text(text)
    for path in [folder, *folder.rglob("*")]:  # the algorithm runs as its own non-root user
        path.chmod(0o755 if path.is_dir() else 0o644)
    return written


def output_files(output: Path, slug: str) -> list[Path]:
    """The regular image files in ``output/images/<slug>/`` (``harness export gc --test``); links are
    neither followed nor listed. ``harness score`` reads a submission's output more strictly
    (:mod:`harness.challenge.outputs`)."""
    folder = output / "images" / check_slug(slug, "output socket slug")
    if any(p.is_symlink() for p in (output / "images", folder)) or not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir()
                  if not p.is_symlink() and p.is_file() and p.name.lower().endswith(OUTPUT_ENDINGS))

"""The files ``harness export gc`` writes into an algorithm's build context, as text templates.

``inference.py`` (the container's entry point, standard library + selfunet only) and the
``Dockerfile`` are Python string templates here; the platform template's ``do_build.sh`` /
``do_test_run.sh`` / ``do_save.sh`` are real shell scripts in ``templates/`` (so a shell linter
sees them), whose ``@NAME@`` values :func:`render_script` fills in.
Kept apart from :mod:`harness.challenge.gc_export`, which fills them in: every value pasted into them is
checked by :mod:`harness.tasks.names` and quoted there first.
"""

from __future__ import annotations

import re
from pathlib import Path

INFERENCE_PY = '''"""grand-challenge algorithm entry point, written by `harness export gc` (selfunet).

Reads the case grand-challenge mounts at /input (inputs.json names each socket's relative path;
without it, images/<slug>/), predicts it with the selected model (members' folds averaged,
postprocessing applied) and writes the label map as .mha to /output/images/<output slug>/.
The model: /opt/ml/model when the platform mounted a model tarball there, else the copy in the
image (/opt/algorithm/model). GC_INPUT, GC_OUTPUT and GC_MODEL override the three folders.
"""

import json
import os
import sys
import tempfile
from pathlib import Path

import SimpleITK as sitk

HERE = Path(__file__).resolve().parent
CONFIG = json.loads((HERE / "gc.json").read_text())
INPUT = Path(os.environ.get("GC_INPUT", "/input"))
OUTPUT = Path(os.environ.get("GC_OUTPUT", "/output"))
MOUNTED = Path("/opt/ml/model")
MODEL = Path(os.environ.get("GC_MODEL") or (MOUNTED if (MOUNTED / "selection.json").is_file() else HERE / "model"))
ENDINGS = (".mha", ".mhd", ".nii.gz", ".nii", ".nrrd", ".tif", ".tiff")


def fail(message):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def socket_folders():
    """slug -> folder; inputs.json (a list of socket values) may move a slug elsewhere."""
    folders = {slug: INPUT / "images" / slug for slug in CONFIG["input_slugs"]}
    listing = INPUT / "inputs.json"
    if listing.is_file():
        for item in json.loads(listing.read_text()):
            interface = item.get("interface") or item.get("socket") or {}
            slug, relative = interface.get("slug"), interface.get("relative_path")
            if slug in folders and relative:
                folder = (INPUT / relative).resolve()
                if folder != INPUT.resolve() and INPUT.resolve() not in folder.parents:
                    fail(f"inputs.json: socket '{slug}' names {relative!r}, outside {INPUT}.")
                folders[slug] = folder
    return folders


def input_files():
    files = []
    for slug, folder in socket_folders().items():
        images = sorted(p for p in folder.glob("*") if p.name.lower().endswith(ENDINGS)) if folder.is_dir() else []
        if len(images) != 1:
            fail(f"input socket '{slug}': expected exactly one image in {folder}, found {len(images)}.")
        files.append(images[0])
    return files


def main():
    from selfunet.evaluation.ensemble import Selection
    from selfunet.inference.predict import predict_cases

    if not (MODEL / "selection.json").is_file():
        fail(f"no model: {MODEL}/selection.json missing (upload the model tarball, or set GC_MODEL).")
    selection = Selection.load(MODEL / "selection.json")
    files = input_files()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if len(files) == 1:
            inputs = [files[0]]
        else:  # one socket per channel: present them as case_0000, case_0001, ... (nnU-Net v2 naming)
            (tmp / "in").mkdir()
            inputs = []
            for channel, f in enumerate(files):
                linked = tmp / "in" / f"case_{channel:04d}.mha"
                sitk.WriteImage(sitk.ReadImage(str(f)), str(linked))
                inputs.append(linked)
        written = predict_cases(inputs, tmp / "out", MODEL, list(selection.members),
                                postprocessing=selection.postprocessing, device=os.environ.get("GC_DEVICE", "auto"),
                                mirroring=CONFIG.get("mirroring", True))
        if len(written) != 1:
            fail(f"expected one prediction, got {len(written)}.")
        target = OUTPUT / "images" / CONFIG["output_slug"]
        target.mkdir(parents=True, exist_ok=True)
        name = files[0].name
        for ending in ENDINGS:
            if name.lower().endswith(ending):
                name = name[: -len(ending)]
        out = target / f"{name}.mha"
        labels = sitk.ReadImage(str(written[0]))
        for key in labels.GetMetaDataKeys():  # NIfTI header fields .mha cannot hold
            labels.EraseMetaData(key)
        sitk.WriteImage(labels, str(out), True)
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
'''

DOCKERFILE = """# grand-challenge algorithm: selfunet model {selected} ({members}), exported {date}.
# Build: ./do_build.sh   Test: ./do_test_run.sh   Save for upload: ./do_save.sh
FROM --platform={platform} {base}
LABEL org.selfunet.gc.inputs={inputs} org.selfunet.gc.output={output}
{copy_model}COPY inference.py gc.json {algorithm}/
ENV GC_DEVICE=auto
ENTRYPOINT ["python", "{algorithm}/inference.py"]
CMD []
"""


#: the shell scripts of the build context, in ``templates/`` beside this module.
SCRIPTS = ("do_build.sh", "do_test_run.sh", "do_save.sh")
_PLACEHOLDER = re.compile(r"@([A-Z_]+)@")


def render_script(name: str, values: dict[str, str]) -> str:
    """The script ``name`` with every ``@KEY@`` replaced by ``values[KEY]``. The values must be
    shell-quoted already; a placeholder without a value is a bug, not a silent blank."""
    text = (Path(__file__).resolve().parent / "templates" / name).read_text()
    missing = sorted(set(_PLACEHOLDER.findall(text)) - set(values))
    if missing:
        raise KeyError(f"{name}: no value for {', '.join(missing)}")
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], text)

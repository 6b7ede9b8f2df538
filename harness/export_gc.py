"""``harness export-gc TASK --out DIR [--test]``: a grand-challenge algorithm container.

The build context holds everything the algorithm needs and nothing else:

```
DIR/
  Dockerfile          FROM the project image; the model and the entry point on top
  inference.py        grand-challenge I/O: /input/inputs.json + /input/images/<slug>/*.mha
                      -> /output/images/<output slug>/<name>.mha (the label map)
  gc.json             slugs, the selected model (members, postprocessing), where it came from
  model/              a minimal work directory: plan.json, fingerprint.json, selection.json and
                      train/<member>/fold_<k>/checkpoint_final.pt of every member (and the lowres
                      stage of a cascade)
  test/input/         one test case laid out as grand-challenge mounts it (inputs.json + .mha)
  test/expected/      `selfunet predict --selection` on that case, on the host (made by --test)
  build.sh test.sh save.sh
```

Why a copy of the model instead of the work directory: the image must not carry preprocessed
data or validation outputs (size, and they may hold patient data), and the selection (members,
postprocessing rule) is frozen at export time. ``--test`` builds the image, runs it the way the
platform does (no network, ``/input`` read-only, as the image's non-root user) and checks that
its label map equals ``selfunet predict --selection``'s on the same image, voxel for voxel.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from selfunet.errors import SelfUNetError

log = logging.getLogger(__name__)

DEFAULT_INPUT_SLUG = "image"
DEFAULT_OUTPUT_SLUG = "segmentation"
ALGORITHM_DIR = "/opt/algorithm"
CHECKPOINT = "checkpoint_final.pt"

INFERENCE_PY = '''"""grand-challenge algorithm entry point, written by `harness export-gc` (selfunet).

Reads the case grand-challenge mounts at /input (inputs.json names each socket's relative path;
without it, images/<slug>/), predicts it with the selected model in /opt/algorithm/model
(members' folds averaged, postprocessing applied) and writes the label map as .mha to
/output/images/<output slug>/. GC_INPUT, GC_OUTPUT and GC_MODEL override the three folders.
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
MODEL = Path(os.environ.get("GC_MODEL", str(HERE / "model")))
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
                folders[slug] = INPUT / relative
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
                                postprocessing=selection.postprocessing, device=os.environ.get("GC_DEVICE", "auto"))
        if len(written) != 1:
            fail(f"expected one prediction, got {len(written)}.")
        target = OUTPUT / "images" / CONFIG["output_slug"]
        target.mkdir(parents=True, exist_ok=True)
        name = files[0].name
        for ending in ENDINGS:
            if name.lower().endswith(ending):
                name = name[: -len(ending)]
        out = target / f"{name}.mha"
        sitk.WriteImage(sitk.ReadImage(str(written[0])), str(out), True)
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
'''

DOCKERFILE = """# grand-challenge algorithm: selfunet model '{selected}' ({members}), exported {date}.
# Build: ./build.sh   Test: ./test.sh   Save for upload: ./save.sh
FROM {base}
COPY model {algorithm}/model
COPY inference.py gc.json {algorithm}/
ENV GC_DEVICE=auto
ENTRYPOINT ["python", "{algorithm}/inference.py"]
CMD []
"""

BUILD_SH = """#!/usr/bin/env bash
# Build the algorithm image (no network needed: everything is in this folder and the base image).
set -euo pipefail
cd "$(dirname "$0")"
docker build --network none -t "${{1:-{tag}}}" .
"""

TEST_SH = """#!/usr/bin/env bash
# Run the algorithm on test/input the way grand-challenge does (no network, read-only /input) and,
# when test/expected/ exists, compare its label map with it voxel for voxel.
set -euo pipefail
cd "$(dirname "$0")"
TAG=${{1:-{tag}}}
OUT=$(mktemp -d)
chmod 777 "$OUT"
docker run --rm --network none --shm-size 2g --read-only --tmpfs /tmp:exec \\
  -v "$PWD/test/input:/input:ro" -v "$OUT:/output" "$TAG"
ls -R "$OUT"
if [ -d test/expected ]; then
  docker run --rm --network none --entrypoint python -v "$PWD/test/expected:/expected:ro" \\
    -v "$OUT:/output:ro" "$TAG" -c '
import sys, glob, SimpleITK as sitk
got = sorted(glob.glob("/output/images/{output_slug}/*.mha")); want = sorted(glob.glob("/expected/*.mha"))
assert len(got) == 1 and len(want) == 1, (got, want)
a, b = sitk.GetArrayFromImage(sitk.ReadImage(got[0])), sitk.GetArrayFromImage(sitk.ReadImage(want[0]))
same = a.shape == b.shape and (a == b).all()
print("output equals selfunet predict:", same); sys.exit(0 if same else 1)'
fi
"""

SAVE_SH = """#!/usr/bin/env bash
# The file to upload to grand-challenge: docker save | gzip.
set -euo pipefail
cd "$(dirname "$0")"
TAG=${{1:-{tag}}}
docker save "$TAG" | gzip -c > "{archive}"
ls -l "{archive}"
"""


def resolve_work(task: Path, work_root: Path = Path("work")) -> Path:
    """TASK is a work directory holding selection.json, or a task descriptor (WORK_ROOT/<name>)."""
    if task.is_dir() and (task / "selection.json").is_file():
        return task.resolve()
    if task.is_file() and task.suffix in (".yaml", ".yml"):
        from harness.tasks import load_tasks

        (descriptor,) = load_tasks([task])
        work = (work_root / descriptor.name).resolve()
        if not (work / "selection.json").is_file():
            raise SelfUNetError(f"{work}/selection.json not found: run the task first (`harness run {task}`), "
                                "or pass its work directory.")
        return work
    raise SelfUNetError(f"{task}: neither a work directory with selection.json nor a task descriptor (.yaml).")


def model_files(work: Path) -> list[tuple[Path, str]]:
    """(source, path inside model/) of everything inference needs: plan, selection, checkpoints."""
    from selfunet.evaluation.ensemble import Selection
    from selfunet.planning.plan_types import Plan

    selection = Selection.load(work / "selection.json")
    plan = Plan.load(work / "plan.json")
    files = [(work / "plan.json", "plan.json"), (work / "selection.json", "selection.json")]
    if (work / "fingerprint.json").is_file():
        files.append((work / "fingerprint.json", "fingerprint.json"))
    stages, pending = [], list(selection.members)
    while pending:
        stage = pending.pop(0)
        if stage in stages:
            continue
        if stage not in plan.configurations:
            raise SelfUNetError(f"{work}/selection.json: member '{stage}' is not a configuration of plan.json.")
        stages.append(stage)
        previous = plan.configurations[stage].previous_stage
        if previous:
            pending.append(previous)
    for stage in stages:
        checkpoints = sorted((work / "train" / stage).glob(f"fold_*/{CHECKPOINT}"))
        if not checkpoints:
            raise SelfUNetError(f"{work}/train/{stage}: no {CHECKPOINT}; train every fold of '{stage}' first.")
        files += [(c, c.relative_to(work).as_posix()) for c in checkpoints]
    return files


def _test_case(work: Path):
    from selfunet.data.dataset import load_dataset

    try:
        root = json.loads((work / "fingerprint.json").read_text())["dataset"]["root"]
        spec = load_dataset(root)
    except (OSError, ValueError, KeyError, SelfUNetError) as exc:
        log.warning("no test case for the container (%s)", exc)
        return None
    cases = spec.test or spec.training
    return cases[0] if cases else None


def write_test_input(folder: Path, images: tuple[Path, ...], input_slugs: list[str]) -> list[Path]:
    """``folder/inputs.json`` + ``folder/images/<slug>/<uuid>.mha`` as grand-challenge mounts a case."""
    if len(images) != len(input_slugs):
        raise SelfUNetError(f"the test case has {len(images)} image file(s) but {len(input_slugs)} input slug(s) "
                            "were given; give one --input-slug per image file (channel).")
    listing, written = [], []
    for slug, image in zip(input_slugs, images):
        name = f"{uuid.uuid5(uuid.NAMESPACE_URL, str(image))}.mha"
        target = folder / "images" / slug / name
        target.parent.mkdir(parents=True, exist_ok=True)
        source = sitk.ReadImage(str(image))
        for key in source.GetMetaDataKeys():  # NIfTI header fields .mha cannot hold (warnings otherwise)
            source.EraseMetaData(key)
        sitk.WriteImage(source, str(target), True)
        written.append(target)
        listing.append({"interface": {"slug": slug, "kind": "Image", "relative_path": f"images/{slug}",
                                      "super_kind": "Image"}, "image": {"name": name}, "value": None, "file": None})
    (folder / "inputs.json").write_text(json.dumps(listing, indent=2))
    return written


def export_gc(task: Path, out: Path, image: str = "selfunet:latest", input_slugs: list[str] | None = None,
              output_slug: str = DEFAULT_OUTPUT_SLUG, work_root: Path = Path("work"), tag: str | None = None) -> Path:
    """Write the build context (see the module doc) and return ``out``."""
    work = resolve_work(task, work_root)
    input_slugs = input_slugs or [DEFAULT_INPUT_SLUG]
    from selfunet.evaluation.ensemble import Selection

    selection = Selection.load(work / "selection.json")
    files = model_files(work)
    if out.exists() and any(out.iterdir()):
        if not (out / "gc.json").is_file():
            raise SelfUNetError(f"{out}: exists and is not a previous export (no gc.json); choose an empty folder.")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    for source, relative in files:
        target = out / "model" / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)
        target.chmod(0o644)  # artifacts are written 0600; the algorithm runs as another (non-root) user
    name = tag or f"selfunet-gc-{work.name.lower()}:latest"
    config = {"input_slugs": input_slugs, "output_slug": output_slug, "selected": selection.selected,
              "members": list(selection.members), "postprocessing": selection.postprocessing.model_dump(mode="json"),
              "source_work": str(work), "base_image": image, "tag": name, "exported": time.strftime("%Y-%m-%d %H:%M")}
    (out / "gc.json").write_text(json.dumps(config, indent=2))
    (out / "inference.py").write_text(INFERENCE_PY)
    (out / "Dockerfile").write_text(DOCKERFILE.format(selected=selection.selected, members="+".join(selection.members),
                                                      date=config["exported"], base=image, algorithm=ALGORITHM_DIR))
    archive = name.replace(":", "_").replace("/", "_") + ".tar.gz"
    for script, text in (("build.sh", BUILD_SH), ("test.sh", TEST_SH), ("save.sh", SAVE_SH)):
        (out / script).write_text(text.format(tag=name, output_slug=output_slug, archive=archive))
        (out / script).chmod(0o755)
    for folder in [out, *(p for p in out.rglob("*") if p.is_dir())]:
        folder.chmod(0o755)
    case = _test_case(work)
    if case is not None:
        write_test_input(out / "test" / "input", case.images, input_slugs)
    log.info("wrote the grand-challenge build context %s (%d model files)", out, len(files))
    return out


def host_prediction(context: Path, work: Path, dest: Path) -> Path:
    """``selfunet predict --selection`` on the host for the context's test case (the reference)."""
    config = json.loads((context / "gc.json").read_text())
    inputs = sorted((context / "test" / "input" / "images" / s).glob("*.mha") for s in config["input_slugs"])
    files = [next(iter(g)) for g in inputs]
    if len(files) != 1:
        raise SelfUNetError("--test compares one-socket cases only; this model has several input sockets.")
    dest.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "selfunet.cli", "predict", str(files[0]), "-o", str(dest), "-w", str(work),
               "--selection", str(work / "selection.json")]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise SelfUNetError(f"`{' '.join(command)}` failed:\n{result.stderr[-3000:]}")
    (written,) = sorted(dest.glob("*.mha"))
    return written


def test_container(context: Path, client=None, keep_image: bool = True) -> dict:
    """Build the context's image, run it like grand-challenge does, and compare with the host prediction."""
    from harness.image import docker_client

    client = client or docker_client()
    config = json.loads((context / "gc.json").read_text())
    if not (context / "test" / "input" / "inputs.json").is_file():
        raise SelfUNetError(f"{context}/test/input: no test case (the work directory's dataset was not found).")
    work = Path(config["source_work"])
    expected_dir = context / "test" / "expected"
    if expected_dir.exists():
        shutil.rmtree(expected_dir)
    started = time.perf_counter()
    expected = host_prediction(context, work, expected_dir)
    host_s = time.perf_counter() - started
    started = time.perf_counter()
    image, _ = client.images.build(path=str(context), tag=config["tag"], rm=True, forcerm=True, network_mode="none",
                                   pull=False)
    build_s = time.perf_counter() - started
    with tempfile.TemporaryDirectory(prefix="selfunet-gc-") as tmp:
        output = Path(tmp) / "output"
        output.mkdir()
        output.chmod(0o777)  # the container runs as its own non-root user, as on the platform
        started = time.perf_counter()
        container = client.containers.create(
            image.id, network_mode="none", read_only=True, tmpfs={"/tmp": "exec"}, shm_size="2g",
            volumes={str((context / "test" / "input").resolve()): {"bind": "/input", "mode": "ro"},
                     str(output): {"bind": "/output", "mode": "rw"}}, detach=True)
        try:
            container.start()
            code = int(container.wait().get("StatusCode", -1))
            logs = container.logs().decode(errors="replace")
        finally:
            container.remove(force=True)
        run_s = time.perf_counter() - started
        if code != 0:
            raise SelfUNetError(f"the algorithm container exited with {code}:\n{logs[-3000:]}")
        produced = sorted((output / "images" / config["output_slug"]).glob("*.mha"))
        if len(produced) != 1:
            raise SelfUNetError(f"expected one .mha in /output/images/{config['output_slug']}/, got "
                                f"{[p.name for p in produced]}:\n{logs[-2000:]}")
        got, want = sitk.ReadImage(str(produced[0])), sitk.ReadImage(str(expected))
        a, b = sitk.GetArrayFromImage(got), sitk.GetArrayFromImage(want)
        same_geometry = (got.GetSize() == want.GetSize() and np.allclose(got.GetSpacing(), want.GetSpacing())
                         and np.allclose(got.GetOrigin(), want.GetOrigin())
                         and np.allclose(got.GetDirection(), want.GetDirection()))
        differing = int((a != b).sum()) if a.shape == b.shape else -1
    result = {"image": image.id, "tag": config["tag"], "size_mb": round(image.attrs.get("Size", 0) / 1e6, 1),
              "equal": same_geometry and differing == 0, "differing_voxels": differing,
              "same_geometry": same_geometry, "voxels": int(b.size), "labels": sorted(int(v) for v in np.unique(b)),
              "seconds": {"host_predict": round(host_s, 1), "build": round(build_s, 1), "run": round(run_s, 1)}}
    if not result["equal"]:
        raise SelfUNetError(f"the container's label map differs from `selfunet predict --selection`'s: {result}")
    if not keep_image:
        client.images.remove(image.id, force=True)
    return result


"""``harness export gc TASK --out DIR [--test]``: a grand-challenge algorithm container.

The build context holds everything the algorithm needs and nothing else, with the script names of
the platform's algorithm template:

```
DIR/
  Dockerfile          FROM --platform=linux/amd64 the project image; the entry point on top (and
                      the model, unless --model-tarball)
  inference.py        grand-challenge I/O: /input/inputs.json + /input/images/<slug>/*.mha
                      -> /output/images/<output slug>/<name>.mha (the label map)
  gc.json             slugs, the selected model (members, postprocessing), where it came from
  model/              a minimal work directory: plan.json, fingerprint.json, selection.json and
                      train/<member>/fold_<k>/checkpoint_final.pt of every member (and the lowres
                      stage of a cascade); with ``--model model.zip`` the archive's verified
                      contents in that layout (``selfunet.model_archive.unpack_model_archive``)
  model.tar.gz        --model-tarball: model/ packed for upload as the algorithm's separate model
                      (the platform extracts it to /opt/ml/model; the image then carries no weights)
  test/input/         one test case laid out as the platform mounts it (inputs.json + .mha), from
                      the phase's inputs.json when one is given (--inputs-json)
  test/expected/      `selfunet predict --selection` on that case, on the host (made by --test)
  do_build.sh do_test_run.sh do_save.sh
```

Why a copy of the model instead of the work directory: the image must not carry preprocessed
data or validation outputs (size, and they may hold patient data), and the selection (members,
postprocessing rule) is frozen at export time.

Input sockets are the phase's: one slug (``--input-slug`` once) receives all channels as one
image (4D for a multi-channel task), or one slug per channel receives a 3D image each. The image
is labelled with its slugs (``org.selfunet.gc.inputs``/``.output``) so ``harness score`` lays cases
out the same way. ``--test`` checks the base image runs as a non-root user (the platform's rule)
before it builds for linux/amd64, runs the image the way the platform does (no network,
``/input`` read-only, as the image's user, ``--gpus all`` where the host has a GPU, the model
mounted at /opt/ml/model when it ships as a tarball) and checks that its label map equals
``selfunet predict --selection``'s on the same case, voxel for voxel.
"""

from __future__ import annotations

import json
import logging
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from harness.challenge.gc_case import output_files, read_inputs_json, write_case
from harness.challenge.gc_templates import DOCKERFILE, INFERENCE_PY, SCRIPTS, render_script
from harness.sandboxes.algorithm import is_root
from harness.tasks.names import (
    check_configuration,
    check_image_reference,
    check_image_tag,
    check_slug,
    image_tag_from,
)
from selfunet.errors import SelfUNetError
from selfunet.workdir import WorkDir, member_name, split_member

log = logging.getLogger(__name__)

DEFAULT_INPUT_SLUG = "image"
DEFAULT_OUTPUT_SLUG = "segmentation"
ALGORITHM_DIR = "/opt/algorithm"
#: where the platform extracts an algorithm's separate model tarball.
MODEL_MOUNT = "/opt/ml/model"
PLATFORM = "linux/amd64"
CHECKPOINT = "checkpoint_final.pt"
#: ``--test`` passes when at most this fraction of voxels differ from the host's prediction. The
#: image's Python packages come from the wheelhouse and run under the container's limits, so
#: float sums may round differently and flip a voxel whose classes are tied to the last bit; a
#: real difference (another model, preprocessing or geometry) changes far more. ``equal`` in the
#: result still says whether they are identical, and ``differing_voxels`` how many differ.
AGREEMENT_FRACTION = 1e-4


def resolve_work(task: Path, work_root: Path = Path("work")) -> Path:
    """TASK is a work directory holding selection.json, or a task descriptor (WORK_ROOT/<name>)."""
    if task.is_dir() and (task / "selection.json").is_file():
        return task.resolve()
    if task.is_file() and task.suffix in (".yaml", ".yml"):
        from harness.tasks.descriptor import load_tasks

        (descriptor,) = load_tasks([task])
        work = (work_root / descriptor.name).resolve()
        if not (work / "selection.json").is_file():
            raise SelfUNetError(f"{work}/selection.json not found: run the task first (`harness run {task}`), "
                                "or pass its work directory.")
        return work
    raise SelfUNetError(f"{task}: neither a work directory with selection.json nor a task descriptor (.yaml).")


def model_files(work: Path) -> list[tuple[Path, str]]:
    """(source, path inside model/) of everything inference needs: plan, selection, checkpoints.

    Configuration names come from files a job wrote (selection.json, plan.json) and become paths
    and Dockerfile text here, so each is checked against a strict pattern first.
    """
    from selfunet.evaluation.ensemble import Selection
    from selfunet.planning.plan_types import Plan

    selection = Selection.load(work / "selection.json")
    for part in selection.selected.split("+"):  # a pair or ensemble is named "a+b"
        check_configuration(part, f"{work}/selection.json: 'selected'")
    for member in selection.members:
        check_configuration(member, f"{work}/selection.json: member")
    files = [(work / "selection.json", "selection.json")]
    if (work / "plan.json").is_file() or not any("@" in m for m in selection.members):
        files.insert(0, (work / "plan.json", "plan.json"))
    if (work / "fingerprint.json").is_file():
        files.append((work / "fingerprint.json", "fingerprint.json"))
    stages, pending = [], list(selection.members)
    while pending:
        stage = pending.pop(0)
        if stage in stages:
            continue
        # a member of another planner (3d_fullres@resenc-m) lives in WORK/planners/<preset>
        stage_work, configuration = WorkDir(work).member(stage)
        stage_plan = Plan.load(stage_work.plan)
        if configuration not in stage_plan.configurations:
            raise SelfUNetError(f"{work}/selection.json: member '{stage}' is not a configuration of "
                                f"{stage_work.plan}.")
        stages.append(check_configuration(stage, f"{work}/plan.json: configuration"))
        previous = stage_plan.configurations[configuration].previous_stage
        if previous:
            pending.append(check_configuration(member_name(previous, split_member(stage)[1]),
                                               f"{stage_work.plan}: previous_stage of '{stage}'"))
    for stage in stages:
        stage_work, configuration = WorkDir(work).member(stage)
        checkpoints = sorted((stage_work.root / "train" / configuration).glob(f"fold_*/{CHECKPOINT}"))
        if not checkpoints:
            raise SelfUNetError(f"{stage_work.root}/train/{configuration}: no {CHECKPOINT}; train every fold of "
                                f"'{stage}' first.")
        files += [(c, c.relative_to(work).as_posix()) for c in checkpoints]
    return files


def _test_case(dataset: Path | None):
    """The first test (else training) case of the dataset the user named (descriptor or --dataset).

    Never the root recorded in WORK/fingerprint.json: a job wrote that file, and what a job writes
    must not choose which host files are copied into the image's build context.
    """
    from selfunet.data.dataset import load_dataset

    if dataset is None:
        log.warning("no test case for the container: pass the task's descriptor or --dataset DIR to add one "
                    "(the work directory's fingerprint.json is not trusted to name it).")
        return None
    try:
        spec = load_dataset(dataset)
    except SelfUNetError as exc:
        log.warning("no test case for the container (%s)", exc)
        return None
    cases = spec.test or spec.training
    return cases[0] if cases else None


def _channels(work: Path) -> int:
    from selfunet.planning.plan_types import Plan

    return Plan.load(work / "plan.json").num_input_channels


def _pack(folder: Path, archive: Path) -> None:
    """``folder``'s files at the archive's root (the platform extracts it into /opt/ml/model)."""
    tmp = archive.with_name(f".{archive.name}.tmp")
    with tarfile.open(tmp, "w:gz") as tar:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                tar.add(path, arcname=path.relative_to(folder).as_posix())
    tmp.replace(archive)


def write_scripts(out: Path, tag: str, output_slug: str, base: str, model_tarball: bool = False) -> None:
    """do_build.sh, do_test_run.sh, do_save.sh: tag, slug and base checked, then pasted shell-quoted."""
    check_image_tag(tag, "--tag")
    check_slug(output_slug, "--output-slug")
    check_image_reference(base, "--image")
    archive = tag.replace(":", "_").replace("/", "_") + ".tar.gz"
    values = {"TAG": shlex.quote(tag), "OUTPUT_SLUG": shlex.quote(output_slug), "ARCHIVE": shlex.quote(archive),
              "BASE": shlex.quote(base), "PLATFORM": PLATFORM, "MODEL_MOUNT": MODEL_MOUNT,
              "MODEL_TARBALL": "1" if model_tarball else "0"}
    for script in SCRIPTS:
        (out / script).write_text(render_script(script, values))
        (out / script).chmod(0o755)


def export_gc(task: Path | None, out: Path, image: str = "selfunet:latest", input_slugs: list[str] | None = None,
              output_slug: str = DEFAULT_OUTPUT_SLUG, work_root: Path = Path("work"), tag: str | None = None,
              model_tarball: bool = False, inputs_json: Path | None = None, mirroring: bool = True,
              model: Path | None = None, dataset: Path | None = None) -> Path:
    """Write the build context (see the module doc) and return ``out``.

    Every value pasted into the Dockerfile or the scripts is checked (:mod:`harness.tasks.names`) before
    anything is written, and quoted where it is pasted. The test case comes from ``dataset``, else
    the descriptor's dataset when ``task`` is a descriptor (never from the work directory's
    fingerprint.json: a job wrote it).

    ``model``: a model.zip (``selfunet export-model``) to package instead of a work directory's
    folds; it is verified and laid out as the context's ``model/``. ``task`` is then optional and
    only supplies the test case (and the default tag).

    ``mirroring``: mirror test-time augmentation in the container (``selfunet predict``'s default;
    off is several times faster on a CPU, as ``--no-mirroring``).

    ``input_slugs``: one slug (all channels in one image) or one per channel; default the image
    sockets of ``inputs_json`` (the phase's example), else ``image``.
    """
    for slug in input_slugs or []:
        check_slug(slug, "--input-slug")
    check_slug(output_slug, "--output-slug")
    check_image_reference(image, "--image")
    if tag is not None:
        check_image_tag(tag, "--tag")
    if dataset is None and task is not None and Path(task).is_file():
        from harness.tasks.descriptor import load_tasks

        dataset = load_tasks([Path(task)])[0].dataset
    if model is None and task is None:
        raise SelfUNetError("export gc: name a task (or work directory), or give --model model.zip.")
    if model is None:
        return _export_gc(resolve_work(task, work_root), out, image, input_slugs, output_slug, tag, model_tarball,
                          inputs_json, mirroring, None, None, dataset)
    from selfunet.model_archive import unpack_model_archive

    source = resolve_work(task, work_root) if task is not None else None
    from selfunet.interop.nnunet_import import model_archive_for

    with tempfile.TemporaryDirectory(prefix="selfunet-gc-model-") as staged:
        # an nnU-Net v2 model folder or zip is imported first (selfunet import-nnunet's checks)
        archive = model_archive_for(Path(model), Path(staged))
        work = unpack_model_archive(archive, Path(staged) / Path(model).stem)
        return _export_gc(work, out, image, input_slugs, output_slug, tag, model_tarball, inputs_json, mirroring,
                          source, Path(model).resolve(), dataset)


def _export_gc(work: Path, out: Path, image: str, input_slugs: list[str] | None, output_slug: str, tag: str | None,
               model_tarball: bool, inputs_json: Path | None, mirroring: bool, source: Path | None,
               archive_path: Path | None, dataset: Path | None = None) -> Path:
    """``export_gc`` on a work directory ``work`` (a staged archive when ``archive_path`` is set, with
    ``source`` the work directory that supplies the test case, if any)."""
    if inputs_json is not None and not Path(inputs_json).is_file():
        raise SelfUNetError(f"--inputs-json {inputs_json}: no such file; pass the phase's inputs.json.")
    input_slugs = input_slugs or ([s for s, _ in read_inputs_json(inputs_json)] if inputs_json else
                                  [DEFAULT_INPUT_SLUG])
    channels = _channels(work)
    if len(input_slugs) not in (1, channels):
        raise SelfUNetError(f"{len(input_slugs)} input slugs ({', '.join(input_slugs)}) for a model with {channels} "
                            "channel(s): give one --input-slug (all channels in one image) or one per channel.")
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
    case_work = work if archive_path is None else source  # the work directory predictions are compared with
    name = tag or image_tag_from(f"selfunet-gc-{(case_work or work).name}")
    case = _test_case(dataset)
    config = {"input_slugs": input_slugs, "output_slug": output_slug, "selected": selection.selected,
              "members": list(selection.members), "postprocessing": selection.postprocessing.model_dump(mode="json"),
              "source_work": None if case_work is None else str(case_work),
              "source_model": None if archive_path is None else str(archive_path),
              "base_image": image, "tag": name, "platform": PLATFORM,
              "model_in_image": not model_tarball, "mirroring": mirroring, "exported": time.strftime("%Y-%m-%d %H:%M"),
              "test_case": None if case is None else {"id": case.case_id, "images": [str(p) for p in case.images]}}
    (out / "gc.json").write_text(json.dumps(config, indent=2))
    (out / "inference.py").write_text(INFERENCE_PY)
    (out / "Dockerfile").write_text(DOCKERFILE.format(
        selected=json.dumps(selection.selected), members=json.dumps("+".join(selection.members)),
        date=config["exported"], base=image, algorithm=ALGORITHM_DIR, platform=PLATFORM,
        inputs=json.dumps(",".join(input_slugs)), output=json.dumps(output_slug),
        copy_model="" if model_tarball else f"COPY model {ALGORITHM_DIR}/model\n"))
    ignored = ["test", "*.tar.gz", *(["model"] if model_tarball else [])]
    (out / ".dockerignore").write_text("\n".join(ignored) + "\n")
    write_scripts(out, name, output_slug, image, model_tarball)
    if model_tarball:
        _pack(out / "model", out / "model.tar.gz")
    for folder in [out, *(p for p in out.rglob("*") if p.is_dir())]:
        folder.chmod(0o755)
    if case is not None:
        write_case(out / "test" / "input", case.images, input_slugs, inputs_json)
    log.info("wrote the grand-challenge build context %s (%d model files)", out, len(files))
    return out


def read_config(context: Path) -> dict:
    """``gc.json`` with its slugs, tag and base checked again (the file may have been edited since)."""
    path = context / "gc.json"
    try:
        config = json.loads(path.read_text())
        for slug in config["input_slugs"]:
            check_slug(slug, f"{path}: input_slugs")
        check_slug(config["output_slug"], f"{path}: output_slug")
        check_image_tag(config["tag"], f"{path}: tag")
        check_image_reference(config["base_image"], f"{path}: base_image")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SelfUNetError(f"{path}: not a readable export config ({exc}); export again with `harness export gc`."
                            ) from None
    return config


def host_prediction(context: Path, work: Path | None, dest: Path) -> Path:
    """``selfunet predict --selection`` (``--model`` for an exported archive) on the host for the
    context's test case (the reference)."""
    config = read_config(context)
    dest.mkdir(parents=True, exist_ok=True)
    source = (("--model", config["source_model"]) if config.get("source_model") else
              ("-w", str(work), "--selection", str(work / "selection.json")))
    command = [sys.executable, "-m", "selfunet.cli", "predict", *config["test_case"]["images"], "-o", str(dest),
               *source,
               *(() if config.get("mirroring", True) else ("--no-mirroring",))]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise SelfUNetError(f"`{' '.join(command)}` failed:\n{result.stderr[-3000:]}")
    (written,) = sorted(p for p in dest.iterdir() if p.is_file())
    return written


def host_has_gpu() -> bool:
    """What do_test_run.sh checks before it passes ``--gpus all``: a working ``nvidia-smi``."""
    if shutil.which("nvidia-smi") is None:
        return False
    try:
        return subprocess.run(["nvidia-smi", "-L"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def check_non_root(client, image: str) -> str:
    """The image's user; a SelfUNetError when it runs as root (the platform refuses that)."""
    import docker.errors

    try:
        user = (client.images.get(image).attrs.get("Config") or {}).get("User") or ""
    except docker.errors.ImageNotFound:
        raise SelfUNetError(f"base image '{image}' not found in the Docker Engine; build it first "
                            "(`harness image build`).") from None
    if is_root(user):
        raise SelfUNetError(f"base image '{image}' runs as root (User={user!r}); grand-challenge runs algorithms as "
                            "a non-root user: build FROM an image with a non-root USER (the project image has one).")
    return user


def test_container(context: Path, client=None, keep_image: bool = True) -> dict:
    """Check the base runs as non-root, build the context's image for linux/amd64, run it like
    grand-challenge does, and compare its label map with the host prediction."""
    from harness.sandboxes.image import docker_client

    client = client or docker_client()
    config = read_config(context)
    if not (context / "test" / "input" / "inputs.json").is_file() or not config.get("test_case"):
        raise SelfUNetError(f"{context}/test/input: no test case; export with the task's descriptor or --dataset DIR.")
    user = check_non_root(client, config["base_image"])
    work = Path(config["source_work"]) if config.get("source_work") else None
    expected_dir = context / "test" / "expected"
    if expected_dir.exists():
        shutil.rmtree(expected_dir)
    started = time.perf_counter()
    expected = host_prediction(context, work, expected_dir)
    host_s = time.perf_counter() - started
    started = time.perf_counter()
    image, _ = client.images.build(path=str(context), tag=config["tag"], rm=True, forcerm=True, network_mode="none",
                                   pull=False, platform=config.get("platform", PLATFORM))
    build_s = time.perf_counter() - started
    gpu = host_has_gpu()
    with tempfile.TemporaryDirectory(prefix="selfunet-gc-", ignore_cleanup_errors=True) as tmp:
        output = Path(tmp) / "output"
        output.mkdir()
        output.chmod(0o777)  # the container runs as its own non-root user, as on the platform
        volumes = {str((context / "test" / "input").resolve()): {"bind": "/input", "mode": "ro"},
                   str(output): {"bind": "/output", "mode": "rw"}}
        if not config.get("model_in_image", True):
            volumes[str((context / "model").resolve())] = {"bind": MODEL_MOUNT, "mode": "ro"}
        extra = {}
        if gpu:
            from docker.types import DeviceRequest

            extra["device_requests"] = [DeviceRequest(count=-1, capabilities=[["gpu"]])]  # --gpus all
        started = time.perf_counter()
        container = client.containers.create(
            image.id, network_mode="none", read_only=True, tmpfs={"/tmp": "exec"}, shm_size="2g",
            volumes=volumes, detach=True, **extra)
        try:
            container.start()
            code = int(container.wait().get("StatusCode", -1))
            logs = container.logs().decode(errors="replace")
        finally:
            container.remove(force=True)
        run_s = time.perf_counter() - started
        if code != 0:
            raise SelfUNetError(f"the algorithm container exited with {code}:\n{logs[-3000:]}")
        produced = output_files(output, config["output_slug"])
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
              "user": user, "gpu": gpu, "architecture": image.attrs.get("Architecture"),
              "input_slugs": config["input_slugs"], "model_in_image": config.get("model_in_image", True),
              "equal": same_geometry and differing == 0, "differing_voxels": differing,
              "agrees": same_geometry and 0 <= differing <= AGREEMENT_FRACTION * b.size,
              "same_geometry": same_geometry, "voxels": int(b.size), "labels": sorted(int(v) for v in np.unique(b)),
              "seconds": {"host_predict": round(host_s, 1), "build": round(build_s, 1), "run": round(run_s, 1)}}
    if not result["agrees"]:
        raise SelfUNetError(f"the container's label map differs from `selfunet predict --selection`'s: {result}")
    if not keep_image:
        client.images.remove(image.id, force=True)
    return result


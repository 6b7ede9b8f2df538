"""Hostile submissions through the real scoring code, with the container's output simulated.

``harness score`` runs as it does on an engine (:func:`harness.challenge.score.score_task`, the
algorithm sandbox's own ``run``: a fresh output folder made by the harness), except that the
engine's part (:meth:`DockerSandbox.run`) is replaced by a function that writes into ``/output``
what a hostile container would: a link to the host path of the reference label, a header naming a
host file as its voxel data, a header declaring 2000^3 voxels, a FIFO, a hard link, a folder
where a file belongs; and image labels whose socket slug climbs out of the scores folder. Each
case must be scored as a failure with its reason, Dice 0 for every class, nothing read through a
link or outside the output folder, nothing deleted outside the scores folder. The same with real
containers on an engine: tests/docker/test_score_hostile_containers.py.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from harness.challenge import score as score_module
from harness.challenge.outputs import REFUSED
from harness.challenge.score import INPUTS_LABEL, OUTPUT_LABEL, STATUSES, parse_submission, score_task
from harness.sandboxes.algorithm import AlgorithmSandbox
from harness.sandboxes.base import SandboxRequest, Slot
from harness.sandboxes.docker import DockerSandbox
from harness.tasks.descriptor import TaskDescriptor
from selfunet.errors import SelfUNetError

CASES = ("demo_100", "demo_101")


class FakeImage:
    def __init__(self, labels: dict[str, str]) -> None:
        self.id, self.tags, self.labels = "sha256:" + "0" * 64, ["hostile:latest"], labels
        self.attrs = {"Config": {"User": "1000:1000"}}


class FakeClient:
    """What run_container asks of the engine before a run: the image (its id, tags, labels)."""

    def __init__(self, labels: dict[str, str] | None = None) -> None:
        self.images = self
        self.labels = labels or {}

    def get(self, ref: str) -> FakeImage:
        return FakeImage(self.labels)


@pytest.fixture
def task(demo_root: Path) -> TaskDescriptor:
    return TaskDescriptor.model_validate({"name": "demo", "dataset": str(demo_root),
                                          "test_labels": str(demo_root / "labelsTs")})


def score_with(container, task: TaskDescriptor, tmp_path: Path, monkeypatch, labels: dict[str, str] | None = None,
               name: str = "hostile") -> list:
    """Score one container submission whose run is ``container(output, inputs, case_id)`` (exit 0)."""
    runs: list[Path] = []

    def engine_run(self, request: SandboxRequest, slot: Slot) -> int:
        output = Path(request.read_write[0])
        assert output.is_dir() and not any(output.iterdir())  # made fresh by the harness, empty
        runs.append(output)
        container(output, Path(request.read_only[0]), Path(request.read_only[0]).name)
        return 0

    monkeypatch.setattr(DockerSandbox, "run", engine_run)
    started = time.perf_counter()
    out = score_task(task, [parse_submission(f"{name}=hostile:latest")], tmp_path / "work", tmp_path / "results",
                     selfunet=False, client=FakeClient(labels))
    assert time.perf_counter() - started < 20
    score_with.runs = runs
    return out[name]


def _reference(task: TaskDescriptor, case_id: str) -> Path:
    return task.test_labels / f"{case_id}.nii.gz"


def _segmentation(output: Path, slug: str = "segmentation") -> Path:
    folder = output / "images" / slug
    folder.mkdir(parents=True)
    return folder


def _all_failed(results: list, status: str, words: str) -> None:
    assert [r.status for r in results] == [status] * len(CASES), [(r.status, r.reason) for r in results]
    for r in results:
        assert words in r.reason, r.reason
        assert set(r.dice.values()) == {0.0}


def test_an_honest_output_scores(task, tmp_path, monkeypatch) -> None:
    def honest(output: Path, inputs: Path, case_id: str) -> None:
        sitk.WriteImage(sitk.ReadImage(str(_reference(task, case_id))), str(_segmentation(output) / "out.mha"))

    results = score_with(honest, task, tmp_path, monkeypatch)
    assert [r.status for r in results] == ["ok", "ok"] and all(v == 1.0 for r in results for v in r.dice.values())
    assert REFUSED in STATUSES


def test_an_output_that_is_a_link_to_the_host_reference_label_is_refused(task, tmp_path, monkeypatch) -> None:
    def cheat(output: Path, inputs: Path, case_id: str) -> None:  # Dice 1.0 if followed
        (_segmentation(output) / "out.nii.gz").symlink_to(_reference(task, case_id))

    _all_failed(score_with(cheat, task, tmp_path, monkeypatch), REFUSED, "symlink: /output/images/segmentation/")
    assert not list((tmp_path / "results" / "demo" / "scores" / "predictions" / "hostile").iterdir())


@pytest.mark.parametrize("where", ["images", "images/segmentation"])
def test_an_output_folder_that_is_a_link_to_a_host_folder_is_refused(task, tmp_path, monkeypatch, where) -> None:
    def cheat(output: Path, inputs: Path, case_id: str) -> None:
        (output / where).parent.mkdir(parents=True, exist_ok=True)
        (output / where).symlink_to(task.test_labels if where.endswith("segmentation") else task.test_labels.parent)

    _all_failed(score_with(cheat, task, tmp_path, monkeypatch), REFUSED, "symlink")


def _mha_header(reference: Path, data_file: str) -> str:
    """A MetaImage header on the reference's grid whose voxels are ``data_file``."""
    image = sitk.ReadImage(str(reference))
    direction = " ".join(f"{v:g}" for v in np.asarray(image.GetDirection()).reshape(3, 3).T.ravel())
    return ("ObjectType = Image\nNDims = 3\nBinaryData = True\nBinaryDataByteOrderMSB = False\n"
            f"CompressedData = False\nTransformMatrix = {direction}\n"
            f"Offset = {' '.join(map(str, image.GetOrigin()))}\n"
            f"ElementSpacing = {' '.join(map(str, image.GetSpacing()))}\n"
            f"DimSize = {' '.join(map(str, image.GetSize()))}\nElementType = MET_UCHAR\n"
            f"ElementDataFile = {data_file}\n")


def test_an_mha_whose_element_data_file_names_a_host_file_is_refused(task, tmp_path, monkeypatch) -> None:
    host = tmp_path / "host"
    host.mkdir()
    for case in CASES:  # the reference's voxels, raw, on the host: read through the header, Dice 1.0
        array = sitk.GetArrayFromImage(sitk.ReadImage(str(_reference(task, case)))).astype(np.uint8)
        (host / f"{case}.raw").write_bytes(array.tobytes())
    check = sitk.ReadImage(str(_write(tmp_path / "check.mha", _mha_header(_reference(task, CASES[0]),
                                                                              str(host / f"{CASES[0]}.raw")))))
    assert (sitk.GetArrayFromImage(check) == sitk.GetArrayFromImage(sitk.ReadImage(
        str(_reference(task, CASES[0]))))).all()  # the cheat works on a reader that follows it

    def cheat(output: Path, inputs: Path, case_id: str) -> None:
        _write(_segmentation(output) / "out.mha", _mha_header(_reference(task, case_id), str(host / f"{case_id}.raw")))

    _all_failed(score_with(cheat, task, tmp_path, monkeypatch), REFUSED, "external data file")


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize("kind", ["mhd", "nrrd", "mha-list"])
def test_other_external_data_headers_are_refused(task, tmp_path, monkeypatch, kind) -> None:
    def cheat(output: Path, inputs: Path, case_id: str) -> None:
        folder = _segmentation(output)
        if kind == "mhd":  # the platform converts to .mha; a detached header needs a second file
            sitk.WriteImage(sitk.ReadImage(str(_reference(task, case_id))), str(folder / "out.mhd"))
            for extra in folder.glob("*.raw"):  # only the header counts as the one image
                extra.rename(output / extra.name)
        elif kind == "nrrd":
            size = sitk.ReadImage(str(_reference(task, case_id))).GetSize()
            _write(folder / "out.nrrd", f"NRRD0004\ntype: uint8\ndimension: 3\nsizes: {' '.join(map(str, size))}\n"
                                        f"encoding: raw\ndata file: {_reference(task, case_id)}\n\n")
        else:
            _write(folder / "out.mha", _mha_header(_reference(task, case_id), "LIST\n/etc/hostname"))

    _all_failed(score_with(cheat, task, tmp_path, monkeypatch), REFUSED, "external data file")


def test_a_header_declaring_2000_cubed_voxels_is_refused_before_any_voxel(task, tmp_path, monkeypatch) -> None:
    def huge(output: Path, inputs: Path, case_id: str) -> None:  # 32 GB of float voxels declared, 300 bytes sent
        header = _mha_header(_reference(task, case_id), "LOCAL")
        header = header.replace("MET_UCHAR", "MET_FLOAT").replace(
            "DimSize = " + header.split("DimSize = ")[1].splitlines()[0], "DimSize = 2000 2000 2000")
        _write(_segmentation(output) / "out.mha", header)

    import resource

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    _all_failed(score_with(huge, task, tmp_path, monkeypatch), "wrong-geometry", "size (2000, 2000, 2000)")
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 512 * 1024  # kB: no 32 GB read


def test_a_file_larger_than_the_reference_grid_needs_is_refused_unread(task, tmp_path, monkeypatch) -> None:
    def padded(output: Path, inputs: Path, case_id: str) -> None:
        path = _segmentation(output) / "out.mha"
        sitk.WriteImage(sitk.ReadImage(str(_reference(task, case_id))), str(path))
        with open(path, "r+b") as handle:
            handle.truncate(64 * 1024**3)  # sparse: 64 GiB that would be read

    _all_failed(score_with(padded, task, tmp_path, monkeypatch), REFUSED, "too large")


@pytest.mark.parametrize("kind", ["fifo", "folder", "device"])
def test_an_output_that_is_not_a_regular_file_is_refused_without_blocking(task, tmp_path, monkeypatch, kind) -> None:
    if kind == "device" and os.geteuid() != 0:
        pytest.skip("making a device node needs root")

    def odd(output: Path, inputs: Path, case_id: str) -> None:
        path = _segmentation(output) / "out.mha"
        if kind == "fifo":
            os.mkfifo(path)
        elif kind == "folder":
            path.mkdir()
        else:
            import stat

            os.mknod(path, 0o600 | stat.S_IFCHR, os.makedev(1, 5))  # /dev/zero: reading never ends

    _all_failed(score_with(odd, task, tmp_path, monkeypatch), REFUSED, "not a regular file")


def test_a_hard_linked_output_is_refused(task, tmp_path, monkeypatch) -> None:
    def linked(output: Path, inputs: Path, case_id: str) -> None:
        sitk.WriteImage(sitk.ReadImage(str(_reference(task, case_id))), str(output / "kept.mha"))
        os.link(output / "kept.mha", _segmentation(output) / "out.mha")

    _all_failed(score_with(linked, task, tmp_path, monkeypatch), REFUSED, "hard link")


@pytest.mark.parametrize("label", [INPUTS_LABEL, OUTPUT_LABEL])
def test_a_slug_from_the_image_labels_that_climbs_out_deletes_nothing(task, tmp_path, monkeypatch, label) -> None:
    """Before: ``scores/.inputs/<slug>/<case>`` was built from the label and ``rmtree``'d before the
    slug was checked, so ``../../../../victim`` deleted ``victim/<case id>`` on the host."""
    victim = tmp_path / "victim"
    for case in CASES:
        (victim / case).mkdir(parents=True)
        (victim / case / "precious.txt").write_text("keep me")
    climb = "../../../../victim"  # from results/demo/scores/.inputs/<slug>/<case>
    assert (tmp_path / "results" / "demo" / "scores" / ".inputs" / climb).resolve() == victim.resolve()

    def never(output: Path, inputs: Path, case_id: str) -> None:
        raise AssertionError("the container must not run with a bad slug")

    results = score_with(never, task, tmp_path, monkeypatch, labels={label: climb})
    _all_failed(results, REFUSED, "socket slug")
    assert all((victim / case / "precious.txt").read_text() == "keep me" for case in CASES)
    assert not score_with.runs


def test_a_bad_slug_given_as_an_option_is_the_users_error(task, tmp_path) -> None:
    from harness.challenge.score import image_sockets

    with pytest.raises(SelfUNetError, match=r"--input-slug '\.\./x'"):
        image_sockets({}, ["../x"], None)
    with pytest.raises(SelfUNetError, match="--output-slug"):
        image_sockets({}, None, "a/b")


def test_the_algorithm_sandbox_never_reuses_an_output_folder(tmp_path) -> None:
    prepared = tmp_path / "out"
    (prepared / "images" / "segmentation").mkdir(parents=True)
    (tmp_path / "in").mkdir()
    sandbox = AlgorithmSandbox(image="x", client=object())
    request = SandboxRequest(job_id="score-x", argv=(), log_path=tmp_path / "log", read_only=(tmp_path / "in",),
                             read_write=(prepared,))
    with pytest.raises(SelfUNetError, match="exists already"):
        sandbox.run(request, Slot(0))


def test_a_folder_submission_of_links_to_the_references_is_refused(task, tmp_path) -> None:
    folder = tmp_path / "team"
    folder.mkdir()
    for case in CASES:
        (folder / f"{case}.nii.gz").symlink_to(_reference(task, case))
    out = score_task(task, [parse_submission(f"team={folder}")], tmp_path / "work", tmp_path / "results",
                     selfunet=False)
    _all_failed(out["team"], REFUSED, "symlink")


def test_a_scores_folder_behind_a_link_is_refused_and_not_emptied(task, tmp_path) -> None:
    victim = tmp_path / "victim"
    (victim / "team").mkdir(parents=True)
    (victim / "team" / "precious.txt").write_text("keep me")
    scores = tmp_path / "results" / "demo" / "scores"
    scores.mkdir(parents=True)
    (scores / "predictions").symlink_to(victim)
    with pytest.raises(SelfUNetError, match="predictions: a symbolic link"):
        score_task(task, [parse_submission(f"team={task.test_labels}")], tmp_path / "work", tmp_path / "results",
                   selfunet=False)
    assert (victim / "team" / "precious.txt").read_text() == "keep me"


def test_a_linked_selection_json_is_refused_for_selfunets_own_model(task, tmp_path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    (tmp_path / "secret.json").write_text('{"token": "hunter2"}')
    (work / "selection.json").symlink_to(tmp_path / "secret.json")
    with pytest.raises(SelfUNetError, match=r"selection\.json: a symbolic link") as err:
        score_module.run_selfunet(task, work, [], tmp_path / "scores", console=None)
    assert "hunter2" not in str(err.value)


@pytest.mark.parametrize("kind", ["honest", "link"])
def test_selfunets_own_predictions_go_through_the_same_checks(task, tmp_path, monkeypatch, kind) -> None:
    import subprocess

    work = tmp_path / "work"
    work.mkdir()
    (work / "selection.json").write_text('{"selected": "3d_fullres"}')

    def predict(command, **kwargs):  # what `selfunet predict ... -o OUT` leaves in OUT
        out = Path(command[command.index("-o") + 1])
        out.mkdir(parents=True)
        case = next(c for c in CASES if c in " ".join(command))
        if kind == "honest":
            sitk.WriteImage(sitk.ReadImage(str(_reference(task, case))), str(out / f"{case}.nii.gz"))
        else:
            (out / f"{case}.nii.gz").symlink_to(_reference(task, case))
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(score_module.subprocess, "run", predict)
    out = score_task(task, [], work, tmp_path / "results")
    if kind == "honest":
        assert [r.status for r in out["selfunet"]] == ["ok", "ok"]
        assert all(v == 1.0 for r in out["selfunet"] for v in r.dice.values())
    else:
        _all_failed(out["selfunet"], REFUSED, "symlink")

"""``harness fetch`` against a local mirror (tests/harness/mirror_server.py): no test reaches the internet.

The mirror serves a tiny task in the Decathlon's layout, packed as the Decathlon packs it; the
checksum is handed over as a lab would hand over its own (``--checksums``, or the environment).
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
from helpers import pack_tar, write_tiny_msd_task
from mirror_server import Mirror, serve
from typer.testing import CliRunner

from harness.cli import app
from harness.fetch.sources import DECATHLON_MD5, DECATHLON_MIRROR, read_checksums
from harness.tasks.descriptor import load_tasks
from selfunet.errors import SelfUNetError

REPO = Path(__file__).resolve().parents[2]
TASK = REPO / "tasks" / "Task04_Hippocampus.yaml"
ARCHIVE = "Task04_Hippocampus.tar"


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, str]:
    """The tiny task packed as ``Task04_Hippocampus.tar``: (its bytes, its MD5 sum)."""
    root = tmp_path_factory.mktemp("archive")
    md5 = pack_tar(write_tiny_msd_task(root / "src"), root / ARCHIVE)
    return (root / ARCHIVE).read_bytes(), md5


@pytest.fixture
def mirror(archive: tuple[bytes, str]):
    with serve({ARCHIVE: archive[0]}) as running:
        yield running


def sums(tmp_path: Path, md5: str, name: str = ARCHIVE) -> Path:
    path = tmp_path / "MD5SUMS"
    path.write_text(f"# md5sum *.tar\n{md5}  {name}\n")
    return path


def invoke(*args: str, env: dict[str, str] | None = None):
    result = CliRunner().invoke(app, [str(a) for a in args], terminal_width=400, env=env)
    assert "Traceback" not in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return result


def fetch(tmp_path: Path, mirror: Mirror, md5: str, *more: str, env: dict[str, str] | None = None):
    return invoke("fetch", TASK, "--data-root", tmp_path / "data", "--mirror", mirror.url,
                  "--checksums", sums(tmp_path, md5), *more, env=env)


def test_the_decathlon_table_is_monai_s_ten_archives() -> None:
    assert DECATHLON_MIRROR == "https://msd-for-monai.s3-us-west-2.amazonaws.com"
    assert len(DECATHLON_MD5) == 10 and all(len(v) == 32 for v in DECATHLON_MD5.values())
    # every Decathlon descriptor finds its archive in the table by its dataset folder's name
    decathlon = [t for t in load_tasks([REPO / "tasks"]) if t.name.startswith("Task")]
    assert sorted(f"{t.dataset.name}.tar" for t in decathlon) == sorted(DECATHLON_MD5)


def test_fetch_end_to_end_then_validate(tmp_path: Path, mirror: Mirror, archive: tuple[bytes, str]) -> None:
    before = invoke("ls", TASK, "--data-root", tmp_path / "data", env={"COLUMNS": "300"})
    assert "missing (harness fetch)" in before.output
    result = fetch(tmp_path, mirror, archive[1])
    assert result.exit_code == 0, result.output
    target = tmp_path / "data" / "Task04_Hippocampus"
    assert "fetched into" in result.output and (target / "dataset.json").is_file()
    assert "downloading Task04_Hippocampus.tar: done" in result.output  # plain progress lines off a terminal
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == [".Task04_Hippocampus.fetch.lock",
                                                                      "Task04_Hippocampus"]  # no archive, no .part
    assert mirror.requests == [(ARCHIVE, None)]
    valid = invoke("validate", TASK, "--data-root", tmp_path / "data", "-p", "1")
    assert valid.exit_code == 0, valid.output
    again = fetch(tmp_path, mirror, archive[1])
    assert again.exit_code == 0 and "already there" in again.output
    assert len(mirror.requests) == 1  # nothing downloaded twice


def test_settings_from_the_environment_and_a_task_name(tmp_path: Path, mirror: Mirror,
                                                        archive: tuple[bytes, str]) -> None:
    env = {"HARNESS_DATA_MIRROR": mirror.url, "HARNESS_DATA_CHECKSUMS": str(sums(tmp_path, archive[1]))}
    result = invoke("fetch", "Task04_Hippocampus", "--tasks", REPO / "tasks", "--data-root", tmp_path / "data",
                    "--keep-archive", env=env)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "data" / "Task04_Hippocampus" / "dataset.json").is_file()
    assert hashlib.md5((tmp_path / "data" / ARCHIVE).read_bytes()).hexdigest() == archive[1]  # kept


def test_a_dropped_connection_is_resumed_with_a_range_request(tmp_path: Path, mirror: Mirror,
                                                              archive: tuple[bytes, str]) -> None:
    mirror.truncate = "first"
    result = fetch(tmp_path, mirror, archive[1])
    assert result.exit_code == 0, result.output
    half = len(archive[0]) // 2
    assert mirror.requests == [(ARCHIVE, None), (ARCHIVE, f"bytes={half}-")]
    assert "retrying (1/3)" in result.output
    assert (tmp_path / "data" / "Task04_Hippocampus" / "dataset.json").is_file()


def test_an_interrupted_download_resumes_on_the_next_run(tmp_path: Path, mirror: Mirror,
                                                         archive: tuple[bytes, str]) -> None:
    mirror.truncate = "always"
    first = fetch(tmp_path, mirror, archive[1], "--retries", "0")
    assert first.exit_code == 1
    assert "rerun the same command to resume" in first.output
    part = tmp_path / "data" / f"{ARCHIVE}.part"
    half = len(archive[0]) // 2
    assert part.stat().st_size == half
    assert not (tmp_path / "data" / "Task04_Hippocampus").exists()
    mirror.truncate = "never"
    second = fetch(tmp_path, mirror, archive[1])
    assert second.exit_code == 0, second.output
    assert "resuming Task04_Hippocampus.tar" in second.output
    assert mirror.requests[-1] == (ARCHIVE, f"bytes={half}-")
    assert (tmp_path / "data" / "Task04_Hippocampus" / "dataset.json").is_file() and not part.exists()


def test_a_complete_part_file_is_finished_by_a_416(tmp_path: Path, mirror: Mirror, archive: tuple[bytes, str]) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / f"{ARCHIVE}.part").write_bytes(archive[0])  # killed after the last byte, before the rename
    result = fetch(tmp_path, mirror, archive[1])
    assert result.exit_code == 0, result.output
    assert mirror.requests == [(ARCHIVE, f"bytes={len(archive[0])}-")]


def test_a_wrong_checksum_deletes_the_download_and_says_so(tmp_path: Path, mirror: Mirror) -> None:
    result = fetch(tmp_path, mirror, "0" * 32)
    assert result.exit_code == 1
    assert "wrong checksum" in result.output and "expected 00000000000000000000000000000000" in result.output
    assert "was deleted" in result.output
    assert [p.name for p in (tmp_path / "data").iterdir()] == [".Task04_Hippocampus.fetch.lock"]


def test_a_stale_archive_with_a_wrong_checksum_is_replaced(tmp_path: Path, mirror: Mirror,
                                                           archive: tuple[bytes, str]) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / ARCHIVE).write_bytes(b"not the archive")
    result = fetch(tmp_path, mirror, archive[1])
    assert result.exit_code == 0, result.output
    assert "wrong checksum" in result.output and "deleted, downloading it again" in result.output
    assert (tmp_path / "data" / "Task04_Hippocampus" / "dataset.json").is_file()


def test_a_folder_mirror_is_checked_and_unpacked_in_place(tmp_path: Path, archive: tuple[bytes, str]) -> None:
    (tmp_path / "mirror").mkdir()
    (tmp_path / "mirror" / ARCHIVE).write_bytes(archive[0])
    result = invoke("fetch", TASK, "--data-root", tmp_path / "data", "--mirror", tmp_path / "mirror",
                    "--checksums", sums(tmp_path, archive[1]))
    assert result.exit_code == 0, result.output
    assert (tmp_path / "data" / "Task04_Hippocampus" / "dataset.json").is_file()
    assert (tmp_path / "mirror" / ARCHIVE).is_file()  # the mirror's file is not ours to delete


def test_missing_archive_and_unknown_checksum_are_clear_errors(tmp_path: Path, mirror: Mirror) -> None:
    mirror.files.clear()
    result = fetch(tmp_path, mirror, "1" * 32)
    assert result.exit_code == 1 and "HTTP 404" in result.output and f"{mirror.url}/{ARCHIVE}" in result.output
    descriptor = tmp_path / "lab.yaml"
    descriptor.write_text("name: lab\ndataset: data/LabTask\n")
    result = invoke("fetch", descriptor, "--mirror", mirror.url)
    assert result.exit_code == 1 and "no MD5 sum is known for LabTask.tar" in result.output
    assert "--checksums FILE" in result.output
    assert len(mirror.requests) == 1  # nothing asked for without a checksum


def test_run_fetch_fills_missing_data_first(tmp_path: Path, mirror: Mirror, archive: tuple[bytes, str]) -> None:
    # 7 folds on 6 cases: the run stops at the folds check right after the fetch, before any job
    (tmp_path / "tasks" / "_base").mkdir(parents=True)
    shutil.copy(REPO / "tasks" / "_base" / "decathlon.yaml", tmp_path / "tasks" / "_base")
    descriptor = tmp_path / "tasks" / "hippo.yaml"
    descriptor.write_text("include: _base/decathlon.yaml\nname: hippo\ndataset: ../data/Task04_Hippocampus\nfolds: 7\n")
    common = ["run", descriptor, "--work-root", tmp_path / "work", "--results", tmp_path / "results"]
    without = invoke(*common)
    assert without.exit_code == 1 and "`harness fetch hippo` downloads the data (or add --fetch)" in without.output
    result = invoke(*common, "--fetch", "--mirror", mirror.url, "--checksums", sums(tmp_path, archive[1]))
    assert result.exit_code == 1
    assert "hippo: fetched into" in result.output and "only 6 training cases" in result.output
    assert (tmp_path / "data" / "Task04_Hippocampus" / "dataset.json").is_file()
    assert not (tmp_path / "work").exists()


def test_checksum_file_format(tmp_path: Path) -> None:
    path = tmp_path / "sums"
    path.write_text("# comment\n\nD41D8CD98F00B204E9800998ECF8427E *dir/Task09_Spleen.tar\n")
    assert read_checksums(path) == {"Task09_Spleen.tar": "d41d8cd98f00b204e9800998ecf8427e"}
    path.write_text("not a sum  Task09_Spleen.tar\n")
    with pytest.raises(SelfUNetError, match=r"line 1.*md5sum"):
        read_checksums(path)

"""Hostile archives: each is refused whole, with its reason, and leaves nothing behind.

The archives are written member by member with ``tarfile`` (and, for the lying headers, block by
block), wrapped around a correctly shaped dataset so only the hostile member is wrong. The first
battery goes through the whole command (local mirror, checksum given as a lab would); the rest
calls the extractor directly.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
from pathlib import Path

import pytest
from mirror_server import serve
from typer.testing import CliRunner

from harness.cli import app
from harness.fetch.safe_tar import STREAM_ALLOWANCE, extract_dataset
from selfunet.errors import SelfUNetError

REPO = Path(__file__).resolve().parents[2]
TOP = "Task04_Hippocampus"


def _info(name: str, kind: bytes = tarfile.REGTYPE, size: int = 0, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.size, info.linkname, info.mode = kind, size, link, 0o644
    return info


def build(members: list[tuple[tarfile.TarInfo, bytes | None]], mode: str = "w") -> bytes:
    """A tar (``w``) or tar.gz (``w:gz``) of a minimal dataset folder plus ``members``."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode=mode, format=tarfile.GNU_FORMAT) as tar:
        tar.addfile(_info(TOP, tarfile.DIRTYPE))
        body = b'{"modality": {"0": "MRI"}, "labels": {"0": "background"}, "training": []}'
        tar.addfile(_info(f"{TOP}/dataset.json", size=len(body)), io.BytesIO(body))
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return out.getvalue()


#: (id, members, words of the refusal)
HOSTILE = [
    ("dot-dot", [(_info(f"{TOP}/../../escaped.txt", size=4), b"evil")], ["climbs out with '..'"]),
    ("absolute", [(_info("/tmp/selfunet-absolute-escape.txt", size=4), b"evil")], ["has an absolute path"]),
    ("symlink-out", [(_info(f"{TOP}/imagesTr", tarfile.SYMTYPE, link="../../.."), None)], ["points outside"]),
    ("symlink-absolute", [(_info(f"{TOP}/etc", tarfile.SYMTYPE, link="/etc"), None)], ["points to an absolute path"]),
    ("hardlink-out", [(_info(f"{TOP}/passwd", tarfile.LNKTYPE, link="../etc/passwd"), None)],
     ["climbs out with '..'"]),
    ("hardlink-absolute", [(_info(f"{TOP}/passwd", tarfile.LNKTYPE, link="/etc/passwd"), None)],
     ["has an absolute path"]),
    ("device", [(_info(f"{TOP}/null", tarfile.CHRTYPE), None)], ["is a device file or FIFO"]),
    ("fifo", [(_info(f"{TOP}/pipe", tarfile.FIFOTYPE), None)], ["is a device file or FIFO"]),
    ("huge-declared-size", [(_info(f"{TOP}/imagesTr/huge.nii.gz", size=10 * 1000**4), None)],
     ["declare more than the limit", "64.0 GB", "--max-unpacked-gb"]),
]


@pytest.mark.parametrize(("members", "words"), [c[1:] for c in HOSTILE], ids=[c[0] for c in HOSTILE])
def test_hostile_archive_from_the_mirror_is_refused_whole(tmp_path: Path, members, words: list[str]) -> None:
    data = build(members)
    (tmp_path / "MD5SUMS").write_text(f"{hashlib.md5(data).hexdigest()}  {TOP}.tar\n")
    with serve({f"{TOP}.tar": data}) as mirror:
        result = CliRunner().invoke(app, ["fetch", str(REPO / "tasks" / f"{TOP}.yaml"), "--data-root",
                                          str(tmp_path / "data"), "--mirror", mirror.url, "--checksums",
                                          str(tmp_path / "MD5SUMS")], terminal_width=400)
    assert result.exit_code == 1, result.output
    assert "refused" in result.output
    for word in words:
        assert word in result.output, (word, result.output)
    assert "stays at" in result.output  # the verified archive is kept to be looked at
    left = sorted(p.name for p in (tmp_path / "data").iterdir())
    assert left == [f".{TOP}.fetch.lock", f"{TOP}.tar"]  # no dataset folder, no half-extracted temp folder
    assert not (tmp_path / "escaped.txt").exists() and not Path("/tmp/selfunet-absolute-escape.txt").exists()


def extract(tmp_path: Path, data: bytes, **limits: int) -> Path:
    archive = tmp_path / "archive.tar"
    archive.write_bytes(data)
    (tmp_path / "data").mkdir(exist_ok=True)
    extract_dataset(archive, tmp_path / "data" / TOP, **limits)
    return tmp_path / "data" / TOP


def refused(tmp_path: Path, data: bytes, **limits: int) -> str:
    with pytest.raises(SelfUNetError) as info:
        extract(tmp_path, data, **limits)
    assert "refused" in str(info.value) or "not a readable tar" in str(info.value)
    assert list((tmp_path / "data").iterdir()) == []  # nothing half-extracted, no temp folder
    return str(info.value)


def test_a_well_formed_archive_unpacks_with_inside_links(tmp_path: Path) -> None:
    data = build([(_info(f"{TOP}/imagesTr", tarfile.DIRTYPE), None),
                  (_info(f"{TOP}/imagesTr/a.nii.gz", size=3), b"abc"),
                  (_info(f"{TOP}/same.nii.gz", tarfile.LNKTYPE, link=f"{TOP}/imagesTr/a.nii.gz"), None),
                  (_info(f"{TOP}/latest", tarfile.SYMTYPE, link="imagesTr/a.nii.gz"), None)], mode="w:gz")
    target = extract(tmp_path, data)
    assert (target / "dataset.json").is_file() and (target / "same.nii.gz").read_bytes() == b"abc"
    assert (target / "latest").resolve() == (target / "imagesTr" / "a.nii.gz").resolve()
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == [TOP]


@pytest.mark.parametrize(("members", "words"), [
    # each link looks harmless alone; together `b` resolves to the parent of the root
    ([(_info(f"{TOP}/a", tarfile.SYMTYPE, link="."), None), (_info(f"{TOP}/b", tarfile.SYMTYPE, link="a/../.."), None)],
     "passes through the symbolic link"),
    # the link first, then a file written through it
    ([(_info(f"{TOP}/sub", tarfile.DIRTYPE), None), (_info(f"{TOP}/l", tarfile.SYMTYPE, link="sub"), None),
      (_info(f"{TOP}/l/x.nii.gz", size=1), b"x")], "would be written through the symbolic link"),
    ([(_info(f"{TOP}/x.nii.gz", size=1), b"x"), (_info(f"{TOP}/x.nii.gz", tarfile.SYMTYPE, link="."), None)],
     "appears twice"),
    ([(_info(f"{TOP}/h", tarfile.LNKTYPE, link=f"{TOP}/nothing"), None)], "not point to a regular file earlier"),
], ids=["symlink-chain", "write-through-symlink", "duplicate-name", "hardlink-to-nothing"])
def test_link_tricks_are_refused(tmp_path: Path, members, words: str) -> None:
    assert words in refused(tmp_path, build(members))


def test_the_declared_sizes_are_summed_against_the_limit(tmp_path: Path) -> None:
    zeros = bytes(3_000_000)  # compresses to a few kB: a small download that unpacks big
    data = build([(_info(f"{TOP}/{i}.nii.gz", size=len(zeros)), zeros) for i in range(4)], mode="w:gz")
    assert len(data) < 100_000
    message = refused(tmp_path, data, max_bytes=10_000_000)
    assert "declare more than the limit of 10.0 MB" in message and "3.nii.gz" in message
    assert (extract(tmp_path, data, max_bytes=20_000_000) / "3.nii.gz").stat().st_size == len(zeros)


def test_a_header_that_lies_is_stopped_by_the_stream_count(tmp_path: Path) -> None:
    """A pax header declaring a 64 MB record (no member size counts it): tarfile would read it all into
    memory; the bounded stream stops after the allowance, before it is read."""
    record = 64 * 1024 * 1024
    header = tarfile.TarInfo("././@PaxHeader")
    header.type, header.size = tarfile.XHDTYPE, record
    raw = io.BytesIO()
    with gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=1) as gz:
        gz.write(header.tobuf(format=tarfile.USTAR_FORMAT))
        for _ in range(record // (1 << 20)):
            gz.write(b"0" * (1 << 20))
    message = refused(tmp_path, raw.getvalue())
    assert "goes on past what its headers declare" in message
    assert record > 2 * STREAM_ALLOWANCE


def test_too_many_members_and_no_dataset_folder(tmp_path: Path) -> None:
    many = build([(_info(f"{TOP}/f{i}", size=0), b"") for i in range(20)])
    assert "more than 10 members" in refused(tmp_path, many, max_members=10)
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        tar.addfile(_info("a/readme.txt", size=2), io.BytesIO(b"hi"))
        tar.addfile(_info("b/readme.txt", size=2), io.BytesIO(b"hi"))
    assert "holds no dataset folder" in refused(tmp_path, out.getvalue())
    assert "not a readable tar archive" in refused(tmp_path, b"this is not a tar file" * 100)

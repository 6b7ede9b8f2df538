"""``harness image build``: the project image, built through the Docker Engine API.

Why a wheelhouse: containers on the machines this project runs on cannot reach PyPI (no
registry, failing certificate checks), so every Python package the image needs is fetched on
the host with ``pip download`` into ``build/wheelhouse`` (inside the build context; the
``.dockerignore`` allow-list lets only it, the sources and the metadata in) and installed in
the image with ``pip install --no-index``. The build itself runs with network ``none``.

Tags: ``selfunet:<version>-<git revision>`` (``-dirty`` when the image's sources have
uncommitted edits), plus ``selfunet:<version>`` and ``selfunet:latest`` for convenience. The
image *id* (not a tag) is what enters the harness's job hashes.
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from selfunet.errors import SelfUNetError

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
IMAGE_NAME = "selfunet"
#: the Dockerfile's default base: CUDA PyTorch runtime (needs a registry; torch comes with it).
DEFAULT_BASE = "pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime"
#: the base `.ci/base-image.sh` makes where no registry is reachable (Debian bookworm + Python 3.11).
LOCAL_BASE = "selfunet-base:bookworm"
WHEELHOUSE = Path("build/wheelhouse")
#: what goes into the image, besides the wheelhouse (the rest of the repository is never sent).
IMAGE_SOURCES = ("Dockerfile", "pyproject.toml", "README.md", "selfunet", "harness")


def docker_client():
    """``docker.from_env()`` (honours ``DOCKER_HOST``), checked with a ping so a missing engine is
    one clear error instead of a connection traceback deep inside a job."""
    import docker

    try:
        client = docker.from_env(timeout=600)
        client.ping()
    except Exception as exc:
        raise SelfUNetError(
            f"no Docker Engine reachable ({type(exc).__name__}: {exc}); start one (`.ci/docker-engine.sh start` "
            "prints the DOCKER_HOST to export) or set DOCKER_HOST."
        ) from None
    return client


def project_version(root: Path = REPO_ROOT) -> str:
    return tomllib.loads((root / "pyproject.toml").read_text())["project"]["version"]


def git_revision(root: Path = REPO_ROOT) -> str:
    """``g<short sha>``, ``-dirty`` if the image's sources differ from it; ``nogit`` outside git."""
    try:
        sha = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=root, capture_output=True, text=True,
                             timeout=10)
        if sha.returncode != 0:
            return "nogit"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", *IMAGE_SOURCES],
                               cwd=root, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return "nogit"
    return f"g{sha.stdout.strip()}" + ("-dirty" if dirty.stdout.strip() else "")


def image_tags(root: Path = REPO_ROOT, name: str = IMAGE_NAME) -> list[str]:
    version = project_version(root)
    return [f"{name}:{version}-{git_revision(root)}", f"{name}:{version}", f"{name}:latest"]


def runtime_requirements(root: Path = REPO_ROOT) -> list[str]:
    return list(tomllib.loads((root / "pyproject.toml").read_text())["project"]["dependencies"])


def _is_torch(requirement: str) -> bool:
    return re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0].strip().lower() == "torch"


def _pinned(requirement: str) -> str:
    """``name==<the version installed here>`` when it is installed and allowed, else the requirement:
    the image then runs the same numpy/scipy/SimpleITK as the host, so a job gives the same
    numbers in either sandbox."""
    from importlib.metadata import PackageNotFoundError, version

    name = re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0].strip()
    try:
        installed = version(name)
    except PackageNotFoundError:
        return requirement
    try:
        from packaging.requirements import Requirement

        if not Requirement(requirement).specifier.contains(installed, prereleases=True):
            return requirement
    except Exception:
        return requirement
    return f"{name}=={installed}"


def wheel_dirs(run: Callable[..., subprocess.CompletedProcess] = subprocess.run) -> tuple[Path, ...]:
    """Local wheel folders pip is configured with (``find-links``; PIP_FIND_LINKS included):
    where a machine keeps wheels such as the CPU torch, without naming any path here."""
    try:
        result = run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return ()
    folders = []
    for line in result.stdout.splitlines():
        key, _, value = line.partition("=")
        if key.strip().endswith("find-links"):
            for entry in value.strip().strip("'\"").split():
                path = Path(entry.removeprefix("file://"))
                if path.is_dir() and path not in folders:
                    folders.append(path)
    return tuple(folders)


def find_torch_wheel(python_tag: str | None = None) -> Path | None:
    """The installed torch's wheel if it lies in one of pip's local wheel folders, for this Python."""
    try:
        from importlib.metadata import version

        installed = version("torch").split("+")[0]
    except Exception:
        return None
    tag = python_tag or f"cp{sys.version_info.major}{sys.version_info.minor}"
    for folder in wheel_dirs():
        found = sorted(folder.glob(f"torch-{installed}*-{tag}-{tag}-*linux*x86_64.whl"))
        if found:
            return found[-1]
    return None


def prepare_wheelhouse(dest: Path, torch: str | Path | None, python_version: str | None = None,
                       root: Path = REPO_ROOT, run: Callable[..., subprocess.CompletedProcess] = subprocess.run,
                       ) -> Path:
    """``pip download`` the project's runtime dependencies (and the build backend) as wheels into ``dest``.

    ``torch`` is a wheel file, a requirement (``torch==2.13.0``) or None to leave torch out (the
    CUDA base image brings its own). Skipped when ``dest`` already holds the same requirement set
    (a stamp file), so a rerun costs nothing.
    """
    requirements = [_pinned(r) for r in runtime_requirements(root) if not _is_torch(r)]
    requirements += ["setuptools>=68", "wheel"]
    if torch is not None:
        requirements.append(str(torch))
    py = python_version or f"{sys.version_info.major}.{sys.version_info.minor}"
    stamp_text = json.dumps({"requirements": requirements, "python": py}, sort_keys=True)
    stamp = dest / ".requirements.json"
    if stamp.is_file() and stamp.read_text() == stamp_text:
        log.info("wheelhouse %s is up to date", dest)
        return dest
    dest.mkdir(parents=True, exist_ok=True)
    for stale in dest.glob("*.whl"):  # a leftover newer version would win over a pin of the image's deps
        stale.unlink()
    command = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "--quiet", "--dest", str(dest),
               "--only-binary=:all:", "--python-version", py, *requirements]
    log.info("pip download into %s (%d requirements)", dest, len(requirements))
    result = run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise SelfUNetError(f"`{' '.join(command)}` failed:\n{(result.stderr or result.stdout)[-3000:]}\n"
                            "Check that PyPI is reachable from this host (or fill the wheelhouse by hand).")
    stamp.write_text(stamp_text)
    return dest


def default_torch(base_image: str) -> str | Path | None:
    """torch for the wheelhouse: none on the CUDA PyTorch base, else the local CPU wheel or a pin
    to the installed version (pip then takes it from the configured index)."""
    if base_image.startswith("pytorch/pytorch:"):
        return None
    wheel = find_torch_wheel()
    if wheel is not None:
        return wheel
    try:
        from importlib.metadata import version

        return f"torch=={version('torch').split('+')[0]}"
    except Exception:
        return "torch>=2.1"


def build_image(base_image: str = DEFAULT_BASE, tags: list[str] | None = None, torch: str | Path | bool | None = True,
                wheelhouse: Path = WHEELHOUSE, root: Path = REPO_ROOT, client=None,
                echo: Callable[[str], None] | None = None) -> str:
    """Build the project image through the Engine API and return its id.

    ``torch=True`` picks :func:`default_torch` for the base; pass a wheel, a requirement or None.
    Build output goes to ``echo`` line by line (the CLI prints it; tests keep it quiet).
    """
    client = client or docker_client()
    tags = tags or image_tags(root)
    chosen = default_torch(base_image) if torch is True else torch
    prepare_wheelhouse(root / wheelhouse, chosen if chosen is not False else None, root=root)
    version, revision = project_version(root), git_revision(root)
    buildargs = {"BASE_IMAGE": base_image, "WHEELHOUSE": wheelhouse.as_posix(), "VERSION": version,
                 "REVISION": revision}
    log.info("building %s from %s", tags[0], base_image)
    image_id, lines = None, []
    stream = client.api.build(path=str(root), dockerfile="Dockerfile", tag=tags[0], buildargs=buildargs, rm=True,
                              forcerm=True, network_mode="none", pull=False, decode=True)
    for chunk in stream:
        if "error" in chunk:
            tail = "".join(lines[-30:])
            raise SelfUNetError(f"image build failed: {chunk['error'].strip()}\n{tail}".rstrip())
        text = chunk.get("stream")
        if text:
            lines.append(text)
            if echo is not None:
                for line in text.rstrip("\n").splitlines():
                    echo(line)
        aux = chunk.get("aux")
        if isinstance(aux, dict) and "ID" in aux:
            image_id = aux["ID"]
    image = client.images.get(image_id or tags[0])
    for tag in tags[1:]:
        repository, _, name = tag.rpartition(":")
        image.tag(repository, name)
    return image.id


def image_summary(image_ref: str, client=None) -> dict:
    """Id, tags and size (MB) of an image: what `harness image build` reports and CI logs."""
    client = client or docker_client()
    image = client.images.get(image_ref)
    return {"id": image.id, "tags": image.tags, "size_mb": round(image.attrs.get("Size", 0) / 1e6, 1),
            "revision": image.labels.get("org.opencontainers.image.revision")}


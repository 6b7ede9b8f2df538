"""Fixtures for the real-engine tests: an engine (``DOCKER_HOST``) and the project image.

Tests marked ``docker`` are skipped, with the reason, where no engine answers or the image is
missing; ``.ci/docker-tests.sh`` starts a private engine and builds the image first.
"""

from __future__ import annotations

import os

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "docker: needs a Docker Engine (DOCKER_HOST) and the project image")


@pytest.fixture(scope="session")
def engine():
    try:
        import docker

        client = docker.from_env(timeout=120)
        client.ping()
    except Exception as exc:
        pytest.skip(f"no Docker Engine reachable (DOCKER_HOST={os.environ.get('DOCKER_HOST', 'unset')}: "
                    f"{type(exc).__name__}); start one with `.ci/docker-engine.sh start` or run .ci/docker-tests.sh")
    return client


@pytest.fixture(scope="session")
def project_image(engine) -> str:
    """The image under test: $SELFUNET_TEST_IMAGE, default selfunet:latest (`harness image build`)."""
    import docker.errors

    ref = os.environ.get("SELFUNET_TEST_IMAGE", "selfunet:latest")
    try:
        engine.images.get(ref)
    except docker.errors.ImageNotFound:
        pytest.skip(f"image {ref} not built: `harness image build --base-image selfunet-base:bookworm` "
                    "(or .ci/docker-tests.sh)")
    return ref

"""The image build sends the repository's own sources: every path it names exists from where the
builder finds the repository (a move of the builder module must move its idea of the root too)."""

from __future__ import annotations

from harness.sandboxes.image import IMAGE_SOURCES, REPO_ROOT, project_version, runtime_requirements


def test_the_builder_finds_the_repository_and_every_source_it_sends() -> None:
    missing = [name for name in IMAGE_SOURCES if not (REPO_ROOT / name).exists()]
    assert not missing, f"{REPO_ROOT}: {missing}"
    assert project_version()  # read from pyproject.toml at that root
    assert any(r.startswith("SimpleITK") for r in runtime_requirements())

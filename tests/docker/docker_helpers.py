"""Helpers of the Docker tests (a module of its own: ``conftest`` is not a unique import name)."""

from __future__ import annotations


def job_containers(client, job_id: str) -> list:
    """Containers (running or not) a sandbox made for ``job_id``: must be none once it returned."""
    return client.containers.list(all=True, filters={"label": f"selfunet.job={job_id}"})

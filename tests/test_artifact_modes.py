"""Atomic writes give files the mode a plain ``open()`` would (0666 minus the umask), never mkstemp's 0600.

Why it matters: a dataset or artifact the harness writes as root must stay readable by a job
container's unprivileged user (harness/sandboxes/docker.py never runs jobs as uid 0).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np

from selfunet.artifacts import atomic_save_npy, atomic_save_npz, atomic_write_json


def test_atomic_writes_honour_the_umask(tmp_path: Path) -> None:
    atomic_write_json(tmp_path / "a.json", {"x": 1})
    atomic_save_npy(tmp_path / "b.npy", np.zeros(3))
    atomic_save_npz(tmp_path / "c.npz", x=np.zeros(3))
    umask = os.umask(0o022)
    os.umask(umask)
    expected = 0o666 & ~umask
    for name in ("a.json", "b.npy", "c.npz"):
        assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == expected, name

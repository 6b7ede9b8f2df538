"""Strict patterns for values the harness pastes into scripts, Dockerfiles, paths or commands.

A value that reaches a generated ``build.sh`` or ``Dockerfile`` (an image tag, a socket slug, a
configuration name read from a job's ``selection.json``) is checked against a pattern that leaves
no room for a quote, a ``$(...)``, a newline or a ``/``, *and* quoted where it is pasted
(``shlex.quote``, ``repr``, JSON): either alone would do today, both keep it so when a template
changes. A bad value is a :class:`~selfunet.errors.SelfUNetError` naming the option and the rule.
"""

from __future__ import annotations

import os
import re
from pathlib import PurePosixPath

from selfunet.errors import SelfUNetError

#: grand-challenge socket slugs: lower-case letters, digits, ``-`` and ``_``, starting with a letter or digit.
SLUG = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
#: configuration and member names (``3d_fullres``, ``3d_cascade_fullres``, ``3d_fullres@resenc-m``:
#: a member of another planner preset).
CONFIGURATION = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}(@[A-Za-z0-9][A-Za-z0-9_.-]{0,63})?")

# Docker image references (the grammar of the distribution/reference package, anchored):
# [registry[:port]/]path[/path...][:tag][@digest]
_DOMAIN_PART = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"{_DOMAIN_PART}(?:\.{_DOMAIN_PART})*(?::[0-9]+)?"
_PATH_PART = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_NAME = rf"(?:{_DOMAIN}/)?{_PATH_PART}(?:/{_PATH_PART})*"
_TAG = r"[\w][\w.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"
IMAGE_REFERENCE = re.compile(rf"{_NAME}(?::{_TAG})?(?:@{_DIGEST})?")
#: what ``docker build -t`` takes: a name and an optional tag, no digest.
IMAGE_TAG = re.compile(rf"{_NAME}(?::{_TAG})?")


#: what the harness itself writes or reads at the top of a results folder, beside the task folders
#: ``results/<task>/`` (harness.results.publish, harness.report.html, harness.results.compare): a task
#: of one of these names would overwrite it or be mistaken for it. Compared without regard to
#: case (a case-insensitive file system makes ``Index.html`` the same file). Names starting with
#: ``.`` (the lock files, temp files) are refused by the name pattern already.
RESULTS_RESERVED = ("index.html", "leaderboard.md", "leaderboard.csv", "baselines")


def reserved_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a task name in the results layout (None when it can)."""
    if name.casefold() in {r.casefold() for r in RESULTS_RESERVED}:
        return (f"'{name}' is a name the results folder uses itself ({', '.join(RESULTS_RESERVED)}); "
                "rename the task")
    return None


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _check(value: object, pattern: re.Pattern, what: str, rule: str, max_len: int = 255) -> str:
    if not isinstance(value, str) or len(value) > max_len or not pattern.fullmatch(value):
        raise SelfUNetError(f"{what} {_shown(value)}: not allowed; {rule}.")
    return value


def check_slug(value: object, what: str = "--input-slug") -> str:
    return _check(value, SLUG, what, "a socket slug is lower-case letters, digits, '-' and '_' "
                  "(starting with a letter or digit, at most 64 characters), as grand-challenge shows it")


def check_configuration(value: object, what: str = "configuration") -> str:
    return _check(value, CONFIGURATION, what, "a configuration name is letters, digits, '_', '.', '-' "
                  "(e.g. 3d_fullres, or 3d_fullres@resenc-m); selection.json or plan.json was edited or written "
                  "by something else: rerun `selfunet select`")


def check_image_tag(value: object, what: str = "--tag") -> str:
    return _check(value, IMAGE_TAG, what, "an image tag is NAME[:TAG] with a lower-case name "
                  "(e.g. selfunet-gc-demo:latest or registry:5000/team/algo:v1)")


def check_image_reference(value: object, what: str = "--image") -> str:
    return _check(value, IMAGE_REFERENCE, what, "an image reference is NAME[:TAG][@sha256:DIGEST] "
                  "(e.g. selfunet:latest)")


def image_tag_from(name: str, suffix: str = ":latest") -> str:
    """A valid tag made from any text (a work directory's name): lower case, odd runs become ``-``."""
    base = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "task"
    return f"{base}{suffix}"


def check_relative_inside(value: object, what: str) -> str:
    """A relative POSIX path that stays inside its folder (no absolute path, no ``..`` climbing out)."""
    if not isinstance(value, str) or not value or "\0" in value or "\\" in value:
        raise SelfUNetError(f"{what} {_shown(value)}: not a relative path.")
    normal = os.path.normpath(value)
    if PurePosixPath(value).is_absolute() or normal == ".." or normal.startswith("../"):
        raise SelfUNetError(f"{what} {_shown(value)}: points outside its folder; use a relative path like "
                            "images/<slug>.")
    return value

"""The docs tell the truth about the command lines.

Every ``selfunet ...`` / ``harness ...`` command named in README.md and docs/**/*.md must exist in the
Typer apps, and every ``--option`` written after it (on the same command line) must be an option
of that command. An option quoted on its own in the text (```--amp```) must exist in some
command of either CLI. The docs are parsed as text; the CLIs are asked through click.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import typer.main

from harness.cli import app as harness_app
from selfunet.cli import app as selfunet_app

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted([ROOT / "README.md", *(ROOT / "docs").rglob("*.md")])
PROGRAMS = {"selfunet": typer.main.get_command(selfunet_app), "harness": typer.main.get_command(harness_app)}

#: options that docs quote on their own but that belong to other programs (docker, pip, pytest, dockerd)
FOREIGN_OPTIONS = {"--network", "--gpus", "--read-only", "--cap-drop", "--security-opt", "--pids-limit", "--user",
                   "--tmpfs", "--memory", "--shm-size", "--platform", "--no-index", "--find-links", "--index-url",
                   "--iptables", "--bridge", "--storage-driver", "--headless", "--no-sandbox", "--help", "--version",
                   "--system-site-packages", "--no-deps",
                   # sbatch's, in the Slurm guide's #SBATCH lines and state table
                   "--comment", "--cpus-per-task", "--mem", "--time", "--gres", "--partition", "--account", "--qos",
                   "--constraint", "--dependency", "--wrap", "--export", "--uid", "--job-name", "--kill-on-invalid-dep",
                   "--open-mode", "--chdir", "--requeue", "--exclusive", "--mail-type", "--parsable"}

_COMMAND = re.compile(r"(?:^|[\s`(&;|$])((?:selfunet|harness)(?:\s+[^\s`|;&#)]+)*)")
_CODE_SPAN = re.compile(r"`([^`\n]+)`")
_LONE_OPTION = re.compile(r"^(--[a-z][a-z0-9-]*)(?:[ =][^`]*)?$")


def _is_group(command) -> bool:
    """Typer ships its own copy of click, so groups are recognised by what they have."""
    return hasattr(command, "commands")


def _all_options(command) -> set[str]:
    names = {opt for p in command.params for opt in (*p.opts, *p.secondary_opts) if opt.startswith("-")}
    if _is_group(command):
        for sub in command.commands.values():
            names |= _all_options(sub)
    return names


def _bench_options() -> set[str]:
    """Options of the benchmark scripts in bench/ (argparse), which the benchmark docs quote."""
    pattern = re.compile(r"add_argument\(\s*\"(--[a-z][a-z0-9-]*)\"")
    return {m.group(1) for script in (ROOT / "bench").rglob("*.py") for m in pattern.finditer(script.read_text())}


ALL_OPTIONS = _all_options(PROGRAMS["selfunet"]) | _all_options(PROGRAMS["harness"]) | _bench_options()


def resolve(words: list[str]) -> tuple[object, list[str], list[str]]:
    """(deepest command named by ``words``, the path of names to it, the remaining words)."""
    command = PROGRAMS[words[0]]
    path = [words[0]]
    rest = words[1:]
    while _is_group(command) and rest and not rest[0].startswith("-"):
        if rest[0] not in command.commands:
            break
        command = command.commands[rest[0]]
        path.append(rest[0])
        rest = rest[1:]
    return command, path, rest


def command_lines(text: str) -> list[str]:
    """Command invocations: lines of fenced code blocks and inline code spans that call a CLI."""
    found: list[str] = []
    in_block = False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            in_block = not in_block
            continue
        sources = [line] if in_block else _CODE_SPAN.findall(line)
        for source in sources:
            source = source.split(" #")[0]
            found += [m.group(1).strip() for m in _COMMAND.finditer(source)]
    return found


def lone_options(text: str) -> list[str]:
    return [m.group(1) for span in _CODE_SPAN.findall(text) if (m := _LONE_OPTION.match(span.strip()))]


def _doc_id(path: Path) -> str:
    return str(path.relative_to(ROOT))


def test_the_parser_finds_commands_and_options() -> None:
    text = "Run `selfunet train W -c 3d_fullres --epochs 2` then\n```bash\nharness export gc demo --out x  # c\n```\n"
    assert command_lines(text) == ["selfunet train W -c 3d_fullres --epochs 2", "harness export gc demo --out x"]
    _, path, rest = resolve(["harness", "export", "gc", "demo", "--out", "x"])
    assert path == ["harness", "export", "gc"] and rest == ["demo", "--out", "x"]
    assert lone_options("use `--amp bf16` or `--nope`, not `x --y`") == ["--amp", "--nope"]


def test_a_wrong_option_is_caught() -> None:
    command, _, _ = resolve(["selfunet", "train"])
    assert "--epochs" in _all_options(command)
    assert "--no-such-option" not in _all_options(command)


@pytest.mark.parametrize("doc", DOCS, ids=_doc_id)
def test_every_documented_command_and_option_exists(doc: Path) -> None:
    problems = []
    for line in command_lines(doc.read_text(encoding="utf-8")):
        words = line.split()
        if len(words) < 2 or words[1].startswith(("<", "...", "…")):
            continue  # a program named in prose ("the harness CLI"), not a call
        command, path, rest = resolve(words)
        if _is_group(command) and rest and not rest[0].startswith("-"):
            problems.append(f"`{line}`: '{rest[0]}' is not a command of `{' '.join(path)}`")
            continue
        known = _all_options(command) | {"--help"}
        for word in rest:
            option = word.split("=")[0]
            if re.fullmatch(r"--[a-z][a-z0-9-]*", option) and option not in known:
                problems.append(f"`{line}`: `{' '.join(path)}` has no option {option}")
    for option in lone_options(doc.read_text(encoding="utf-8")):
        if option not in ALL_OPTIONS and option not in FOREIGN_OPTIONS:
            problems.append(f"{option} is quoted but no selfunet/harness command has it")
    assert not problems, f"{_doc_id(doc)}:\n" + "\n".join(problems)

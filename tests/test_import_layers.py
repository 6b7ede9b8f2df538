"""The house rules of the code layout (docs/explanation/design.md#layering), checked on the source itself.

Every ``import`` statement in ``selfunet/`` and ``harness/`` (at module level or inside a
function: a lazy import is still a dependency) becomes an edge between modules. The test fails on
any import circle, and on any lower pipeline stage importing a higher one.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("selfunet", "harness")

#: pipeline order inside ``selfunet``; a stage may import only stages before it (and itself).
STAGES = ("data", "planning", "preprocessing", "training", "inference", "evaluation")
#: harness packages from the bottom layer up; a package may import only packages before it (and
#: itself). ``harness.cli`` sits on top of all of them.
HARNESS_LAYERS = ("sandboxes", "executors", "tasks", "fetch", "results", "report", "run", "challenge")
#: shared by every stage: they may import nothing of the stages.
SHARED = {"selfunet.artifacts", "selfunet.errors", "selfunet.workdir", "selfunet.runtime", "selfunet.locks",
          "selfunet.cpu_precision"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _resolve(name: str, modules: set[str]) -> str | None:
    """The longest known module that ``name`` (a module or ``module.attribute``) refers to."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def import_graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    modules = set(files)
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in files.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
            for target in targets:
                resolved = _resolve(target, modules)
                # a package's __init__ is not an edge of its own submodules (``from selfunet import x``)
                if resolved and resolved != module and not module.startswith(resolved + "."):
                    graph[module].add(resolved)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as a list of modules (first == last), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt):], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def _stage(module: str) -> int | None:
    parts = module.split(".")
    if len(parts) >= 2 and parts[0] == "selfunet" and parts[1] in STAGES:
        return STAGES.index(parts[1])
    return None


def test_the_cycle_finder_finds_a_planted_circle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_graph_sees_lazy_imports() -> None:
    graph = import_graph()
    # pipeline.run_training imports the trainer inside the function body
    assert "selfunet.training.train" in graph["selfunet.pipeline"]
    assert "selfunet.inference.predict" in graph["selfunet.pipeline"]


@pytest.mark.parametrize("package", PACKAGES)
def test_no_import_circle(package: str) -> None:
    graph = {m: {t for t in ts if t.split(".")[0] == package} for m, ts in import_graph().items()
             if m.split(".")[0] == package}
    cycle = find_cycle(graph)
    assert cycle is None, "import circle: " + " -> ".join(cycle or [])


def test_selfunet_never_imports_harness() -> None:
    offenders = sorted(f"{m} -> {t}" for m, ts in import_graph().items() if m.startswith("selfunet")
                       for t in ts if t.startswith("harness"))
    assert not offenders, offenders


def _above_the_stages(module: str) -> bool:
    """The pipeline, the command line and the nnU-Net interop package use every stage."""
    return module in {"selfunet.pipeline", "selfunet.cli"} or module.startswith("selfunet.interop")


def test_no_lower_stage_imports_a_higher_one() -> None:
    offenders = []
    for module, targets in import_graph().items():
        if not module.startswith("selfunet"):
            continue
        own = _stage(module)
        for target in targets:
            theirs = _stage(target)
            if module in SHARED and (theirs is not None or _above_the_stages(target)):
                offenders.append(f"{module} (shared) -> {target}")
            elif own is not None and theirs is not None and theirs > own:
                offenders.append(f"{module} ({STAGES[own]}) -> {target} ({STAGES[theirs]})")
            elif own is not None and _above_the_stages(target):
                offenders.append(f"{module} -> {target}")
    assert not offenders, "\n".join(sorted(offenders))


def _harness_layer(module: str) -> int | None:
    parts = module.split(".")
    if len(parts) >= 2 and parts[0] == "harness" and parts[1] in HARNESS_LAYERS:
        return HARNESS_LAYERS.index(parts[1])
    return None


def test_harness_packages_import_only_lower_layers() -> None:
    offenders = []
    for module, targets in import_graph().items():
        own = _harness_layer(module)
        if own is None:
            continue
        for target in targets:
            theirs = _harness_layer(target)
            if target == "harness.cli" or (theirs is not None and theirs > own):
                offenders.append(f"{module} -> {target}")
    assert not offenders, "\n".join(sorted(offenders))


def test_harness_has_no_loose_modules() -> None:
    """Every harness module lives in the package of its concept; only the CLI sits at the top."""
    loose = sorted(p.name for p in (ROOT / "harness").glob("*.py"))
    assert loose == ["__init__.py", "cli.py"], loose
    assert sorted(p.name for p in (ROOT / "harness").iterdir() if p.is_dir() and p.name != "__pycache__"
                  and (p / "__init__.py").exists()) == sorted(HARNESS_LAYERS)


def test_every_stage_package_says_what_it_takes_and_gives() -> None:
    for stage in STAGES:
        init = ROOT / "selfunet" / stage / "__init__.py"
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc and " out" in doc, f"{init}: the docstring must say what the stage takes in and gives out"


@pytest.mark.parametrize("package", HARNESS_LAYERS)
def test_every_harness_package_says_what_it_takes_and_gives(package: str) -> None:
    init = ROOT / "harness" / package / "__init__.py"
    doc = ast.get_docstring(ast.parse(init.read_text())) or ""
    assert len(doc) > 40, f"{init}: the docstring must say what the package is for, takes and gives"


#: the size guideline (STYLE.md, ~500 lines): a module past this has more than one concept in it.
MAX_MODULE_LINES = 550


def test_no_module_outgrows_the_size_guideline() -> None:
    too_long = {str(p.relative_to(ROOT)): n for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")
                if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES}
    assert not too_long, f"split these by concept (over {MAX_MODULE_LINES} lines): {too_long}"

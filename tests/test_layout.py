"""The house: one package per application, shared parts in curate.core, and imports that point one way.

Read statically (every `import`, including those inside functions), so a cycle hidden by a lazy import fails too.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
APPLICATIONS = ("select", "contamination", "reweight")  # the ones that exist are checked


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """The modules `path` imports, resolved to curate/stride_engine module names where they are ours."""
    package = _module(path) if path.name == "__init__.py" else _module(path).rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module
            found.add(name)
            found |= {f"{name}.{alias.name}" for alias in node.names}
    return found


def _graph() -> dict[str, set[str]]:
    files = [p for top in ("curate", "stride_engine") for p in (ROOT / top).rglob("*.py")]
    modules = {_module(p): p for p in files}
    graph = {}
    for name, path in modules.items():
        targets = set()
        for imported in _imports(path):
            # `from .x import y` names x (a module) or y (a module or an attribute): keep what is a module of ours
            while imported and imported not in modules:
                imported = imported.rpartition(".")[0]
            if imported and imported != name:
                targets.add(imported)
        graph[name] = targets
    return graph


def test_the_engine_never_imports_the_applications():
    offenders = {m: sorted(t for t in targets if t.startswith("curate")) for m, targets in _graph().items()
                 if m.startswith("stride_engine")}
    assert not {m: t for m, t in offenders.items() if t}


def test_applications_use_the_shared_core_never_each_other():
    graph = _graph()
    present = [app for app in APPLICATIONS if (ROOT / "curate" / app).is_dir()]
    assert "select" in present
    for app in present:
        others = [f"curate.{o}" for o in present if o != app]
        for module, targets in graph.items():
            if module.startswith(f"curate.{app}"):
                assert not [t for t in targets if t.startswith(tuple(others))], module
    for module, targets in graph.items():  # the shared parts import no application
        if module.startswith(("curate.core", "curate.proxy", "curate.studies")):
            assert not [t for t in targets if t.startswith(tuple(f"curate.{a}" for a in present))], module


def test_no_import_cycle_between_packages_or_modules():
    graph = _graph()
    seen, stack, cycles = set(), [], []

    def visit(node: str) -> None:
        if node in stack:
            cycles.append(stack[stack.index(node):] + [node])
            return
        if node in seen:
            return
        seen.add(node)
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if target.rpartition(".")[0] == node:  # a package's __init__ re-exporting its own modules is not a cycle
                continue
            visit(target)
        stack.pop()

    for node in sorted(graph):
        visit(node)
    assert not cycles, cycles[:3]


def test_the_study_runner_names_applications_instead_of_importing_them():
    from curate.studies.applications import APPLICATIONS as registry, application_for

    assert "selection" in registry
    study = application_for("selection")
    assert study.task == "selection" and "selection" in study.sections

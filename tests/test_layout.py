"""The layout is the architecture (docs/ARCHITECTURE.md): shared/core/ is the pure decision
core, shared/clients/ the I/O, shared/handlers/ one module per entry point and operator verb,
the boundary and setup at the top of shared/. These checks read every import of the source
(function-level and TYPE_CHECKING ones too), so an import against the layers fails here.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT / "shared"
# The boundary and setup, kept at the top of shared/ (and the documented checkpoint facade).
TOP_LEVEL = {"__init__", "checkpoint", "clock", "config", "events", "logs", "policy", "runtime"}
PROJECT = ("shared", "infra", "tests", "bench", "functions")


def _module(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts)


def _is_module(name: str) -> bool:
    path = ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def project_imports(path: Path) -> set[str]:
    """Every project module `path` imports, wherever the import stands in the file."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: relative import"
            base = node.module or ""
            for alias in node.names:  # `from shared import clock` imports the module shared.clock
                found.add(f"{base}.{alias.name}" if _is_module(f"{base}.{alias.name}") else base)
    return {name for name in found if name.split(".")[0] in PROJECT}


def sources(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.py"))


def test_every_shared_module_has_its_place():
    for path in sources(SHARED):
        parts = path.relative_to(SHARED).parts
        assert (len(parts) == 1 and path.stem in TOP_LEVEL) or (
            len(parts) == 2 and parts[0] in ("core", "clients", "handlers")
        ), f"{path.relative_to(ROOT)}: not in core/, clients/ or handlers/, nor a boundary module"


@pytest.mark.parametrize("path", sources(SHARED), ids=lambda p: str(p.relative_to(ROOT)))
def test_shared_imports_follow_the_layers(path):
    module, imports = _module(path), project_imports(path)
    assert all(name.startswith("shared") for name in imports), (
        f"{module} imports {sorted(n for n in imports if not n.startswith('shared'))}: shared/ never "
        "imports infra/, tests/, bench/ or functions/"
    )
    layer = module.split(".")[1] if module.count(".") == 2 else "top"
    if layer == "core":  # pure: only the core itself and the policy it is given
        wrong = {n for n in imports if not (n.startswith("shared.core.") or n == "shared.policy")}
    elif layer == "clients":
        wrong = {
            n
            for n in imports
            if n.startswith("shared.handlers") or n in ("shared.runtime", "shared.checkpoint")
        }
    elif layer == "handlers":
        wrong = {n for n in imports if n == "shared.checkpoint"}  # the facade is for callers outside
    elif module == "shared.runtime":  # the setup builds the clients (and the notification sinks)
        wrong = set()
    elif module == "shared.checkpoint":
        wrong = imports - {"shared.handlers.checkpoint"}
    else:  # the boundary: decoding, configuration, policy, logs, clock
        wrong = {n for n in imports if n.startswith(("shared.clients", "shared.handlers"))}
    assert not wrong, f"{module} ({layer}) imports {sorted(wrong)}"


def test_functions_import_only_shared():
    for path in sources(ROOT / "functions"):
        imports = project_imports(path)
        assert all(name.startswith("shared") for name in imports), f"{path}: {sorted(imports)}"


def test_the_documented_checkpoint_call_is_the_handler():
    """README: `from shared.checkpoint import handle_checkpoint`, `shared.checkpoint.Clients`."""
    import shared.checkpoint as facade
    from shared.handlers import checkpoint as handler

    assert facade.handle_checkpoint is handler.handle_checkpoint
    assert facade.Clients is handler.Clients
    assert sorted(facade.__all__) == sorted(handler.__all__)
    assert all(getattr(facade, name) is getattr(handler, name) for name in handler.__all__)


def _graph(folders: tuple[str, ...]) -> dict[str, set[str]]:
    modules = {_module(path): path for folder in folders for path in sources(ROOT / folder)}
    return {
        name: {n for n in project_imports(path) if n in modules and n != name}
        for name, path in modules.items()
    }


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_two_modules_import_each_other():
    """A reader can read any module after what it imports: no circle of imports, counting the
    imports inside functions too (a lazy import is still a dependency)."""
    assert _cycles(_graph(("shared", "functions", "infra", "bench"))) == []


def test_the_cycle_finder_finds_a_circle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize(
    "path", sources(SHARED) + sources(ROOT / "infra"), ids=lambda p: str(p.relative_to(ROOT))
)
def test_no_private_name_is_imported_from_another_module(path):
    """A name with a leading underscore belongs to its module; what other modules need is public."""
    private = [
        f"{node.module}.{alias.name}"
        for node in ast.walk(ast.parse(path.read_text(), str(path)))
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in PROJECT
        for alias in node.names
        if alias.name.startswith("_") and alias.name != "__all__"
    ]
    assert not private, f"{_module(path)} imports private names {private}"

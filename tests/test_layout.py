"""The architecture stays visible: training and model code never import the measuring code, and the
package's import graph has no cycles."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "molgen"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in PACKAGE.rglob("*.py")}


def imports_of(path: Path) -> set[str]:
    """molgen modules imported at module level (imports inside functions are deferred on purpose);
    ``from molgen.cli import common`` imports the module ``molgen.cli.common``."""
    found = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("molgen"):
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                found.add(submodule if submodule in MODULES else node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("molgen"))
    return found


GRAPH = {name: imports_of(path) for name, path in MODULES.items()}


def test_training_and_model_code_never_import_evaluation():
    for name, imported in GRAPH.items():
        if name.startswith(("molgen.training", "molgen.model", "molgen.sampler", "molgen.likelihood")):
            assert not {m for m in imported if m.startswith("molgen.evaluation")}, name


def test_the_import_graph_has_no_cycles():
    def depends(module: str) -> set[str]:
        return {m for m in GRAPH.get(module, set()) if m in GRAPH and m != module}

    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in depends(module):
            assert state.get(target) != 1, " -> ".join(path + [module, target])
            if target not in state:
                visit(target, path + [module])
        state[module] = 2

    for module in GRAPH:
        if module not in state:
            visit(module, [])

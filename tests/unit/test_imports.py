"""labctl's imports go one way: no cycle between its modules, and no module takes another's
underscore names (a helper two modules need belongs to the module that owns its concern)."""

import ast
import graphlib
from pathlib import Path

LABCTL = Path(__file__).resolve().parents[2] / "labctl"


def runtime_imports(tree: ast.AST):
    """Every `from ... import` node, wherever it sits, except under `if TYPE_CHECKING:`
    (annotations only: never executed, so never part of a cycle)."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
            yield from (n for child in node.orelse for n in runtime_imports(child))
            continue
        if isinstance(node, ast.ImportFrom):
            yield node
        yield from runtime_imports(node)


def module_name(path: Path) -> str:
    """labctl/pair/steps.py -> pair.steps; labctl/cli.py -> cli; a package's __init__ -> its name."""
    parts = path.relative_to(LABCTL).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts) or "__init__"


def imports() -> dict[str, list[tuple[str, str]]]:
    """module -> (imported labctl module, name) for every `from labctl... import name`,
    wherever it sits (function-level imports included)."""
    modules = {module_name(p) for p in LABCTL.rglob("*.py")}
    found: dict[str, list[tuple[str, str]]] = {}
    for path in LABCTL.rglob("*.py"):
        edges = found.setdefault(module_name(path), [])
        for node in runtime_imports(ast.parse(path.read_text())):
            if not (node.module or "").startswith("labctl"):
                continue
            target = node.module.removeprefix("labctl").removeprefix(".")
            for alias in node.names:
                sub = f"{target}.{alias.name}".lstrip(".")
                if sub in modules:  # from labctl.pair import steps
                    edges.append((sub, ""))
                else:
                    edges.append((target, alias.name))
    return found


def test_the_import_graph_has_no_cycle():
    graph = {m: {target for target, _ in edges if target != m} for m, edges in imports().items()}
    graphlib.TopologicalSorter(graph).prepare()  # raises CycleError naming the cycle


def test_no_module_imports_another_modules_private_names():
    private = [f"{m} imports {target}.{name}" for m, edges in imports().items()
               for target, name in edges if name.startswith("_") and target != m]
    assert private == []

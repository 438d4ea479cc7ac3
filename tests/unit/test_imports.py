"""labctl's imports go one way: no cycle between its modules, packages import only the
packages below them (PACKAGE_ORDER), and no module takes another's underscore names (a
helper two modules need belongs to the module that owns its concern)."""

import ast
import graphlib
import shutil
from pathlib import Path

import pytest

LABCTL = Path(__file__).resolve().parents[2] / "labctl"


def import_nodes(tree: ast.AST):
    """Every `from ... import` node, wherever it sits: in functions, and under
    `if TYPE_CHECKING:` too (a type-only import back up the order is the same coupling,
    hidden: a helper that needs its caller's type gets a Protocol, as pair/context.py)."""
    return (node for node in ast.walk(tree) if isinstance(node, ast.ImportFrom))


def module_name(path: Path, root: Path = LABCTL) -> str:
    """labctl/pair/steps.py -> pair.steps; labctl/cli.py -> cli; a package's __init__ -> its name."""
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts) or "__init__"


def imports(root: Path = LABCTL) -> dict[str, list[tuple[str, str]]]:
    """module -> (imported labctl module, name) for every `from labctl... import name`,
    wherever it sits (function-level imports included)."""
    modules = {module_name(p, root) for p in root.rglob("*.py")}
    found: dict[str, list[tuple[str, str]]] = {}
    for path in root.rglob("*.py"):
        edges = found.setdefault(module_name(path, root), [])
        for node in import_nodes(ast.parse(path.read_text())):
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


# Lower packages may not import higher ones; packages of one rank do not import each other.
# base: the top-level modules (errors, result, progress, ...) except the entry points.
PACKAGE_ORDER = [{"base"}, {"config"}, {"kernel"}, {"guest"}, {"evidence"}, {"pair"}, {"report"},
                 {"campaigns", "console"}, {"entry"}]
ENTRY_MODULES = {"cli", "pytest_plugin", "__main__"}
RANK = {package: rank for rank, packages in enumerate(PACKAGE_ORDER) for package in packages}


def package_of(module: str) -> str:
    """pair.steps -> pair; cli -> entry; errors -> base."""
    if "." in module or module in RANK:
        return module.split(".")[0]
    return "entry" if module in ENTRY_MODULES else "base"


def order_violations(graph: dict[str, set[str]]) -> list[str]:
    """Every import that goes up (or sideways between two packages of one rank), and every
    package PACKAGE_ORDER does not place."""
    problems = []
    for module, targets in sorted(graph.items()):
        for target in sorted(targets):
            here, there = package_of(module), package_of(target)
            unknown = [p for p in (here, there) if p not in RANK]
            if unknown:
                problems.append(f"{module} -> {target}: package {unknown[0]!r} is not in PACKAGE_ORDER")
            elif here != there and RANK[there] >= RANK[here]:
                problems.append(f"{module} ({here}) imports {target} ({there}): "
                                f"{there} is not below {here}")
    return problems


def import_graph(root: Path = LABCTL) -> dict[str, set[str]]:
    return {m: {target for target, _ in edges if target and target != m} for m, edges in imports(root).items()}


def test_packages_import_only_the_packages_below_them():
    assert order_violations(import_graph()) == []


@pytest.mark.parametrize(("module", "target", "why"), [
    ("guest.memory", "pair.steps", "pair is not below guest"),
    ("evidence.verdict", "cli", "entry is not below evidence"),
    ("console.session", "campaigns.matrix", "campaigns is not below console"),
    ("errors", "config.schema", "config is not below base"),
    ("pair.runner", "bisect.search", "package 'bisect' is not in PACKAGE_ORDER"),
])
def test_the_order_check_names_an_import_that_goes_up(module, target, why):
    assert [p for p in order_violations({module: {target}}) if why in p]


def copy_with(tmp_path: Path, module: str, added: str) -> Path:
    """A copy of labctl/ with `added` appended to one of its modules."""
    copy = tmp_path / "labctl"
    shutil.copytree(LABCTL, copy, ignore=shutil.ignore_patterns("__pycache__", "templates"))
    path = copy / module
    path.write_text(path.read_text() + added)
    return copy


def test_the_order_check_catches_a_bad_import_in_a_copy_of_the_package(tmp_path):
    copy = copy_with(tmp_path, "guest/memory.py",
                     "\n\ndef _late():\n    from labctl.pair.runner import run_pair\n    return run_pair\n")
    assert order_violations(import_graph(copy)) == [
        "guest.memory (guest) imports pair.runner (pair): pair is not below guest"]


def test_a_type_only_back_import_is_a_cycle(tmp_path):
    """The back-imports pair/distro.py and pair/reboot.py once had (runner imports them)."""
    copy = copy_with(tmp_path, "pair/distro.py", "\n\nfrom typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n"
                                                "    from labctl.pair.runner import PairRun\n")
    with pytest.raises(graphlib.CycleError) as cycle:
        graphlib.TopologicalSorter(import_graph(copy)).prepare()
    assert {"pair.distro", "pair.runner"} <= set(cycle.value.args[1])

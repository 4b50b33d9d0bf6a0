"""The package stays easy to walk: no import cycle between its modules, no private name taken from another
package, and `hf_dwakd.config` loads without the heavy or optional parts."""

import ast
import subprocess
import sys
from pathlib import Path

import hf_dwakd

PACKAGE_ROOT = Path(hf_dwakd.__file__).parent


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE_ROOT.rglob("*.py"))}


def imports_of(name: str, path: Path, modules) -> list[tuple[str, list[str]]]:
    """`(imported module, names taken from it)` for every import statement of the file, at any depth (an
    import inside a function is an import too), limited to the package's own modules."""
    is_package = path.name == "__init__.py"
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".")
                anchor = anchor[: len(anchor) - node.level + (1 if is_package else 0)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            names = [alias.name for alias in node.names]
            # `from package import module` imports that module.
            found += [(f"{base}.{n}", []) for n in names if f"{base}.{n}" in modules]
            other_names = [n for n in names if f"{base}.{n}" not in modules]
            if other_names:
                found.append((base, other_names))
    return [(target, names) for target, names in found if target in modules]


def import_graph():
    modules = package_modules()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def find_cycle(graph) -> list[str] | None:
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for target, _ in graph[node]:
            if state.get(target) == "open":
                return stack[stack.index(target) :] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in graph:
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_import_graph_sees_the_imports_and_finds_a_cycle():
    graph = import_graph()
    assert "hf_dwakd.model_side" in {target for target, _ in graph["hf_dwakd.trainer"]}
    assert "hf_dwakd.registry" in {target for target, _ in graph["hf_dwakd.baselines.dskd"]}
    assert "hf_dwakd.teacher_cache.build" in {target for target, _ in graph["hf_dwakd.teacher_cache.command"]}
    graph["hf_dwakd.registry"] = [("hf_dwakd.baselines", [])]  # what registry.py did before
    assert find_cycle(graph) is not None


def test_no_import_cycle_inside_the_package():
    cycle = find_cycle(import_graph())
    assert cycle is None, " -> ".join(cycle)


def package_of(module: str) -> str:
    """The package a module belongs to (a package belongs to itself)."""
    return module if (PACKAGE_ROOT.parent / module.replace(".", "/")).is_dir() else module.rsplit(".", 1)[0]


def test_no_module_takes_a_private_name_from_another_package():
    offences = []
    for name, imports in import_graph().items():
        for target, names in imports:
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            if private and package_of(target) != package_of(name):
                offences.append(f"{name} takes {private} from {target}")
    assert not offences, offences


def test_importing_the_config_loads_neither_numba_nor_the_teacher_cache_nor_the_inspection():
    code = (
        "import sys, hf_dwakd.config\n"
        "heavy = [m for m in sys.modules if m.split('.')[0] == 'numba' or m.startswith(('hf_dwakd.teacher_cache', "
        "'hf_dwakd.inspection'))]\n"
        "print(repr(heavy))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]", result.stdout

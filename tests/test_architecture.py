"""The shape of the code: layers that import downward only, no import cycles, every hook called and tested.

Imports are read from the source (module level and inside functions alike; only `if TYPE_CHECKING:`
blocks are skipped), so a dependency hidden in a function still counts.
"""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

import pytest

from runtime.hookspecs import iter_hookspecs

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("runtime", "adapters", "plugins")

# Lower layers never import higher ones. Parts of one layer import only within their own package,
# except the foundation, whose modules are small and may use each other.
LAYERS = [
    ("foundation", ["runtime.errors", "runtime.refs", "runtime.config", "runtime.hookspecs", "runtime.store",
                    "runtime.packages", "runtime.plots", "runtime.plugins", "runtime"]),
    ("characters and models", ["runtime.characters", "runtime.models"]),
    ("generation and the registry", ["runtime.generation", "adapters"]),
    ("chat", ["runtime.chat"]),
    ("audit", ["runtime.audit"]),
    ("training", ["runtime.training"]),
    ("jobs", ["runtime.jobs"]),
    ("command line", ["runtime.cli"]),
    ("entry point", ["runtime.__main__"]),
    ("plugins", ["plugins"]),
]
MAX_LINES = 600


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def source_modules() -> dict[str, Path]:
    return {module_name(p): p for package in PACKAGES for p in (ROOT / package).rglob("*.py")}


def _type_checking_only(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def imported_modules(path: Path, known: dict[str, Path]) -> set[str]:
    """Project modules a file imports anywhere (a `from package import submodule` counts as the submodule)."""
    tree = ast.parse(path.read_text())
    for block in [n for n in ast.walk(tree) if _type_checking_only(n)]:
        block.body = []  # imports for type annotations only do not run
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.split(".")[0] in PACKAGES:
                for alias in node.names:
                    sub = f"{node.module}.{alias.name}"
                    found.add(sub if sub in known else node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] in PACKAGES}
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    known = source_modules()
    return {name: imported_modules(path, known) - {name} for name, path in known.items()}


def layer_of(module: str) -> tuple[int, str]:
    """(layer index, the prefix that placed it there): the longest matching prefix wins."""
    best = None
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if module == prefix or module.startswith(prefix + "."):
                if best is None or len(prefix) > len(best[1]):
                    best = (index, prefix)
    assert best is not None, f"{module} is in no layer: add it to LAYERS"
    return best


def test_every_module_has_a_layer(graph):
    for module in graph:
        layer_of(module)


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """Every import against the layers, as a sentence."""
    found = []
    for module, targets in graph.items():
        layer, prefix = layer_of(module)
        for target in targets:
            target_layer, target_prefix = layer_of(target)
            same_part = target_prefix == prefix or LAYERS[layer][0] == "foundation"
            if target_layer > layer or (target_layer == layer and not same_part):
                found.append(f"{module} ({LAYERS[layer][0]}) imports {target} ({LAYERS[target_layer][0]})")
    return sorted(found)


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in graph:
                continue
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return cycles


def test_imports_point_downward_only(graph):
    upward = upward_imports(graph)
    assert not upward, "imports against the layers:\n" + "\n".join(upward)


def test_plugins_import_only_themselves_and_the_runtime(graph):
    crossing = [f"{m} imports {t}" for m, targets in graph.items() if m.startswith("plugins.")
                for t in targets if t.startswith("plugins.") and t.split(".")[1] != m.split(".")[1]]
    assert not crossing, "\n".join(crossing)


def test_no_import_cycles(graph):
    cycles = import_cycles(graph)
    assert not cycles, f"import cycles: {cycles}"


def test_the_checks_catch_what_they_are_for():
    """Made-up graphs: an upward import, a same-layer crossing and a cycle are each reported."""
    assert upward_imports({"runtime.chat.engine": {"runtime.cli.common"}, "runtime.cli.common": set()}) == [
        "runtime.chat.engine (chat) imports runtime.cli.common (command line)"]
    assert upward_imports({"adapters.safety": {"runtime.generation.lora_batch"}}) == [
        "adapters.safety (generation and the registry) imports runtime.generation.lora_batch "
        "(generation and the registry)"]
    assert upward_imports({"runtime.cli.common": {"runtime.chat.engine"}}) == []
    assert import_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert import_cycles({"a": {"b"}, "b": set()}) == []


def test_files_stay_small():
    long = [f"{p.relative_to(ROOT)}: {n} lines" for package in PACKAGES for p in (ROOT / package).rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES]
    assert not long, f"files over {MAX_LINES} lines (split them by job):\n" + "\n".join(long)


# --- the plugin contract --------------------------------------------------------------------


def _sources(*folders: str, exclude: Path | None = None) -> str:
    return "\n".join(p.read_text() for folder in folders for p in (ROOT / folder).rglob("*.py") if p != exclude)


def test_every_hookspec_is_called_by_the_runtime():
    code = _sources(*PACKAGES)
    uncalled = [name for name in iter_hookspecs() if not re.search(rf"\.hook\.{name}\(", code)]
    assert not uncalled, f"hooks declared in runtime/hookspecs.py that nothing calls: {uncalled}"


def test_every_hookspec_is_exercised_by_a_test():
    tests = _sources("tests", exclude=Path(__file__).resolve())
    untested = [name for name in iter_hookspecs()
                if not re.search(rf"def {name}\(|\.hook\.{name}\(|\b{name}\(register", tests)]
    assert not untested, f"hooks no test implements or calls: {untested}"


def test_the_contract_lists_every_hook():
    names = set(iter_hookspecs())
    assert {"register_platforms", "register_characters", "register_commands", "register_scorers",
            "register_backends", "register_jobs", "prompt_messages", "filter_reply", "message_logged",
            "curate_examples", "version_promoted", "audit_alert"} <= names


def test_import_graph_sees_function_level_imports(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("def f():\n    from runtime.chat.engine import Turn\n")
    assert imported_modules(sample, {"runtime.chat.engine": Path()}) == {"runtime.chat.engine"}


def test_layer_map_has_no_duplicates():
    seen = defaultdict(list)
    for name, prefixes in LAYERS:
        for prefix in prefixes:
            seen[prefix].append(name)
    assert all(len(v) == 1 for v in seen.values())

"""What import-linter does not check about the package's structure, checked here with `ast`; and that
import-linter's contracts (pyproject.toml [tool.importlinter]) hold and catch what they are for.

import-linter holds the layers (core < fits < sim, products < archive < plan < extract < run < api < cli, only
`__main__` importing the CLI, every module in a layer) and the absence of import cycles, lazy imports and
`if TYPE_CHECKING:` imports included. Left here: `importlib.import_module` targets (grimp does not see them)
stay in their layer; modules stay under 500 lines; no module or top-level definition of the package exists only
for the tests (or for nobody); no test turns an import error of the package into a skip.

The planted-defect tests at the end show each check, and each contract, failing on a small package.
"""
from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
import tomllib
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import pytest
from where import REPO

ROOT = REPO
PACKAGE = ROOT / "rxte_hpc"
#: Code outside the package that uses it; what only these import is not the package's business.
OUTSIDE = (ROOT / "tests", ROOT / "benchmarks", ROOT / "scripts")
MAX_LINES = 500

#: Layers lowest first. Layers that share a level may not import each other.
LEVELS: tuple[tuple[str, ...], ...] = (
    ("core",), ("fits",), ("sim", "products"), ("archive",), ("plan",), ("extract",), ("run",),
    ("api",), ("cli",),
)
LEVEL_OF = {layer: i for i, level in enumerate(LEVELS) for layer in level}


@dataclass(frozen=True)
class Edge:
    """`source` imports `target` (both dotted module names of the package) at `path:line`."""

    source: str
    target: str
    path: Path
    line: int

    def where(self) -> str:
        return f"{_rel(self.path)}:{self.line}"


@dataclass
class Graph:
    modules: dict[str, Path]          # dotted name -> file
    edges: list[Edge]                 # package -> package imports
    outside: list[Edge]               # package -> a top-level name that is not the package (tests, ...)
    lines: dict[str, int]
    syntax_errors: list[str]


def _rel(path: Path) -> str:
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return str(path)


def find_modules(package: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file under `package` (a package's __init__ is the package)."""
    out = {}
    for path in sorted(package.rglob("*.py")):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _longest_known(name: str, known: dict[str, Path]) -> str | None:
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def _import_targets(module: str, is_package: bool, node: ast.Import | ast.ImportFrom,
                    known: dict[str, Path]) -> list[str]:
    """The dotted names an import statement loads: `import a.b` loads `a.b`; `from a import b` loads
    the module `a.b` when there is one, else takes the name `b` from `a` (a dependency on `a`)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:
        parts = module.split(".") if is_package else module.split(".")[:-1]
        if node.level > 1:
            parts = parts[: len(parts) - (node.level - 1)]
        base = ".".join(parts + ([base] if base else []))
    return [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]


def _dynamic_names(module: str, is_package: bool, tree: ast.Module) -> list[tuple[str, int]]:
    """Modules named to `importlib.import_module`: a constant argument, or, for a computed one
    (`f"{__name__}.{name}"`), every string constant of the module that names a module, or one under it."""
    package = module if is_package else module.rpartition(".")[0]    # what a leading "." is relative to
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call)
             and ((isinstance(n.func, ast.Attribute) and n.func.attr == "import_module")
                  or (isinstance(n.func, ast.Name) and n.func.id in ("import_module", "__import__")))]
    out: list[tuple[str, int]] = []
    for call in calls:
        arg = call.args[0] if call.args else None
        if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
            name = arg.value
            out.append((f"{package}{name}" if name.startswith(".") else name, call.lineno))
        else:
            for const in ast.walk(tree):
                if isinstance(const, ast.Constant) and isinstance(const.value, str) \
                        and re.fullmatch(r"[A-Za-z_]\w*(\.\w+)*", const.value):
                    out.append((const.value, call.lineno))
                    out.append((f"{module}.{const.value}", call.lineno))      # f"{__name__}.{name}"
    return out


def build_graph(package: Path) -> Graph:
    modules = find_modules(package)
    top = package.name
    edges: list[Edge] = []
    outside: list[Edge] = []
    lines: dict[str, int] = {}
    errors: list[str] = []
    outside_tops = {p.name for p in OUTSIDE} | {"conftest"}
    for module, path in modules.items():
        source = path.read_text(encoding="utf-8")
        lines[module] = len(source.splitlines())
        try:
            tree = ast.parse(source, filename=str(path))
        except SyntaxError as exc:
            errors.append(f"{_rel(path)}:{exc.lineno}: {exc.msg}")
            continue
        is_package = path.name == "__init__.py"
        found: list[tuple[str, int, bool]] = []     # name, line, must it resolve (static import)
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                found += [(name, node.lineno, True) for name in _import_targets(module, is_package, node, modules)]
        found += [(name, line, False) for name, line in _dynamic_names(module, is_package, tree)]
        seen = set()
        for name, line, static in found:
            head = name.split(".")[0]
            if head in outside_tops and static:
                outside.append(Edge(module, name, path, line))
                continue
            if head != top:
                continue
            target = _longest_known(name, modules)
            if target is None or (not static and target != name):
                continue
            # names taken from an enclosing package's __init__ are a dependency on it, and count
            if target == module:
                continue
            if (target, line) not in seen:
                seen.add((target, line))
                edges.append(Edge(module, target, path, line))
    return Graph(modules, edges, outside, lines, errors)


def layer_of(module: str) -> str | None:
    """The layer of a dotted module name: its first subpackage; the package itself is the API."""
    parts = module.split(".")[1:]
    if not parts:
        return "api"
    if parts[0] == "__main__":
        return "cli"
    return parts[0] if parts[0] in LEVEL_OF else None


def dynamic_imports_across_layers(graph: Graph, package: Path) -> list[str]:
    """`importlib.import_module` targets (which import-linter cannot see) in a higher or a sibling layer."""
    problems = []
    for module, path in sorted(graph.modules.items()):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for name, line in _dynamic_names(module, path.name == "__init__.py", tree):
            if name not in graph.modules or name == module:
                continue
            src, dst = layer_of(module), layer_of(name)
            if src is None or dst is None or src == dst:
                continue
            if LEVEL_OF[dst] >= LEVEL_OF[src]:
                problems.append(f"{_rel(path)}:{line}: {module} ({src}) imports {name} ({dst}) by name, "
                                "against the layer order")
    return problems


def long_modules(graph: Graph) -> list[str]:
    return [f"{_rel(graph.modules[m])}: {n} lines (modules stay under {MAX_LINES})"
            for m, n in sorted(graph.lines.items()) if n >= MAX_LINES]


def entry_points(package: Path) -> set[str]:
    """What starts code of the package: itself, `python -m` targets in its files, console scripts."""
    top = package.name
    found = {top, f"{top}.__main__"}
    for path in package.rglob("*"):
        if path.is_file() and path.suffix != ".pyc":
            try:
                text = path.read_text(encoding="utf-8")
            except UnicodeDecodeError:
                continue
            # `python -m pkg.mod` in a script, or "-m", "pkg.mod" in an argv list
            for name in re.findall(rf"-m['\"]?\s*,?\s*['\"]?({top}(?:\.\w+)*)", text):
                found |= {name, f"{name}.__main__"}
    pyproject = package.parent / "pyproject.toml"
    if pyproject.is_file():
        scripts = re.search(r"^\[project\.scripts\]\n(.*?)(?=^\[|\Z)", pyproject.read_text(), re.M | re.S)
        if scripts:
            found |= set(re.findall(rf"=\s*\"({top}(?:\.\w+)*):", scripts.group(1)))
    return found


def imported_from_outside(package: Path, modules: dict[str, Path], outside: tuple[Path, ...]) -> set[str]:
    used = set()
    for folder in outside:
        for path in folder.rglob("*.py"):
            try:
                tree = ast.parse(path.read_text(encoding="utf-8"))
            except SyntaxError:
                continue
            for node in ast.walk(tree):
                if isinstance(node, (ast.Import, ast.ImportFrom)) and not getattr(node, "level", 0):
                    for name in _import_targets("", False, node, modules):
                        target = _longest_known(name, modules)
                        if target:
                            used.add(target)
    return used


def unreachable_modules(graph: Graph, package: Path, outside: tuple[Path, ...]) -> list[str]:
    """Modules no entry point reaches through the package's own imports: test-only, or dead."""
    adjacent = defaultdict(set)
    for edge in graph.edges:
        adjacent[edge.source].add(edge.target)
    reached: set[str] = set()
    todo = [m for m in entry_points(package) if m in graph.modules]
    while todo:
        m = todo.pop()
        if m in reached:
            continue
        reached.add(m)
        todo += adjacent[m]
        parent = m.rpartition(".")[0]       # importing a module runs its packages' __init__
        if parent:
            todo.append(parent)
    used_outside = imported_from_outside(package, graph.modules, outside)
    problems = []
    for module in sorted(set(graph.modules) - reached):
        path = graph.modules[module]
        if path.name == "__init__.py" and not path.read_text(encoding="utf-8").strip("\n").count("\n"):
            continue                        # an empty (docstring-only) package marker
        if module in used_outside:
            problems.append(f"{_rel(path)}: {module} is used only from tests/benchmarks/scripts, "
                            f"never by the package: it belongs under tests/")
        else:
            problems.append(f"{_rel(path)}: {module} is imported by nothing (dead module)")
    return problems


def _references(paths) -> dict[str, set[Path]]:
    """Every name a file mentions (names, attributes, imported names, string constants) -> the files."""
    out: dict[str, set[Path]] = defaultdict(set)
    for path in paths:
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except SyntaxError:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Name):
                out[node.id].add(path)
            elif isinstance(node, ast.Attribute):
                out[node.attr].add(path)
            elif isinstance(node, ast.alias):
                out[node.name.rpartition(".")[2]].add(path)
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                out[node.value].add(path)       # __all__, getattr(module, "Name"), a backend table
    return out


def unused_definitions(graph: Graph, outside: tuple[Path, ...]) -> list[str]:
    """Top-level functions and classes outside the API layer that nothing in the package mentions.

    By name only, so a same-named use anywhere counts as a use: this misses some dead code but
    does not call used code dead.
    """
    inside = _references(graph.modules.values())
    used_outside = _references([p for folder in outside for p in folder.rglob("*.py")])
    problems = []
    for module, path in sorted(graph.modules.items()):
        if layer_of(module) in ("api", "cli"):
            continue                        # the API is for users; the CLI's main for the console script
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except SyntaxError:
            continue
        for node in tree.body:
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                continue
            if inside.get(node.name, set()) - {path}:
                continue
            own = sum(1 for n in ast.walk(tree) if (isinstance(n, ast.Name) and n.id == node.name)
                      or (isinstance(n, ast.Attribute) and n.attr == node.name))
            if own:
                continue
            if node.name in used_outside:
                problems.append(f"{_rel(path)}:{node.lineno}: {module}.{node.name} is used only by "
                                f"tests/benchmarks/scripts: move it there, or use it")
            else:
                problems.append(f"{_rel(path)}:{node.lineno}: {module}.{node.name} is used by nothing (dead code)")
    return problems


def _fail(problems: list[str], what: str) -> None:
    if problems:
        pytest.fail(f"{len(problems)} {what}:\n  " + "\n  ".join(problems), pytrace=False)


@pytest.fixture(scope="module")
def graph() -> Graph:
    return build_graph(PACKAGE)


def test_every_module_parses(graph):
    _fail(graph.syntax_errors, "module(s) of the package do not parse")


def test_dynamic_imports_stay_in_their_layer(graph):
    _fail(dynamic_imports_across_layers(graph, PACKAGE), "import_module call(s) against the layers")


def test_the_import_linter_contracts_hold():
    proc = subprocess.run(["lint-imports"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 broken" in proc.stdout


def test_modules_stay_short(graph):
    _fail(long_modules(graph), "module(s) too long")


def test_no_test_only_or_dead_module(graph):
    _fail(unreachable_modules(graph, PACKAGE, OUTSIDE), "module(s) the package itself never uses")


def test_no_test_only_or_dead_function(graph):
    _fail(unused_definitions(graph, OUTSIDE), "top-level definition(s) the package itself never uses")


def skips_of_the_package(tests: Path, top: str) -> list[str]:
    """`importorskip` of the package's own modules, or an import of them in a `try` whose
    `except ImportError` skips: either turns an import error of the package into a skip."""
    problems = []
    for path in sorted(tests.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                    and node.func.attr == "importorskip" and node.args \
                    and isinstance(node.args[0], ast.Constant) and str(node.args[0].value).split(".")[0] == top:
                problems.append(f"{_rel(path)}:{node.lineno}: importorskip({node.args[0].value!r})")
            if isinstance(node, ast.Try) and any(
                    isinstance(h.type, ast.Name) and h.type.id in ("ImportError", "ModuleNotFoundError")
                    and any(isinstance(c, ast.Call) and isinstance(c.func, ast.Attribute) and c.func.attr == "skip"
                            for c in ast.walk(h))
                    for h in node.handlers):
                for inner in node.body:
                    for n in ast.walk(inner):
                        if isinstance(n, (ast.Import, ast.ImportFrom)) and any(
                                name.split(".")[0] == top for name in _import_targets("", False, n, {})):
                            problems.append(f"{_rel(path)}:{n.lineno}: import of {top} skipped on ImportError")
    return sorted(problems, key=lambda p: (p.split(":")[0], int(p.split(":")[1])))


def test_tests_never_skip_the_package_itself():
    _fail(skips_of_the_package(ROOT / "tests", PACKAGE.name), "test(s) that skip when the package fails to import")


def test_a_skip_of_the_package_is_found(tmp_path):
    (tmp_path / "test_a.py").write_text(
        "import pytest\nm = pytest.importorskip('pkg.core')\nnp = pytest.importorskip('numpy')\n"
        "try:\n    from pkg import x\nexcept ImportError:\n    pytest.skip('no')\n")
    assert [p.split(": ", 1)[1] for p in skips_of_the_package(tmp_path, "pkg")] == [
        "importorskip('pkg.core')", "import of pkg skipped on ImportError"]


# -- the checks catch what they are for: a planted defect of each kind ----------------------------------

def _plant(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root / "pkg"


GOOD = {
    "pkg/__init__.py": '"""api"""\nfrom pkg.api import go\n',
    "pkg/__main__.py": "from pkg.cli import main\nmain()\n",
    "pkg/cli.py": "from pkg.api import go\n\ndef main():\n    go()\n",
    "pkg/api.py": "from pkg.run import worker\n\ndef go():\n    worker.work()\n",
    "pkg/core/__init__.py": "",
    "pkg/core/obsid.py": "X = 1\n",
    "pkg/run/__init__.py": "",
    "pkg/run/worker.py": "from ..core import obsid\n\ndef work():\n    from pkg.sim import make\n    return obsid.X\n",
    "pkg/sim/__init__.py": "",
    "pkg/sim/make.py": "import numpy\nfrom pkg.core.obsid import X\n",
}


def test_a_clean_package_passes(tmp_path):
    package = _plant(tmp_path, GOOD)
    g = build_graph(package)
    assert not g.syntax_errors
    assert dynamic_imports_across_layers(g, package) == []
    assert long_modules(g) == []
    assert unreachable_modules(g, package, (tmp_path / "tests",)) == []
    assert unused_definitions(g, (tmp_path / "tests",)) == []
    # relative and lazy imports resolve to real edges
    assert {("pkg.run.worker", "pkg.core.obsid"), ("pkg.run.worker", "pkg.sim.make")} <= \
        {(e.source, e.target) for e in g.edges}


def test_long_modules_and_test_only_modules_are_found(tmp_path):
    package = _plant(tmp_path, {
        **GOOD,
        "pkg/run/submit.py": "def f():\n    from pkg.cli import main\nf()\n",
        "pkg/api.py": GOOD["pkg/api.py"] + "from pkg.run import submit\n" + "x = 1\n" * MAX_LINES,
        "pkg/core/helper.py": "def only_for_tests():\n    pass\n",
        "pkg/core/dead.py": "",
        "tests/test_x.py": "from pkg.core.helper import only_for_tests\n",
    })
    g = build_graph(package)
    assert len(long_modules(g)) == 1 and "api.py" in long_modules(g)[0]
    problems = unreachable_modules(g, package, (tmp_path / "tests",))
    assert any("pkg.core.helper is used only from tests" in p for p in problems)
    assert any("pkg.core.dead is imported by nothing" in p for p in problems)
    assert len(problems) == 2
    unused = unused_definitions(g, (tmp_path / "tests",))
    assert [p.split(": ", 1)[1] for p in unused] == [
        "pkg.core.helper.only_for_tests is used only by tests/benchmarks/scripts: move it there, or use it"]


def test_a_module_that_does_not_parse_is_reported(tmp_path):
    package = _plant(tmp_path, {**GOOD, "pkg/core/obsid.py": "def f(:\n"})
    assert [e.split(":")[-1].strip() for e in build_graph(package).syntax_errors] != []


def test_python_dash_m_targets_are_entry_points(tmp_path):
    package = _plant(tmp_path, {
        **GOOD,
        "pkg/run/spawn.py": "import sys\nCMD = [sys.executable, '-m', 'pkg.run.rank']\n",
        "pkg/run/rank.py": "",
        "pkg/run/templates/job.sbatch": "exec python -m pkg.run.other\n",
        "pkg/run/other.py": "",
        "pkg/api.py": GOOD["pkg/api.py"] + "from pkg.run import spawn\n",
    })
    assert {"pkg.run.rank", "pkg.run.other"} <= entry_points(package)
    assert unreachable_modules(build_graph(package), package, (tmp_path / "tests",)) == []


def test_dynamic_imports_by_name_are_edges(tmp_path):
    package = _plant(tmp_path, {
        **GOOD,
        "pkg/run/worker.py": "import importlib\nB = {'x': ('make', 'Y')}\n"
                             "def work():\n    return importlib.import_module(f'{__name__}.{B[\"x\"][0]}')\n",
        "pkg/run/make.py": "",
        "pkg/core/obsid.py": "import importlib\nimportlib.import_module('pkg.run.worker')\n",
    })
    g = build_graph(package)
    pairs = {(e.source, e.target) for e in g.edges}
    assert ("pkg.run.worker", "pkg.run.make") not in pairs          # f'{__name__}' is the module, not its package
    assert ("pkg.core.obsid", "pkg.run.worker") in pairs


def _lint_planted(tmp_path: Path, files: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """lint-imports with the repository's own contracts, run on a planted package `pkg` under tmp_path."""
    settings = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    text = settings_toml = ['[tool.importlinter]', 'root_package = "pkg"']
    for contract in settings["contracts"]:
        settings_toml.append("[[tool.importlinter.contracts]]")
        for key, value in contract.items():
            value = [v.replace("rxte_hpc", "pkg") for v in value] if isinstance(value, list) else value
            settings_toml.append(f"{key} = {json.dumps(value)}")
    _plant(tmp_path, files)
    (tmp_path / "pyproject.toml").write_text("\n".join(text) + "\n")
    lint = Path(sys.executable).with_name("lint-imports")
    return subprocess.run([str(lint)], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(tmp_path)})


PLANTED_LAYERS = {
    **GOOD,
    "pkg/core/paths.py": "X = 2\n",
    "pkg/fits/__init__.py": "", "pkg/products/__init__.py": "", "pkg/archive/__init__.py": "",
    "pkg/plan/__init__.py": "", "pkg/extract/__init__.py": "",
}


def test_the_contracts_pass_a_clean_package(tmp_path):
    proc = _lint_planted(tmp_path, PLANTED_LAYERS)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("plant, expected", [
    ({"pkg/core/obsid.py": "X = 1\ndef f():\n    import pkg.run.worker\n"}, "pkg.core.obsid -> pkg.run.worker"),
    ({"pkg/fits/lc.py": "import typing\nif typing.TYPE_CHECKING:\n    from pkg.archive import x\n",
      "pkg/archive/x.py": ""}, "pkg.fits.lc -> pkg.archive.x"),
    ({"pkg/products/gather.py": "from pkg.sim.make import X\n"}, "pkg.products.gather -> pkg.sim.make"),
    ({"pkg/run/submit.py": "def f():\n    from pkg.cli import main\n"}, "pkg.run.submit -> pkg.cli"),
    ({"pkg/core/obsid.py": "def f():\n    from . import paths\nX = 1\n",
      "pkg/core/paths.py": "from pkg.core.obsid import X\n"}, "No cycles are allowed in pkg.core"),
    ({"pkg/stray.py": ""}, "pkg.stray"),
])
def test_the_contracts_catch_a_planted_defect(tmp_path, plant, expected):
    proc = _lint_planted(tmp_path, {**PLANTED_LAYERS, **plant})
    assert proc.returncode != 0 and "BROKEN" in proc.stdout, proc.stdout + proc.stderr
    assert expected in proc.stdout, proc.stdout

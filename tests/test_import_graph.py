"""The import graph: acyclic inside every package, and the package arrows point one way.

spec <- proofs, reference, kernels <- properties <- flashproof/ (CLI, audit, bench): spec imports no
other folder, proofs/reference/kernels import spec only, properties imports those four, and nothing
below flashproof/ imports flashproof.cli, flashproof.audit or flashproof.bench. Imports are read with
``ast``, function-level ones included (they run too, only later), and so are importlib.import_module
and __import__ calls with a literal module name; imports under ``if TYPE_CHECKING:`` never run and
are not edges. The checker also runs on another tree: ``python tests/test_import_graph.py ROOT``.
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

__all__ = ["import_graph", "find_cycle", "package_of", "layer_violations", "upward_imports", "main"]

ROOT = Path(__file__).resolve().parents[1]
#: import package -> folder of the repository (pyproject.toml's package-dir)
FOLDERS = {
    "flashproof.spec": "spec", "flashproof.proofs": "proofs", "flashproof.reference": "reference",
    "flashproof.kernels": "kernels", "flashproof.properties": "properties", "flashproof": "flashproof",
}
#: what each package may import (besides itself and the bare ``flashproof`` namespace)
ALLOWED = {
    "spec": set(),
    "proofs": {"spec"},
    "reference": {"spec"},
    "kernels": {"spec"},
    "properties": {"spec", "proofs", "reference", "kernels"},
    "flashproof": {"spec", "proofs", "reference", "kernels", "properties"},
}
#: the top layer's modules, which no lower package may import
TOP = ("flashproof.cli", "flashproof.audit", "flashproof.bench")


def _modules(root: Path) -> dict:
    """module name -> (path, is_package) for every .py file of the packages."""
    out = {}
    for pkg, folder in FOLDERS.items():
        base = root / folder
        if not base.is_dir():
            continue
        for path in sorted(base.rglob("*.py")):
            rel = path.relative_to(base).with_suffix("").parts
            if rel[-1] == "__init__":
                out[".".join((pkg,) + rel[:-1])] = (path, True)
            elif pkg != "flashproof" or len(rel) == 1:  # flashproof/ holds modules only
                out[".".join((pkg,) + rel)] = (path, False)
    return out


def _type_checking_lines(tree) -> set:
    """Line numbers of imports inside ``if TYPE_CHECKING:`` (they never run)."""
    lines = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for sub in node.body:
                for n in ast.walk(sub):
                    if isinstance(n, (ast.Import, ast.ImportFrom)):
                        lines.add(n.lineno)
    return lines


def _targets(name, is_pkg, node, modules):
    """The project modules an import node (or a literal import call) reaches."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if isinstance(node, ast.ImportFrom):
        if node.level:
            parts = name.split(".") if is_pkg else name.split(".")[:-1]
            parts = parts[:len(parts) - (node.level - 1)]
            base = ".".join(parts + ([node.module] if node.module else []))
        else:
            base = node.module or ""
        out = []
        for a in node.names:
            sub = f"{base}.{a.name}"
            out.append(sub if sub in modules else base)  # a submodule, or a name from base's __init__
        return out
    return [node]  # a literal string from importlib.import_module / __import__


def _literal_import_calls(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str):
            f = node.func
            fname = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
            if fname in ("import_module", "__import__"):
                yield node.lineno, node.args[0].value


def import_graph(root: Path = ROOT) -> dict:
    """module -> {imported project module: first line} over every package under ``root``."""
    modules = _modules(Path(root))
    graph = {}
    for name, (path, is_pkg) in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        skip = _type_checking_lines(tree)
        edges = {}
        found = [(n.lineno, t) for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))
                 and n.lineno not in skip for t in _targets(name, is_pkg, n, modules)]
        found += list(_literal_import_calls(tree))
        for line, target in found:
            while target and target not in modules and "." in target:
                target = target.rsplit(".", 1)[0]  # pkg.mod.attr -> pkg.mod
            if target in modules and target != name:
                edges.setdefault(target, line)
        graph[name] = edges
    return graph


def package_of(module: str) -> str:
    """The folder a module lives in ("spec", ..., "flashproof"), or "" for the bare namespace."""
    if module == "flashproof":
        return ""
    for pkg, folder in FOLDERS.items():
        if pkg != "flashproof" and (module == pkg or module.startswith(pkg + ".")):
            return folder
    return "flashproof"


def find_cycle(graph: dict, nodes=None):
    """One import cycle among ``nodes`` (all by default) as [a, b, ..., a], or None."""
    nodes = set(graph) if nodes is None else set(nodes)
    color, stack = {}, []

    def visit(n):
        color[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, {})):
            if m not in nodes:
                continue
            if color.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in color:
                cyc = visit(m)
                if cyc:
                    return cyc
        stack.pop()
        color[n] = 2
        return None

    for n in sorted(nodes):
        if n not in color:
            cyc = visit(n)
            if cyc:
                return cyc
    return None


def layer_violations(graph: dict) -> list:
    """["a (pkg) imports b (pkg) at line n", ...] for every arrow that points the wrong way."""
    out = []
    for a, edges in graph.items():
        pa = package_of(a)
        for b, line in edges.items():
            pb = package_of(b)
            if pb and pa and pb != pa and pb not in ALLOWED[pa]:
                out.append(f"{a} ({pa}/) imports {b} ({pb}/) at line {line}")
    return sorted(out)


def upward_imports(graph: dict) -> list:
    """Imports of flashproof.cli/audit/bench from spec/, proofs/, reference/, kernels/, properties/."""
    return sorted(f"{a} imports {b} at line {line}" for a, edges in graph.items() for b, line in edges.items()
                  if package_of(a) not in ("", "flashproof") and b in TOP)


def _problems(root: Path = ROOT) -> list:
    graph = import_graph(root)
    out = []
    for folder in FOLDERS.values():
        cyc = find_cycle(graph, [m for m in graph if package_of(m) == folder])
        if cyc:
            out.append(f"{folder}/ has an import cycle: " + " -> ".join(cyc))
    return out + layer_violations(graph) + upward_imports(graph)


# ----------------------------------------------------------------------------- tests
def test_the_graph_sees_every_kind_of_import():
    g = import_graph()
    assert "flashproof.properties.suite" in g["flashproof.properties.check"]  # function-level, relative
    assert "flashproof.kernels" in g["flashproof.properties.builtin_targets"]  # importlib.import_module literal
    assert "flashproof.spec.dtypes" in g["flashproof.spec.online"]  # module-level relative
    assert "flashproof.properties.cases" not in g["flashproof.properties.outcomes"]  # TYPE_CHECKING only


def test_each_package_is_acyclic():
    graph = import_graph()
    for folder in FOLDERS.values():
        cyc = find_cycle(graph, [m for m in graph if package_of(m) == folder])
        assert cyc is None, f"{folder}/ has an import cycle: " + " -> ".join(cyc)


def test_package_arrows_point_one_way():
    bad = layer_violations(import_graph())
    assert not bad, "imports against spec <- proofs, reference, kernels <- properties <- flashproof/:\n" + "\n".join(bad)


def test_nothing_below_the_cli_imports_cli_audit_or_bench():
    bad = upward_imports(import_graph())
    assert not bad, "\n".join(bad)


def test_the_checker_fails_on_a_tree_with_a_cycle_and_upward_arrows(tmp_path):
    """The checks can fail: a tree with a cycle inside properties/, spec importing properties and
    proofs importing the CLI (function-level) is reported on all three counts."""
    for folder in FOLDERS.values():
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "__init__.py").write_text("")
    (tmp_path / "properties" / "a.py").write_text("from .b import x\n")
    (tmp_path / "properties" / "b.py").write_text("def f():\n    from . import a\n")
    (tmp_path / "spec" / "s.py").write_text("import flashproof.properties.a\n")
    (tmp_path / "proofs" / "p.py").write_text("def f():\n    from flashproof.cli import EXIT_OK\n")
    (tmp_path / "flashproof" / "cli.py").write_text("from flashproof.properties import a\n")
    probs = _problems(tmp_path)
    assert any("properties/ has an import cycle" in p and "flashproof.properties.a" in p for p in probs), probs
    assert any(p.startswith("flashproof.spec.s (spec/) imports flashproof.properties.a") for p in probs), probs
    assert "flashproof.proofs.p imports flashproof.cli at line 2" in probs, probs
    assert not any(p.startswith("flashproof.cli") for p in probs), probs  # the top layer may import anything


def main(argv=None) -> int:
    root = Path((argv or sys.argv[1:] or [ROOT])[0])
    probs = _problems(root)
    print("\n".join(probs) if probs else f"{root}: acyclic, arrows one way")
    return 1 if probs else 0


if __name__ == "__main__":
    sys.exit(main())

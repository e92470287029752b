"""Static structure of the package: no import cycles; inference never reaches training.

The import graph is built with ``ast`` from every module under ``cvae_pms/``, function-level
(lazy) imports included (they hide cycles as well as top-level ones). The lazy exports of
``cvae_pms/__init__.py`` (its module ``__getattr__``) are not import-time edges and are left
out: importing ``cvae_pms`` imports neither ``api`` nor ``xp``.
"""
from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "cvae_pms"
#: Where inference starts (the Python API and the infer pipeline).
INFERENCE_ENTRY = ("cvae_pms.api", "cvae_pms.infer")
#: Training-side modules: they open grids or run the training noise path.
TRAINING_SIDE = ("cvae_pms.training", "cvae_pms.simulator",
                 "cvae_pms.simulate", "cvae_pms.evaluate", "cvae_pms.evaluation",
                 "cvae_pms.grid.gridfile", "cvae_pms.grid.grid_writer",
                 "cvae_pms.grid.ingest", "cvae_pms.grid.ingest_sources")


def _modules() -> dict[str, tuple[Path, bool]]:
    mods = {}
    for p in PKG.rglob("*.py"):
        parts = list(p.relative_to(PKG.parent).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        mods[".".join(parts[:-1] if is_pkg else parts)] = (p, is_pkg)
    return mods


def import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports (anywhere in its body)."""
    mods = _modules()

    def resolve(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    edges: dict[str, set[str]] = {m: set() for m in mods}
    for m, (path, is_pkg) in mods.items():
        tree = ast.parse(path.read_text())
        skip = set()
        if is_pkg:   # lazy exports of a package __init__ are not import-time edges
            for node in tree.body:
                if isinstance(node, ast.FunctionDef) and node.name == "__getattr__":
                    skip |= {id(n) for n in ast.walk(node)}
        base = m if is_pkg else m.rpartition(".")[0]
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    up = base.split(".")[:len(base.split(".")) - node.level + 1]
                    mod = ".".join(up + ([node.module] if node.module else []))
                else:
                    mod = node.module or ""
                targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in mods else mod
                           for a in node.names]
            else:
                continue
            for t in targets:
                if t.startswith("cvae_pms"):
                    r = resolve(t)
                    if r and r != m:
                        edges[m].add(r)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def reachable(edges: dict[str, set[str]], starts) -> dict[str, str | None]:
    """Every module reachable from ``starts`` -> the module that imports it (path back)."""
    parent = {s: None for s in starts}
    todo = list(starts)
    while todo:
        v = todo.pop()
        for w in sorted(edges[v]):
            if w not in parent:
                parent[w] = v
                todo.append(w)
    return parent


def test_no_import_cycles():
    found = cycles(import_graph())
    assert not found, "import cycles: " + "; ".join(" <-> ".join(c) for c in found)


def test_inference_never_reaches_training():
    edges = import_graph()
    parent = reachable(edges, INFERENCE_ENTRY)
    bad = []
    for m in parent:
        if any(m == t or m.startswith(t + ".") for t in TRAINING_SIDE):
            chain, v = [], m
            while v is not None:
                chain.append(v)
                v = parent[v]
            bad.append(" <- ".join(chain))
    assert not bad, "inference imports training-side modules: " + "; ".join(bad)


def test_importing_the_api_does_not_import_training():
    import subprocess
    import sys
    code = ("import sys, cvae_pms.api, cvae_pms.infer; "
            f"print(sorted(m for m in sys.modules if m in {TRAINING_SIDE!r}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=PKG.parent)
    assert out.stdout.strip() == "[]", out.stdout


def test_every_error_class_has_the_common_base():
    """The CLI catches CvaePmsError once: an error class outside it reaches users as a traceback."""
    import builtins
    import importlib
    import inspect
    import pkgutil

    import cvae_pms
    from cvae_pms.errors import CvaePmsError
    builtin_errors = tuple(v for v in vars(builtins).values()
                           if inspect.isclass(v) and issubclass(v, BaseException))
    missing, seen = [], 0
    for info in pkgutil.walk_packages(cvae_pms.__path__, "cvae_pms."):
        try:
            mod = importlib.import_module(info.name)
        except ImportError:          # an optional extra (dask, ...) not installed here
            continue
        for name, obj in vars(mod).items():
            if (inspect.isclass(obj) and issubclass(obj, Exception)
                    and not issubclass(obj, Warning)
                    and obj.__module__ == mod.__name__ and obj not in builtin_errors):
                seen += 1
                if not issubclass(obj, CvaePmsError):
                    missing.append(f"{mod.__name__}.{name}")
    assert seen >= 20
    assert not missing, f"error classes without CvaePmsError: {missing}"

"""The shape of the code (docs/ARCHITECTURE.md): imports point down the layers, no module imports itself back through
others, and no source file outgrows 400 lines. Every import counts, function-local ones included."""

import ast
from pathlib import Path

from tests.helpers import ROOT

# layer -> the project packages it may import (anything above the model families may import anything)
ALLOWED = {
    "runtime": set(),
    "configs": set(),
    "diffusion": {"runtime"},
    "dataset": {"runtime"},
    "training": {"runtime", "configs"},
    "metrics": {"runtime", "dataset"},
    "model": {"runtime", "configs", "diffusion", "dataset", "training"},
}
TOP = ("scripts", "benchmarks")  # and the command lines at the root


def sources():
    """{module name: path} of every non-test Python file of the project."""
    out = {}
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT)
        if rel.parts[0] in ("tests", ".git") or any(p.startswith(".") for p in rel.parts):
            continue
        parts = list(rel.with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def imports(name: str, path: Path, known: set) -> set:
    """The project modules ``name`` imports (resolved against ``known``; a name imported from a package counts as
    its submodule when there is one)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".") if package else []
                anchor = anchor[:len(anchor) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        else:
            continue
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


def graph():
    mods = sources()
    return {name: imports(name, path, set(mods)) for name, path in mods.items()}


def layer(module: str) -> str:
    return module.split(".")[0]


def test_imports_point_down_the_layers():
    wrong = []
    for mod, deps in graph().items():
        own = layer(mod)
        if own in TOP or own not in ALLOWED:  # scripts at the top may use everything
            continue
        wrong += [f"{mod} -> {d}" for d in deps if layer(d) != own and layer(d) not in ALLOWED[own]]
    assert not wrong, wrong


def test_no_import_cycles():
    g = graph()
    state, cycles = {}, []

    def visit(m, stack):
        state[m] = "open"
        for d in sorted(g.get(m, ())):
            if d.startswith(m + "."):  # a package's __init__ importing its own modules is how packages work
                continue
            if state.get(d) == "open":
                cycles.append(stack[stack.index(d):] + [d])
            elif d not in state:
                visit(d, stack + [d])
        state[m] = "done"

    for m in sorted(g):
        if m not in state:
            visit(m, [m])
    assert not cycles, cycles


def test_source_files_stay_small():
    big = {name: n for name, path in sources().items() if (n := len(path.read_text().splitlines())) > 400}
    assert not big, big

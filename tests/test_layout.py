"""The house rules of DESIGN.md, checked on the source: one installed namespace, no import
cycle, and no import pointing up the dependency direction."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

import vqclip

ROOT = Path(__file__).resolve().parents[1]

# DESIGN.md's dependency direction, bottom (0) to top; a module may import its own layer
# and the ones below it, never one above.
LAYERS = {
    "errors": 0, "_files": 0, "_cpus": 0, "_hashing": 0, "constants": 0, "_validate": 0,
    "models": 1, "tokenizer": 1, "preprocess": 1, "zoo": 1, "manifest": 1,
    "checkpoints": 2, "backends": 2, "kernels": 2, "decode": 2,
    "encoder": 3, "index": 3,
    "jobs": 4,
    "serving": 5,
    "cli": 6,
}
# Imports made inside a function on purpose, each named in DESIGN.md.
ALLOWED_LAZY_UP = {
    ("encoder", "export"),  # the encoder builds a cached export on demand
    ("jobs", "export"),  # jobs.generate.graph_step exports a generation step graph on demand, as the encoder does
}
# What export may import of the runtime's jobs: the generation step's own math, which its graph holds.
EXPORT_READS_JOBS = {"vqclip.jobs.generate.ops", "vqclip.jobs.generate.cutouts"}


def _modules() -> dict[str, Path]:
    """vqclip module name -> source file, for the runtime, the export and the bench packages."""
    out = {}
    for base, prefix in ((ROOT / "engine", "vqclip"), (ROOT / "export", "vqclip.export"),
                         (ROOT / "benchmarks", "vqclip.bench")):
        for path in base.rglob("*.py"):
            rel = path.relative_to(base).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            out[".".join([prefix, *parts])] = path
    return out


MODULES = _modules()


def _imports(name: str, path: Path) -> list[tuple[str, bool]]:
    """(imported vqclip module, made at module level) for each import in the file."""
    tree = ast.parse(path.read_text(), str(path))
    top = {id(n) for n in tree.body}
    pkg = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(pkg.split(".")[: len(pkg.split(".")) - node.level + 1] + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        for t in targets:
            if t == "vqclip" or t.startswith("vqclip."):
                while t not in MODULES and "." in t:
                    t = t.rsplit(".", 1)[0]
                found.append((t, id(node) in top))
    return found


def _room(module: str) -> str:
    """The DESIGN.md room of a module: 'vqclip.index.build' -> 'index', 'vqclip.export.api' -> 'export'."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_one_namespace_is_installed():
    source = (ROOT / "setup.py").read_text()
    assert 'package_dir={"vqclip": "engine", "vqclip.export": "export", "vqclip.bench": "benchmarks"}' in source
    tree = ast.parse(source)
    packages_fn = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "_packages")
    namespace: dict = {"ROOT": ROOT}
    exec(compile(ast.Module([*[n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))], packages_fn],
                            []), str(ROOT / "setup.py"), "exec"), namespace)
    packages = namespace["_packages"]()
    assert packages and all(p == "vqclip" or p.startswith("vqclip.") for p in packages)
    on_disk = {n for n, p in MODULES.items() if p.name == "__init__.py"}
    assert set(packages) == on_disk  # every package folder is installed, nothing else


def test_no_import_cycle():
    graph = {n: {t for t, top in _imports(n, p) if top and t != n} for n, p in MODULES.items()}
    # A package's __init__ importing its own submodules is the usual re-export, not a cycle.
    for n in graph:
        graph[n] = {t for t in graph[n] if not (t.startswith(n + ".") and MODULES[n].name == "__init__.py")}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> None:
        state[n] = 1
        stack.append(n)
        for t in sorted(graph[n]):
            if state.get(t) == 1:
                cycle = stack[stack.index(t):] + [t]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if t not in state:
                visit(t)
        stack.pop()
        state[n] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n)


def test_no_import_points_up_the_dependency_direction():
    bad = []
    for name, path in MODULES.items():
        room = _room(name)
        if room in ("", "recipe", "export", "bench") or name == "vqclip.cli.__main__":
            continue
        for target, _top in _imports(name, path):
            troom = _room(target)
            if troom in ("", room):
                continue
            if troom == "recipe":
                bad.append(f"{name} imports {target}: the runtime never imports the training recipe")
            elif troom == "bench":
                if room != "cli":
                    bad.append(f"{name} imports {target}: only the CLI imports the benchmarks")
            elif troom == "export":
                if room == "cli":
                    continue
                if (room, troom) not in ALLOWED_LAZY_UP or _top:
                    bad.append(f"{name} imports {target}: only the encoder and the generation step (lazily, "
                               "inside a function) and the CLI import export")
            elif LAYERS[troom] > LAYERS[room]:
                bad.append(f"{name} (layer {LAYERS[room]}) imports {target} (layer {LAYERS[troom]})")
    assert not bad, "\n".join(bad)


def test_export_imports_only_what_design_allows():
    allowed = {"errors", "_files", "_cpus", "_hashing", "constants", "_validate", "models", "checkpoints", "zoo",
               "manifest", "export", ""}
    bad = [f"{n} imports {t}" for n, p in MODULES.items() if _room(n) == "export"
           for t, _ in _imports(n, p) if _room(t) not in allowed and t not in EXPORT_READS_JOBS]
    assert not bad, "\n".join(bad)


def test_every_room_is_known():
    rooms = {_room(n) for n in MODULES} - {"", "export", "recipe", "bench"}
    assert rooms <= set(LAYERS), rooms - set(LAYERS)


def test_public_api_names_resolve():
    for name in vqclip.__all__:
        assert getattr(vqclip, name) is not None, name

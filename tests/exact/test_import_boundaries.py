"""The one import-boundary test: which layer may import what (docs/design.md, "Boundaries").

1. The light layers import no torch, transformers, peft or bitsandbytes at module level, and the
   commands that need no engine beyond the analytic one never load them (checked in a subprocess).
2. Engines never import the CLI or the report layer; the report layer never runs an engine.
3. Module-level imports inside the package have no cycle.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

PKG = Path(__file__).resolve().parents[2] / "vramplan"
HEAVY = ("torch", "transformers", "peft", "bitsandbytes", "trl", "accelerate")
#: Modules that may import the heavy stack at module level (none: even they import it lazily).
HEAVY_AT_IMPORT: tuple[str, ...] = ()
#: Packages/modules that compute budgets.
ENGINES = ("vramplan.analytic", "vramplan.trace", "vramplan.hf", "vramplan.profile.runner")
#: What the report layer (formatting only) must not reach. From ``vramplan.sweep`` it may take the
#: result types it draws (classes), never the functions that compute them.
COMPUTING = ENGINES + ("vramplan.engine", "vramplan.validate", "vramplan.calibrate")


def _modules() -> dict[str, ast.Module]:
    out = {}
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = ast.parse(path.read_text(encoding="utf-8"))
    return out


def _imports(tree: ast.Module, module_level: bool) -> set[str]:
    nodes = tree.body if module_level else list(ast.walk(tree))
    names: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def _under(name: str, roots: tuple[str, ...]) -> bool:
    return any(name == r or name.startswith(r + ".") for r in roots)


MODULES = _modules()


def test_no_heavy_import_at_module_level():
    bad = {m: sorted(n for n in _imports(t, True) if n.split(".")[0] in HEAVY)
           for m, t in MODULES.items() if m not in HEAVY_AT_IMPORT}
    assert not {m: v for m, v in bad.items() if v}


def test_engines_know_no_cli_or_report():
    bad = {m: sorted(n for n in _imports(t, False) if _under(n, ("vramplan.cli", "vramplan.report")))
           for m, t in MODULES.items() if _under(m, ENGINES)}
    assert not {m: v for m, v in bad.items() if v}


def _computes(name: str) -> bool:
    if name.startswith("vramplan.sweep."):
        return not name.rsplit(".", 1)[1][:1].isupper()
    return _under(name, COMPUTING)


def test_report_layer_only_formats():
    bad = {m: sorted(n for n in _imports(t, False) if _computes(n))
           for m, t in MODULES.items() if _under(m, ("vramplan.report",))}
    assert not {m: v for m, v in bad.items() if v}


def test_no_import_cycle_at_module_level():
    graph = {m: {n for n in _imports(t, True) if n in MODULES and n != m} for m, t in MODULES.items()}
    # ``from vramplan.x import y`` also names vramplan.x.y when y is a module: keep only real modules
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for n in graph[m]:
            if state.get(n) == 1 and not m.startswith(n + "."):  # a package importing its own child is fine
                raise AssertionError(" -> ".join(path + [n]))
            if n not in state:
                visit(n, path + [n])
        state[m] = 2

    for m in graph:
        if m not in state:
            visit(m, [m])


def test_light_commands_load_no_heavy_module():
    """The analytic CLI paths, the catalog, the registry and the profile store, in one fresh process."""
    code = (
        "import sys\n"
        "from vramplan.cli import main\n"
        "import vramplan.profile.store, vramplan.profile, vramplan.gpus as g\n"
        "assert g.catalog.cache_info().currsize == 0, 'catalog read at import'\n"
        "for argv in (['estimate', '-m', 'Qwen3-14B', '--json'], ['models', 'qwen3', '--json'],\n"
        "             ['plan', '-m', 'Qwen3-8B', '--gpu', 'rtx4090', '--json'], ['gpus', '--json']):\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit as e:\n"
        "        assert e.code in (0, 1, None), (argv, e.code)\n"
        f"heavy = [m for m in {HEAVY!r} if m in sys.modules]\n"
        "sys.stderr.write('HEAVY=' + ','.join(heavy))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, PYTHONWARNINGS="ignore"))
    assert r.returncode == 0, r.stderr
    assert r.stderr.strip().endswith("HEAVY="), r.stderr[-500:]

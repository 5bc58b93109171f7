"""Rendering of computed results: rich tables and matplotlib charts. Formats only; computes nothing
(``tests/exact/test_import_boundaries.py`` holds it to that).

- ``table``: a Breakdown (``vramplan estimate``); ``estimate_json`` below, its ``--json`` object;
- ``plan``: a Plan (``vramplan plan``);
- ``catalog``: the GPU catalog and the model registry (``vramplan gpus``, ``vramplan models``);
- ``validation``: validate rows and summaries, calibrate results (``vramplan validate``, ``calibrate``);
- ``profiles``: stored profiles (``vramplan profile``, ``vramplan profiles``);
- ``chart``: the charts of ``vramplan plot``, from the results of ``vramplan.sweep``;
- ``text``: the short forms they share (percentages, MiB, scenario titles).
"""

from __future__ import annotations

from typing import Any


def estimate_json(arch: Any, scenario: Any, bd: Any, headroom: dict[str, Any] | None = None,
                  config: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``vramplan estimate --json`` object (issue 3's contract; extra keys allowed).

    ``scenario`` is always the priced Scenario; ``config`` is the framework reading of a ``--config``
    (framework, version, used / defaults / ignored keys, notes, command-line overrides), and without
    one the scenario again (issue 3's key)."""
    d = bd.to_dict()
    out: dict[str, Any] = {
        "model": {"name": arch.name, "params": arch.all_params, "quantized_params": arch.quantized_params},
        "scenario": scenario.to_dict(),
        "config": config if config is not None else scenario.to_dict(),
        "engine": bd.engine,
        "components": [{k: c[k] for k in ("name", "category", "bytes")} for c in d["components"]],
        "allocated_peak_bytes": bd.allocated_peak_bytes,
        "reserved_peak_bytes": bd.reserved_peak_bytes,
        "total_bytes": bd.total_bytes,
        "runtime": [{k: c[k] for k in ("name", "category", "bytes")} for c in d["runtime"]],
        "notes": list(bd.notes),
    }
    if bd.upper is not None:
        out.update(upper_bound_allocated_bytes=bd.upper.allocated, upper_bound_reserved_bytes=bd.upper.reserved,
                   upper_bound_total_bytes=bd.upper.total)
    if bd.peak_phase is not None:
        out["peak_phase"] = bd.peak_phase
    if headroom:
        out["gpu"] = headroom
    return out

"""vramplan: will this QLoRA run fit? Exact GPU-memory budgets for LoRA/QLoRA fine-tuning.

Public API (no torch import)::

    import vramplan
    b = vramplan.estimate("Qwen3-14B", rank=8, seq=2048)   # -> Breakdown
    b.allocated_peak_bytes, b.reserved_peak_bytes, b.total_bytes
"""

from __future__ import annotations

from typing import Any

from vramplan.arch import Arch, resolve
from vramplan.breakdown import Breakdown, Component
from vramplan.errors import VramplanError
from vramplan.scenario import Scenario

__version__ = "0.1.0"
__all__ = ["Arch", "Breakdown", "Component", "Scenario", "VramplanError", "estimate", "resolve"]


def estimate(model: "str | Arch", scenario: Scenario | None = None, *, method: str = "analytic",
             calibration: Any = None, device: str | None = None, **scenario_fields: Any) -> Breakdown:
    """Memory budget of one training step of ``model`` under ``scenario`` (or the given fields).

    ``method`` is ``analytic`` (instant, no torch) or ``trace`` (fake-tensor dry run; needs the
    ``[torch]`` extra). ``calibration`` sets the runtime constants of either engine; ``device`` picks
    the analytic engine's per-device constants. The one dispatch the CLI and the charts use too.
    """
    arch = model if isinstance(model, Arch) else resolve(model)
    if scenario is None:
        scenario = Scenario(**scenario_fields)
    elif scenario_fields:
        scenario = scenario.replace(**scenario_fields)
    if method == "analytic":
        from vramplan.analytic import estimate as analytic_estimate

        return analytic_estimate(arch, scenario, calibration=calibration, device=device)
    if method == "trace":
        from vramplan.trace import trace

        if device:
            from vramplan.calibration import default_calibration

            calibration = (calibration if calibration is not None else default_calibration()).for_device(device)
        return trace(arch, scenario, calibration=calibration)
    raise VramplanError(f"unknown method '{method}' (choose analytic or trace)")

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
    ``[torch]`` extra). ``calibration`` sets the runtime constants of either engine; ``device`` (a
    GPU name, ``"cpu"`` or a ``vramplan.device.Device``) picks the program priced and the per-device
    constants, the same way in both engines (``vramplan.engine``). The one dispatch the CLI and the
    charts use too.
    """
    arch = model if isinstance(model, Arch) else resolve(model)
    if scenario is None:
        scenario = Scenario(**scenario_fields)
    elif scenario_fields:
        scenario = scenario.replace(**scenario_fields)
    from vramplan.engine import engine

    return engine(method)(arch, scenario, calibration=calibration, device=device)

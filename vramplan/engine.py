"""The one signature every engine implements, and the one dispatch over them.

An engine prices one training step of ``scenario`` on ``arch`` on ``device`` and returns a
``Breakdown``::

    engine(arch, scenario, *, device=None, calibration=None) -> Breakdown

- ``device``: a ``vramplan.device.Device`` (or anything ``Device.parse`` takes; None = an unnamed
  CUDA device). The engine derives from it both the program it prices (``device.semantics``) and the
  runtime constants (``runtime_calibration``): a CPU device prices the CPU program with no CUDA
  runtime, whichever engine runs.
- ``calibration``: the runtime constants (None = the shipped calibration).

Engines: ``analytic`` (``vramplan.analytic.estimate``, no torch) and ``trace``
(``vramplan.trace.trace``, the ``[torch]`` extra). Adding one: a module with a function of this
signature and an ``ENGINES`` entry; tests/engines/ holds it to the others.
"""

from __future__ import annotations

import importlib
from typing import Any, Protocol

from vramplan.breakdown import Breakdown
from vramplan.calibration import Calibration, default_calibration
from vramplan.device import Device
from vramplan.errors import VramplanError


class Engine(Protocol):
    """What ``vramplan.analytic.estimate`` and ``vramplan.trace.trace`` are."""

    def __call__(self, arch: Any, scenario: Any, *, device: "Device | str | None" = None,
                 calibration: Calibration | None = None) -> Breakdown: ...


#: Engine name -> (module, function). Modules load lazily (the trace imports torch).
ENGINES: dict[str, tuple[str, str]] = {
    "analytic": ("vramplan.analytic", "estimate"),
    "trace": ("vramplan.trace", "trace"),
}


def engine(name: str) -> Engine:
    """The engine called ``name``."""
    key = str(name).strip().lower()
    if key not in ENGINES:
        raise VramplanError(f"unknown method '{name}' (choose {' or '.join(ENGINES)})")
    module, attr = ENGINES[key]
    return getattr(importlib.import_module(module), attr)


def runtime_calibration(calibration: Calibration | None, device: "Device | str | None") -> Calibration:
    """The constants an engine prices the runtime terms with on ``device``: the calibration's
    per-device entry for that GPU (``Calibration.for_device``), and no CUDA context, workspace or
    allocator reserve on a device without them (the CPU)."""
    cal = calibration if calibration is not None else default_calibration()
    if device is None:  # an unnamed CUDA device: the calibration's global constants
        return cal
    return cal.for_device(Device.parse(device))

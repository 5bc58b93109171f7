"""What several commands do the same way: read a ``--calibration`` file, find the default profile
folder, print ``--json`` output."""

from __future__ import annotations

import json
from typing import Any

import click

#: Where ``vramplan profile`` stores profiles and ``profiles`` / ``validate`` look for them.
PROFILES_DIR = "profiles"


def load_calibration(path: str | None) -> Any:
    """A calibration file, or None when none is given (the library then prices with the shipped one)."""
    if path is None:
        return None
    from vramplan.calibration import Calibration

    return Calibration.load(path)


def base_calibration(path: str | None) -> Any:
    """A calibration file; none = the shipped default; 'defaults' = the dataclass's stated priors."""
    from vramplan.calibration import Calibration, default_calibration

    if path == "defaults":
        return Calibration()
    return load_calibration(path) or default_calibration()


#: Where ``--json`` output goes: the process's standard output as ``vramplan.cli.main`` found it, while
#: everything else printed to standard output during the command (a library's log lines: DeepSpeed's
#: accelerator notice, a framework's banner) goes to standard error, so stdout stays one JSON document.
JSON_OUT: list[Any] = []


def emit_json(obj: Any) -> None:
    """Print ``--json`` output: always standard JSON (a NaN or infinity is a bug, raised, never
    printed as the non-standard ``NaN``), on the real standard output (``JSON_OUT``)."""
    click.echo(json.dumps(obj, indent=2, allow_nan=False), file=JSON_OUT[-1] if JSON_OUT else None)

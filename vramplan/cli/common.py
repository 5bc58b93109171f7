"""What several commands read the same way: a ``--calibration`` file, the default profile folder."""

from __future__ import annotations

from typing import Any

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

"""The profile engine: real training steps measured on CUDA or CPU, stored as JSON profiles.

``store`` (schema, atomic IO, tolerant reading) imports no torch; ``runner`` and ``readers`` import
it inside their functions. See docs/profiles.md for the schema and the measurement protocol.

    from vramplan.profile import run, load_profiles
    p = run("vramplan-debug", Scenario(seq=128), device="cpu")   # -> Profile (unsaved)
    p.ratio("trace"), p.measured["allocated_peak_bytes"]
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vramplan.profile.store import (SCHEMA, Profile, ProfileError, load_profiles, read_profile,
                                    save_profile)

__all__ = ["SCHEMA", "Profile", "ProfileError", "load_profiles", "read_profile", "run", "save_profile"]


def run(model: Any, scenario: Any = None, *, out: str | Path | None = None, **options: Any) -> Profile:
    """Profile one scenario of ``model`` (a ``--model`` string or an ``Arch``), after the same
    preflight checks as the CLI. ``options`` are ``RunOptions`` fields (device, steps, weights,
    seed, force, predict, loader). With ``out`` the profile is also saved there."""
    from vramplan.arch import Arch, resolve
    from vramplan.profile.runner import RunOptions, preflight, profile_one
    from vramplan.scenario import Scenario

    arch = model if isinstance(model, Arch) else resolve(model)
    name = arch.name if isinstance(model, Arch) else str(model)
    scenario = scenario if scenario is not None else Scenario()
    opts = RunOptions(**options)
    if out is not None:
        from vramplan.profile.store import check_writable

        check_writable(out)
    preflight(name, arch, [scenario], opts)
    prof = profile_one(name, arch, scenario, opts)
    if out is not None:
        from dataclasses import replace

        prof = replace(prof, path=save_profile(prof, out))
    return prof

"""Profiles on disk: the JSON schema, validation, atomic never-overwriting writes, tolerant reads.

One file holds one run (one scenario on one device). The schema is documented in ``docs/profiles.md``;
``SCHEMA`` names its version and any change to the layout bumps it. This module imports no torch.

Reading is tolerant: ``load_profiles`` skips a corrupt or unknown-schema file, reports why (in the
``problems`` list it is given, and through ``logging``) and goes on. Writing is strict: a record that
does not validate is never written, a file is written to a temporary name and linked into place, and
an existing profile is never replaced.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

from vramplan.breakdown import Breakdown
from vramplan.device import strip_vendor
from vramplan.errors import VramplanError, read_text_file
from vramplan.fileio import umask_mode
from vramplan.scenario import Scenario

log = logging.getLogger(__name__)

#: Version tag of the profile layout. Readers accept only the versions in ``READABLE``.
SCHEMA = "vramplan.profile/1"
READABLE = (SCHEMA,)

#: Keys of ``measured['phases']``: ``load`` and ``adapters`` are allocated bytes after the phase;
#: the others are peaks during the phase (steady-state steps, max over them).
PHASES = ("load", "adapters", "forward", "backward", "optimizer", "steady_step")
#: Where an out-of-memory error can strike.
OOM_PHASES = ("load", "adapters", "warmup", "forward", "backward", "optimizer")
#: Totals that ``Profile.ratio`` compares: (prediction key, measured key).
TOTALS = {
    "allocated": ("allocated_peak_bytes", "allocated_peak_bytes"),
    "reserved": ("reserved_peak_bytes", "reserved_peak_bytes"),
    "total": ("total_bytes", "process_peak_bytes"),
}


class ProfileError(VramplanError):
    """A profile that does not validate, or a profile folder that cannot be written."""


@dataclass(frozen=True)
class Profile:
    """One stored run: what ran, where, what it measured and what vramplan predicted at the time."""

    model: str
    """``--model`` as given (registry name, hub id or path)."""
    arch_config: dict[str, Any]
    """The config.json dict the architecture was built from."""
    scenario: Scenario
    device: dict[str, Any]
    """``kind`` (cuda|cpu), ``name``, ``total_memory_bytes``; CUDA: ``driver``, ``cuda``, ``capability``;
    CPU: ``cores``."""
    versions: dict[str, Any]
    """torch, transformers, peft, bitsandbytes, vramplan, python."""
    timestamp: str
    """ISO 8601, UTC, when the run finished."""
    measured: dict[str, Any]
    predictions: dict[str, Any]
    """``analytic`` and ``trace``: ``Breakdown.to_dict()`` made before the run, or None."""
    run: dict[str, Any] = field(default_factory=dict)
    """How it ran: ``steps``, ``warmup_steps``, ``weights`` (``random-init`` or a path), ``seed``."""
    schema: str = SCHEMA
    path: Path | None = field(default=None, compare=False)
    """The file it was read from or written to."""

    # ---------------------------------------------------------------------------- figures
    def arch(self) -> Any:
        """The architecture the run used, rebuilt from the stored config.json dict."""
        from vramplan.arch import Arch

        return Arch.from_config(self.arch_config, name=self.model)

    @property
    def oom(self) -> dict[str, Any] | None:
        return self.measured.get("oom")

    def prediction(self, engine: str) -> Breakdown | None:
        """The stored ``analytic`` or ``trace`` prediction as a Breakdown (None if not made)."""
        d = self.predictions.get(engine)
        return None if d is None else Breakdown.from_dict(d)

    def ratio(self, engine: str = "analytic", total: str = "allocated") -> float | None:
        """Estimate ÷ measured for one total (``allocated``, ``reserved`` or ``total``).

        None when the engine made no prediction, the run hit OOM, or the device has no such figure
        (the process total on CPU).
        """
        if total not in TOTALS:
            raise ProfileError(f"unknown total '{total}' (choose from: {', '.join(TOTALS)})")
        pred = self.predictions.get(engine)
        if pred is None or self.oom is not None:
            return None
        pkey, mkey = TOTALS[total]
        measured = self.measured.get(mkey)
        if not measured:
            return None
        return int(pred[pkey]) / int(measured)

    def error(self, engine: str = "analytic", total: str = "allocated") -> float | None:
        """Relative error of the estimate (0.05 = 5 % high), or None as for ``ratio``."""
        r = self.ratio(engine, total)
        return None if r is None else r - 1.0

    # ------------------------------------------------------------------------------- JSON
    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": self.schema,
            "model": self.model,
            "arch_config": self.arch_config,
            "scenario": self.scenario.to_dict(),
            "device": self.device,
            "versions": self.versions,
            "timestamp": self.timestamp,
            "run": self.run,
            "measured": self.measured,
            "predictions": self.predictions,
        }

    @classmethod
    def from_dict(cls, d: Any, path: Path | None = None) -> "Profile":
        """Validate and build; any problem raises ProfileError with one line saying what."""
        validate(d)
        try:
            scenario = Scenario.from_dict(d["scenario"])
        except (VramplanError, TypeError) as e:
            raise ProfileError(f"bad scenario: {e}") from None
        return cls(model=d["model"], arch_config=d["arch_config"], scenario=scenario,
                   device=d["device"], versions=d["versions"], timestamp=d["timestamp"],
                   measured=d["measured"], predictions=d["predictions"], run=d.get("run", {}),
                   schema=d["schema"], path=path)


# ------------------------------------------------------------------------------ validation
def _need(d: dict[str, Any], key: str, types: type | tuple[type, ...], where: str) -> Any:
    if key not in d:
        raise ProfileError(f"missing field '{where}{key}'")
    v = d[key]
    if not isinstance(v, types) or (isinstance(v, bool) and bool not in _tuple(types)):
        raise ProfileError(f"field '{where}{key}' has the wrong type ({type(v).__name__})")
    return v


def _tuple(t: type | tuple[type, ...]) -> tuple[type, ...]:
    return t if isinstance(t, tuple) else (t,)


def _no_constant(name: str) -> None:
    """``json.loads`` accepts NaN and Infinity; a profile holds measurements, which never are."""
    raise ProfileError(f"not valid JSON for a profile (non-standard constant {name})")


def _arch(config: dict[str, Any]) -> None:
    """The stored architecture must build (validate/calibrate price every profile from it)."""
    from vramplan.arch.spec import Arch, ArchError

    try:
        Arch.from_config(config)
    except ArchError as e:
        raise ProfileError(f"field 'arch_config' is not a usable config.json: {e}") from None


def _seconds(v: Any, where: str) -> None:
    if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not (math.isfinite(v) and v >= 0)):
        raise ProfileError(f"field '{where}' must be a finite non-negative number, got {v!r}")


def _bytes_or_none(d: dict[str, Any], key: str, where: str) -> None:
    v = _need(d, key, (int, type(None)), where)
    if v is not None and v < 0:
        raise ProfileError(f"field '{where}{key}' is negative")


def validate(d: Any) -> None:
    """Check a profile dict against ``SCHEMA``; raise ProfileError naming the first problem."""
    if not isinstance(d, dict):
        raise ProfileError("a profile must be a JSON object")
    schema = d.get("schema")
    if schema not in READABLE:
        raise ProfileError(f"unknown schema {schema!r} (this vramplan reads {', '.join(READABLE)})")
    _need(d, "model", str, "")
    _arch(_need(d, "arch_config", dict, ""))
    _need(d, "scenario", dict, "")
    _need(d, "timestamp", str, "")
    _need(d, "versions", dict, "")
    dev = _need(d, "device", dict, "")
    if dev.get("kind") not in ("cuda", "cpu"):
        raise ProfileError(f"field 'device.kind' must be 'cuda' or 'cpu', got {dev.get('kind')!r}")
    _need(dev, "name", str, "device.")
    _bytes_or_none(dev, "total_memory_bytes", "device.")
    m = _need(d, "measured", dict, "")
    for key in ("allocated_peak_bytes", "reserved_peak_bytes", "active_peak_bytes",
                "process_peak_bytes", "managed_bytes"):
        _bytes_or_none(m, key, "measured.")
    phases = _need(m, "phases", dict, "measured.")
    for key in PHASES:
        _bytes_or_none(phases, key, "measured.phases.")
    for key in ("step_seconds", "tokens_per_second"):
        _seconds(_need(m, key, (int, float, type(None)), "measured."), f"measured.{key}")
    for i, v in enumerate(m.get("step_seconds_all") or []):
        _seconds(v, f"measured.step_seconds_all[{i}]")
    if "first_step_peak_bytes" in m:
        _bytes_or_none(m, "first_step_peak_bytes", "measured.")
    oom = _need(m, "oom", (dict, type(None)), "measured.")
    if oom is None:
        if m["allocated_peak_bytes"] is None:
            raise ProfileError("field 'measured.allocated_peak_bytes' is null but no OOM is recorded")
    else:
        if oom.get("phase") not in OOM_PHASES:
            raise ProfileError(f"field 'measured.oom.phase' must be one of {', '.join(OOM_PHASES)}")
        _bytes_or_none(oom, "allocated_bytes", "measured.oom.")
        _need(oom, "message", str, "measured.oom.")
    preds = _need(d, "predictions", dict, "")
    for engine in ("analytic", "trace"):
        p = _need(preds, engine, (dict, type(None)), "predictions.")
        if p is not None:
            try:
                Breakdown.from_dict(p)
            except (KeyError, TypeError, ValueError, AttributeError) as e:
                raise ProfileError(f"field 'predictions.{engine}' is not a breakdown: {e}") from None
            for key in ("allocated_peak_bytes", "reserved_peak_bytes", "total_bytes"):
                _need(p, key, int, f"predictions.{engine}.")
    run = d.get("run", {})
    if not isinstance(run, dict):
        raise ProfileError("field 'run' must be an object")
    par = run.get("parallel")
    if par is not None:
        _parallel(par, d["scenario"])


def _parallel(par: Any, scenario: dict[str, Any]) -> None:
    """``run.parallel`` of one rank of a multi-process run (absent from older and single-process
    profiles): strategy, world size and rank, which must be the scenario's."""
    if not isinstance(par, dict):
        raise ProfileError("field 'run.parallel' must be an object")
    world = _need(par, "world_size", int, "run.parallel.")
    rank = _need(par, "rank", int, "run.parallel.")
    strategy = _need(par, "strategy", str, "run.parallel.")
    if not 0 <= rank < world:
        raise ProfileError(f"field 'run.parallel.rank' {rank} is not a rank of world size {world}")
    want = (scenario.get("strategy"), scenario.get("gpus", 1) * scenario.get("nodes", 1), scenario.get("process_rank"))
    if (strategy, world, rank) != want:
        raise ProfileError(f"field 'run.parallel' ({strategy}, world {world}, rank {rank}) disagrees with the "
                           f"scenario ({want[0]}, world {want[1]}, rank {want[2]})")


# ------------------------------------------------------------------------------------ IO
def now_utc() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _slug(text: str) -> str:
    s = re.sub(r"[^A-Za-z0-9.]+", "-", text.split("/")[-1] if "/" in text else text).strip("-.")
    return s[:60] or "model"


def file_name(p: Profile) -> str:
    """``<model>_<device>_s<seq>_b<batch>_r<rank>_<UTC stamp>.json``; the device is ``cpu`` or the
    GPU's name (``H100-80GB-HBM3``); a framework's trainer run (``run.framework``) puts the framework
    and its version after the model (``Qwen3-0.6B_trl-1.16.0_cpu_...``); one rank of a multi-process run
    its strategy, world size and rank (``vramplan-debug_ddp-w2r0_cpu_...``)."""
    s = p.scenario
    stamp = re.sub(r"[^0-9T]", "", p.timestamp)[:15]
    dev = "cpu" if p.device["kind"] == "cpu" else _slug(strip_vendor(p.device["name"]))[:24]
    fw = p.run.get("framework") if isinstance(p.run, dict) else None
    tag = f"_{_slug(str(fw.get('name')))}-{_slug(str(fw.get('version')))}" if isinstance(fw, dict) else ""
    if s.distributed:  # one profile per rank: ``_fsdp-w2r1``
        tag += f"_{s.strategy.value}-w{s.world_size}r{s.process_rank}"
    return f"{_slug(p.model)}{tag}_{dev}_s{s.seq}_b{s.batch}_r{s.rank}_{stamp}.json"


def check_writable(folder: str | Path) -> Path:
    """Create ``folder`` if needed and prove a file can be written there, before any long run."""
    path = Path(folder).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".vramplan-probe-", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ProfileError(f"output directory {path} is not writable: {e.strerror or e}") from None
    return path


def save_profile(profile: Profile, folder: str | Path) -> Path:
    """Write atomically (temporary file, then a hard link that fails if the name exists) and never
    replace an existing file: a clash gets a ``-2``, ``-3``... suffix. Returns the path written."""
    d = profile.to_dict()
    validate(d)
    folder = check_writable(folder)
    text = json.dumps(d, indent=2, sort_keys=False, allow_nan=False) + "\n"
    fd, tmp = tempfile.mkstemp(prefix=".vramplan-", suffix=".json.tmp", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, umask_mode())  # mkstemp makes 0600; a profile is as readable as any new file
        base = file_name(profile)[: -len(".json")]
        for n in range(1, 1000):
            target = folder / (f"{base}.json" if n == 1 else f"{base}-{n}.json")
            try:
                _place(tmp, target)
                return target
            except FileExistsError:
                continue
        raise ProfileError(f"too many profiles named {base}*.json in {folder}")
    except OSError as e:
        raise ProfileError(f"cannot write profile to {folder}: {e.strerror or e}") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _place(tmp: str, target: Path) -> None:
    """Put ``tmp`` at ``target`` atomically, failing with FileExistsError if ``target`` exists."""
    try:
        os.link(tmp, target)
    except FileExistsError:
        raise
    except OSError:  # file systems without hard links: exclusive create, then atomic replace
        fd = os.open(target, os.O_CREAT | os.O_EXCL | os.O_WRONLY, umask_mode())
        os.close(fd)
        try:
            os.replace(tmp, target)
        except BaseException:  # never leave the empty placeholder behind (a failed rename, a signal)
            target.unlink(missing_ok=True)
            raise


def read_profile(path: str | Path) -> Profile:
    """One profile file; ProfileError (one line) if it cannot be read or does not validate."""
    p = Path(path)
    text = read_text_file(p, "profile", ProfileError)
    try:
        data = json.loads(text, parse_constant=_no_constant)
    except json.JSONDecodeError as e:
        raise ProfileError(f"{p}: not valid JSON ({e.msg} at line {e.lineno})") from None
    except RecursionError:
        raise ProfileError(f"{p}: not a profile (JSON nested too deeply)") from None
    except ProfileError as e:
        raise ProfileError(f"{p}: {e}") from None
    try:
        return Profile.from_dict(data, path=p)
    except ProfileError as e:
        raise ProfileError(f"{p}: {e}") from None


def iter_profile_files(folder: str | Path) -> list[Path]:
    """``*.json`` under ``folder`` (recursively), sorted; a single file is returned as itself."""
    root = Path(folder).expanduser()
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise ProfileError(f"no profile directory {root}")
    return sorted(p for p in root.rglob("*.json") if not p.name.startswith("."))


def load_profiles(folder: str | Path, problems: list[str] | None = None) -> list[Profile]:
    """Every valid profile under ``folder`` (recursively), oldest first.

    A file that is corrupt or has an unknown schema is skipped: its one-line reason is appended to
    ``problems`` when given, else logged as a warning. Only a missing folder is an error.
    """
    out: list[Profile] = []
    for p in iter_profile_files(folder):
        try:
            out.append(read_profile(p))
        except ProfileError as e:
            if problems is not None:
                problems.append(str(e))
            else:
                log.warning("skipping profile: %s", e)
    out.sort(key=lambda pr: (pr.timestamp, str(pr.path)))
    return out


def select(profiles: Iterable[Profile], model: str | None = None, device: str | None = None) -> list[Profile]:
    """Filter by model and device substrings (case-insensitive)."""
    out = []
    for p in profiles:
        if model and model.lower() not in p.model.lower():
            continue
        if device and device.lower() not in f"{p.device['kind']} {p.device['name']}".lower():
            continue
        out.append(p)
    return out

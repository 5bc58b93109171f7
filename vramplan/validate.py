"""Predicted against measured: stored profiles and the published reference rows.

Like is compared with like: a figure read with ``max_memory_allocated`` (or the CPU tracker) is
compared with the estimate's allocated peak, ``max_memory_reserved`` with the reserved peak, and an
nvidia-smi / NVML figure with the process total (``MEASUREMENTS`` in ``vramplan.reference``).

The summary is computed over the rows in scope only: median |error|, worst under-prediction (the
estimate below the measurement: a user would OOM) and worst over-prediction. The fit / no-fit verdict
is checked for every usable row on a known GPU: "predicted process total ≤ GPU memory" against "the
run fit". Library only: nothing here prints; the CLI renders a ``ValidationReport``.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from vramplan.breakdown import Breakdown
from vramplan.calibration import Calibration, default_calibration
from vramplan.errors import VramplanError
from vramplan.reference import ReferenceRow, load_reference

#: (arch, scenario, calibration, device) -> Breakdown. Defaults to ``vramplan.analytic.estimate``.
Estimator = Callable[..., Breakdown]

#: Profile measured key -> (measurement kind, Breakdown total).
PROFILE_TOTALS = (
    ("allocated", "allocated_peak_bytes", "allocated_peak_bytes"),
    ("reserved", "reserved_peak_bytes", "reserved_peak_bytes"),
    ("process", "process_peak_bytes", "total_bytes"),
)


class ValidationError(VramplanError):
    """Nothing to validate, or inputs that cannot be compared."""


def default_estimator() -> Estimator:
    try:
        from vramplan.analytic import estimate
    except ImportError as e:  # pragma: no cover - the engine ships with the package
        raise ValidationError(f"the analytic engine is not available: {e}") from None
    return estimate


@dataclass(frozen=True)
class Point:
    """One comparable figure: a configuration, where it ran, what was measured and how."""

    id: str
    origin: str
    """``reference`` or ``profile``."""
    model: str
    arch: Any
    scenario: Any
    device: str
    """Device name passed to the estimator (GPU name, or 'cpu')."""
    device_kind: str
    """``cuda`` or ``cpu``."""
    measurement: str
    """allocated / reserved / process / active / capacity / unknown."""
    total_key: str | None
    measured_bytes: int | None
    status: str
    """``in``, ``verdict`` or ``out``."""
    reason: str = ""
    gpu_memory_bytes: int | None = None
    fit_actual: bool | None = None
    """Did the run fit the GPU? (None: no GPU to judge by.)"""
    source: str = ""


@dataclass(frozen=True)
class Row:
    """One validated figure."""

    id: str
    origin: str
    model: str
    device: str
    measurement: str
    status: str
    reason: str
    measured_bytes: int | None
    predicted_bytes: int | None
    upper_bytes: int | None
    gpu_memory_bytes: int | None
    predicted_total_bytes: int | None
    upper_total_bytes: int | None
    fit_actual: bool | None
    source: str = ""
    scope: str = ""
    """The row's scope before pricing: an ``in`` row the engine could not price has status ``out``."""
    peak_phase: str = ""
    """The step phase the estimate peaks in (``Breakdown.peak_phase``), to locate a miss."""

    @property
    def error(self) -> float | None:
        """(predicted − measured) / measured: negative = under-prediction."""
        if self.predicted_bytes is None or not self.measured_bytes or self.measurement in ("capacity", "unknown"):
            return None
        return (self.predicted_bytes - self.measured_bytes) / self.measured_bytes

    @property
    def fit_predicted(self) -> bool | None:
        if self.gpu_memory_bytes is None or self.predicted_total_bytes is None:
            return None
        return self.predicted_total_bytes <= self.gpu_memory_bytes

    @property
    def fit_conservative(self) -> bool | None:
        if self.gpu_memory_bytes is None or self.upper_total_bytes is None:
            return None
        return self.upper_total_bytes <= self.gpu_memory_bytes

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(error=self.error, fit_predicted=self.fit_predicted, fit_conservative=self.fit_conservative)
        return d


@dataclass(frozen=True)
class Summary:
    """Figures over one set of rows."""

    rows: int
    median_abs_error: float | None
    worst_under: tuple[str, float] | None
    """(row id, error) of the most negative error, if any row is under-predicted."""
    worst_over: tuple[str, float] | None
    verdict_rows: int
    verdict_agree: int
    verdict_agree_conservative: int
    unpriced: tuple[str, ...] = ()
    """Rows in scope that the engine could not price (a modelling gap, not a pass)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def summarize(rows: Iterable[Row], status: str = "in") -> Summary:
    """Figures over the rows of one status (``in`` for the targets; ``out`` for approximations)."""
    rows = list(rows)
    errs = [(r.id, r.error) for r in rows if r.status == status and r.error is not None]
    under = min(errs, key=lambda t: t[1]) if errs else None
    over = max(errs, key=lambda t: t[1]) if errs else None
    judged = [r for r in rows if r.status in ((status, "verdict") if status == "in" else (status,))
              and r.fit_predicted is not None and r.fit_actual is not None]
    return Summary(
        rows=len(errs),
        median_abs_error=statistics.median(abs(e) for _, e in errs) if errs else None,
        worst_under=under if under and under[1] < 0 else None,
        worst_over=over if over and over[1] > 0 else None,
        verdict_rows=len(judged),
        verdict_agree=sum(r.fit_predicted == r.fit_actual for r in judged),
        verdict_agree_conservative=sum(r.fit_conservative == r.fit_actual for r in judged),
        unpriced=tuple(r.id for r in rows if status == "in" and r.scope in ("in", "verdict")
                       and r.predicted_total_bytes is None),
    )


@dataclass(frozen=True)
class ValidationReport:
    rows: tuple[Row, ...]
    reference: Summary
    """Over the reference rows in scope (the accuracy targets)."""
    profiles: Summary
    """Over the profile rows."""
    calibration: str
    """``fitted_on`` of the calibration used."""
    approximate: Summary | None = None
    """Over out-of-scope reference rows that a Scenario approximates: informative, never a target."""
    problems: tuple[str, ...] = field(default=())
    """Files skipped while loading profiles, and why."""

    def to_dict(self) -> dict[str, Any]:
        return {"calibration": self.calibration, "reference": self.reference.to_dict(),
                "profiles": self.profiles.to_dict(),
                "approximate": None if self.approximate is None else self.approximate.to_dict(),
                "problems": list(self.problems),
                "rows": [r.to_dict() for r in self.rows]}


# --------------------------------------------------------------------------------- points
def gpu_capacity(name: str, fallback: int | None) -> int | None:
    """Memory a process can fill on a GPU, CUDA context included: the catalog's total less the
    driver's reserve (``vramplan.gpus``), else the datasheet figure stored with the row."""
    if not name:
        return fallback
    try:
        from vramplan.gpus import find_gpu

        g = find_gpu(name)
    except (ImportError, VramplanError):
        return fallback
    return g.memory_bytes - g.driver_reserved_bytes


def reference_points(rows: Iterable[ReferenceRow]) -> list[Point]:
    """Reference rows as points (rows that cannot be priced keep arch None)."""
    from vramplan.arch.lookup import find_entry

    out = []
    for r in rows:
        entry = find_entry(r.registry_model)
        arch = entry.arch() if entry is not None and r.scenario is not None else None
        out.append(Point(id=r.id, origin="reference", model=r.registry_model, arch=arch, scenario=r.scenario,
                         device=r.gpu or "cuda", device_kind="cuda", measurement=r.measurement,
                         total_key=r.total_key, measured_bytes=r.measured_bytes, status=r.status,
                         reason=r.status_reason, gpu_memory_bytes=gpu_capacity(r.gpu, r.gpu_memory_bytes),
                         fit_actual=True if r.gpu_memory_bytes else None, source=r.source))
    return out


def profile_points(profiles: Iterable[Any]) -> list[Point]:
    """Each profile gives one point per figure its device has (CPU: allocated only)."""
    from vramplan.arch.spec import Arch

    out = []
    for p in profiles:
        kind = p.device.get("kind", "cpu")
        name = p.device.get("name") or kind
        arch = Arch.from_config(p.arch_config, name=p.model)
        pid = Path(p.path).stem if getattr(p, "path", None) else f"{p.model}@{p.timestamp}"
        oom = p.measured.get("oom")
        gpu_bytes = p.device.get("total_memory_bytes") if kind == "cuda" else None
        if oom is not None:  # an OOM run: only its verdict can be checked
            out.append(Point(id=f"{pid}:oom", origin="profile", model=p.model, arch=arch, scenario=p.scenario,
                             device=name if kind == "cuda" else "cpu", device_kind=kind, measurement="capacity",
                             total_key="total_bytes", measured_bytes=None, status="verdict",
                             reason=f"OOM in {oom.get('phase')}", gpu_memory_bytes=gpu_bytes,
                             fit_actual=False if gpu_bytes else None, source=str(p.path or "")))
            continue
        totals = PROFILE_TOTALS if kind == "cuda" else PROFILE_TOTALS[:1]
        for measurement, mkey, total_key in totals:
            measured = p.measured.get(mkey)
            if not measured:
                continue
            out.append(Point(id=f"{pid}:{measurement}", origin="profile", model=p.model, arch=arch,
                             scenario=p.scenario, device=name if kind == "cuda" else "cpu", device_kind=kind,
                             measurement=measurement, total_key=total_key, measured_bytes=int(measured),
                             status="in", gpu_memory_bytes=gpu_bytes if measurement == "allocated" else None,
                             fit_actual=True if gpu_bytes and measurement == "allocated" else None,
                             source=str(p.path or "")))
    return out


# ------------------------------------------------------------------------------- predict
def predict(point: Point, calibration: Calibration, estimator: Estimator | None = None) -> Breakdown | None:
    """The estimate for a point, or None when it cannot be priced (no arch or scenario)."""
    if point.arch is None or point.scenario is None:
        return None
    est = estimator or default_estimator()
    return est(point.arch, point.scenario, calibration=calibration, device=point.device)


def _upper(b: Breakdown, key: str, calibration: Calibration, device: str) -> int:
    if b.upper is not None:
        return b.upper.get(key)
    frac = calibration.for_device(device).upper_bound_fraction
    return int(getattr(b, key) * (1 + frac))


def validate_points(points: Iterable[Point], calibration: Calibration | None = None,
                    estimator: Estimator | None = None) -> list[Row]:
    cal = calibration or default_calibration()
    rows = []
    for pt in points:
        reason = pt.reason
        try:
            b = predict(pt, cal, estimator)
        except VramplanError as e:  # the engine cannot price this configuration: say so, go on
            b, reason = None, f"engine cannot price it: {e}" + (f"; {reason}" if reason else "")
        key = pt.total_key
        rows.append(Row(
            id=pt.id, origin=pt.origin, model=pt.model, device=pt.device, measurement=pt.measurement,
            status=pt.status if b is not None else "out", reason=reason, measured_bytes=pt.measured_bytes,
            predicted_bytes=int(getattr(b, key)) if b is not None and key else None,
            upper_bytes=_upper(b, key, cal, pt.device) if b is not None and key else None,
            gpu_memory_bytes=pt.gpu_memory_bytes,
            predicted_total_bytes=b.total_bytes if b is not None else None,
            upper_total_bytes=_upper(b, "total_bytes", cal, pt.device) if b is not None else None,
            fit_actual=pt.fit_actual, source=pt.source, scope=pt.status,
            peak_phase=(b.peak_phase or "") if b is not None else "",
        ))
    return rows


def load_profile_paths(paths: Iterable[str], problems: list[str]) -> list[Any]:
    """Profiles from files and folders. A folder's unreadable files become ``problems``; a file named
    explicitly that fails, or a path that does not exist, is an error."""
    from vramplan.profile.store import READABLE, ProfileError, load_profiles, read_profile

    out: list[Any] = []
    for raw in paths:
        p = Path(raw).expanduser()
        if p.is_dir():
            out.extend(load_profiles(p, problems=problems))
        elif p.is_file():
            try:
                out.append(read_profile(p))
            except ProfileError as e:
                msg = str(e)
                if "unknown schema" in msg:
                    msg += (f"; no migration exists to {', '.join(READABLE)}: re-record it with "
                            "`vramplan profile`")
                raise ValidationError(msg) from None
        else:
            raise ValidationError(f"no such profile file or folder: {raw}")
    schema_skips = [m for m in problems if "unknown schema" in m]
    if schema_skips:
        problems.append(f"{len(schema_skips)} profile(s) skipped for another schema version: re-record them "
                        "with `vramplan profile` (no migration exists)")
    return out


def load_profile_folder(folder: str | Path | None, problems: list[str]) -> list[Any]:
    """Profiles under ``folder``; the default folder may be absent (then: none)."""
    from vramplan.profile.store import load_profiles

    if folder is None:
        return []
    return load_profiles(folder, problems=problems)


def validate(profiles: Iterable[Any] = (), reference: Iterable[ReferenceRow] | None = None,
             calibration: Calibration | None = None, estimator: Estimator | None = None,
             problems: Iterable[str] = ()) -> ValidationReport:
    """Validate profiles and reference rows (``reference=None``: the shipped dataset)."""
    cal = calibration or default_calibration()
    ref = load_reference() if reference is None else list(reference)
    points = reference_points(ref) + profile_points(profiles)
    if not points:
        raise ValidationError("nothing to validate: no profiles and no reference rows")
    rows = validate_points(points, cal, estimator)
    return ValidationReport(
        rows=tuple(rows),
        reference=summarize(r for r in rows if r.origin == "reference"),
        profiles=summarize(r for r in rows if r.origin == "profile"),
        approximate=summarize((r for r in rows if r.origin == "reference"), status="out"),
        calibration=cal.fitted_on, problems=tuple(problems),
    )

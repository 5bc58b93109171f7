"""Fit the analytic engine's free runtime constants to measurements.

Each measured figure ``m_i`` (a profile total or a reference row in scope) has a prediction that is
linear in the constants θ (context, workspace, reserve fraction and bytes, dequant factor):

    p_i(θ) = p_i(θ₀) + Σ_k J_ik (θ_k − θ₀_k),   J_ik = ∂p_i/∂θ_k   (1)

J is measured by finite differences of the estimator itself, so the fit never re-implements which
term enters which total. The fit minimises relative residuals plus a Gaussian prior per constant
(a physically stated value and width, ``PRIORS``):

    Σ_i w_i ((p_i(θ) − m_i) / (m_i·NOISE))² + Σ_k ((θ_k − μ_k)/σ_k)²                          (2)

with Huber weights w_i (robust: with enough rows, one odd row cannot drag a constant), refitted
until stable, and constants held at their lower bound when the unconstrained optimum is below it.
This is a Bayesian linear regression: the one-sigma uncertainty is the square root of the diagonal
of the posterior covariance, inflated by χ²/dof when the residuals scatter more than ``NOISE``.

A constant is fitted only when at least ``min_points`` figures are sensitive to it; otherwise it
keeps its prior value and the result says why. Per device kind (GPU name), constants are refitted
with the global fit as prior when that device has enough figures of its own.

``upper_bound_fraction`` is then set so that point × (1 + it) covers the worst under-prediction
in scope among figures of at least ``BOUND_MIN_BYTES``, with a floor (``UPPER_BOUND_FLOOR``).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable

from vramplan.calibration import Calibration
from vramplan.device import Device
from vramplan.errors import VramplanError
from vramplan.fileio import write_text_atomic
from vramplan.validate import Estimator, Point, default_estimator

MiB = 1024**2

#: Constant -> (prior mean, prior one-sigma, lower bound, finite-difference step, unit), each stated.
PRIORS: dict[str, tuple[float, float, float, float, str]] = {
    # CUDA 12 context with lazy module loading: ~300-600 MiB on A100/H100 (nvidia-smi of an idle
    # torch process after the first kernel; PyTorch forum and NVIDIA lazy-loading notes).
    "cuda_context_bytes": (512 * MiB, 256 * MiB, 0, 64 * MiB, "bytes"),
    # PyTorch's default CUBLAS_WORKSPACE_CONFIG ':4096:8' (Hopper, 32 MiB) / ':4096:2:16:8' (~8 MiB).
    "cublas_workspace_bytes": (32 * MiB, 32 * MiB, 0, 64 * MiB, "bytes"),
    # caching allocator: 2 MiB / 20 MiB block rounding and split blocks; a few % of the peak.
    "allocator_reserve_fraction": (0.06, 0.05, 0.0, 0.01, "fraction"),
    "allocator_reserve_bytes": (0, 512 * MiB, 0, 64 * MiB, "bytes"),
    # freed loss-workspace blocks (b·s·V-sized) left cached: of the order of one of the three fp32
    # b·s·V buffers, i.e. a third of the workspace; wide, the data decide.
    "allocator_reserve_loss_factor": (0.3, 0.3, 0.0, 0.05, "fraction"),
    # one dequantized copy of the 4-bit weight alive at a time in bitsandbytes' matmul_4bit.
    "fused_dequant_factor": (1.0, 1.0, 0.0, 0.5, "factor"),
}
FITTABLE = tuple(PRIORS)
#: The schema of a calibration file.
SCHEMA = "vramplan.calibration/1"
#: The bound never claims less than this margin, however few rows were under-predicted.
UPPER_BOUND_FLOOR = 0.02
#: Figures below this size do not set the bound: a smoke-test model's few MiB are dominated by the
#: caching allocator's 2 MiB segment rounding, which says nothing about a run a GPU is rented for.
BOUND_MIN_BYTES = 1024**3
HUBER_K = 1.345
#: Relative scatter assumed for one measured figure: published rounding (0.01 GB), run-to-run
#: variation and terms no constant captures. Weighs the data against the priors in eq. (2).
NOISE = 0.02


class CalibrateError(VramplanError):
    """Too little data to fit what was asked, or nothing to fit at all."""


@dataclass(frozen=True)
class Fitted:
    """One constant after the fit."""

    name: str
    before: float
    after: float
    sigma: float | None
    """One-sigma uncertainty (None when not fitted)."""
    points: int
    """How many figures are sensitive to it."""
    fitted: bool
    note: str = ""

    @property
    def prior_sigma(self) -> float:
        """The prior's one-sigma width (``PRIORS``)."""
        return PRIORS[self.name][1]

    @property
    def weak(self) -> bool:
        """Fitted, but the data narrowed it no further than its prior."""
        return self.fitted and self.sigma is not None and self.sigma >= self.prior_sigma


@dataclass(frozen=True)
class Residual:
    id: str
    device: str
    measurement: str
    measured_bytes: int
    before_bytes: int
    after_bytes: int

    @property
    def error_before(self) -> float:
        return (self.before_bytes - self.measured_bytes) / self.measured_bytes

    @property
    def error_after(self) -> float:
        return (self.after_bytes - self.measured_bytes) / self.measured_bytes


@dataclass(frozen=True)
class CalibrationResult:
    calibration: Calibration
    constants: tuple[Fitted, ...]
    residuals: tuple[Residual, ...]
    per_device: dict[str, tuple[Fitted, ...]] = field(default_factory=dict)
    skipped: tuple[str, ...] = ()
    """Figures left out because the engine cannot price them, with the engine's message."""

    def to_dict(self) -> dict[str, Any]:
        d = self.calibration.to_dict()
        d["residuals"] = [dict(id=r.id, device=r.device, measurement=r.measurement,
                               measured_bytes=r.measured_bytes, before_bytes=r.before_bytes,
                               after_bytes=r.after_bytes) for r in self.residuals]
        return d

    def write(self, path: str | Path, force: bool = False) -> dict[str, Any]:
        """Write the calibration file (what ``Calibration.load`` reads) atomically and return its
        content. An existing file is replaced only with ``force``; a stored profile never is."""
        payload = {"schema": SCHEMA, **self.to_dict()}
        target = check_output(path, force)
        try:
            write_text_atomic(target, json.dumps(payload, indent=2) + "\n")
        except OSError as e:
            raise CalibrateError(f"cannot write calibration to {target}: {e.strerror or e}") from None
        return payload


def check_output(path: str | Path, force: bool = False) -> Path:
    """Refuse, before any work, an output path that would lose data: a stored profile (always), an
    existing file (unless ``force``), anything that is not a regular file."""
    target = Path(path)
    if _is_profile(target):
        raise CalibrateError(f"{target} holds a stored profile; write elsewhere")
    if target.exists() and not target.is_file():
        raise CalibrateError(f"cannot write {target}: not a regular file")
    if target.exists() and not force:
        raise CalibrateError(f"{target} exists; pass --force to replace it, or choose another -o")
    return target


def _is_profile(path: Path) -> bool:
    """Whether ``path`` is a stored profile (a JSON object whose schema names a profile)."""
    from vramplan.errors import read_json_file

    if not path.is_file():
        return False
    try:
        data = read_json_file(path, "file", CalibrateError)
    except CalibrateError:
        return False
    return isinstance(data, dict) and str(data.get("schema", "")).startswith("vramplan.profile")


# ------------------------------------------------------------------------ linear algebra
def _solve(a: list[list[float]], b: list[float]) -> list[float]:
    """Gauss-Jordan with partial pivoting (small dense systems; no numpy needed)."""
    n = len(b)
    m = [row[:] + [b[i]] for i, row in enumerate(a)]
    for c in range(n):
        piv = max(range(c, n), key=lambda r: abs(m[r][c]))
        if abs(m[piv][c]) < 1e-300:
            raise CalibrateError("singular calibration system")
        m[c], m[piv] = m[piv], m[c]
        for r in range(n):
            if r != c:
                f = m[r][c] / m[c][c]
                m[r] = [x - f * y for x, y in zip(m[r], m[c])]
    return [m[i][n] / m[i][i] for i in range(n)]


def _inverse(a: list[list[float]]) -> list[list[float]]:
    n = len(a)
    cols = [_solve(a, [1.0 if i == j else 0.0 for i in range(n)]) for j in range(n)]
    return [[cols[j][i] for j in range(n)] for i in range(n)]


# --------------------------------------------------------------------------------- model
def _value(cal: Calibration, name: str) -> float:
    return float(getattr(cal, name))


def _with(cal: Calibration, values: dict[str, float]) -> Calibration:
    kw = {k: (int(round(v)) if PRIORS[k][4] == "bytes" else float(v)) for k, v in values.items()}
    return replace(cal, **kw)


def _predict(points: list[Point], cal: Calibration, est: Estimator) -> list[float]:
    out = []
    for p in points:
        b = est(p.arch, p.scenario, calibration=cal, device=p.device)
        out.append(float(getattr(b, p.total_key)))
    return out


def jacobian(points: list[Point], cal: Calibration, est: Estimator,
             names: Iterable[str] = FITTABLE) -> tuple[list[float], dict[str, list[float]]]:
    """Predictions at ``cal`` and ∂prediction/∂constant per point, by forward differences (eq. 1)."""
    base = _predict(points, cal, est)
    jac = {}
    for name in names:
        step = PRIORS[name][3]
        moved = _predict(points, _with(cal, {name: _value(cal, name) + step}), est)
        jac[name] = [(m - b) / step for m, b in zip(moved, base)]
    return base, jac


def _fit(points: list[Point], cal: Calibration, est: Estimator, names: list[str],
         prior: dict[str, tuple[float, float]], robust: bool = True) -> tuple[dict[str, float], dict[str, float]]:
    """Solve eq. (2) for ``names``; returns (values, one-sigma uncertainties).

    Works in prior-sigma units z_k = (θ_k − θ₀_k)/σ_k so that byte and fraction constants share one
    well-conditioned system; the data term is divided by ``NOISE``² (Bayesian linear regression).
    """
    base, jac = jacobian(points, cal, est, names)
    # figures that none of these constants move carry no information about them: leave them out
    # of the fit, so they neither set the Huber scale nor pad the degrees of freedom.
    keep = [i for i in range(len(points)) if any(abs(jac[k][i]) * PRIORS[k][3] > 1.0 for k in names)]
    points = [points[i] for i in keep]
    base = [base[i] for i in keep]
    jac = {k: [col[i] for i in keep] for k, col in jac.items()}
    meas = [float(p.measured_bytes) for p in points]
    theta0 = {k: _value(cal, k) for k in names}
    sd = {k: prior[k][1] for k in names}
    free = list(names)
    pinned: dict[str, float] = {}
    weights = [1.0] * len(points)
    z: dict[str, float] = {}
    ata: list[list[float]] = []
    for _ in range(25):
        while True:  # active set: pin constants whose optimum lies below their lower bound
            ata, atb = _normal_equations(meas, base, jac, weights, free, pinned, theta0, sd, prior)
            sol = _solve(ata, atb) if free else []
            z = dict(zip(free, sol))
            low = [k for k in free if theta0[k] + sd[k] * z[k] < PRIORS[k][2]]
            if not low:
                break
            for k in low:
                pinned[k] = PRIORS[k][2]
                free.remove(k)
        values = {k: theta0[k] + sd[k] * z[k] for k in free} | pinned
        res = [(base[i] + sum(jac[k][i] * (values[k] - theta0[k]) for k in names) - m) / m
               for i, m in enumerate(meas)]
        if not robust:
            break
        scale = max(sorted(abs(r) for r in res)[len(res) // 2] / 0.6745, NOISE)
        new = [1.0 if abs(r) <= HUBER_K * scale else HUBER_K * scale / abs(r) for r in res]
        if max(abs(a - b) for a, b in zip(new, weights)) < 1e-6:
            break
        weights = new
    return values, _sigmas(ata, free, sd, weights, res)


def _normal_equations(meas: list[float], base: list[float], jac: dict[str, list[float]], weights: list[float],
                      free: list[str], pinned: dict[str, float], theta0: dict[str, float], sd: dict[str, float],
                      prior: dict[str, tuple[float, float]]) -> tuple[list[list[float]], list[float]]:
    """(AᵀWA + I, AᵀWb − prior term) of eq. (2) for the ``free`` constants, in prior-sigma units, with the
    ``pinned`` ones held at their bound."""
    n = len(free)
    ata = [[0.0] * n for _ in range(n)]
    atb = [0.0] * n
    for i, m in enumerate(meas):
        fixed = sum(jac[k][i] * (v - theta0[k]) for k, v in pinned.items())
        c = (base[i] + fixed - m) / m
        row = [jac[k][i] * sd[k] / m for k in free]
        w = weights[i] / NOISE**2
        for a in range(n):
            atb[a] -= w * row[a] * c
            for b in range(n):
                ata[a][b] += w * row[a] * row[b]
    for a, k in enumerate(free):  # prior: (z + (θ₀ − μ)/σ)²
        ata[a][a] += 1.0
        atb[a] -= (theta0[k] - prior[k][0]) / sd[k]
    return ata, atb


def _sigmas(ata: list[list[float]], free: list[str], sd: dict[str, float], weights: list[float],
            res: list[float]) -> dict[str, float]:
    """One-sigma uncertainties of the free constants, inflated by the reduced χ² when it exceeds 1."""
    sigmas: dict[str, float] = {}
    if free:
        cov = _inverse(ata)
        dof = len(res) - len(free)
        chi2 = sum(w * r * r for w, r in zip(weights, res)) / NOISE**2
        inflate = max(1.0, chi2 / dof) if dof > 0 else 1.0
        for a, k in enumerate(free):
            sigmas[k] = sd[k] * math.sqrt(max(cov[a][a], 0.0) * inflate)
    return sigmas


def sensitive(points: list[Point], cal: Calibration, est: Estimator) -> dict[str, int]:
    """How many points each constant moves (by more than one byte per step)."""
    _, jac = jacobian(points, cal, est)
    return {k: sum(abs(v) * PRIORS[k][3] > 1.0 for v in col) for k, col in jac.items()}


def upper_bound_fraction(errors: Iterable[float]) -> float:
    """Smallest margin (rounded up to 0.5 %) with point × (1 + margin) ≥ measured for every row."""
    worst_under = max((-e / (1 + e) for e in errors if e < 0), default=0.0)
    return math.ceil(max(worst_under, UPPER_BOUND_FLOOR) * 200 - 1e-9) / 200


def fit(points: Iterable[Point], base: Calibration, estimator: Estimator | None = None,
        only: Iterable[str] | None = None, min_points: int = 2, min_device_points: int = 3,
        robust: bool = True, fitted_on: str | None = None) -> CalibrationResult:
    """Fit the constants to the in-scope points; see the module docstring."""
    est = estimator or default_estimator()
    pts, skipped = _priceable(points, base, est)
    glob = replace(base, per_device={})
    wanted = list(only) if only is not None else list(FITTABLE)
    bad = [k for k in wanted if k not in PRIORS]
    if bad:
        raise CalibrateError(f"unknown constant(s) {', '.join(bad)} (fittable: {', '.join(FITTABLE)})")
    counts = sensitive(pts, glob, est)
    fit_names = _fittable(wanted, counts, min_points, explicit=only is not None)
    prior = {k: (PRIORS[k][0], PRIORS[k][1]) for k in fit_names}
    values, sigmas = _fit(pts, glob, est, fit_names, prior, robust)
    # the peak is a max over phases, so predictions are only piecewise linear: re-linearise once
    # at the solution (Gauss-Newton) in case a constant moved the peak to another phase.
    values, sigmas = _fit(pts, _with(glob, values), est, fit_names, prior, robust)
    after = _with(glob, values)
    per_device, per_device_fitted = _fit_devices(pts, after, est, values, fit_names, min_device_points, robust)
    final = replace(after, per_device={**base.per_device, **per_device})
    before_pred = _predict(pts, base, est)
    after_pred = [float(getattr(est(p.arch, p.scenario, calibration=final, device=p.device), p.total_key))
                  for p in pts]
    residuals = tuple(Residual(p.id, p.device, p.measurement, int(p.measured_bytes), int(b), int(a))
                      for p, b, a in zip(pts, before_pred, after_pred))
    ubf = upper_bound_fraction(r.error_after for r in residuals if r.measured_bytes >= BOUND_MIN_BYTES)
    unc = {k: float(v) for k, v in sigmas.items()}
    final = replace(final, upper_bound_fraction=ubf, uncertainty=unc, device="any",
                    fitted_on=fitted_on or describe(pts))
    constants = tuple(
        Fitted(k, _value(base, k), _value(final, k), sigmas.get(k), counts[k], k in fit_names and k in sigmas,
               "" if k in sigmas else (f"kept: {counts[k]} sensitive figures, needs {min_points} ({_needs(k)})"
                                       if k not in fit_names else "at its lower bound"))
        for k in wanted)
    return CalibrationResult(final, constants, residuals, per_device_fitted, tuple(skipped))


def _priceable(points: Iterable[Point], base: Calibration, est: Estimator) -> tuple[list[Point], list[str]]:
    """The in-scope measured points the engine can price, and a line for each it cannot."""
    pts, skipped = [], []
    for p in points:
        if not (p.status == "in" and p.arch is not None and p.scenario is not None and p.total_key
                and p.measured_bytes):
            continue
        try:
            est(p.arch, p.scenario, calibration=base, device=p.device)
        except VramplanError as e:  # a configuration the engine cannot price: left out, reported
            skipped.append(f"{p.id}: {e}")
            continue
        pts.append(p)
    if not pts:
        raise CalibrateError("no measured figures to fit: give profiles with measured peaks, or use the "
                             "reference rows in scope")
    return pts, skipped


def _fittable(wanted: list[str], counts: dict[str, int], min_points: int, explicit: bool) -> list[str]:
    """The ``wanted`` constants enough figures move; too few for one asked for ``explicit``ly is an error."""
    fit_names = [k for k in wanted if counts[k] >= min_points]
    short = [k for k in wanted if counts[k] < min_points]
    if explicit and short:
        raise CalibrateError("too few figures to fit " + "; ".join(
            f"{k} ({counts[k]} sensitive, need {min_points}: {_needs(k)})" for k in short))
    if not fit_names:
        raise CalibrateError("too few figures to fit any constant: " + "; ".join(
            f"{k} has {counts[k]} (needs {min_points}: {_needs(k)})" for k in wanted))
    return fit_names


def _fit_devices(pts: list[Point], after: Calibration, est: Estimator, values: dict[str, float],
                 fit_names: list[str], min_device_points: int, robust: bool
                 ) -> tuple[dict[str, dict[str, Any]], dict[str, tuple[Fitted, ...]]]:
    """Per-device entries: each named GPU with enough figures refits the constants they move, with the
    global fit as its prior; returns (calibration entries, what was fitted)."""
    per_device: dict[str, dict[str, Any]] = {}
    per_device_fitted: dict[str, tuple[Fitted, ...]] = {}
    kinds = {p.device: Device.parse(p.device).calibration_key or p.device for p in pts}
    for dev in sorted(set(kinds.values()) - {"cuda"}):  # 'cuda' = unnamed GPU: global only
        dpts = [p for p in pts if kinds[p.device] == dev]
        if len(dpts) < min_device_points:
            continue
        dcounts = sensitive(dpts, after, est)
        dnames = [k for k in fit_names if dcounts[k] >= min_device_points]
        if not dnames:
            continue
        dprior = {k: (values[k], PRIORS[k][1]) for k in dnames}
        dvals, dsig = _fit(dpts, after, est, dnames, dprior, robust)
        per_device[dev] = {k: (int(round(v)) if PRIORS[k][4] == "bytes" else float(v)) for k, v in dvals.items()}
        per_device_fitted[dev] = tuple(Fitted(k, values[k], dvals[k], dsig.get(k), dcounts[k], True)
                                       for k in dnames)
    return per_device, per_device_fitted


def describe(points: list[Point]) -> str:
    """One line saying what a fit used: which rows, which kinds of figure, which devices."""
    from collections import Counter

    ref = [p.id for p in points if p.origin == "reference"]
    prof = [p for p in points if p.origin == "profile"]
    parts = []
    if ref:
        parts.append(f"{len(ref)} reference rows in scope ({', '.join(ref)})")
    if prof:
        parts.append(f"{len(prof)} profile figures")
    kinds = Counter(p.measurement for p in points)
    devs = sorted({p.device if p.device != "cuda" else "unnamed GPU" for p in points})
    return (" + ".join(parts) + "; " + ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()))
            + "; on " + ", ".join(devs))


def _needs(name: str) -> str:
    return {
        "cuda_context_bytes": "process-total figures (nvidia-smi / NVML)",
        "cublas_workspace_bytes": "CUDA allocated or reserved figures",
        "allocator_reserve_fraction": "CUDA reserved figures",
        "allocator_reserve_bytes": "CUDA reserved figures",
        "allocator_reserve_loss_factor": "CUDA reserved figures",
        "fused_dequant_factor": "4-bit runs whose peak includes the dequantized weight",
    }[name]

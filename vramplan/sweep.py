"""What the charts draw, computed: the library's public functions run over a range of scenarios, packed
into plain dataclasses that ``vramplan.report.chart`` renders. No memory formula lives here (the
engines have them), and no matplotlib.

- ``gpu_limit``: a catalog GPU (``vramplan.gpus``) or a memory size -> ``Limit``;
- ``parse_vary`` + ``seq_sweep``: peak memory over sequence lengths for several variants of a scenario
  -> ``Sweep`` of ``Curve``;
- ``validation_rows`` + ``validation_points``: ``vramplan.validate`` rows -> ``ValidationPoint``.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass, fields
from typing import Any, Iterable, Sequence

from vramplan import estimate
from vramplan.arch import Arch, resolve
from vramplan.errors import VramplanError
from vramplan.scenario import Scenario, ScenarioError

#: Which total of a Breakdown a sweep plots, by CLI name.
TOTALS: dict[str, str] = {
    "allocated": "allocated_peak_bytes",  # torch.cuda.max_memory_allocated
    "reserved": "reserved_peak_bytes",    # torch.cuda.max_memory_reserved
    "total": "total_bytes",               # what nvidia-smi shows for the process: what must fit
}
TOTAL_LABELS = {"allocated": "allocated peak", "reserved": "reserved peak", "total": "process total"}

DEFAULT_SEQS: tuple[int, ...] = (512, 1024, 2048, 4096, 8192, 16384, 32768)


class SweepError(VramplanError):
    """Data that cannot make a chart (mismatched curve lengths, no validated rows)."""


# ------------------------------------------------------------------------------------ results
@dataclass(frozen=True)
class Limit:
    """A memory line to draw: usually a GPU's usable memory."""

    bytes: int
    label: str
    detail: str = ""
    """A second line for the legend (how the figure was arrived at)."""


@dataclass(frozen=True)
class Curve:
    """One line of a sweep: ``y[i]`` bytes at ``x[i]`` (e.g. tokens per sequence)."""

    label: str
    x: tuple[int, ...]
    y: tuple[int, ...]
    upper: tuple[int, ...] | None = None
    """Conservative bound at each x (drawn as a band above the curve); fit is judged on it when given."""

    def __post_init__(self) -> None:
        if len(self.x) != len(self.y) or (self.upper is not None and len(self.upper) != len(self.x)):
            raise SweepError(f"curve '{self.label}': x, y and upper must have the same length")

    @property
    def judged(self) -> tuple[int, ...]:
        """The values a fit is judged on: the upper bound where given, else the point values."""
        return self.upper if self.upper is not None else self.y


@dataclass(frozen=True)
class Sweep:
    """Curves sharing an x axis, and the limit they are measured against."""

    curves: tuple[Curve, ...]
    xlabel: str = "sequence length (tokens)"
    ylabel: str = "peak memory"
    title: str = ""
    limit: Limit | None = None
    log2_x: bool = True
    judge_fit: bool = True
    """Ring each curve's last fitting point and say "fits to N" (only meaningful when the curves are the
    quantity the limit bounds: the process total)."""


@dataclass(frozen=True)
class ValidationPoint:
    """One run: what vramplan predicts against what was measured, both in bytes."""

    label: str
    predicted_bytes: int
    measured_bytes: int
    group: str = ""
    """Points of one group share a colour (e.g. the measurement kind or the source)."""

    @property
    def error(self) -> float:
        return (self.predicted_bytes - self.measured_bytes) / self.measured_bytes


# ------------------------------------------------------------------------------------ GPU
def gpu_limit(gpu: str | None = None, memory: str | None = None) -> tuple[Limit, Any]:
    """The line a budget must stay under on a card, and the card (``vramplan.gpus.resolve_gpu``: a
    catalog name, or ``memory`` given as a size).

    The line is the memory a process can hold in total, as nvidia-smi counts it: the device total
    less the driver's reserve. Charts stack the *process total* (which includes the CUDA context)
    against it; that is the same test as the planner's "reserved + managed <= usable", where usable
    already has the context taken off. On unified memory (Apple) it is the Metal working-set limit.
    """
    from vramplan.breakdown import fmt_bytes
    from vramplan.gpus import resolve_gpu

    g = resolve_gpu(gpu=gpu, memory=memory)
    if g.kind == "custom":
        return Limit(int(g.memory_bytes), f"{str(memory).strip()} card"), g
    if g.unified:
        return Limit(int(g.usable_bytes), f"{g.name} working-set limit"), g
    line = int(g.memory_bytes - g.driver_reserved_bytes)
    if g.driver_reserved_bytes:
        return Limit(line, g.name, f"({fmt_bytes(g.memory_bytes)} less {fmt_bytes(g.driver_reserved_bytes, 0)} "
                                   "driver reserve)"), g
    return Limit(line, g.name), g


# ------------------------------------------------------------------------------------ sweeps
_TYPES = typing.get_type_hints(Scenario)
#: Fields a sweep cannot vary: the x axis, and those without a list syntax.
_FIXED = {"seq", "targets", "lora_dropout"}
_ALIASES = {"gc": "grad_checkpointing", "r": "rank", "optim": "optimizer", "dq": "double_quant"}
_SHORT = {"grad_checkpointing": "GC", "double_quant": "double quant", "autocast": "autocast"}


def _parse_bool(value: str, name: str) -> bool:
    v = value.strip().lower()
    if v in ("on", "true", "yes", "1"):
        return True
    if v in ("off", "false", "no", "0"):
        return False
    raise VramplanError(f"--vary {name}: '{value}' is not on/off")


def vary_key(spec: str | None) -> str | None:
    """The field a ``--vary`` spec varies (``grad_checkpointing``, ``rank``, ``model``...), or None."""
    if not spec or not spec.strip():
        return None
    key = spec.strip().partition("=")[0].strip().lower().replace("-", "_")
    return _ALIASES.get(key, key)


def _variant(key: str, text: str) -> tuple[str, Any]:
    """(curve label, field value) of one ``--vary`` value of Scenario field ``key``."""
    kind = _TYPES[key]
    if kind is bool:
        value = _parse_bool(text, key)
        return f"{_SHORT.get(key, key)} {'on' if value else 'off'}", value
    if kind is int:
        try:
            value = int(text)
        except ValueError:
            raise VramplanError(f"--vary {key}: '{text}' is not an integer") from None
        return f"{'r' if key == 'rank' else key}={value}", value
    return f"{key} {text}", text


def parse_vary(spec: str | None, arch: Arch, scenario: Scenario) -> list[tuple[str, Arch, Scenario]]:
    """Variants of ``(arch, scenario)`` from a ``--vary`` spec.

    ``gc`` (GC on and off), ``FIELD=v1,v2,...`` for a scenario field (``rank=8,16,64``,
    ``recipe=hf-peft,trl,plain``, ``gc=on,off``), or ``model=A,B`` (other architectures, same
    scenario). ``None`` or ``''`` is the scenario alone.
    """
    if not spec:
        return [(arch.name, arch, scenario)]
    spec = spec.strip()
    if "=" not in spec:
        if vary_key(spec) != "grad_checkpointing":
            raise VramplanError(f"--vary '{spec}': expected gc or FIELD=v1,v2 (e.g. rank=8,16,64)")
        spec = "grad_checkpointing=on,off"
    key = vary_key(spec)
    values = [v.strip() for v in spec.partition("=")[2].split(",") if v.strip()]
    if not values:
        raise VramplanError(f"--vary {key}: no values given")
    if key == "model":
        return [(a.name, a, scenario) for a in (resolve(v) for v in values)]
    names = {f.name for f in fields(Scenario)} - _FIXED
    if key not in names:
        raise VramplanError(f"--vary: cannot vary '{key}' (choose gc, model or one of: {', '.join(sorted(names))})")
    out = []
    for v in values:
        label, value = _variant(key, v)
        out.append((label, arch, scenario.replace(**{key: value})))
    return out


def parse_seqs(text: str) -> tuple[int, ...]:
    """'512,1024,2048' -> (512, 1024, 2048), sorted and de-duplicated."""
    try:
        seqs = sorted({int(s) for s in text.split(",") if s.strip()})
    except ValueError:
        raise VramplanError(f"--seqs '{text}': expected comma-separated integers, e.g. 1024,2048,4096") from None
    if not seqs or seqs[0] <= 0:
        raise VramplanError(f"--seqs '{text}': give at least one positive sequence length")
    return tuple(seqs)


def _curve(label: str, arch: Arch, scenario: Scenario, seqs: tuple[int, ...], total: str, upper: bool,
           **engine: Any) -> Curve:
    """The analytic ``total`` of ``scenario`` at each seq (and its upper bound, with ``upper``)."""
    ys, ups = [], []
    for s in seqs:
        try:
            sc = scenario.replace(seq=s)
        except ScenarioError as e:
            raise VramplanError(f"seq {s}: {e}") from None
        b = estimate(arch, sc, **engine)
        ys.append(getattr(b, TOTALS[total]))
        ups.append(b.upper.get(total) if (upper and b.upper is not None) else None)
    has_upper = upper and all(u is not None for u in ups)
    return Curve(label, seqs, tuple(ys), tuple(int(u) for u in ups) if has_upper else None)


def seq_sweep(variants: Sequence[tuple[str, Arch, Scenario]], seqs: Iterable[int] = DEFAULT_SEQS, *,
              total: str = "total", calibration: Any = None, device: str | None = None,
              limit: Limit | None = None, title: str = "", upper: bool = True) -> Sweep:
    """Analytic ``total`` (see ``TOTALS``) at each sequence length, one curve per variant.

    With ``upper`` (default) each curve also carries the engine's conservative bound, when the
    breakdowns give one, and the chart judges the fit on it, as ``vramplan plan`` does by default."""
    if total not in TOTALS:
        raise VramplanError(f"unknown total '{total}' (choose from: {', '.join(TOTALS)})")
    seqs = tuple(seqs)
    curves = tuple(_curve(label, arch, scenario, seqs, total, upper, calibration=calibration, device=device)
                   for label, arch, scenario in variants)
    # Only the process total is bounded by the card's memory line; other totals are drawn against it
    # for reference, without a verdict.
    return Sweep(curves, ylabel=TOTAL_LABELS[total], title=title, limit=limit, judge_fit=total == "total")


# ------------------------------------------------------------------------------------ validation
def _field(row: Any, *names: str) -> Any:
    for n in names:
        if isinstance(row, dict) and n in row:
            return row[n]
        if hasattr(row, n):
            return getattr(row, n)
    return None


def validation_rows(data: str | None = None, calibration: Any = None, profiles: str | None = None) -> list[Any]:
    """``vramplan.validate`` over the reference data (``data``: another reference CSV) and, optionally,
    a folder of stored profiles; returns its rows."""
    from vramplan.reference import load_reference
    from vramplan.validate import load_profile_folder, validate

    problems: list[str] = []
    profs = load_profile_folder(profiles, problems) if profiles else []
    report = validate(profiles=profs, reference=load_reference(data) if data else None,
                      calibration=calibration, problems=problems)
    return list(report.rows)


def validation_points(rows: Iterable[Any], group_by: str = "measurement") -> list[ValidationPoint]:
    """Chart points from validate rows (objects or dicts with predicted and measured bytes).

    Only rows in scope with a comparable figure are kept (``status == 'in'``): rows the estimate cannot
    price (model not in the registry), capacity claims and unknown statistics are left out.
    """
    pts = []
    for row in rows:
        pred = _field(row, "predicted_bytes", "predicted")
        meas = _field(row, "measured_bytes", "measured")
        status = _field(row, "status")
        if pred is None or not meas or (status is not None and status != "in"):
            continue
        if _field(row, "measurement") in ("capacity", "unknown"):
            continue
        label = _field(row, "id", "label", "name") or ""
        model = _field(row, "registry_model", "model")
        if model and str(model) not in str(label):
            label = f"{label} {str(model).split('/')[-1]}".strip()
        group = _field(row, group_by)
        pts.append(ValidationPoint(str(label), int(pred), int(meas), str(group) if group is not None else ""))
    if not pts:
        raise SweepError("no validated rows with both a prediction and a measurement")
    return pts

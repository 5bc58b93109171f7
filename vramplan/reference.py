"""Published peak-memory measurements as data: ``vramplan/data/reference.csv``.

The file is converted from ``shared/reference/published_measurements.csv`` by
``tools/convert_reference.py``; every row keeps its citation (``source`` and ``quote``), the value as
published (``reported_value``) and how it was turned into bytes (``unit_basis``). Rows are read
lazily, never at import. This module imports no torch.

A row's ``scope`` says how validation may use it:

- ``in``: a measured peak of a configuration vramplan expresses; enters the error statistics;
- ``verdict``: a run that fit a known GPU, but whose figure is not comparable (unknown statistic,
  capacity claim); enters only the fit / no-fit agreement;
- ``out``: not comparable, for the stated ``reason``.

A row whose model is missing from the offline registry cannot be priced, whatever its scope; it is
reported as such (``status``), never looked up on the hub.
"""

from __future__ import annotations

import csv
import io
import typing
from dataclasses import dataclass, fields
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

from vramplan.errors import VramplanError, read_text_file
from vramplan.scenario import Scenario, field_meta

#: What a published figure measures, and the Breakdown total it is compared with.
MEASUREMENTS: dict[str, str | None] = {
    "allocated": "allocated_peak_bytes",   # torch.cuda.max_memory_allocated
    "active": "allocated_peak_bytes",      # memory_stats active_bytes.all.peak (~ allocated)
    "reserved": "reserved_peak_bytes",     # torch.cuda.max_memory_reserved
    "process": "total_bytes",              # nvidia-smi / NVML per-process figure
    "capacity": None,                      # "fits a X GB GPU": a bound, not a peak
    "unknown": None,                       # statistic not stated
}
#: Package data folder (a plain path: works for editable and wheel installs alike).
DATA = Path(__file__).resolve().parent / "data"
SCOPES = ("in", "verdict", "out")


def _scenario_columns(optional: bool) -> tuple[str, ...]:
    """Scenario fields whose ``FieldMeta.optional`` is ``optional``, in reference-CSV column order."""
    cols = sorted((field_meta(f).column, f.name) for f in fields(Scenario) if field_meta(f).optional is optional)
    return tuple(name for _, name in cols)


#: One column per Scenario field, named as the field.
SCENARIO_COLS = _scenario_columns(optional=False)
#: Scenario columns added later: optional in a reference CSV (absent or empty -> the Scenario default).
OPTIONAL_SCENARIO_COLS = _scenario_columns(optional=True)
REQUIRED = ("id", "model", "registry_model", "framework", "gpu", "gpu_memory_bytes", "measurement",
            "measured_bytes", "reported_value", "scope", "reason", "source") + SCENARIO_COLS


class ReferenceError(VramplanError):
    """A reference file that does not parse."""


@dataclass(frozen=True)
class ReferenceRow:
    """One published run."""

    id: str
    """``pm-NN``: NN is the data row of ``published_measurements.csv``."""
    model: str
    """The model as published (hub id)."""
    registry_model: str
    """Registry name (or hub id) it maps to; may be missing from the registry."""
    framework: str
    gpu: str
    """Canonical GPU name ('' when unknown)."""
    gpu_memory_bytes: int | None
    """Total device memory of that GPU, from its datasheet (None when the GPU is unknown)."""
    measurement: str
    """One of ``MEASUREMENTS``."""
    measured_bytes: int
    reported_value: str
    """The figure as published, unit included."""
    scope: str
    reason: str
    """Why the row is not (fully) in scope; '' for ``in`` rows."""
    scenario: Scenario | None
    """The configuration as a Scenario; None when it cannot be expressed."""
    source: str
    """Citation: where the figure was published."""
    quote: str = ""
    caveats: str = ""
    confidence: str = ""
    unit_basis: str = ""
    num_gpus: int = 1

    @property
    def total_key(self) -> str | None:
        """The Breakdown total to compare with (None for capacity / unknown rows)."""
        return MEASUREMENTS[self.measurement]

    @property
    def in_registry(self) -> bool:
        from vramplan.arch.lookup import find_entry

        return find_entry(self.registry_model) is not None

    @property
    def status(self) -> str:
        """``in``, ``verdict`` or ``out``, after checking the model can be priced offline."""
        if self.scope != "out" and (self.scenario is None or not self.in_registry):
            return "out"
        return self.scope

    @property
    def status_reason(self) -> str:
        if self.scope != "out" and self.scenario is not None and not self.in_registry:
            extra = f"model '{self.registry_model}' not in the registry"
            return f"{extra}; {self.reason}" if self.reason else extra
        return self.reason


def _bool(text: str, where: str) -> bool:
    t = text.strip().lower()
    if t in ("true", "yes", "1"):
        return True
    if t in ("false", "no", "0"):
        return False
    raise ReferenceError(f"{where}: expected true/false, got {text!r}")


def _int(text: str, where: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ReferenceError(f"{where}: expected an integer, got {text!r}") from None


def _float(text: str, where: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ReferenceError(f"{where}: expected a number, got {text!r}") from None


#: How a cell is read, by the type of its Scenario field (enums and targets: the text, as the CLI takes it).
_READ: dict[Any, Callable[[str, str], Any]] = {bool: _bool, int: _int, float: _float}
_TYPES = typing.get_type_hints(Scenario)


def _cell(col: str, text: str, where: str) -> Any:
    read = _READ.get(_TYPES[col])
    return read(text, f"{where} {col}") if read else text


def _scenario(rec: dict[str, str], where: str) -> Scenario | None:
    if not rec["quant"].strip():
        return None
    kw: dict[str, Any] = {col: _cell(col, rec[col].strip(), where) for col in SCENARIO_COLS}
    for col in OPTIONAL_SCENARIO_COLS:
        v = (rec.get(col) or "").strip()
        if v:
            kw[col] = _cell(col, v, where)
    try:
        return Scenario(**kw)
    except VramplanError as e:
        raise ReferenceError(f"{where}: bad scenario: {e}") from None


def parse_reference(text: str, origin: str = "reference") -> list[ReferenceRow]:
    """Rows of a reference CSV (lines starting with '#' are comments)."""
    lines = [ln for ln in text.splitlines() if not ln.startswith("#")]
    reader = csv.DictReader(io.StringIO("\n".join(lines)), restval="")  # a short row: empty cells
    missing = [c for c in REQUIRED if c not in (reader.fieldnames or ())]
    if missing:
        raise ReferenceError(f"{origin}: missing column(s): {', '.join(missing)}")
    rows: list[ReferenceRow] = []
    seen: set[str] = set()
    for n, rec in enumerate(reader, start=2):
        where = f"{origin} line {n}"
        rid = rec["id"].strip()
        if not rid or rid in seen:
            raise ReferenceError(f"{where}: missing or duplicate id {rid!r}")
        seen.add(rid)
        if rec["measurement"] not in MEASUREMENTS:
            raise ReferenceError(f"{where}: unknown measurement {rec['measurement']!r} "
                                 f"(choose from: {', '.join(MEASUREMENTS)})")
        if rec["scope"] not in SCOPES:
            raise ReferenceError(f"{where}: unknown scope {rec['scope']!r} (choose from: {', '.join(SCOPES)})")
        if rec["scope"] != "in" and not rec["reason"].strip():
            raise ReferenceError(f"{where}: scope '{rec['scope']}' needs a reason")
        if not rec["source"].strip():
            raise ReferenceError(f"{where}: row {rid} cites no source")
        measured = _int(rec["measured_bytes"], f"{where} measured_bytes")
        if measured <= 0:
            raise ReferenceError(f"{where}: measured_bytes must be positive")
        gpu_bytes = rec["gpu_memory_bytes"].strip()
        rows.append(ReferenceRow(
            id=rid, model=rec["model"], registry_model=rec["registry_model"], framework=rec["framework"],
            gpu=rec["gpu"], gpu_memory_bytes=_int(gpu_bytes, f"{where} gpu_memory_bytes") if gpu_bytes else None,
            measurement=rec["measurement"], measured_bytes=measured, reported_value=rec["reported_value"],
            scope=rec["scope"], reason=rec["reason"], scenario=_scenario(rec, where), source=rec["source"],
            quote=rec.get("quote", ""), caveats=rec.get("caveats", ""), confidence=rec.get("confidence", ""),
            unit_basis=rec.get("unit_basis", ""), num_gpus=_int(rec.get("num_gpus") or "1", f"{where} num_gpus"),
        ))
    return rows


def load_reference(path: str | Path | None = None) -> list[ReferenceRow]:
    """The shipped reference dataset, or the CSV at ``path``."""
    if path is None:
        return list(_shipped())
    p = Path(path)
    return parse_reference(read_text_file(p, "reference file", ReferenceError), origin=str(p))


@lru_cache(maxsize=1)
def _shipped() -> tuple[ReferenceRow, ...]:
    res = DATA / "reference.csv"
    return tuple(parse_reference(res.read_text(encoding="utf-8"), origin="vramplan/data/reference.csv"))

"""Fast mode: trace a few layers, extrapolate exactly to the model's depth.

The allocated peak is exactly affine in the number of decoder layers when the layers repeat
(peak(L) = peak(c1) + (L - c1) / p * (peak(c1 + p) - peak(c1)) for a repeating block of ``p``
layers). ``layer_plan`` picks c1 and the period from the layer pattern (sliding/global attention as
the transformers config class derives it, dense/MoE MLP); ``figures`` traces c1, c1 + p and
c1 + 2p layers and extrapolates only when the two increments agree component by component in
every phase of every step (else it moves one block deeper, and finally traces fully). Tests hold
the extrapolation to the full trace.

"Agree" allows one allocator rounding unit (``ROUNDING``): a tensor whose size is affine in the
layer count but rounded up to the caching allocator's 512-byte blocks is affine only to within
512 B. ``clip_grad_norm_``'s stack of one fp32 norm per trainable tensor is one (4 B per tensor; a
block that adds a number of tensors not a multiple of 128 makes its rounding vary from block to
block: Qwen3-Next's and Qwen3.5-MoE's increments differed by exactly 512 B there and nowhere else,
and without clipping they agree to the byte). The extrapolated figure is then off by less than
512 B per repeated block.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from vramplan.arch.spec import Arch
from vramplan.trace.run import StepFigures, TraceRun


@dataclass
class Figures:
    """What a trace reports: the first and the steady step's peak per component, for the model's depth."""

    first: dict[str, int]
    steady: dict[str, int]
    peak_phase: str
    managed: int
    traced: list[int]
    """Decoder-layer counts traced, in order."""
    layers: int
    """Decoder layers the figures are for."""
    period: int | None = None
    """The repeating block the figures were extrapolated with; None when traced at full depth."""
    refused: bool = False
    """Extrapolation was tried and the increments disagreed, so the full model was traced."""
    phases: dict[str, int] | None = None
    """The steady step's peak per phase (bytes), for the model's depth."""
    host: dict[str, int] | None = None
    """The steady step's host memory at its host peak, per ``host/`` component (offloaded activations)."""


# ------------------------------------------------------------------------------ layer plan
def _layer_keys(arch: Arch) -> list[tuple[Any, ...]]:
    """One hashable key per decoder layer: what makes layers differ in memory (attention type as the
    transformers config class derives it, e.g. Gemma's sliding/global pattern; dense or MoE MLP)."""
    from vramplan.hf.build import hf_config

    types = getattr(hf_config(arch), "layer_types", None) or arch.config.get("layer_types")
    moe = set(arch.moe_layers)
    keys = []
    for i in range(arch.num_layers):
        t = types[i] if isinstance(types, list) and i < len(types) else None
        keys.append((t, i in moe, arch.mixer(i)))  # the mixer kind: e.g. Gemma 4's kv-shared layers
    return keys


def layer_plan(arch: Arch) -> tuple[int, int] | None:
    """``(c1, period)``: the smallest layer count to trace first and the repeating block, such that
    ``arch.num_layers = c1 + k * period`` and c1 + 2 * period layers still fit; ``None`` when the
    full model must be traced.

    The layer sequence must be a prefix of q layers followed by a block of p layers repeating to the
    end; then c1 = q + p + ((L - q) mod p)."""
    keys = _layer_keys(arch)
    n = len(keys)
    for q in range(n):
        for p in range(1, (n - q) // 2 + 1):
            if all(keys[i] == keys[q + (i - q) % p] for i in range(q, n)):
                c1 = q + p + (n - q) % p
                # worth it only when the three short traces hold fewer layers than the model
                if c1 + 2 * p < n and 3 * c1 + 3 * p < n:
                    return c1, p
                break  # a longer period only needs more layers; try a longer prefix
    return None


# --------------------------------------------------------------------------------- figures
def figures(arch: Arch, run: Callable[[int | None], TraceRun], layers: int | None = None,
            extrapolate: bool = True, min_first: int = 0) -> Figures:
    """The trace's figures: ``run(n)`` traces n decoder layers (None: all). With ``layers`` the
    first ``layers`` layers are traced and reported; else the model's depth, extrapolated when
    ``extrapolate`` and ``layer_plan`` allow and the increments agree. ``min_first``: the first traced
    depth is at least this (a term bounded in the layer count, such as TRL's forward stash of 5
    offloaded tensors, grows only until then; below it three runs can look affine and are not)."""
    plan = layer_plan(arch) if (extrapolate and layers is None) else None
    if plan is not None and plan[0] < min_first:
        c1, period = plan
        c1 += -(-(min_first - c1) // period) * period
        plan = (c1, period) if c1 + 2 * period < arch.num_layers else None
    if plan is None:
        return measured(run(layers))
    c1, period = plan
    n = arch.num_layers
    runs = [run(c) for c in (c1, c1 + period, c1 + 2 * period)]
    tried = [r.layers for r in runs]
    while not _affine(runs) and runs[-1].layers + period < n:
        runs = runs[1:] + [run(runs[-1].layers + period)]
        tried.append(runs[-1].layers)
    if not _affine(runs):
        full = measured(run(None))
        full.traced = tried + full.traced
        full.refused = True
        return full
    r1, r2 = runs[0], runs[1]
    first, _, _ = _extrapolate_step(r1.steps[0], r2.steps[0], r1.layers, period, n)
    steady, peak_phase, phases = _extrapolate_step(r1.steps[-1], r2.steps[-1], r1.layers, period, n)
    managed = r1.managed_bytes + (n - r1.layers) // period * (r2.managed_bytes - r1.managed_bytes)
    host = _extrapolate(r1.steps[-1].host, r2.steps[-1].host, r1.layers, period, n)
    return Figures(first, steady, peak_phase, managed, tried, n, period=period, phases=phases, host=host)


def measured(run: TraceRun) -> Figures:
    """The figures of one run, as traced."""
    return Figures(run.steps[0].by_name, run.steps[-1].by_name, run.steps[-1].peak_phase,
                   run.managed_bytes, [run.layers], run.layers,
                   phases={ph: v[0] for ph, v in run.steps[-1].phases.items()}, host=dict(run.steps[-1].host))


def _extrapolate(a: dict[str, int], b: dict[str, int], c1: int, period: int, n: int) -> dict[str, int]:
    k = (n - c1) // period
    out = {}
    for name in set(a) | set(b):
        v = a.get(name, 0) + k * (b.get(name, 0) - a.get(name, 0))
        out[name] = max(0, v)
    return out


#: The caching allocator's rounding unit (kMinBlockSize): increments may disagree by this much.
ROUNDING = 512


def _same_growth(a: int, b: int, c: int) -> bool:
    """Whether a, b, c (one figure at c1, c1 + p, c1 + 2p layers) grow by the same bytes, to within one
    allocator rounding unit."""
    return abs((b - a) - (c - b)) <= ROUNDING


def _affine(runs: list[TraceRun]) -> bool:
    """True when the three runs (c, c + p, c + 2p layers) grow by the same bytes (to within
    ``ROUNDING``), component by component, in every phase of every step: the evidence that
    extrapolation is exact to within that rounding per block."""
    a, b, c = runs
    if not _same_growth(a.managed_bytes, b.managed_bytes, c.managed_bytes):
        return False
    for sa, sb, sc in zip(a.steps, b.steps, c.steps):
        if not (sa.phases.keys() == sb.phases.keys() == sc.phases.keys()):
            return False
        for name in set(sa.host) | set(sb.host) | set(sc.host):
            if not _same_growth(sa.host.get(name, 0), sb.host.get(name, 0), sc.host.get(name, 0)):
                return False
        for ph in sa.phases:
            da, db, dc = sa.phases[ph][1], sb.phases[ph][1], sc.phases[ph][1]
            for name in set(da) | set(db) | set(dc):
                if not _same_growth(da.get(name, 0), db.get(name, 0), dc.get(name, 0)):
                    return False
    return True


def _extrapolate_step(s1: StepFigures, s2: StepFigures, c1: int, period: int, n: int
                      ) -> tuple[dict[str, int], str, dict[str, int]]:
    """Each phase's peak is affine in the layer count; the step's peak is the largest of them (the
    phase holding the peak can change with depth, e.g. from backward to the first optimizer step).
    Returns (bytes per component at the peak, its phase, every phase's peak)."""
    best: tuple[int, dict[str, int], str] | None = None
    totals: dict[str, int] = {}
    for phase in s1.phases:
        d = _extrapolate(s1.phases[phase][1], s2.phases[phase][1], c1, period, n)
        total = totals[phase] = sum(d.values())
        if best is None or total > best[0]:
            best = (total, d, phase)
    assert best is not None
    return best[1], best[2], totals

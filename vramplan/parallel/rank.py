"""The one seam between the analytic engine and the strategies: ``RankTerms`` of one rank.

The single-GPU engine prices every phase of the step (``vramplan.analytic.phases``) from the static
terms of the whole model. A strategy changes that in four ways only, which ``RankTerms`` carries:

1. the static rows: sharded, replicated or recast parameters and the optimizer state on the rank's
   shard (``comps``, replacing ``StaticTerms.comps``), and any buffer alive all step (DDP's buckets);
2. the gradients alive at a phase: the single-GPU figure scaled to the rank's shard (``grad_ratio``),
   the root group's kept whole until its reduce-scatter (FSDP2, ``keep_head``);
3. rows that exist only at some phases (``phase_rows``: FSDP2's unsharded layers and its all-gather /
   reduce-scatter buffers, ZeRO's gathered modules and buckets), keyed by phase name, ``"*"`` for the
   phases not named;
4. host rows (state offload), runtime rows outside the caching allocator (NCCL) and notes.

``rank_terms(arch, scenario, st)`` dispatches to the strategy's module (``MODULES``); ``single`` gets
``IDENTITY``, which leaves every figure as it is (byte-identical to the single-GPU engine).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction
from typing import TYPE_CHECKING, Callable, Mapping

from vramplan.breakdown import Component
from vramplan.scenario import Scenario, Strategy

if TYPE_CHECKING:  # pragma: no cover
    from vramplan.analytic.phases import Batch
    from vramplan.analytic.terms import StaticTerms
    from vramplan.arch.spec import Arch

Row = tuple[str, str, int, str]
#: ``phase_rows`` key of the rows every phase not named gets.
OTHER_PHASES = "*"


@dataclass(frozen=True)
class RankTerms:
    """What one rank holds beyond (or instead of) the single-GPU step's terms."""

    comps: tuple[Component, ...] | None = None
    """The rank's static device rows; None: ``StaticTerms.comps`` as they are (single)."""
    grad_ratio: Fraction = Fraction(1)
    """Gradient bytes alive on the rank per single-GPU gradient byte (FSDP2: its padded shard; ZeRO: 0,
    the gradients go to buckets and a partition buffer priced in ``comps``/``phase_rows``)."""
    keep_head: bool = False
    """The root group's gradients (lm_head, final norm: ``StaticTerms.head_grad``) stay whole until the
    root's reduce-scatter at the end of backward (FSDP2): not scaled, but at the optimizer step."""
    phase_rows: Mapping[str, tuple[Row, ...]] = field(default_factory=dict)
    """Allocated rows alive only at some phases: phase name -> rows (``OTHER_PHASES``: the rest)."""
    own_phases: Mapping[str, tuple[Row, ...]] = field(default_factory=dict)
    """Moments only this strategy has (FSDP2's forward start: the first groups gathered before any
    activation exists): phase name -> its rows, no gradients, over the static rows."""
    host: tuple[Component, ...] = ()
    """Host-memory rows (category ``host``)."""
    runtime: tuple[Component, ...] = ()
    """Runtime rows outside the caching allocator (NCCL's buffers)."""
    notes: tuple[str, ...] = ()

    @property
    def identity(self) -> bool:
        return self.comps is None

    def static(self, st: "StaticTerms") -> int:
        return st.static if self.comps is None else sum(c.bytes for c in self.comps)

    def static_comps(self, st: "StaticTerms") -> tuple[Component, ...]:
        return st.comps if self.comps is None else self.comps

    def grads(self, phase: str, g: int, head: int) -> int:
        """The rank's gradient bytes at ``phase`` where one GPU holds ``g`` (``head``: the root's share)."""
        if self.grad_ratio == 1:
            return g
        from vramplan.analytic.phases import OPTIMIZER
        if not self.keep_head or phase == OPTIMIZER:
            return int(g * self.grad_ratio)
        h = min(g, head)
        return h + int((g - h) * self.grad_ratio)

    def rows(self, phase: str) -> tuple[Row, ...]:
        return self.phase_rows.get(phase, self.phase_rows.get(OTHER_PHASES, ()))

    def totals(self, st: "StaticTerms", x: "Batch", totals: dict[str, int]) -> dict[str, int]:
        """Every phase's dynamic bytes (over ``st.static``, as ``phases.totals`` returns them) for this rank."""
        if self.identity:
            return totals
        from vramplan.analytic.phases import components
        delta = self.static(st) - st.static
        out = {}
        for k, v in totals.items():
            g = components(k, st, x)[0]
            out[k] = v - g + self.grads(k, g, st.head_grad) + sum(r[2] for r in self.rows(k)) + delta
        for k, rows in self.own_phases.items():
            out[k] = sum(r[2] for r in rows) + delta
        return out

    def components(self, phase: str, st: "StaticTerms", x: "Batch") -> tuple[int, list]:
        """(gradient bytes, rows) of ``phase`` for this rank (``phases.components`` for one GPU)."""
        from vramplan.analytic.phases import components
        if phase in self.own_phases:
            return 0, list(self.own_phases[phase])
        grads, rows = components(phase, st, x)
        if self.identity:
            return grads, rows
        return self.grads(phase, grads, st.head_grad), rows + list(self.rows(phase))


IDENTITY = RankTerms()


def _modules() -> dict[Strategy, Callable[["Arch", Scenario, "StaticTerms"], RankTerms]]:
    from vramplan.parallel import ddp, fsdp, zero
    return {Strategy.DDP: ddp.rank_terms, Strategy.FSDP: fsdp.rank_terms, Strategy.ZERO2: zero.rank_terms,
            Strategy.ZERO3: zero.rank_terms}


def priced_scenario(scenario: Scenario) -> Scenario:
    """The single-GPU scenario whose terms a strategy starts from: the same one, but where the strategy's
    framework changes the step itself (DeepSpeed casts the parameters and runs no autocast:
    ``zero.priced_scenario``)."""
    if scenario.strategy in (Strategy.ZERO2, Strategy.ZERO3):
        from vramplan.parallel.zero import priced_scenario as zero_priced
        return zero_priced(scenario)
    return scenario


def rank_terms(arch: "Arch", scenario: Scenario, st: "StaticTerms") -> RankTerms:
    """The ``RankTerms`` of ``scenario.process_rank`` under ``scenario.strategy`` (``IDENTITY`` for single)."""
    if not scenario.distributed:
        return IDENTITY
    return _modules()[scenario.strategy](arch, priced_scenario(scenario), st)

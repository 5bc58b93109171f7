"""How many GPUs, and which strategy: the fewest cards of one kind that fit a run (``plan --max-gpus``).

Every multi-GPU strategy is priced per rank (``vramplan.parallel``), so "does the run fit on N cards
under strategy S" is the single-card fit check (``vramplan.plan.Planner``) of the scenario with
``gpus = N`` and ``strategy = S``, on the rank that needs the most (ranks differ only by uneven shards:
every rank is checked where a world has them, see ``_ranks``). This module prices each candidate and
picks the answer; ``vramplan.report.plan_gpus`` renders it.

**Candidates.** For each world size N from 1 to ``max_gpus`` (one node): ``single`` at N = 1; ``ddp``,
``fsdp``, ``zero2`` and ``zero3`` at N ≥ 2 (at N = 1 they only add their buffers), and at every N the
state-offload modes each sharding strategy has (FSDP CPU offload; ZeRO-2 optimizer offload; ZeRO-3
optimizer or parameter offload), which can make a model fit even one card. A 4-bit base under FSDP is
priced as FSDP-QLoRA runs it: packed weights stored in the compute dtype (``bnb_4bit_quant_storage``),
since FSDP (accelerate) leaves uint8 parameters unsharded.

**The answer.** The fewest GPUs at which any candidate fits; among those, the first by
``PREFERENCE``: no state offload before offload (an offloaded optimizer step runs on the CPU), then
the strategy that communicates least (DDP and ZeRO-2 all-reduce or reduce-scatter the gradients once;
FSDP and ZeRO-3 also all-gather the parameters in forward and again in backward, 1.5× the traffic
(ZeRO paper, arXiv 1910.02054 §7); between FSDP2 and ZeRO-3, FSDP2 first, as PyTorch's own). Host RAM
is part of the fit when ``host_ram`` is given: offloaded state lives there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vramplan.arch import Arch, resolve
from vramplan.calibration import Calibration
from vramplan.errors import VramplanError
from vramplan.gpus import Gpu, find_gpu
from vramplan.plan import Check, Estimator, Planner
from vramplan.scenario import QuantStorage, Scenario, StateOffload, Strategy, _OFFLOADS

#: Largest ``--max-gpus`` searched (one node of a catalog card; more is a cluster question).
MAX_GPUS = 64

#: Order of preference among candidates that fit at the same GPU count (see the module docstring).
PREFERENCE: tuple[tuple[Strategy, StateOffload], ...] = (
    (Strategy.SINGLE, StateOffload.NONE), (Strategy.DDP, StateOffload.NONE), (Strategy.ZERO2, StateOffload.NONE),
    (Strategy.FSDP, StateOffload.NONE), (Strategy.ZERO3, StateOffload.NONE),
    (Strategy.ZERO2, StateOffload.OPTIMIZER), (Strategy.ZERO3, StateOffload.OPTIMIZER),
    (Strategy.FSDP, StateOffload.PARAMS), (Strategy.ZERO3, StateOffload.PARAMS))


@dataclass(frozen=True)
class Candidate:
    """One (GPU count, strategy, state offload) priced on its most demanding rank."""

    gpus: int
    strategy: Strategy
    offload: StateOffload
    check: Check | None
    """The fit check of the most demanding rank; None when the engine does not price this strategy."""
    reason: str = ""
    """Why it is not priced (``check`` None)."""
    rank: int = 0
    """The rank ``check`` prices (the one that needs the most)."""

    @property
    def fits(self) -> bool:
        return self.check is not None and self.check.fits

    @property
    def label(self) -> str:
        storage = ""
        if self.check is not None and self.check.scenario.quant_storage is not QuantStorage.UINT8:
            storage = f" ({self.check.scenario.quant_storage.value} storage)"
        return self.strategy.value + storage + ("" if self.offload is StateOffload.NONE
                                                else f" + {self.offload.value} offload")

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(gpus=self.gpus, strategy=self.strategy.value, state_offload=self.offload.value,
                                   priced=self.check is not None, fits=self.fits, rank=self.rank)
        if self.check is None:
            return {**out, "reason": self.reason}
        c = self.check
        return {**out, "need_bytes": c.need_bytes, "point_need_bytes": c.point_need_bytes,
                "budget_bytes": c.budget_bytes, "headroom_bytes": c.headroom_bytes, "host_bytes": c.host_bytes,
                "host_fits": c.host_fits}


@dataclass(frozen=True)
class GpuPlan:
    """Every candidate up to ``max_gpus`` and the pick."""

    model: str
    gpu: Gpu
    scenario: Scenario
    """The run as given (its own strategy and world size are replaced by each candidate's)."""
    max_gpus: int
    candidates: tuple[Candidate, ...]
    best: Candidate | None
    """The fewest GPUs that fit, by ``PREFERENCE``; None when nothing up to ``max_gpus`` fits."""
    best_on_gpu: Candidate | None = None
    """The fewest GPUs that fit with every state on the GPUs (no state offload: no CPU optimizer step, no
    host RAM), when that differs from ``best``."""

    @property
    def fits(self) -> bool:
        return self.best is not None

    @property
    def best_scenario(self) -> Scenario | None:
        return None if self.best is None else self.best.check.scenario.replace(process_rank=0)  # type: ignore[union-attr]

    def to_dict(self) -> dict[str, Any]:
        return dict(model=self.model, gpu=self.gpu.to_dict(), max_gpus=self.max_gpus, fits=self.fits,
                    best=None if self.best is None else self.best.to_dict(),
                    best_on_gpu=None if self.best_on_gpu is None else self.best_on_gpu.to_dict(),
                    best_scenario=None if self.best_scenario is None else self.best_scenario.to_dict(),
                    candidates=[c.to_dict() for c in self.candidates])


def candidate_scenarios(s: Scenario, n: int) -> list[tuple[Strategy, StateOffload, Scenario | None, str]]:
    """(strategy, offload, scenario on n GPUs or None, why not) for every candidate at world size ``n``.
    The strategy-specific knobs of ``s`` are kept where the candidate's strategy owns them, else reset."""
    out: list[tuple[Strategy, StateOffload, Scenario | None, str]] = []
    for strategy, offload in PREFERENCE:
        if strategy is Strategy.SINGLE and n > 1:
            continue
        if strategy is not Strategy.SINGLE and n == 1 and offload is StateOffload.NONE:
            continue  # a process group of one only adds its buffers to the single-GPU run
        if offload not in _OFFLOADS[strategy]:
            continue
        try:
            out.append((strategy, offload, _on(s, n, strategy, offload), ""))
        except VramplanError as e:
            out.append((strategy, offload, None, str(e)))
    return out


def _on(s: Scenario, n: int, strategy: Strategy, offload: StateOffload) -> Scenario:
    """``s`` on ``n`` GPUs of one node under ``strategy``, keeping the knobs that strategy owns."""
    from dataclasses import fields

    from vramplan.scenario import _DEFAULTS

    owned = _KNOBS.get(strategy, ())
    reset = {f.name: _DEFAULTS[f.name] for f in fields(Scenario)
             if f.name in _ALL_KNOBS and f.name not in owned}
    out = s.replace(**reset, gpus=n, nodes=1, strategy=strategy, state_offload=offload, process_rank=0)
    if strategy is Strategy.FSDP and s.quantized_4bit and s.quant_storage is QuantStorage.UINT8:
        # FSDP-QLoRA stores the packed weights in the compute dtype so that FSDP shards them (accelerate
        # ignores uint8 parameters: every rank would hold the whole 4-bit model); the bytes are the same
        out = out.replace(quant_storage=QuantStorage(s.dtype.value))
    return out


#: The knobs each strategy owns (``Scenario._check_parallel``): kept from the user's run for that strategy.
_KNOBS: dict[Strategy, tuple[str, ...]] = {
    Strategy.DDP: ("bucket_cap_mb", "gradient_as_bucket_view"),
    Strategy.FSDP: ("reshard_after_forward",),
    Strategy.ZERO2: ("reduce_bucket_size", "allgather_bucket_size", "overlap_comm", "contiguous_gradients"),
    Strategy.ZERO3: ("reduce_bucket_size", "allgather_bucket_size", "overlap_comm", "contiguous_gradients",
                     "stage3_prefetch_bucket_size", "stage3_max_live_parameters",
                     "stage3_param_persistence_threshold", "stage3_max_reuse_distance"),
}
_ALL_KNOBS = {k for v in _KNOBS.values() for k in v}


def _ranks(s: Scenario) -> range:
    """The ranks to check: every rank (their needs differ only where shards are uneven, and the last ranks
    hold the short ones), capped at 8 ranks: rank 0 and the last seven, which hold any short shards."""
    n = s.world_size
    return range(n) if n <= 8 else range(n - 7, n)


def plan_gpus(model: "str | Arch", gpu: "Gpu | str", scenario: Scenario | None = None, *, max_gpus: int = 8,
              calibration: Calibration | None = None, bound: str = "upper", host_ram: int | None = None,
              estimator: Estimator | None = None) -> GpuPlan:
    """Price every candidate from 1 to ``max_gpus`` GPUs and pick the fewest that fit (module docstring)."""
    if isinstance(max_gpus, bool) or not isinstance(max_gpus, int) or not 1 <= max_gpus <= MAX_GPUS:
        raise VramplanError(f"max GPUs must be an integer from 1 to {MAX_GPUS}, got {max_gpus!r}")
    arch = model if isinstance(model, Arch) else resolve(model)
    card = gpu if isinstance(gpu, Gpu) else find_gpu(gpu)
    s = scenario or Scenario()
    p = Planner(arch, card, calibration=calibration, bound=bound, estimator=estimator, host_ram=host_ram)
    cands: list[Candidate] = []
    for n in range(1, max_gpus + 1):
        for strategy, offload, sn, why in candidate_scenarios(s, n):
            if sn is None:
                cands.append(Candidate(n, strategy, offload, None, why))
                continue
            try:
                worst = max((p.check(sn.replace(process_rank=r)) for r in ([0] if n == 1 else [0, *_ranks(sn)])),
                            key=lambda c: (c.need_bytes, c.host_bytes))
            except VramplanError as e:  # the engine does not price this strategy (or this run under it)
                cands.append(Candidate(n, strategy, offload, None, str(e)))
                continue
            cands.append(Candidate(n, strategy, offload, worst, rank=worst.scenario.process_rank))
    best = next((c for c in cands if c.fits), None)  # in order: fewest GPUs, then PREFERENCE
    on_gpu = next((c for c in cands if c.fits and c.offload is StateOffload.NONE), None)
    return GpuPlan(arch.name, card, s, max_gpus, tuple(cands), best, None if on_gpu is best else on_gpu)

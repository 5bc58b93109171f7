"""What fits a GPU: the fit verdict, the largest seq / micro-batch / rank, and what to change.

**What is compared with what.** A training process occupies, on the device, its CUDA context plus
whatever PyTorch's caching allocator has *reserved* (allocated tensors + allocator reserve) plus any
CUDA managed memory (paged optimizer state). That is the breakdown's process total (``total_bytes``),
the figure nvidia-smi shows per process. The card offers its reported total less the driver's own
reserve. Subtracting the CUDA context on both sides, the planner compares

    need   = process total − CUDA context  (= reserved peak + managed)
    budget = Gpu.usable_bytes               (= reported total − driver reserve − CUDA context)

so ``fits`` is ``need ≤ budget`` and ``headroom = budget − need``. Managed memory can spill to host
RAM, so counting it in full is conservative for paged optimizers. On Apple unified memory the budget
is Metal's working-set limit and no context is subtracted.

**Which estimate.** By default the conservative bound: the analytic engine's
``Breakdown.upper.total`` (point estimate widened by the calibration's validation
residuals). ``bound="point"`` uses the point estimate. Without an upper bound in the breakdown the
point estimate is used and a note says so.

**Search.** The estimate is monotone in seq, batch and rank, so each "largest X that fits" is a
galloping search from the current value followed by bisection: O(log range) estimates, not a scan.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

from vramplan.analytic import adapters as ad
from vramplan.analytic import optimizer as opt
from vramplan.arch import Arch, resolve
from vramplan.breakdown import Breakdown
from vramplan.calibration import Calibration
from vramplan.errors import VramplanError
from vramplan.gpus import Gpu, find_gpu
from vramplan.lengths import Lengths, Packing, longest_batch, packing
from vramplan.scenario import MAX_TOKENS, Attn, Dtype, Optim, Quant, Recipe, Scenario

#: estimate(arch, scenario, calibration=None, device=None) -> Breakdown
Estimator = Callable[..., Breakdown]

BOUNDS = ("upper", "point")


def _analytic() -> Estimator:
    from vramplan.analytic import estimate

    return estimate


@dataclass(frozen=True)
class Check:
    """One scenario against one card."""

    scenario: Scenario
    need_bytes: int
    """Reserved peak + managed memory under the chosen bound (process total less CUDA context)."""
    budget_bytes: int
    """``Gpu.usable_bytes`` under the calibration in use."""
    bound: str
    """``upper`` or ``point``: which estimate ``need_bytes`` is."""
    point_need_bytes: int
    """The point estimate of the same quantity."""
    breakdown: Breakdown = field(compare=False, repr=False)
    host_budget_bytes: int | None = None
    """Host memory available (``plan --host-ram``); None: host memory not checked."""

    @property
    def host_bytes(self) -> int:
        """Host memory the run holds (activation offloading's pinned copies; ``Breakdown.host_bytes``)."""
        return self.breakdown.host_bytes

    @property
    def host_fits(self) -> bool:
        """The host memory fits ``host_budget_bytes`` (True when it is not checked)."""
        return self.host_budget_bytes is None or self.host_bytes <= self.host_budget_bytes

    @property
    def fits(self) -> bool:
        return self.need_bytes <= self.budget_bytes and self.host_fits

    @property
    def headroom_bytes(self) -> int:
        """Budget left over (negative: this much short)."""
        return self.budget_bytes - self.need_bytes

    def to_dict(self) -> dict[str, Any]:
        out = dict(fits=self.fits, need_bytes=self.need_bytes, point_need_bytes=self.point_need_bytes,
                   budget_bytes=self.budget_bytes, headroom_bytes=self.headroom_bytes, bound=self.bound,
                   seq=self.scenario.seq, batch=self.scenario.batch, rank=self.scenario.rank)
        return {**out, **_host_dict(self)}


def _host_dict(c: "Check") -> dict[str, Any]:
    """The host-memory keys of a check's JSON: present when the run holds host memory or it is checked."""
    if not c.host_bytes and c.host_budget_bytes is None:
        return {}
    return dict(host_bytes=c.host_bytes, host_budget_bytes=c.host_budget_bytes, host_fits=c.host_fits)


def need_bytes(b: Breakdown, bound: str = "upper") -> tuple[int, bool]:
    """(bytes a run needs beyond its CUDA context, whether the upper bound was used).

    Point: the process total less the context, i.e. every component but ``context`` (allocated,
    allocator reserve, managed). Upper: ``upper.total`` less the point context.
    """
    context = other = 0
    for c in b.components:
        if c.category == "context":
            context += c.bytes
        else:
            other += c.bytes
    if bound == "upper" and b.upper is not None:
        return b.upper.total - context, True
    return other, False


def headroom(b: Breakdown, gpu: Gpu, calibration: Calibration | None) -> dict[str, Any]:
    """What is left on ``gpu`` after the point estimate's reserved + managed memory (``need_bytes``),
    against its memory less driver reserve and CUDA context (the ``vramplan estimate --gpu`` figures)."""
    usable = gpu.usable(calibration)
    need, _ = need_bytes(b, "point")
    return {"gpu": gpu.name, "memory_bytes": gpu.memory_bytes, "usable_bytes": usable,
            "needed_bytes": need, "headroom_bytes": usable - need, "fits": usable >= need}


class Planner:
    """Fit checks of one model on one card, memoised per scenario (a plan revisits a few points)."""

    def __init__(self, arch: Arch, gpu: Gpu, calibration: Calibration | None = None, bound: str = "upper",
                 estimator: Estimator | None = None, cache: bool = True, host_ram: int | None = None) -> None:
        if bound not in BOUNDS:
            raise VramplanError(f"unknown bound '{bound}' (choose upper or point)")
        self.arch, self.gpu, self.calibration, self.bound = arch, gpu, calibration, bound
        self.budget = gpu.usable(calibration)
        if host_ram is not None and (isinstance(host_ram, bool) or not isinstance(host_ram, int) or host_ram <= 0):
            raise VramplanError(f"host RAM must be a positive number of bytes, got {host_ram!r}")
        self.host_ram = host_ram
        """Host memory available (bytes): a run whose offloaded activations exceed it does not fit."""
        self.device = None if gpu.kind == "custom" else gpu.name
        self._estimate = estimator or _analytic()
        self._cache: dict[Scenario, Check] | None = {} if cache else None
        self.calls = 0
        """Estimates actually computed (cache misses)."""
        self.used_upper = True

    def check(self, scenario: Scenario) -> Check:
        if self._cache is not None:
            hit = self._cache.get(scenario)
            if hit is not None:
                return hit
        self.calls += 1
        b = self._estimate(self.arch, scenario, calibration=self.calibration, device=self.device)
        need, upper = need_bytes(b, self.bound)
        if self.bound == "upper" and not upper:
            self.used_upper = False
        point = need if not upper else need_bytes(b, "point")[0]
        result = Check(scenario, need, self.budget, "upper" if upper else "point", point, b, self.host_ram)
        if self._cache is not None:
            self._cache[scenario] = result
        return result

    def fits(self, scenario: Scenario) -> bool:
        return self.check(scenario).fits

    def largest(self, base: Scenario, name: str, cap: int, step: int = 1) -> int | None:
        """Largest ``name`` (a multiple of ``step``, ≤ ``cap``) at which ``base`` fits, else None.

        Gallops from the current value (doubling up, halving down) to bracket the boundary, then
        bisects; monotonicity of the estimate in ``name`` makes this exact.
        """
        if name == "seq":
            cap = min(cap, MAX_TOKENS // base.batch)
        elif name == "batch":
            cap = min(cap, MAX_TOKENS // base.seq)
        elif name == "rank":
            cap = min(cap, rank_cap(self.arch, base))
            breaks = [b for b in rank_breakpoints(self.arch, base) if 1 < b <= cap]
            if breaks:
                return self._largest_piecewise(base, cap, breaks)
        top = cap // step
        if top < 1:
            return None

        def ok(k: int) -> bool:
            return self.fits(base.replace(**{name: k * step}))

        k = min(max(getattr(base, name) // step, 1), top)
        if ok(k):
            good, bad = k, None
            while bad is None:
                if good == top:
                    return top * step
                nxt = min(good * 2, top)
                if ok(nxt):
                    good = nxt
                else:
                    bad = nxt
        else:
            bad = k
            good = None
            while good is None:
                if bad == 1:
                    return None
                nxt = max(bad // 2, 1)
                if ok(nxt):
                    good = nxt
                else:
                    bad = nxt
        return _bisect(ok, good, bad) * step


    def _largest_piecewise(self, base: Scenario, cap: int, breaks: list[int]) -> int | None:
        """Largest rank ≤ ``cap`` that fits when the need is monotone only between ``breaks``: from the
        top piece down, the first piece whose lowest rank fits holds the answer (bisected there)."""
        def ok(r: int) -> bool:
            return self.fits(base.replace(rank=r))

        starts = [1] + sorted(set(breaks))
        ends = [b - 1 for b in starts[1:]] + [cap]
        for lo, hi in reversed(list(zip(starts, ends))):
            if ok(lo):
                return _bisect(ok, lo, hi + 1)
        return None


def _bisect(ok: Callable[[int], bool], good: int, bad: int) -> int:
    """The largest k in [good, bad) with ``ok(k)``, given ``ok(good)`` and a need that grows with k
    up to ``bad`` (which does not fit, or lies past the range)."""
    while bad - good > 1:  # invariant: ok(good), not ok(bad)
        mid = (good + bad) // 2
        if ok(mid):
            good = mid
        else:
            bad = mid
    return good


def rank_breakpoints(arch: Arch, s: Scenario) -> tuple[int, ...]:
    """Ranks at which a LoRA tensor crosses one of the optimizer's state-layout thresholds
    (``optimizer.state_thresholds``); between two of them the need grows with the rank. Every LoRA
    tensor has c·r elements (A: r·in, B: out·r, the fused-expert stacks likewise), so a tensor with c
    elements per unit of rank crosses a threshold t at r = ⌈t / c⌉."""
    thresholds = opt.state_thresholds(s.optimizer)
    if not thresholds or s.full:
        return ()
    targets = ad.target_linears(arch, s.targets, 1)
    per_rank = [n for n, _ in ad.lora_tensor_sizes(targets, 1) + ad.expert_lora_tensors(arch, s.targets, 1)]
    return tuple(sorted({-(-t // c) for t in thresholds for c in per_rank if c}))


def rank_cap(arch: Arch, s: Scenario) -> int:
    """Largest LoRA rank worth searching on the scenario's targets: the smallest of min(in, out) over
    the targeted linears (linears with a dimension of 1 left out). peft trains larger ranks too, but
    the update's rank cannot exceed that dimension (``adapters.rank_notes``)."""
    lins = arch.quantizable_linears()
    if s.targets != ("all-linear",):
        lins = tuple(lin for lin in lins if lin.name.split(".")[-1] in s.targets) or lins
    dims = [min(lin.in_features, lin.out_features) for lin in lins]
    return min((d for d in dims if d > 1), default=arch.hidden_size)


@dataclass(frozen=True)
class Suggestion:
    """One change to the scenario and what it does to the need."""

    key: str
    """Machine name: grad_checkpointing, optimizer, paged, targets, attn, recipe, quant, seq, rank, batch,
    combined."""
    text: str
    """What to do, for people."""
    changes: dict[str, Any]
    """Scenario fields to change (CLI spellings)."""
    need_bytes: int
    saved_bytes: int
    fits: bool

    def to_dict(self) -> dict[str, Any]:
        return dict(key=self.key, text=self.text, changes=self.changes, need_bytes=self.need_bytes,
                    saved_bytes=self.saved_bytes, fits=self.fits)


@dataclass(frozen=True)
class LengthsPlan:
    """The dataset's length distribution against the card."""

    lengths: Lengths
    percentile: float
    planned_seq: int
    """The chosen percentile's length: the seq to truncate or pack to."""
    planned: Check
    """The configuration at ``planned_seq``."""
    longest: Check
    """The configuration at the fullest micro-batch (``lengths.longest_batch``): the longest example's
    batch when unpadded rows pad to it, the ``batch`` longest examples in one padding-free row, full
    rows of seq when packed."""
    covered: float
    """Share of examples no longer than the largest seq that fits (1.0 when all fit)."""
    packing: Packing

    def to_dict(self) -> dict[str, Any]:
        return dict(stats=self.lengths.summary(), percentile=self.percentile, planned_seq=self.planned_seq,
                    planned=self.planned.to_dict(), longest=self.longest.to_dict(),
                    covered=round(self.covered, 6), packing=self.packing.to_dict())


@dataclass(frozen=True)
class Plan:
    """Everything ``vramplan plan`` answers. ``fits`` decides the exit code."""

    model: str
    gpu: Gpu
    scenario: Scenario
    check: Check
    max_seq: int | None
    """Largest seq (multiple of ``seq_step``) that fits at the given batch and rank; None: not even one step."""
    seq_cap: int
    seq_step: int
    max_batch: int | None
    """Largest micro-batch that fits at the given seq and rank."""
    batch_cap: int
    max_rank: int | None
    """Largest LoRA rank that fits at the given seq and batch (None for full fine-tuning or none fits)."""
    rank_cap: int
    suggestions: tuple[Suggestion, ...]
    lengths: LengthsPlan | None
    estimate_calls: int
    notes: tuple[str, ...] = ()

    @property
    def fits(self) -> bool:
        return self.check.fits

    @property
    def headroom_bytes(self) -> int:
        return self.check.headroom_bytes

    @property
    def bound(self) -> str:
        return self.check.bound

    def to_dict(self) -> dict[str, Any]:
        return dict(
            model=self.model, gpu=self.gpu.to_dict(), scenario=self.scenario.to_dict(), fits=self.fits,
            bound=self.bound, need_bytes=self.check.need_bytes, point_need_bytes=self.check.point_need_bytes,
            budget_bytes=self.check.budget_bytes, headroom_bytes=self.headroom_bytes, **_host_dict(self.check),
            max_seq=self.max_seq, seq_cap=self.seq_cap, seq_step=self.seq_step,
            max_batch=self.max_batch, batch_cap=self.batch_cap, max_rank=self.max_rank, rank_cap=self.rank_cap,
            suggestions=[s.to_dict() for s in self.suggestions],
            lengths=self.lengths.to_dict() if self.lengths else None,
            breakdown=self.check.breakdown.to_dict(), estimate_calls=self.estimate_calls, notes=list(self.notes))


# ------------------------------------------------------------------------------------- suggestions
def _attention_targets(arch: Arch) -> tuple[str, ...]:
    names = arch.linear_names()
    pick = [n for n in ("q_proj", "v_proj") if n in names]
    if len(pick) == 2:
        return tuple(pick)
    return tuple(n for n in ("qkv_proj", "o_proj") if n in names) or names[:1]


def _candidates(arch: Arch, s: Scenario) -> list[tuple[str, str, dict[str, Any]]]:
    """Single changes worth pricing, as (key, text, scenario changes); shape changes come later."""
    out: list[tuple[str, str, dict[str, Any]]] = []
    if not s.grad_checkpointing:
        out.append(("grad_checkpointing", "turn on gradient checkpointing", {"grad_checkpointing": True}))
    eight = {Optim.ADAMW: Optim.ADAMW8BIT, Optim.PAGED_ADAMW: Optim.PAGED_ADAMW8BIT}.get(s.optimizer)
    if eight is not None:
        out.append(("optimizer", f"use the 8-bit optimizer ({eight.value})", {"optimizer": eight}))
    paged = {Optim.ADAMW: Optim.PAGED_ADAMW, Optim.ADAMW8BIT: Optim.PAGED_ADAMW8BIT}.get(s.optimizer)
    if paged is not None:
        out.append(("paged", f"use the paged optimizer ({paged.value})", {"optimizer": paged}))
    if s.optimizer is Optim.ADAMW:
        out.append(("optimizer", "use the paged 8-bit optimizer (paged_adamw8bit)",
                    {"optimizer": Optim.PAGED_ADAMW8BIT}))
    if not s.full and s.targets == ("all-linear",):
        small = _attention_targets(arch)
        out.append(("targets", f"target fewer modules ({','.join(small)})", {"targets": small}))
    if s.attn is Attn.EAGER:
        out.append(("attn", "use sdpa attention", {"attn": Attn.SDPA}))
    if s.attn is not Attn.FLASH2 and s.dtype is not Dtype.FP32:
        out.append(("attn", "use flash-attention-2 (attn flash2)", {"attn": Attn.FLASH2}))
    if s.recipe is Recipe.HF_PEFT:
        out.append(("recipe", "use the TRL recipe (embeddings and lm_head stay bf16)", {"recipe": Recipe.TRL}))
    if not s.full and s.quant in (Quant.NONE, Quant.INT8):
        out.append(("quant", "quantize the base to 4-bit NF4 (QLoRA)", {"quant": Quant.NF4}))
    if s.quantized_4bit and not s.double_quant:
        out.append(("quant", "turn on double quantization", {"double_quant": True}))
    return out


def _json_changes(changes: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.value if hasattr(v, "value") else list(v) if isinstance(v, tuple) else v)
            for k, v in changes.items()}


def suggest(planner: Planner, s: Scenario, max_seq: int | None, max_batch: int | None,
            max_rank: int | None, lengths: Lengths | None = None) -> tuple[Suggestion, ...]:
    """Changes that lower the need, largest saving first; the shape changes land exactly on the fit
    boundary. A final ``combined`` entry applies the non-shape changes cumulatively until one fits."""
    base = planner.check(s)
    priced: list[Suggestion] = []
    for key, text, changes in _candidates(planner.arch, s):
        try:
            c = planner.check(s.replace(**changes))
        except VramplanError:
            continue
        if c.need_bytes < base.need_bytes:
            priced.append(Suggestion(key, text, _json_changes(changes), c.need_bytes,
                                     base.need_bytes - c.need_bytes, c.fits))
    # keep the best of alternatives that change the same field
    best: dict[tuple[str, ...], Suggestion] = {}
    for sug in priced:
        k = tuple(sorted(sug.changes))
        if k not in best or sug.saved_bytes > best[k].saved_bytes:
            best[k] = sug
    singles = sorted(best.values(), key=lambda x: -x.saved_bytes)
    shapes: list[Suggestion] = []
    for key, value, current, text in (
        ("seq", max_seq, s.seq, "shorten seq to {v:,} tokens"),
        ("batch", max_batch, s.batch, "micro-batch {v} with gradient accumulation ×{acc}"),
        ("rank", max_rank, s.rank, "lower the LoRA rank to {v}"),
    ):
        if value is None or value >= current:
            continue
        c = planner.check(s.replace(**{key: value}))
        acc = math.ceil(s.batch / value) if key == "batch" else 0
        text = text.format(v=value, acc=acc)
        if key == "seq" and lengths is not None:
            text += f" (truncates {lengths.fraction_above(value):.2%} of examples, or pack to it)"
        shapes.append(Suggestion(key, text, {key: value}, c.need_bytes, base.need_bytes - c.need_bytes, c.fits))
    out = sorted(singles + shapes, key=lambda x: -x.saved_bytes)
    if not any(x.fits for x in singles) and len(singles) > 1:
        taken: list[Suggestion] = []
        cur, cur_need = s, base.need_bytes
        for sug in singles:
            try:
                c = planner.check(cur.replace(**{k: _raw(k, v) for k, v in sug.changes.items()}))
            except VramplanError:
                continue
            if c.need_bytes < cur_need:
                cur, cur_need = c.scenario, c.need_bytes
                taken.append(sug)
                if c.fits:
                    break
        if len(taken) > 1:
            c = planner.check(cur)
            changes = {k: v for t in taken for k, v in t.changes.items()}
            text = "all of: " + "; ".join(t.text for t in taken)
            if not c.fits:
                longest = planner.largest(cur, "seq", MAX_TOKENS // cur.batch)
                if longest is not None:
                    text += f"; then seq up to {longest:,} fits"
            out.append(Suggestion("combined", text, changes, c.need_bytes, base.need_bytes - c.need_bytes,
                                  c.fits))
    return tuple(out)


def _raw(key: str, value: Any) -> Any:
    return tuple(value) if key == "targets" and isinstance(value, list) else value


# -------------------------------------------------------------------------------------------- plan
def plan(model: "str | Arch", gpu: "Gpu | str", scenario: Scenario | None = None, *,
         calibration: Calibration | None = None, bound: str = "upper", lengths: Lengths | None = None,
         percentile: float = 99.0, seq_step: int = 1, suggestions: bool = True,
         estimator: Estimator | None = None, pad_to_seq: bool = False, host_ram: int | None = None) -> Plan:
    """Plan ``scenario`` of ``model`` on ``gpu``.

    ``host_ram`` (bytes): the host memory available; a run whose host memory (activation offloading's
    pinned copies, ``Breakdown.host_bytes``) exceeds it does not fit, and the largest seq / batch /
    rank respect it too.

    With ``lengths`` the scenario is checked at the fullest micro-batch its layout can draw (OOMs strike
    there; ``lengths.longest_batch``): unpacked rows padded to the longest example (to the scenario's
    seq with ``pad_to_seq``, a collator padding to max length), a padding-free row holding the
    ``batch`` longest examples, packed rows always full at the scenario's seq. The chosen
    ``percentile`` gives the planned seq to truncate or pack to. Suggestions are computed only for a
    run that does not fit.
    """
    arch = model if isinstance(model, Arch) else resolve(model)
    card = gpu if isinstance(gpu, Gpu) else find_gpu(gpu)
    s = scenario or Scenario()
    if isinstance(seq_step, bool) or not isinstance(seq_step, int) or seq_step < 1:
        raise VramplanError(f"seq step must be a positive integer, got {seq_step!r}")
    if not 0 < percentile <= 100:
        raise VramplanError(f"percentile must be in (0, 100], got {percentile}")
    notes: list[str] = []
    if lengths is not None:
        seq, size = longest_batch(lengths, s.packing.value, s.seq, s.batch, pad_to_seq=pad_to_seq)
        if seq * size > MAX_TOKENS:
            raise VramplanError(f"longest example ({lengths.max:,} tokens) × batch {s.batch} exceeds the "
                                f"supported {MAX_TOKENS:,} tokens; truncate with --seq")
        if s.packing.value != "none" or pad_to_seq:
            notes.append(f"fullest micro-batch ({s.packing.value}{', padded to seq' if pad_to_seq else ''}): "
                         f"{size} × {seq:,} tokens")
        s = s.replace(seq=seq, batch=size)
    p = Planner(arch, card, calibration=calibration, bound=bound, estimator=estimator, host_ram=host_ram)
    check = p.check(s)
    seq_cap = MAX_TOKENS // s.batch
    if seq_step > seq_cap:
        raise VramplanError(f"seq step {seq_step:,} exceeds the largest supported seq at micro-batch {s.batch} "
                            f"({seq_cap:,} tokens)")
    max_seq = p.largest(s, "seq", seq_cap, seq_step)
    if max_seq is None and check.fits:
        notes.append(f"no multiple of the seq step {seq_step:,} fits; the run's own seq {s.seq:,} does")
    batch_cap = MAX_TOKENS // s.seq
    max_batch = p.largest(s, "batch", batch_cap)
    rcap = rank_cap(arch, s)
    max_rank = None if s.full else p.largest(s, "rank", rcap)
    if bound == "upper" and not p.used_upper:
        notes.append("the estimate carries no upper bound; the point estimate was used")
    if max_seq is not None and arch.max_position_embeddings and max_seq > arch.max_position_embeddings:
        notes.append(f"largest seq {max_seq:,} exceeds the model's context of {arch.max_position_embeddings:,}")
    if card.unified:
        notes.append("unified memory: budget is Metal's working-set limit; bitsandbytes 4-bit needs CUDA")
    lp = None
    if lengths is not None:
        planned_seq = max(1, lengths.percentile(percentile))  # a percentile of empty examples is still 1 token
        planned = p.check(s.replace(seq=planned_seq))
        covered = 1.0 - lengths.fraction_above(max_seq) if max_seq else 0.0
        lp = LengthsPlan(lengths, percentile, planned_seq, planned, check, covered,
                         packing(lengths, planned_seq, s.batch))
    sugg = suggest(p, s, max_seq, max_batch, max_rank, lengths) if suggestions and not check.fits else ()
    return Plan(model=arch.name, gpu=card, scenario=s, check=check, max_seq=max_seq, seq_cap=seq_cap,
                seq_step=seq_step, max_batch=max_batch, batch_cap=batch_cap, max_rank=max_rank,
                rank_cap=rcap, suggestions=sugg, lengths=lp, estimate_calls=p.calls, notes=tuple(notes))


def sweep(model: "str | Arch", gpu: "Gpu | str", scenarios: "list[Scenario]", *,
          calibration: Calibration | None = None, bound: str = "upper",
          estimator: Estimator | None = None) -> list[Check]:
    """Fit checks of many scenarios of one model on one card (the bulk API; no search)."""
    arch = model if isinstance(model, Arch) else resolve(model)
    card = gpu if isinstance(gpu, Gpu) else find_gpu(gpu)
    p = Planner(arch, card, calibration=calibration, bound=bound, estimator=estimator, cache=False)
    return [p.check(s) for s in scenarios]

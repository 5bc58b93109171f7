"""The planner: fit verdicts, the bisection searches, suggestions and dataset-aware planning.

Two layers: a synthetic linear estimator whose answers are known in closed form (so the search is
checked against arithmetic and against a brute-force scan), and the real analytic engine (so the
consistency promise holds where users meet it: fits at max, not at max + one step).
"""

import pytest

from vramplan.arch import resolve
from vramplan.breakdown import Breakdown, Component, Totals
from vramplan.calibration import Calibration
from vramplan.errors import VramplanError
from vramplan.gpus import custom_gpu, find_gpu
from vramplan.lengths import from_values
from vramplan.plan import Planner, need_bytes, plan, rank_cap, sweep
from vramplan.scenario import MAX_TOKENS, Attn, Scenario

MiB = 1024**2
GiB = 1024**3
CAL = Calibration(cuda_context_bytes=512 * MiB)


def linear_estimate(arch, s, calibration=None, device=None, ub=0.05):
    """need(point) = 4 GiB + 1 MiB·tokens (8 MiB without checkpointing) + 2 MiB·rank (+ optimizer)."""
    per_token = (1 if s.grad_checkpointing else 8) * MiB * (2 if s.attn is Attn.EAGER else 1)
    adapter = 2 * MiB * s.rank
    opt = adapter * (1 if s.optimizer.eight_bit else 4)
    comps = (Component("weights/nf4", "weights", 4 * GiB),
             Component("adapter/lora", "adapter", adapter),
             Component("optimizer/state", "optimizer", opt),
             Component("activations/x", "activations", per_token * s.tokens),
             Component("runtime/cuda_context", "context", 512 * MiB))
    b = Breakdown(comps)
    upper = None if ub is None else Totals(0, 0, int(b.total_bytes * (1 + ub)))
    return Breakdown(comps, upper=upper)


def point_only(arch, s, calibration=None, device=None):
    return linear_estimate(arch, s, ub=None)


ARCH = resolve("vramplan-debug")
G24 = custom_gpu("24GiB", CAL)                       # usable = 24 GiB - 512 MiB
BUDGET = 24 * GiB - 512 * MiB


def test_need_is_process_total_less_context():
    b = linear_estimate(ARCH, Scenario(seq=1000, rank=8), ub=None)
    assert need_bytes(b, "point") == (b.total_bytes - 512 * MiB, False)
    b = linear_estimate(ARCH, Scenario(seq=1000, rank=8))
    assert need_bytes(b, "upper") == (b.upper.total - 512 * MiB, True)


def test_max_seq_matches_closed_form_point():
    # point need = 4 GiB + 1 MiB*seq + 16 MiB(rank 8) + 64 MiB(adamw) <= 23.5 GiB  =>  seq <= 19888
    p = plan(ARCH, G24, Scenario(seq=2048, rank=8), calibration=CAL, bound="point", estimator=linear_estimate)
    assert p.check.budget_bytes == BUDGET
    expected = (BUDGET - 4 * GiB - 16 * MiB - 64 * MiB) // MiB
    assert p.max_seq == expected == 19888
    assert p.fits and p.headroom_bytes == BUDGET - (4 * GiB + 2048 * MiB + 80 * MiB)
    # batch: tokens <= 19888 at seq 2048 -> 9; rank: 10*MiB*rank <= BUDGET - 4GiB - 2048MiB
    assert p.max_batch == 19888 // 2048 == 9
    assert p.rank_cap == 32  # vramplan-debug: k_proj is 64 -> 32, the narrowest target
    assert p.max_rank == min((BUDGET - 4 * GiB - 2048 * MiB) // (10 * MiB), p.rank_cap) == 32


def test_upper_bound_is_stricter_than_point():
    s = Scenario(seq=2048, rank=8)
    up = plan(ARCH, G24, s, calibration=CAL, estimator=linear_estimate)
    pt = plan(ARCH, G24, s, calibration=CAL, bound="point", estimator=linear_estimate)
    assert up.bound == "upper" and pt.bound == "point"
    assert up.check.need_bytes > pt.check.need_bytes == up.check.point_need_bytes
    assert up.max_seq < pt.max_seq


def test_missing_upper_bound_falls_back_to_point_with_a_note():
    p = plan(ARCH, G24, Scenario(), calibration=CAL, estimator=point_only)
    assert p.bound == "point" and any("no upper bound" in n for n in p.notes)


@pytest.mark.parametrize("seq,batch,rank", [(1, 1, 1), (512, 3, 64), (30000, 1, 8), (4096, 2, 16)])
def test_bisection_equals_brute_force(seq, batch, rank):
    mem = custom_gpu("6GiB", CAL)
    s = Scenario(seq=seq, batch=batch, rank=rank)
    planner = Planner(ARCH, mem, calibration=CAL, estimator=linear_estimate)
    scan = Planner(ARCH, mem, calibration=CAL, estimator=linear_estimate)

    def brute(name, cap):
        best = None
        for v in range(1, cap + 1):
            if scan.fits(s.replace(**{name: v})):
                best = v
        return best

    assert planner.largest(s, "batch", 400) == brute("batch", min(400, MAX_TOKENS // seq))
    assert planner.largest(s, "rank", 300) == brute("rank", min(300, rank_cap(ARCH, s)))
    got = planner.largest(s, "seq", 3000, step=8)
    want = max((v for v in range(8, 3001, 8) if scan.fits(s.replace(seq=v))), default=None)
    assert got == want


def test_search_is_logarithmic_not_a_scan():
    p = plan(ARCH, find_gpu("h200"), Scenario(seq=2048), estimator=linear_estimate)
    assert p.max_seq is not None and p.max_seq > 100_000
    assert p.estimate_calls < 130  # three searches over ranges up to 10M


def test_nothing_fits_gives_none():
    tiny = custom_gpu("4GiB", CAL)  # weights alone are 4 GiB
    p = plan(ARCH, tiny, Scenario(), calibration=CAL, estimator=linear_estimate)
    assert not p.fits and p.max_seq is None and p.max_batch is None and p.max_rank is None


def test_suggestions_rank_by_saving_and_shape_changes_land_on_the_boundary():
    s = Scenario(seq=4096, rank=8, grad_checkpointing=False, attn="eager")
    p = plan(ARCH, G24, s, calibration=CAL, estimator=linear_estimate)
    assert not p.fits
    saved = [x.saved_bytes for x in p.suggestions if x.key != "combined"]
    assert saved == sorted(saved, reverse=True) and all(v > 0 for v in saved)
    keys = {x.key for x in p.suggestions}
    assert {"grad_checkpointing", "attn", "seq"} <= keys
    seq = next(x for x in p.suggestions if x.key == "seq")
    assert seq.changes == {"seq": p.max_seq} and seq.fits
    gc = next(x for x in p.suggestions if x.key == "grad_checkpointing")
    # 4096 tokens × (16 - 2) MiB saved by checkpointing with eager attention, × 1.05 upper bound
    assert gc.saved_bytes == pytest.approx(4096 * 14 * MiB * 1.05, rel=1e-6)
    # the batch one only appears when batch > 1
    assert "batch" not in keys


def test_combined_suggestion_when_no_single_change_fits():
    # 12000 tokens: eager without checkpointing 16 MiB/token (~192 GiB); checkpointing alone 2 MiB/token
    # (~27.5 GiB) and sdpa alone 8 MiB/token do not fit 23.5 GiB; both together (1 MiB/token) do.
    s = Scenario(seq=12000, rank=8, grad_checkpointing=False, attn="eager")
    p = plan(ARCH, G24, s, calibration=CAL, estimator=linear_estimate)
    singles = [x for x in p.suggestions if x.key not in ("seq", "batch", "rank", "combined")]
    assert singles and not any(x.fits for x in singles)
    combo = next(x for x in p.suggestions if x.key == "combined")
    assert combo.fits and combo.changes["grad_checkpointing"] is True and combo.changes["attn"] in ("sdpa", "flash2")


def test_lengths_plan_checks_the_longest_example():
    lens = from_values([100] * 98 + [3000, 30000])
    p = plan(ARCH, G24, Scenario(rank=8), calibration=CAL, estimator=linear_estimate, lengths=lens)
    assert p.scenario.seq == 30000 and not p.fits          # verdict at the longest example
    lp = p.lengths
    assert lp.planned_seq == 3000 and lp.planned.fits       # p99 of 100 examples is the 99th
    assert lp.longest.scenario.seq == 30000
    assert lp.covered == pytest.approx(0.99)                 # all but the 30k example fit in max_seq
    assert lp.packing.seq == 3000 and lp.packing.packed_sequences == -(-(9800 + 3000 + 3000) // 3000)


def test_sweep_api():
    ss = [Scenario(seq=s) for s in (512, 8192, 65536)]
    checks = sweep(ARCH, G24, ss, calibration=CAL, estimator=linear_estimate)
    assert [c.fits for c in checks] == [True, True, False]


def test_bad_inputs():
    with pytest.raises(VramplanError):
        plan(ARCH, G24, Scenario(), seq_step=0, estimator=linear_estimate)
    with pytest.raises(VramplanError):
        plan(ARCH, G24, Scenario(), percentile=0, estimator=linear_estimate)
    with pytest.raises(VramplanError):
        Planner(ARCH, G24, bound="maybe", estimator=linear_estimate)
    with pytest.raises(VramplanError, match="unknown GPU"):
        plan(ARCH, "rtx 9999", Scenario(), estimator=linear_estimate)


# ------------------------------------------------------------------------ the real analytic engine
@pytest.fixture(scope="module")
def analytic():
    return pytest.importorskip("vramplan.analytic").estimate


@pytest.mark.parametrize("model,gpu,scenario", [
    ("Qwen3-14B", "RTX 4090", Scenario(seq=2048)),
    ("Qwen3-8B", "Tesla T4", Scenario(seq=1024, batch=2, rank=16)),
    ("Llama-3.1-8B", "A100 40GB", Scenario(seq=4096, grad_checkpointing=False, optimizer="adamw8bit")),
    ("vramplan-debug", "RTX 3060", Scenario(seq=512, batch=4, rank=8)),
    ("Qwen3-30B-A3B", "H100", Scenario(seq=8192, attn="flash2")),
])
def test_consistency_with_the_analytic_engine(analytic, model, gpu, scenario):
    """At each returned maximum the estimate fits; one search step above it does not."""
    arch, card = resolve(model), find_gpu(gpu)
    p = plan(arch, card, scenario, seq_step=8)
    judge = Planner(arch, card)  # an independent planner, no shared cache
    for name, value, cap, step in (("seq", p.max_seq, p.seq_cap, 8), ("batch", p.max_batch, p.batch_cap, 1),
                                   ("rank", p.max_rank, p.rank_cap, 1)):
        if value is None:
            assert not judge.fits(scenario.replace(**{name: step})), name
            continue
        assert value % step == 0
        assert judge.fits(scenario.replace(**{name: value})), (name, value)
        if value + step <= cap and scenario.batch * (value + step if name == "seq" else scenario.seq) <= 10**7:
            assert not judge.fits(scenario.replace(**{name: value + step})), (name, value)
    assert p.fits == judge.fits(scenario)


def test_real_plan_answers(analytic):
    p = plan("Qwen3-14B", "rtx 4090", Scenario(seq=2048))
    assert p.bound == "upper" and p.check.budget_bytes == find_gpu("rtx 4090").usable_bytes
    assert p.check.need_bytes > p.check.point_need_bytes
    assert p.max_seq is not None and (p.max_seq >= 2048) == p.fits
    big = plan("Qwen3-14B", "rtx 4090", Scenario(seq=16384, grad_checkpointing=False))
    assert not big.fits and big.suggestions
    assert {"grad_checkpointing", "seq"} <= {s.key for s in big.suggestions}
    assert any(s.fits for s in big.suggestions)
    data = big.to_dict()
    for k in ("fits", "max_seq", "max_batch", "max_rank", "headroom_bytes", "suggestions"):
        assert k in data


def test_lengths_with_many_empty_examples():
    lens = from_values([0] * 99 + [500])
    p = plan(ARCH, G24, Scenario(), calibration=CAL, estimator=linear_estimate, lengths=lens, percentile=50)
    assert p.lengths.planned_seq == 1 and p.scenario.seq == 500 and p.fits


def test_consistency_property(analytic):
    """Random models, cards and scenarios: every returned maximum fits and one step more does not."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from vramplan.gpus import catalog

    models = [resolve(m) for m in ("vramplan-debug", "Qwen3-0.6B", "Qwen3-8B", "Llama-3.1-8B", "gemma-2-9b",
                                   "Phi-3-mini-4k-instruct", "Qwen3-30B-A3B")]

    @settings(max_examples=40, deadline=None, derandomize=True, database=None)
    @given(arch=st.sampled_from(models), card=st.sampled_from(catalog()), seq=st.integers(1, 16384),
           batch=st.integers(1, 8), rank=st.integers(1, 64), gc=st.booleans(),
           attn=st.sampled_from(["eager", "sdpa", "flash2"]), step=st.sampled_from([1, 8, 128]))
    def check(arch, card, seq, batch, rank, gc, attn, step):
        s = Scenario(seq=seq, batch=batch, rank=min(rank, rank_cap(arch, Scenario())), grad_checkpointing=gc,
                     attn=attn)
        p = plan(arch, card, s, seq_step=step, suggestions=False)
        judge = Planner(arch, card)
        for name, value, cap, st_ in (("seq", p.max_seq, p.seq_cap, step), ("batch", p.max_batch, p.batch_cap, 1),
                                      ("rank", p.max_rank, p.rank_cap, 1)):
            if value is None:
                if st_ <= cap:
                    assert not judge.fits(s.replace(**{name: st_}))
                continue
            assert judge.fits(s.replace(**{name: value}))
            if value + st_ <= cap:
                assert not judge.fits(s.replace(**{name: value + st_}))
        assert p.fits == judge.fits(s)

    check()

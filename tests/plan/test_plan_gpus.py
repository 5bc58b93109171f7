"""``plan_gpus``: the fewest GPUs and the strategy that fit, over a per-rank estimator whose needs are
derived by hand (the search is checked here; the engines' per-rank figures are checked in tests/parallel)."""

import pytest

from vramplan.breakdown import Breakdown, Component
from vramplan.errors import VramplanError
from vramplan.gpus import custom_gpu
from vramplan.parallel import StrategyUnsupported
from vramplan.plan_gpus import PREFERENCE, plan_gpus
from vramplan.scenario import Scenario

GiB = 1 << 30


def model_states(s: Scenario) -> tuple[int, int]:
    """(GPU bytes, host bytes) of one rank of a made-up 40 GiB-of-state run with 6 GiB of activations:
    DDP keeps everything; ZeRO-2 shards the 24 GiB of gradients + optimizer state; FSDP and ZeRO-3 shard
    all 40; offloaded state moves to the host whole (its shard); rank 1 holds 1 GiB more (an uneven shard)."""
    n, st = s.world_size, s.strategy.value
    act, params, rest = 6 * GiB, 16 * GiB, 24 * GiB
    if st in ("single", "ddp"):
        gpu, host = act + params + rest, 0
    elif st == "zero2":
        gpu, host = act + params + rest // n, 0
        if s.state_offload.value == "optimizer":
            gpu, host = act + params, rest // n
    else:  # fsdp, zero3
        gpu, host = act + (params + rest) // n, 0
        if s.state_offload.value == "optimizer":
            gpu, host = act + params // n, rest // n
        elif s.state_offload.value == "params":
            gpu, host = act, (params + rest) // n
    gpu += GiB if s.process_rank == 1 else 0
    return gpu, host


def estimator(arch, s, calibration=None, device=None):
    gpu, host = model_states(s)
    hosts = (Component("host/pageable", "host", host),) if host else ()
    return Breakdown((Component("activations/all", "activations", gpu),), host=hosts)


def refusing_zero(arch, s, **kw):
    if s.strategy.value.startswith("zero"):
        raise StrategyUnsupported(f"strategy {s.strategy.value} (world size {s.world_size}) is not priced")
    return estimator(arch, s, **kw)


def card(gib: int):
    return custom_gpu(gib * GiB)


def test_fewest_gpus_and_the_preferred_strategy():
    """24 GiB card: 24 GiB less the context, 23.25 GiB usable (``custom_gpu``). With 1 GiB of host RAM no
    offload fits (it moves ≥ 8 GiB there). By hand, the most demanding rank (rank 1, +1 GiB):
    n = 2: ddp 47, zero2 22 + 12 + 1 = 35, fsdp = zero3 6 + 20 + 1 = 27 GiB: none fits;
    n = 3: zero2 22 + 8 + 1 = 31, fsdp 6 + 40/3 + 1 = 20.33 GiB: fsdp fits, and precedes zero3."""
    g = plan_gpus("Qwen3-0.6B", card(24), max_gpus=8, bound="point", estimator=estimator, host_ram=GiB)
    assert card(24).usable() < 24 * GiB
    assert g.best is not None and (g.best.gpus, g.best.strategy.value, g.best.offload.value) == (3, "fsdp", "none")
    assert g.best.rank == 1 and g.best.check.need_bytes == 6 * GiB + 40 * GiB // 3 + GiB
    z3 = next(c for c in g.candidates if (c.gpus, c.strategy.value, c.offload.value) == (3, "zero3", "none"))
    assert z3.fits and z3.check.need_bytes == g.best.check.need_bytes  # same need: preference decides
    assert not any(c.fits for c in g.candidates if c.gpus < 3)
    assert g.best_scenario.world_size == 3 and g.best_scenario.process_rank == 0


def test_offload_on_one_card_comes_first_when_host_ram_allows():
    """Without a host-RAM limit, n = 1: zero2 + optimizer offload needs 6 + 16 = 22 GiB ≤ 23.25: it fits,
    and precedes zero3 + optimizer offload (6 + 16 = 22 too) and the parameter offloads."""
    g = plan_gpus("Qwen3-0.6B", card(24), max_gpus=8, bound="point", estimator=estimator)
    assert (g.best.gpus, g.best.strategy.value, g.best.offload.value) == (1, "zero2", "optimizer")
    assert g.best.check.host_bytes == 24 * GiB and g.best.check.need_bytes == 22 * GiB


def test_one_card_fits_with_offload_when_the_budget_allows_only_that():
    # 8 GiB card: nothing without offload fits at n = 1 (46 GiB); fsdp + params offload needs 6 GiB + 40 GiB host
    g = plan_gpus("Qwen3-0.6B", card(8), max_gpus=1, bound="point", estimator=estimator)
    assert g.best is not None and (g.best.gpus, g.best.strategy.value, g.best.offload.value) == (1, "fsdp", "params")
    assert g.best.check.host_bytes == 40 * GiB


def test_host_ram_is_part_of_the_fit():
    g = plan_gpus("Qwen3-0.6B", card(8), max_gpus=1, bound="point", estimator=estimator, host_ram=32 * GiB)
    assert g.best is None  # 40 GiB of offloaded state does not fit 32 GiB of host RAM
    offloads = [c for c in g.candidates if c.offload.value == "params"]
    assert offloads and all(not c.check.host_fits for c in offloads)


def test_unpriced_strategies_are_named_not_priced_as_one_gpu():
    g = plan_gpus("Qwen3-0.6B", card(24), max_gpus=4, bound="point", estimator=refusing_zero)
    zero = [c for c in g.candidates if c.strategy.value.startswith("zero")]
    assert zero and all(c.check is None and "not priced" in c.reason for c in zero)
    assert g.best is not None and g.best.strategy.value == "fsdp"  # 6 + 40/n + 1 ≤ usable first at some n


@pytest.mark.parametrize("bad", [0, 65, True, "4"])
def test_bad_max_gpus(bad):
    with pytest.raises(VramplanError, match="max GPUs"):
        plan_gpus("Qwen3-0.6B", card(24), max_gpus=bad, estimator=estimator)


def test_strategy_knobs_follow_their_strategy():
    """A run's DDP knob is kept for the DDP candidates and reset for the others (which would refuse it)."""
    seen = []

    def record(arch, s, **kw):
        seen.append((s.strategy.value, s.bucket_cap_mb))
        return estimator(arch, s, **kw)

    plan_gpus("Qwen3-0.6B", card(80), Scenario(gpus=2, bucket_cap_mb=100), max_gpus=2, estimator=record)
    assert ("ddp", 100) in seen and all(b == 25 for st, b in seen if st != "ddp")


def test_cli_max_gpus(cli_run):
    import json

    code, out, err = cli_run("plan", "--model", "Qwen3-0.6B", "--gpu", "rtx4090", "--max-gpus", "2", "--json")
    assert code == 0, err
    d = json.loads(out)
    assert d["gpus"]["best"]["gpus"] == 1 and d["gpus"]["best"]["strategy"] == "single"
    assert d["scenario"]["gpus"] == 1
    code, out, err = cli_run("plan", "--model", "Qwen3-0.6B", "--gpu", "rtx4090", "--max-gpus", "0")
    assert code == 2 and "max GPUs" in err

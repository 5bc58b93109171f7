"""One rank of a DDP / FSDP2 run traced on fake tensors in torch's fake process group, held to the same
rank run on real CPU tensors (real bitsandbytes quantization, real optimizer step) in the same group:
every phase's peak and its bytes per component, to the byte, in both steps."""

import pytest

pytest.importorskip("torch")
pytest.importorskip("bitsandbytes")
pytest.importorskip("peft")

from vramplan.arch import resolve  # noqa: E402
from vramplan.hf import interventions  # noqa: E402
from vramplan.scenario import Scenario  # noqa: E402
from vramplan.trace.run import trace_run  # noqa: E402

pytestmark = pytest.mark.torch

ARCH = "vramplan-debug"


def _phases(sc: Scenario, fake: bool) -> list[dict]:
    with interventions.quiet_frameworks():
        run = trace_run(resolve(ARCH), sc, steps=2, fake=fake, device="cpu")
    return [s.phases for s in run.steps]


CASES = {
    "ddp-qlora": dict(strategy="ddp", quant="nf4"),
    "ddp-lora": dict(strategy="ddp", quant="none"),
    "ddp-qlora-bucket-view": dict(strategy="ddp", quant="nf4", gradient_as_bucket_view=True, bucket_cap_mb=1),
    "fsdp-qlora": dict(strategy="fsdp", quant="nf4"),
    "fsdp-qlora-bf16-storage": dict(strategy="fsdp", quant="nf4", quant_storage="bf16"),
    "fsdp-lora": dict(strategy="fsdp", quant="none"),
    "fsdp-full-no-reshard": dict(strategy="fsdp", quant="none", full=True, reshard_after_forward=False,
                                 grad_checkpointing=False),
}


@pytest.mark.parametrize("name", CASES)
def test_fake_rank_equals_real_rank(name):
    sc = Scenario(seq=64, batch=2, gpus=2, **CASES[name])
    fake, real = _phases(sc, True), _phases(sc, False)
    assert fake == real


def test_uneven_shards_ranks_differ_and_each_is_exact():
    """World 3 and a vocabulary of 511 rows: FSDP2 pads the last rank's shards, whose optimizer state
    follows the unpadded local shard; each rank's fake trace equals its real run, and ranks 0 and 2 differ."""
    import vramplan.arch as A

    base = A.find_entry(ARCH).config
    arch = A.Arch.from_config(dict(base, vocab_size=511), name="debug-511")
    peaks = {}
    for rank in (0, 2):
        sc = Scenario(seq=64, batch=2, gpus=3, process_rank=rank, strategy="fsdp", quant="nf4")
        with interventions.quiet_frameworks():
            fake = trace_run(arch, sc, steps=2, fake=True, device="cpu")
            real = trace_run(arch, sc, steps=2, fake=False, device="cpu")
        assert [s.phases for s in fake.steps] == [s.phases for s in real.steps]
        peaks[rank] = fake.steps[-1].by_name
    assert peaks[0] != peaks[2]
    # the shards differ in size, so the sharded state does (rank 2 holds the short shards)
    assert peaks[2]["optimizer/state"] < peaks[0]["optimizer/state"]


def test_fsdp_shards_and_ddp_replicates():
    """Independent of the trace's own numbers: DDP keeps the whole trainable state on every rank (its
    adapter bytes do not change with the world size), FSDP2 divides it."""
    peaks = {}
    for strategy in ("ddp", "fsdp"):
        for world in (2, 4):
            sc = Scenario(seq=64, batch=2, gpus=world, strategy=strategy, quant="none")
            peaks[strategy, world] = _phases(sc, True)[-1]
    ddp2, ddp4 = (peaks["ddp", w]["optimizer"][1] for w in (2, 4))
    fsdp2, fsdp4 = (peaks["fsdp", w]["optimizer"][1] for w in (2, 4))
    assert ddp2["adapter/lora"] == ddp4["adapter/lora"]
    assert fsdp4["adapter/lora"] < fsdp2["adapter/lora"] < ddp2["adapter/lora"]
    assert fsdp4["optimizer/state"] < fsdp2["optimizer/state"] < ddp2["optimizer/state"]


@pytest.mark.parametrize("fields, match", [
    (dict(strategy="fsdp", state_offload="params"), "does not run state_offload params"),
    (dict(strategy="zero3", state_offload="optimizer"), "ZeRO state_offload optimizer is not traced"),
    (dict(strategy="fsdp", optimizer="adamw8bit"), "does not run optimizer adamw8bit"),
], ids=["fsdp-offload", "zero3-offload", "fsdp-8bit-optimizer"])
def test_what_the_rank_trace_does_not_run_is_one_line_error(fields, match):
    from vramplan.errors import VramplanError
    from vramplan.trace import trace

    sc = Scenario(seq=64, batch=2, gpus=2, **fields)
    with pytest.raises(VramplanError, match=match) as e:
        with interventions.quiet_frameworks():
            trace(resolve(ARCH), sc, device="cpu")
    assert "\n" not in str(e.value)


def test_quant_storage_keeps_the_bytes_on_one_gpu():
    """bnb_4bit_quant_storage changes the packed weight's dtype, not its bytes (bf16 [n/4, 1] vs uint8
    [n/2, 1]): one GPU holds the same memory either way."""
    peaks = {}
    for storage in ("uint8", "bf16"):
        sc = Scenario(seq=64, batch=2, quant="nf4", quant_storage=storage)
        peaks[storage] = _phases(sc, True)
    assert peaks["uint8"] == peaks["bf16"]


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_layer_extrapolation_holds_for_one_rank(strategy):
    """The fast mode's exact extrapolation from a few layers equals the trace of every layer (8 layers of
    the debug shape, world 4): the per-rank peak grows by equal steps per layer under DDP and FSDP2."""
    import vramplan.arch as A
    from vramplan.trace import trace

    arch = A.Arch.from_config(dict(A.find_entry(ARCH).config, num_hidden_layers=8), name="debug-L8")
    sc = Scenario(seq=64, batch=2, gpus=4, process_rank=1, strategy=strategy, quant="nf4")
    with interventions.quiet_frameworks():
        fast = trace(arch, sc, device="cpu")
        full = trace(arch, sc, device="cpu", extrapolate=False)
    assert fast.extra["extrapolated"] and not full.extra["extrapolated"]
    assert fast.allocated_peak_bytes == full.allocated_peak_bytes
    assert {c.name: c.bytes for c in fast.components} == {c.name: c.bytes for c in full.components}

"""DeepSpeed ZeRO-2/3, one rank traced on fake tensors in torch's fake process group
(``vramplan.parallel.zero_torch``), held to the same rank run on real CPU tensors in the same group:
every phase's peak and its bytes per component, to the byte, in both steps; the layer extrapolation's
premise (the peak grows by equal steps per layer); the config's "auto" values against transformers'."""

import pytest

from vramplan.parallel import zero_torch
from vramplan.scenario import Scenario

ARCH = "vramplan-debug"


# ------------------------------------------------------------------------- config (no DeepSpeed needed)
def test_auto_values_resolved_as_transformers_does():
    """H = 64: reduce bucket H² = 4096, prefetch int(0.9·H²) = 3686, persistence 10·H = 640."""
    cfg = zero_torch.ds_config(Scenario(strategy="zero3", gpus=2, batch=3), hidden=64)
    z = cfg["zero_optimization"]
    assert (z["stage"], z["reduce_bucket_size"], z["stage3_prefetch_bucket_size"],
            z["stage3_param_persistence_threshold"]) == (3, 4096, 3686, 640)
    assert (cfg["train_micro_batch_size_per_gpu"], cfg["train_batch_size"], cfg["bf16"]["enabled"]) == (3, 6, True)
    z2 = zero_torch.ds_config(Scenario(strategy="zero2", gpus=2, reduce_bucket_size=123), hidden=64)["zero_optimization"]
    assert z2["reduce_bucket_size"] == 123 and "stage3_prefetch_bucket_size" not in z2


def test_auto_values_match_transformers_hf_config():
    """Ours vs theirs: transformers' own ``HfTrainerDeepSpeedConfig.trainer_config_finalize`` on a config
    whose buckets are "auto" fills the same numbers as ``ds_config``."""
    pytest.importorskip("transformers")
    pytest.importorskip("deepspeed")  # without it the constructor raises after registering itself globally
    from types import SimpleNamespace

    from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig, unset_hf_deepspeed_config

    try:
        # the object registers itself as the process's DeepSpeed config (is_deepspeed_zero3_enabled reads
        # it): unset it afterwards, or every later from_pretrained in this process thinks ZeRO-3 is on
        hf = HfTrainerDeepSpeedConfig({"zero_optimization": {"stage": 3, "reduce_bucket_size": "auto",
                                                             "stage3_prefetch_bucket_size": "auto",
                                                             "stage3_param_persistence_threshold": "auto"}})
        model = SimpleNamespace(config=SimpleNamespace(hidden_size=96))
        hf.trainer_config_finalize(SimpleNamespace(get_warmup_steps=lambda n: 0), model, num_training_steps=10)
    finally:
        unset_hf_deepspeed_config()
    ours = zero_torch.ds_config(Scenario(strategy="zero3", gpus=2), zero_torch.hidden_size(model.config))
    for key in ("reduce_bucket_size", "stage3_prefetch_bucket_size", "stage3_param_persistence_threshold"):
        assert ours["zero_optimization"][key] == hf.config["zero_optimization"][key]


# ------------------------------------------------------------------------------------- traced runs
def _traced(sc: Scenario, fake: bool, arch=None, layers=None):
    pytest.importorskip("deepspeed")
    pytest.importorskip("bitsandbytes")
    from vramplan.arch import resolve
    from vramplan.hf import interventions
    from vramplan.trace.run import trace_run

    with interventions.quiet_frameworks():
        return trace_run(arch or resolve(ARCH), sc, layers=layers, steps=2, fake=fake, device="cpu")


CASES = {
    "zero2-lora": dict(strategy="zero2", quant="none"),
    "zero2-full": dict(strategy="zero2", quant="none", full=True),
    "zero3-lora": dict(strategy="zero3", quant="none"),
    "zero3-full": dict(strategy="zero3", quant="none", full=True),
    "zero3-qlora": dict(strategy="zero3", quant="nf4"),
}


@pytest.mark.torch
@pytest.mark.parametrize("name", CASES)
def test_fake_rank_equals_real_rank(name):
    sc = Scenario(seq=64, batch=2, gpus=2, **CASES[name])
    fake, real = _traced(sc, True), _traced(sc, False)
    assert [s.phases for s in fake.steps] == [s.phases for s in real.steps]


#: vramplan-debug's parameters (H 64, I 128, 4 heads of 16 with 2 K/V heads, V 512, 2 layers, untied):
#: embed + lm_head 2·512·64 = 65,536; per layer q 4,096 + k 2,048 + v 2,048 + o 4,096 + gate/up/down
#: 3·8,192 + 2 norms 128 = 36,992, two of them 73,984; final norm 64. Total 139,584.
DEBUG_PARAMS = 139_584


@pytest.mark.torch
def test_zero_partitions_by_hand():
    """Full fine-tuning in bf16: ZeRO-3 keeps this rank's fp32 master share 4·P/N (world 2 and 4), ZeRO-2
    the whole 16-bit parameters 2·P on every rank and a 4·P/N master share; DeepSpeed pads each
    partition for alignment (under 1 KiB here)."""
    for strategy, world in (("zero3", 2), ("zero3", 4), ("zero2", 4)):
        run = _traced(Scenario(seq=64, batch=2, gpus=world, strategy=strategy, quant="none", full=True), True)
        parts = run.steps[-1].phases["optimizer"][1]
        assert 0 <= parts["optimizer/fp32_master"] - 4 * DEBUG_PARAMS // world < 1024, (strategy, world, parts)
        if strategy == "zero2":
            assert 0 <= parts["adapter/lora"] - 2 * DEBUG_PARAMS < 1024, parts


@pytest.mark.torch
@pytest.mark.parametrize("strategy", ["zero2", "zero3"])
def test_peak_grows_by_equal_steps_per_layer(strategy):
    """The premise of the trace's layer extrapolation: every phase's peak at 2, 3, 4 layers is affine."""
    from vramplan.arch import Arch, resolve

    arch = Arch.from_config(dict(resolve(ARCH).config, num_hidden_layers=4), name="debug-4")
    sc = Scenario(seq=64, batch=2, gpus=2, strategy=strategy, quant="nf4")
    peaks = [_traced(sc, True, arch, layers).steps[-1].phases for layers in (2, 3, 4)]
    for phase in peaks[0]:
        a, b, c = (p[phase][0] for p in peaks)
        assert b - a == c - b, (phase, a, b, c)


@pytest.mark.torch
def test_state_offload_is_refused_in_one_line():
    pytest.importorskip("deepspeed")
    from vramplan.hf.build import TraceUnsupported

    with pytest.raises(TraceUnsupported, match="state_offload optimizer is not traced"):
        _traced(Scenario(seq=64, batch=2, gpus=2, strategy="zero3", state_offload="optimizer"), True)


@pytest.mark.torch
def test_breakdown_rows_sum_to_the_peak():
    """``trace()`` on ZeRO-3: every traced component is a named one (``labels.NOTES``), they sum to the
    steady step's peak, and the ZeRO buffers are among them."""
    pytest.importorskip("deepspeed")
    from vramplan.arch import resolve
    from vramplan.trace import trace
    from vramplan.trace.labels import NOTES

    b = trace(resolve(ARCH), Scenario(seq=64, batch=2, gpus=2, strategy="zero3", quant="none"), device="cpu")
    names = {c.name for c in b.allocated}
    assert {"weights/zero_gathered", "optimizer/fp32_master", "adapter/zero_partition"} <= names
    traced = [c for c in b.allocated if c.name in NOTES]
    assert sum(c.bytes for c in traced) == b.extra["steady_step_peak_bytes"]
    assert not [c.name for c in b.allocated if c.bytes and c.name not in NOTES and not c.name.startswith(
        ("temporary/cublas", "runtime/"))]

"""The trace engine: exact golden terms, the layer extrapolation held to the full trace, bad input."""

import builtins
import warnings
from typing import Callable

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("bitsandbytes")
pytest.importorskip("peft")
pytestmark = pytest.mark.torch

from vramplan.arch import Arch, resolve  # noqa: E402
from vramplan.breakdown import ALLOCATED_CATEGORIES  # noqa: E402
from vramplan.errors import VramplanError  # noqa: E402
from vramplan.hf.tracker import round_up  # noqa: E402
from vramplan.scenario import Scenario  # noqa: E402
from vramplan.trace import NOTES, layer_plan, trace, trace_run  # noqa: E402
from vramplan.trace.extrapolate import figures  # noqa: E402
from vramplan.trace.run import StepFigures, TraceRun  # noqa: E402

warnings.filterwarnings("ignore", category=UserWarning)
warnings.filterwarnings("ignore", category=FutureWarning)


def _variant(base: str, name: str, **changes) -> Arch:
    cfg = dict(resolve(base).config)
    cfg.update(changes)
    return Arch.from_config(cfg, name=name)


def llama(layers=6):
    return _variant("vramplan-debug", f"llama-{layers}", num_hidden_layers=layers)


def gemma3(layers=20, layer_types=None):
    """Gemma 3 text layout: 5 sliding + 1 global per block (or the given layer_types); window 16 < seq
    so sliding and global layers really differ."""
    cfg = {
        "model_type": "gemma3_text", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": layers,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "vocab_size": 512,
        "sliding_window": 16, "max_position_embeddings": 2048,
    }
    if layer_types:
        cfg["layer_types"] = layer_types
    return Arch.from_config(cfg, name=f"gemma3-{layers}")


def gemma3_alternating(layers=17):
    """Sliding and global layers alternating (Gemma 2 style); 17 = 3 + 7 * 2 (traces 3, 5, 7)."""
    types = [("full_attention" if i % 2 else "sliding_attention") for i in range(layers)]
    return gemma3(layers, layer_types=types)


def moe_dense_first(layers=6):
    """Qwen3-MoE whose first layer keeps a dense MLP (mlp_only_layers)."""
    return _variant("vramplan-debug-moe", f"moe-{layers}", num_hidden_layers=layers, mlp_only_layers=[0])


SC = Scenario(seq=64, batch=2, rank=8)


# ---------------------------------------------------------------------------------- layer plan
def test_layer_plan_golden():
    assert layer_plan(llama(7)) == (1, 1)  # trace 1, 2, 3 layers
    assert layer_plan(llama(6)) is None  # 1 + 2 + 3 layers: nothing to gain, trace fully
    assert layer_plan(gemma3(44)) == (8, 6)  # 44 = 8 + 6 * 6; trace 8, 14, 20
    assert layer_plan(gemma3(26)) is None  # 8 + 14 + 20 layers cost more than the 26 of the model
    assert layer_plan(gemma3_alternating(17)) == (3, 2)
    assert layer_plan(moe_dense_first(10)) == (2, 1)  # dense prefix of 1, then MoE repeating
    assert layer_plan(resolve("Qwen3-14B")) == (1, 1)
    assert layer_plan(resolve("gemma-3-4b-pt")) is None  # 34 layers: 10 + 16 + 22 > 34
    assert layer_plan(resolve("gemma-3-27b-pt")) == (8, 6)
    assert layer_plan(resolve("gemma-2-9b")) == (2, 2)


@pytest.mark.parametrize("arch,sc", [
    (llama(7), SC),
    (llama(7), SC.replace(grad_checkpointing=False, attn="eager")),
    (llama(8), SC.replace(optimizer="adamw8bit", recipe="trl")),
    (gemma3_alternating(17), Scenario(seq=32, batch=1, rank=8, attn="eager")),
    (moe_dense_first(10), SC.replace(lora_dropout=0.0)),
], ids=["llama-gc", "llama-nogc-eager", "llama-8bit-trl", "gemma3-sliding", "moe-dense-first"])
def test_extrapolation_equals_full_trace(arch, sc):
    fast = trace(arch, sc, extrapolate=True)
    full = trace(arch, sc, extrapolate=False)
    assert fast.extra["extrapolated"] and not full.extra["extrapolated"]
    assert full.extra["layers_traced"] == [arch.num_layers]
    if arch.name == "moe-10":  # dense prefix of 1, MoE block of 1: increments agree from the start
        assert fast.extra["layers_traced"] == [2, 3, 4]
    assert {c.name: c.bytes for c in fast.allocated} == {c.name: c.bytes for c in full.allocated}
    assert fast.extra["first_step_peak_bytes"] == full.extra["first_step_peak_bytes"]


def test_extrapolation_on_a_real_config():
    """Qwen3-0.6B (28 layers, 151,936 vocab) at a short sequence: 1+2 layers extrapolate to the full 28."""
    arch = resolve("Qwen3-0.6B")
    sc = Scenario(seq=128, batch=1, rank=8)
    fast = trace(arch, sc)
    full = trace(arch, sc, extrapolate=False)
    assert fast.extra["layers_traced"] == [1, 2, 3]
    assert fast.extra["steady_step_peak_bytes"] == full.extra["steady_step_peak_bytes"]
    assert fast.allocated_peak_bytes == full.allocated_peak_bytes


def _rounded_norm_stack(layers: int, tensors_per_layer: int = 37) -> int:
    """clip_grad_norm_'s stack of one fp32 norm per trainable tensor, as the allocator holds it (512-B blocks)."""
    return -(-4 * tensors_per_layer * layers // 512) * 512


def _synthetic_runs(extra: Callable[[int], int]) -> Callable[[int | None], TraceRun]:
    """Runs whose optimizer phase holds 1 MiB of state per layer plus ``extra(layers)`` bytes."""
    def run(n: int | None) -> TraceRun:
        layers = 40 if n is None else n
        by = {"optimizer/state": (1 << 20) * layers + extra(layers), "weights/float": 1 << 30}
        return TraceRun(layers, [StepFigures({"optimizer": (sum(by.values()), by)})] * 2)
    return run


def test_extrapolation_allows_one_rounding_unit_and_no_more():
    """A figure affine in the layer count but rounded up to 512 B (the norm stack: 37 tensors per layer, so
    its rounding drifts from block to block) extrapolates, within 512 B per block of the truth; a figure that
    really curves (2 KiB x layers squared) is refused and the model traced whole."""
    arch = llama(40)  # plan: 1, 2, 3 layers, then 37 blocks of one layer
    assert [_rounded_norm_stack(n) for n in (1, 2, 3)] == [512, 512, 512]  # 148, 296, 444 B
    assert [_rounded_norm_stack(n) for n in (3, 4, 5)] == [512, 1024, 1024]  # increments 512, 0: off by 512
    fig = figures(arch, _synthetic_runs(_rounded_norm_stack))
    assert fig.traced == [1, 2, 3] and fig.period == 1 and not fig.refused
    assert abs(fig.steady["optimizer/state"] - ((1 << 20) * 40 + _rounded_norm_stack(40))) <= 512 * 39
    fig = figures(arch, _synthetic_runs(lambda n: _rounded_norm_stack(n + 2)))  # traces 3, 4, 5: 512 apart
    truth = (1 << 20) * 40 + _rounded_norm_stack(42)
    assert fig.traced == [1, 2, 3] and fig.period == 1
    assert abs(fig.steady["optimizer/state"] - truth) <= 512 * 39
    fig = figures(arch, _synthetic_runs(lambda n: 2048 * n * n))
    assert fig.refused and fig.traced[-1] == 40 and fig.steady["optimizer/state"] == (1 << 20) * 40 + 2048 * 1600


# ------------------------------------------------------------------------------ golden terms
def test_golden_weights_adapter_optimizer():
    """Exact bytes, derived by hand from the module shapes and bitsandbytes' / torch's layouts."""
    arch = resolve("vramplan-debug")
    b = trace(arch, SC)
    lin = arch.quantizable_linears()
    # 1. 4-bit packed: two values per byte, one 512-B block rounding per tensor
    w4 = sum(l.count * round_up((l.in_features * l.out_features + 1) // 2) for l in lin)
    assert b.get("weights/4bit") == w4
    # 2. LoRA A (r x in) and B (out x r), fp32 after peft's autocast_adapter_dtype
    r = SC.rank
    adapter = sum(l.count * (round_up(4 * r * l.in_features) + round_up(4 * l.out_features * r)) for l in lin)
    assert b.get("adapter/lora") == adapter
    # 3. fused AdamW: exp_avg + exp_avg_sq like the params, plus one fp32 'step' tensor per param
    n_trainable = 2 * sum(l.count for l in lin)
    assert b.get("optimizer/state") == 2 * adapter + n_trainable * 512
    # 4. hf-peft upcasts embeddings, norms and lm_head to fp32
    H, V, L = arch.hidden_size, arch.vocab_size, arch.num_layers
    floats = 2 * round_up(4 * V * H) + (2 * L + 1) * round_up(4 * H)
    # + the rotary inv_freq and original_inv_freq buffers (fp32, head_dim / 2 each)
    assert b.get("weights/float") - floats == 2 * round_up(4 * (arch.head_dim // 2))


def test_breakdown_shape_and_steps():
    b = trace(resolve("vramplan-debug"), SC)
    assert b.engine == "trace"
    assert {c.category for c in b.allocated} <= set(ALLOCATED_CATEGORIES)
    traced = [c for c in b.allocated if c.name in NOTES]
    assert sum(c.bytes for c in traced) == b.extra["steady_step_peak_bytes"]
    # runtime terms shared with the analytic model may add allocated items (cuBLAS workspace)
    assert b.allocated_peak_bytes == sum(c.bytes for c in b.allocated) >= b.extra["steady_step_peak_bytes"]
    for key in ("first_step_peak_bytes", "steady_step_peak_bytes", "seconds", "layers_traced", "peak_by_category"):
        assert key in b.extra
    assert sum(b.extra["peak_by_category"].values()) == b.extra["steady_step_peak_bytes"]
    # optimizer state exists only from step two on
    assert "optimizer/state" not in b.extra["first_step_by_component"]
    assert b.get("optimizer/state") > 0
    assert b.extra["first_step_peak_bytes"] < b.allocated_peak_bytes
    one = trace(resolve("vramplan-debug"), SC, steps=1)
    assert one.extra["steady_step_peak_bytes"] == b.extra["first_step_peak_bytes"]


def test_flash2_and_paged_are_explained():
    b = trace(resolve("vramplan-debug"), SC.replace(attn="flash2", optimizer="paged_adamw"))
    assert any("flash2" in n for n in b.notes)
    # debug LoRA tensors are < 1e5 elements: bitsandbytes keeps them on the device, nothing is paged
    assert b.get("managed/paged_optimizer") == 0
    big = _variant("vramplan-debug", "wide", hidden_size=512, intermediate_size=1024, vocab_size=256)
    p = trace(big, Scenario(seq=32, rank=256, optimizer="paged_adamw"))
    managed = p.get("managed/paged_optimizer")
    assert managed > 0 and all(c.category == "managed" for c in p.runtime if c.name == "managed/paged_optimizer")
    plain = trace(big, Scenario(seq=32, rank=256, optimizer="adamw"))
    assert p.extra["steady_step_peak_bytes"] < plain.extra["steady_step_peak_bytes"]


def test_truncated_model():
    b = trace(llama(7), SC, layers=3)
    assert b.extra["layers_traced"] == [3] and any("truncated" in n for n in b.notes)


def test_recompute_is_labelled_without_moving_totals(monkeypatch):
    """transformers 5 checkpoints a decoder layer's ``forward``, not ``__call__``, so module hooks miss
    its recomputation inside backward; the trace wraps the checkpointed function itself
    (``vramplan.hf.interventions.checkpointed``). Recomputed bytes are ``activations/recompute`` with
    gradient checkpointing and absent without; the label only moves bytes out of
    ``temporary/backward``: with the recompute labelling off (how they were labelled before) every
    total is the same."""
    from vramplan.trace.labels import Labeller

    arch, sc = resolve("vramplan-debug"), SC.replace(seq=128)
    gc = trace(arch, sc, device="cpu")  # the steady step peaks while the last layer is recomputed
    assert gc.peak_phase == "layers backward" and gc.get("activations/recompute") > 0
    for device in ("cuda", "cpu"):
        run = trace_run(arch, sc, device=device)
        assert all(s.phases["layers backward"][1].get("activations/recompute", 0) > 0 for s in run.steps)
        no_gc = trace_run(arch, sc.replace(grad_checkpointing=False), device=device)
        assert not any("activations/recompute" in d for s in no_gc.steps for _, d in s.phases.values())

    monkeypatch.setattr(Labeller, "recomputing", lambda self, function: function)
    unlabelled = trace(arch, sc, device="cpu")
    assert unlabelled.get("activations/recompute") == 0
    assert unlabelled.allocated_peak_bytes == gc.allocated_peak_bytes
    assert unlabelled.extra["first_step_peak_bytes"] == gc.extra["first_step_peak_bytes"]
    moved = ("temporary/backward", "activations/recompute")
    assert unlabelled.get("temporary/backward") == sum(gc.get(n) for n in moved)
    assert ({c.name: c.bytes for c in unlabelled.components if c.name not in moved}
            == {c.name: c.bytes for c in gc.components if c.name not in moved})


# -------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("kw,match", [
    (dict(steps=0), "steps"),
    (dict(layers=0), "layers"),
    (dict(layers=99), "layers"),
])
def test_bad_arguments(kw, match):
    with pytest.raises(VramplanError, match=match):
        trace(resolve("vramplan-debug"), SC, **kw)


def test_int8_is_refused():
    with pytest.raises(VramplanError, match="int8"):
        trace(resolve("vramplan-debug"), SC.replace(quant="int8"))


def test_moe_with_dropout_says_what_to_do():
    with pytest.raises(VramplanError, match="lora-dropout 0"):
        trace(resolve("vramplan-debug-moe"), SC)


def test_gemma2_sdpa_runs_as_eager_like_transformers():
    """transformers 5.24 refuses an explicit attn_implementation="sdpa" for Gemma 2 (``_supports_sdpa =
    False``) and falls back to eager when none is named. The trace prices vramplan's default sdpa as
    that eager run, with the analytic engine's note; building with sdpa explicitly is refused as
    transformers refuses it."""
    import torch
    from transformers import AutoModelForCausalLM

    from vramplan.analytic import estimate
    from vramplan.hf.build import hf_config, meta_model

    g = resolve("gemma-2-2b")
    sdpa, eager = trace(g, SC, layers=2), trace(g, SC.replace(attn="eager"), layers=2)
    assert sdpa.allocated_peak_bytes == eager.allocated_peak_bytes
    note = next(n for n in estimate(g, SC).notes if "does not support sdpa" in n)
    assert note in sdpa.notes
    with pytest.raises(VramplanError, match="refuses attn_implementation='sdpa'"):
        meta_model(g, SC, layers=1)
    with torch.device("meta"), pytest.raises(ValueError, match="scaled_dot_product_attention"):
        AutoModelForCausalLM.from_config(hf_config(g, 1), attn_implementation="sdpa")


def test_missing_torch_extra(monkeypatch):
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "bitsandbytes" or name.startswith("bitsandbytes."):
            raise ImportError("No module named 'bitsandbytes'", name="bitsandbytes")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(VramplanError, match=r"pip install 'vramplan\[torch\]'"):
        trace(resolve("vramplan-debug"), SC)


def test_data_dependent_op_becomes_a_clear_error(monkeypatch):
    """An operator that needs tensor values under fake tensors ends as a VramplanError, not a traceback."""
    from vramplan.hf import build as B

    orig = B.train_step

    def reads_values(model, optimizer, batch, scenario, on_phase=None, **kw):
        batch["input_ids"].nonzero()  # output shape depends on the data
        return orig(model, optimizer, batch, scenario, on_phase, **kw)

    monkeypatch.setattr(B, "train_step", reads_values)
    with pytest.raises(VramplanError, match="fake tensors cannot trace"):
        trace(resolve("vramplan-debug"), SC)

"""Eager attention's softmax-backward moment and causal mask: golden numbers derived by hand.

A 2-layer Llama with H = 64, 4 heads of 16, 2 KV heads, I = 128, V = 256, LoRA r = 8 on q_proj and
v_proj, dropout 0, NF4. ``eager_softmax_backward`` returns (saved bytes still alive, gradient buffers,
CUDA temporary) of one layer, each (per token, per token·s, fixed) but the temporary (per token·s).
"""

from __future__ import annotations

from vramplan.analytic import activations as act
from vramplan.analytic import estimate
from vramplan.analytic.terms import dtypes
from vramplan.arch.spec import Arch
from vramplan.scenario import Scenario

CONFIG = dict(model_type="llama", architectures=["LlamaForCausalLM"], hidden_size=64, intermediate_size=128,
              num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, vocab_size=256,
              max_position_embeddings=512, rms_norm_eps=1e-5, tie_word_embeddings=False, hidden_act="silu")
TARGETS = frozenset({"q_proj", "v_proj"})


def _sm(scenario: Scenario, cuda: bool = True):
    arch = Arch.from_config(CONFIG, name="tiny")
    return act.eager_softmax_backward(arch, dtypes(arch, scenario, cuda=cuda), 8, TARGETS, False)


def test_bf16_autocast_hf_peft():
    """bf16 under autocast, hf-peft (residual, norms and embeddings fp32 after the upcast).

    Saved per token: input norm rsqrt 4 (x is fp32, counted as the checkpoint); q and v LoRA: lora_A's
    bf16 cast of the fp32 normalised x (2·64 each) + lora_B's input (2·8 each) = 288; the q@kᵀ matmul's
    q and repeated k in bf16, 2·64 each = 256 (V, 2·64, is freed by now): 4 + 288 + 256 = 548.
    Per token·s: the fp32 softmax output, 4 B × 4 heads = 16 (its bf16 copy is freed).
    Fixed: autocast's bf16 copies of A and B: 2·8·(64 + 64) + 2·8·(64 + 32) = 3,584.
    Gradients per token: the residual's (fp32, 4·64) + V's repeated, in V's fp32 (4-bit layers return
    their fp32 input's dtype; autocast's bf16 copy of V has already passed its gradient back) = 512;
    per token·s:
    the fp32 probabilities' gradient and the scores' gradient (fp32: bf16 has no half_to_float path),
    (4 + 4) × 4 heads = 32. CUDA temporary: 4 × 4 heads = 16 per token·s."""
    assert _sm(Scenario(targets=("q_proj", "v_proj"), lora_dropout=0.0)) == ((548, 16, 3584), (512, 32, 0), 16)


def test_fp16_without_autocast_takes_the_half_to_float_softmax():
    """fp16, no autocast, plain recipe (everything fp16; adapters fp32, so peft casts x to fp32).

    Saved per token: the input norm's fp32 x and rsqrt (4·64 + 4 = 260); each lora_A saves its own
    fp32 cast of x (peft casts per module: 4·64, twice = 512) and each lora_B its fp32 input (4·8,
    twice = 64); q and repeated k in fp16 (2·64 each = 256): 1,092. Per token·s: the fp32 softmax output, 16. Gradients: residual fp16 (2·64)
    + V's (2·64) = 256 per token; per token·s the fp32 probabilities' gradient and, CUDA's fp16 softmax
    running with half_to_float, an fp16 scores gradient: (4 + 2) × 4 = 24. Temporary 16."""
    sc = Scenario(targets=("q_proj", "v_proj"), lora_dropout=0.0, dtype="fp16", autocast=False, recipe="plain")
    assert _sm(sc) == ((1092, 16, 0), (256, 24, 0), 16)
    # the CPU program: no temporary, and the scores' gradient is fp32 (the CPU converts first)
    assert _sm(sc, cuda=False) == ((1092, 16, 0), (256, 32, 0), 0)


def test_mask_and_softmax_rows_in_the_breakdown():
    """At 2 × 256 tokens: the eager mask is b·s·s in the embedding output's dtype (fp32 after the
    hf-peft upcast): 2 · 256 · 256 · 4 = 524,288 B; the softmax temporary 4 B × 4 heads × b·s·s =
    2,097,152 B. Neither exists with sdpa; the mask needs checkpointing to stay alive."""
    arch = Arch.from_config(CONFIG, name="tiny")
    sc = Scenario(targets=("q_proj", "v_proj"), lora_dropout=0.0, attn="eager", seq=256, batch=2)
    rows = {c.name: c.bytes for c in estimate(arch, sc).components}
    assert rows["activations/attention_mask"] == 524_288
    assert rows["temporary/softmax_backward"] == 2_097_152
    sdpa = {c.name for c in estimate(arch, sc.replace(attn="sdpa")).components}
    assert "activations/attention_mask" not in sdpa and "temporary/softmax_backward" not in sdpa
    nogc = {c.name for c in estimate(arch, sc.replace(grad_checkpointing=False)).components}
    assert "activations/attention_mask" not in nogc
    cpu = {c.name: c.bytes for c in estimate(arch, sc, device="cpu").components}
    assert cpu.get("temporary/softmax_backward", 0) == 0

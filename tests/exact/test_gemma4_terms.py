"""Gemma 4 (``gemma4_text``): hand-derived goldens for the family's shapes and its new terms.

Sources: transformers 5.24 ``models/gemma4/modeling_gemma4.py`` / ``configuration_gemma4.py``; the
figures are worked out by hand below (no engine output is copied).
"""

from vramplan.analytic.activations import Dtypes, _Walk
from vramplan.analytic.mixers import (gemma4_experts_backward, gemma4_experts_pair_saved, gemma4_model_saved,
                                      gemma4_moe_held,
                                      gemma4_moe_saved, gemma4_norm, gemma4_router_saved, gemma4_working_moments)
from vramplan.analytic.weights import model_buffer_bytes
from vramplan.arch import resolve
from vramplan.arch.layouts import LAYOUTS
from vramplan.arch.mixers import gemma4_dims, gemma4_kinds

E2B = "gemma-4-E2B-it"
A4B = "gemma-4-26B-A4B-it"


def _d(resid: int = 4, norm_w: int = 4) -> Dtypes:
    # the hf-peft recipe on a 4-bit base: fp32 embeddings and norms, bf16 autocast
    return Dtypes(c=2, autocast=True, resid=resid, resid0=resid, norm_w=norm_w, base_w=2, other_w=4, lora=2,
                  quantized=True, dropout=False, full=False)


def test_e2b_layer_kinds():
    # 35 layers, full at 4, 9, ..., 34 (4 sliding : 1 full); the last 20 (15..34) reuse keys/values
    kinds = gemma4_kinds(resolve(E2B).config, 35)
    assert (kinds.count("gemma4_sliding"), kinds.count("gemma4_full"),
            kinds.count("gemma4_sliding_kv_shared"), kinds.count("gemma4_full_kv_shared")) == (12, 3, 16, 4)


def test_e2b_linear_shapes():
    a = resolve(E2B)
    lins = {(lin.group, lin.name): lin for lin in a.linears()}
    q = lins[("gemma4_full_kv_shared", "q_proj")]
    assert (q.in_features, q.out_features, q.count) == (1536, 8 * 512, 4)  # global_head_dim 512
    assert ("gemma4_full_kv_shared", "k_proj") not in lins  # kv-shared: no k/v projections
    up = lins[("gemma4_full_kv_shared", "up_proj")]
    assert up.out_features == 2 * 6144  # use_double_wide_mlp on the kv-shared layers
    assert lins[("gemma4_sliding", "k_proj")].out_features == 1 * 256
    ple = lins[("model", "per_layer_model_projection")]
    assert (ple.in_features, ple.out_features, ple.count) == (1536, 35 * 256, 1)


def test_e2b_layout_params():
    a = resolve(E2B)
    p = LAYOUTS["per_layer_inputs"].params(a)
    # embed_tokens_per_layer: 262144 x (35 * 256)
    assert p["embeddings"] == 262_144 * 35 * 256 == 2_348_810_240
    # q_norm + k_norm: 12 sliding x 2 x 256 + 3 full x 2 x 512 + 16 shared sliding x 256 + 4 shared full x 512
    # = 6144 + 3072 + 4096 + 2048 = 15360; post_per_layer_input_norm 35 x 1536 = 53760; per_layer_projection_norm 256
    assert p["norms"] == 15_360 + 53_760 + 256 == 69_376
    assert "experts" not in p


def test_e2b_buffers():
    a = resolve(E2B)
    # rotary: sliding 256/2 fp32 = 512 B -> 2 x 512; full 512/2 fp32 = 1024 B -> 2 x 1024; two embed_scale
    # scalars (embed_tokens, embed_tokens_per_layer) 2 x 512; 35 layer_scalar 35 x 512
    assert model_buffer_bytes(a.family, a.head_dim, 35, a.config) == 1024 + 2048 + 1024 + 17_920 == 22_016


def test_gemma4_norm_saves():
    # width 256, one row, a bf16 input and weight: the fp32 copy 4 x 256, mean+eps and its pow(-0.5) 2 x 4 per
    # row; the fp32 copy of the bf16 weight 4 x 256 fixed
    w = _Walk(_d(resid=2, norm_w=2), 16, frozenset())
    gemma4_norm(w, 256, 1, True, 2)
    assert (w.tok, w.const) == (1024 + 8, 1024)
    # the residual stream's input norm on an fp32 x: x is the caller's, only the two per-row tensors
    w = _Walk(_d(), 16, frozenset())
    gemma4_norm(w, 256, 1, True, 4, fresh=False)
    assert (w.tok, w.const) == (8, 0)
    # without a weight (v_norm): no weight copy; frozen input: nothing
    w = _Walk(_d(resid=2, norm_w=2), 16, frozenset())
    gemma4_norm(w, 64, 2, True, 2, scale=False)
    gemma4_norm(w, 64, 2, False, 2)
    assert (w.tok, w.const) == (4 * 64 * 2 + 8 * 2, 0)


def test_e2b_model_saved_without_lora_on_the_projection():
    # no LoRA target, no checkpointing: per token the projection's norm over 35 rows of 256 (its fp32 output
    # saved as is: 4 x 35 x 256 = 35840, + 8 x 35 = 280) is not live (nothing needs a gradient), and the (35, 256)
    # per-layer inputs, fp32: 35840; per position the rotary cos/sin of both types: 2 x 4 x (256 + 512) = 6144
    a = resolve(E2B)
    tok, pos, quad = gemma4_model_saved(a, _d(), 16, frozenset(), False, "sdpa")
    assert (tok, pos, quad) == (35 * 256 * 4, 6144, 0)
    # checkpointing adds the norm (now live: the embedding output needs a gradient, so the projection's
    # output does), the two store layers' keys and values (sliding layer 13: 2 x 1 x 256, full layer 14:
    # 2 x 1 x 512, fp32) and the boolean sliding-window mask (1 B per token x s)
    tok, pos, quad = gemma4_model_saved(a, _d(), 16, frozenset(), True, "sdpa")
    assert (tok, quad) == (35_840 + 35_840 + 280 + 4 * (2 * 256 + 2 * 512), 1)


# ------------------------------------------------------------------ the MoE block (gemma-4-26B-A4B-it)
# H 2816, E 128 experts, top-k 8, expert width M 704; hf-peft on NF4: fp32 residual stream, norms, router
# and experts (peft's k-bit upcast; bitsandbytes leaves the 3-D experts unquantized), bf16 autocast.

def test_a4b_moe_dims():
    g = gemma4_dims(resolve(A4B).config, "gemma4_full")
    assert (g["experts"], g["top_k"], g["moe_inter"]) == (128, 8, 704)
    assert (gemma4_dims(resolve(E2B).config, "gemma4_sliding")["experts"]) == 0


def test_a4b_router_saved():
    # softmax's fp32 output 4 x 128 = 512; topk's int64 indices 8 x 8 = 64; the in-place renormalisation's
    # result 4 x 8 = 32 and its fp32 sum 4; the gathered fp32 per_expert_scale 4 x 8 = 32: 644
    assert gemma4_router_saved(_d(), 128, 8) == 512 + 64 + 32 + 4 + 32 == 644
    # a bf16 router (other_w 2): the gathered scale is bf16, 2 x 8
    d2 = Dtypes(c=2, autocast=True, resid=2, resid0=2, norm_w=2, base_w=2, other_w=2, lora=2, quantized=True,
                dropout=False, full=False)
    assert gemma4_router_saved(d2, 128, 8) == 512 + 64 + 32 + 4 + 16 == 628


def test_a4b_experts_pair_saved():
    # per (token, expert) pair, fp32 experts: the gather index 8; the (2M) gate_up output (gelu's gate and the
    # product's up are views of it) and the act output, 4 x 3 x 704 = 8448; the fp32 routing weight the
    # product saves 4; sample_weights[perm]'s index 8; the down output 4 x 2816 = 11264; inv_perm 8
    assert gemma4_experts_pair_saved(_d(), 2816, 704, True, True) == 8 + 8448 + 4 + 8 + 11264 + 8 == 19_740
    # the routing weights frozen (no LoRA on a frozen router input): no weight index, no down output
    assert gemma4_experts_pair_saved(_d(), 2816, 704, True, False) == 8 + 8448 + 4 + 8 == 8468
    # the experts' input frozen, the router live: the weight index, the down output, inv_perm
    assert gemma4_experts_pair_saved(_d(), 2816, 704, False, True) == 8 + 11264 + 8 == 11_280


def test_a4b_moe_held():
    # fp32 residual and MLP output (both saved by their norms as they are): hidden_states_1 and
    # pre_feedforward_layernorm_2's output 2 x 4 x 2816 = 22528; per pair the gathered input 4 x 2816 = 11264,
    # expert_ids_g 8, histc_input 4, the routing weights 4, weighted_out before and after the permutation
    # 2 x 4 x 2816 = 22528: 8 x 33808 = 270464
    assert gemma4_moe_held(_d(), 2816, 8, 4, 4) == 22_528 + 8 * (11_264 + 16 + 22_528) == 292_992
    # a bf16 residual and MLP output: residual and MLP output alive beside their norms' fp32 copies, the two
    # norm outputs, all 2 x 2816 (4 x 5632 = 22528); per pair the bf16 gather 5632 + 16 + the fp32 22528
    assert gemma4_moe_held(_d(resid=2), 2816, 8, 2, 2) == 22_528 + 8 * (5632 + 16 + 22_528) == 247_936


def test_a4b_moe_saved():
    a = resolve(A4B)
    lins = {lin.name: lin for lin in a.layer_linears(29)}
    # no LoRA target: the router's weightless norm on the fp32 residual (its two per-row tensors) 8, the
    # router's saved tensors 644, pre_feedforward_layernorm_2's per-row tensors 8 (its fp32 weight: nothing),
    # 8 pairs x 19740 = 157920, post_feedforward_layernorm_2 on the fresh fp32 experts' output 4 x 2816 + 8 =
    # 11272; fixed: the int32 offsets of 128 experts, 512
    w = _Walk(_d(), 16, frozenset())
    assert gemma4_moe_saved(w, a, lins, 4, True, 4) == (4, True)
    assert (w.tok, w.const) == (8 + 644 + 8 + 157_920 + 11_272, 512) == (169_852, 512)
    # LoRA r16 on router.proj (no dropout; the bitsandbytes wrapper under CUDA autocast keeps the fp32 input,
    # so lora_A saves its bf16 copy 2 x 2816 = 5632 and lora_B its input 2 x 16 = 32; autocast's bf16 copies of
    # A and B, 2 x 16 x (2816 + 128) = 94208 fixed)
    w = _Walk(_d(), 16, frozenset({"router.proj"}))
    gemma4_moe_saved(w, a, lins, 4, True, 4)
    assert (w.tok, w.const) == (169_852 + 5632 + 32, 512 + 94_208)


def test_a4b_moe_moment():
    # the busiest MoE moment (the output permutation in the experts' forward) over the last layer's whole
    # saved set: gemma4_moe_held (292992) less what the layer saves after it (post_feedforward_layernorm_2
    # and post_feedforward_layernorm on the sum, 11272 each), with checkpointing inside the backward beside
    # the layer output's fp32 gradient 4 x 2816 = 11264
    a = resolve(A4B)
    targets = frozenset(lin.name for lin in a.layer_linears(29))
    m = gemma4_working_moments("gemma4_full", a, _d(), targets, 16, 29, gc=True)
    assert m["moe"] == 292_992 - 2 * 11_272 + 11_264 == 281_712
    m = gemma4_working_moments("gemma4_full", a, _d(), targets, 16, 29, gc=False)
    assert m["moe"] == 292_992 - 2 * 11_272 == 270_448


def test_a4b_experts_backward():
    # at the routing-weight product's backward, per pair: the index backward's fp32 zeros-with-gradient, the
    # fp32 experts' output gradient and the fp32 grad * proj_out before its sum, 3 x 4 x 2816, 8 pairs
    assert gemma4_experts_backward(_d(), 2816, 8) == 8 * 3 * 4 * 2816 == 270_336
    # bf16 experts: the output gradient cast to bf16, the two others fp32 (the product with the fp32 weights)
    d2 = Dtypes(c=2, autocast=True, resid=2, resid0=2, norm_w=2, base_w=2, other_w=2, lora=2, quantized=True,
                dropout=False, full=False)
    assert gemma4_experts_backward(d2, 2816, 8) == 8 * (4 + 2 + 4) * 2816 == 225_280
    # over the last layer's saved set: those, the layer output's and the sum's fp32 gradients 2 x 4 x 2816,
    # less what the backward freed before (both last norms, 2 x 11272, and inv_perm, 8 x 8): 270256 either way
    a = resolve(A4B)
    targets = frozenset(lin.name for lin in a.layer_linears(29))
    for gc in (True, False):
        m = gemma4_working_moments("gemma4_full", a, _d(), targets, 16, 29, gc=gc)
        assert m["experts"] == 270_336 + 22_528 - 2 * 11_272 - 64 == 270_256

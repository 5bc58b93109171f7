"""Gemma 4 (``gemma4_text``): hand-derived goldens for the family's shapes and its new terms.

Sources: transformers 5.24 ``models/gemma4/modeling_gemma4.py`` / ``configuration_gemma4.py``; the
figures are worked out by hand below (no engine output is copied).
"""

from vramplan.analytic.activations import Dtypes, _Walk
from vramplan.analytic.mixers import gemma4_model_saved, gemma4_norm
from vramplan.analytic.weights import model_buffer_bytes
from vramplan.arch import resolve
from vramplan.arch.layouts import LAYOUTS
from vramplan.arch.mixers import gemma4_kinds

E2B = "gemma-4-E2B-it"


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

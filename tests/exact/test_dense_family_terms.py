"""Hand-derived golden figures for the terms issue 15's dense and simple-MoE families add (olmo2,
granite, granitemoe, glm, seed_oss, cohere2). Each figure's arithmetic is in its comment; the registry
shapes are the entries' config.json values."""

from __future__ import annotations

from vramplan.analytic import activations as act
from vramplan.analytic import weights as wt
from vramplan.analytic.terms import dtypes
from vramplan.arch import Arch, resolve
from vramplan.arch.families import FAMILIES
from vramplan.scenario import Scenario


def _tiny(model_type: str, **over) -> Arch:
    cfg = {**dict(model_type=model_type, hidden_size=256, intermediate_size=512, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=64, vocab_size=1024, num_hidden_layers=2), **over}
    return Arch.from_config(cfg)


def test_olmo2_qk_norm_spans_the_projection():
    # OLMo-2-1124-7B-Instruct: H 4096, 32 heads of 128, 32 KV heads, 32 layers, V 100352, untied.
    # norms: 32 layers · 2 · 4096 (post-attention, post-feedforward) + q_norm 4096 + k_norm 4096 per layer
    #        + final 4096 = 262,144 + 262,144 + 4,096 = 528,384
    arch = resolve("OLMo-2-1124-7B-Instruct")
    assert arch.norm_params == 32 * 2 * 4096 + 32 * (4096 + 4096) + 4096 == 528_384
    # a per-head q/k norm (Qwen3) would be 32 · 2 · 128 = 8,192 instead of 262,144
    assert FAMILIES["olmo2"].qk_norm_full and not FAMILIES["qwen3"].qk_norm_full


def test_olmo2_layer_saves_no_input_norm():
    # tiny OLMo 2, default QLoRA scenario (NF4, bf16 autocast, fp32 residual from the hf-peft recipe, dropout
    # 0.05, r 8, all-linear), per token, layer 1 (its input needs a gradient):
    # q/k/v: three dropout masks 3·256 (bool) + three dropout outputs 3·2·256 (bf16 under autocast)
    #        + three lora_B inputs 3·2·8                                              = 768 + 1536 + 48 = 2,352
    # q_norm over q (256 wide, fp32 input saved as it is) 4·256 + 4, k_norm 4·128 + 4  = 1,028 + 516 = 1,544
    # sdpa: q, k, v, out in bf16 2·(256 + 128 + 128 + 256) + fp32 lse 4·4            = 1,536 + 16 = 1,552
    # o_proj: mask 256 + dropout out 2·256 + lora_B input 2·8                           = 784
    # post_attention_layernorm on o's fp32 output: 4·256 + 4                            = 1,028
    # MLP reads h1 (fp32, no pre-norm): gate/up masks 2·256 + dropout outs 2·2·256 + lora_B 2·2·8 = 1,568;
    #     act(gate)·up saves gate, act, up in fp32: 3·4·512 = 6,144; down: mask 512 + 2·512 + 2·8 = 1,552
    # post_feedforward_layernorm on down's fp32 output: 4·256 + 4                       = 1,028
    # total 2,352 + 1,544 + 1,552 + 784 + 1,028 + 1,568 + 6,144 + 1,552 + 1,028 = 17,552
    arch = _tiny("olmo2")
    s = Scenario(seq=256)
    d = dtypes(arch, s)
    targets = frozenset(lin.name for lin in arch.quantizable_linears())
    tok, quad, _ = act.layer_saved(arch, d, s.rank, targets, "sdpa", False, layer=1)
    assert (tok, quad) == (17_552, 0)


def test_granite_embedding_multiplier_keeps_the_embedding_leaf():
    # peft's input-require-grads hook makes the embedding output a leaf; Granite's multiplied copy is a
    # second tensor: two embedding-sized tensors under checkpointing with LoRA, one otherwise
    g, llama = FAMILIES["granite"], FAMILIES["llama"]
    assert wt.embedding_leaf_factor(g, gc=True, embedding_trains=False) == 2
    assert wt.embedding_leaf_factor(g, gc=False, embedding_trains=False) == 1
    assert wt.embedding_leaf_factor(g, gc=True, embedding_trains=True) == 1
    assert wt.embedding_leaf_factor(llama, gc=True, embedding_trains=False) == 1


def test_granitemoe_router_and_recompute_end():
    # tiny GraniteMoE: H 256, k 2 of E 8 experts; fp32 experts (hf-peft recipe), MoE input fp32 (resid 4).
    arch = _tiny("granitemoe", num_local_experts=8, num_experts_per_tok=2, intermediate_size=128)
    d = dtypes(arch, Scenario(seq=256))
    # the end of the recomputed MoE block: block input 4·256 + gathered input 2·256·4 + weighted output
    # 2·256·4 + routing bookkeeping 2·(4·8 + 4) = 1,024 + 2,048 + 2,048 + 72 = 5,192
    assert act.moe_recompute_end_bytes(arch, d, 4) == 5_192
    # a top-k-first router saves no E-wide softmax: Mixtral's 4·E + 12·k = 56, GraniteMoE's 12·k = 24 per token
    assert FAMILIES["granitemoe"].router_topk_first and not FAMILIES["mixtral"].router_topk_first


def test_cohere2_layer_norm_and_parallel_block():
    # LayerNorm: two fp32 ``x - mean`` tensors and the fp32 rsqrt: 8·4096 + 4 = 32,772 per token (Command R7B)
    assert act.layer_norm_saved(4096) == 32_772
    arch = resolve("c4ai-command-r7b-12-2024")
    # one weight-only LayerNorm per layer + the final one: 32 · 4096 + 4096 = 135,168; lm_head tied
    assert arch.norm_params == 135_168 and arch.tie_embeddings
    # sliding_window_pattern 4: layers 3, 7, ..., 31 are full attention, the other 24 slide
    assert len(arch.family.sliding_layers(arch.config, arch.num_layers)) == 24


def test_seed_oss_biases_and_residual_dropout():
    # Seed-OSS-36B-Instruct: q/k/v biases (attention_bias), no o_proj bias (attention_out_bias false)
    arch = resolve("Seed-OSS-36B-Instruct")
    assert arch.qkv_bias and not arch.o_bias
    # residual dropout 0.1 (class default): one bool mask of H per dropped branch, 5,120 B per token
    assert arch.family.residual_dropout(arch.config) == 0.1
    assert act.residual_dropout_saved(arch) == 5_120
    assert act.residual_dropout_saved(resolve("Llama-3.2-1B")) == 0


def test_glm_fuses_only_the_mlp():
    # glm-4-9b-chat-hf: separate q/k/v with biases, o_proj without, one gate_up_proj of 2 · 13,696
    arch = resolve("glm-4-9b-chat-hf")
    names = {lin.name: lin for lin in arch.linears()}
    assert {"q_proj", "k_proj", "v_proj", "o_proj", "gate_up_proj", "down_proj"} <= set(names)
    assert names["q_proj"].bias and not names["o_proj"].bias
    assert names["gate_up_proj"].out_features == 27_392

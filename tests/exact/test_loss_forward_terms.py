"""What the forward still holds while the loss is computed, and the multi-GPU rows that moved with it: golden
numbers derived by hand from the rule each function cites.

Llama-3.2-1B: H = 2048, 8 KV heads of 64 (k/v width 512), I = 8192, V = 128256, 16 layers, tied embeddings.
Qwen3-0.6B: H = 1024, 16 query heads of 128 (q width 2048), 8 KV heads (k/v width 1024), I = 3072,
V = 151936, 28 layers, tied.
"""

from __future__ import annotations

from vramplan.analytic import logits as lg
from vramplan.analytic import phases as ph
from vramplan.analytic.terms import static_terms
from vramplan.arch import resolve
from vramplan.arch.spec import Arch
from vramplan.parallel import zero
from vramplan.parallel.inventory import Tensor
from vramplan.scenario import Scenario

LLAMA = resolve("Llama-3.2-1B")
QWEN = resolve("Qwen3-0.6B")

# Llama-3.2-1B, r = 16, every projection: Σ r·(in + out) over q (2048→2048), k, v (2048→512), o (2048→2048),
# gate, up (2048→8192), down (8192→2048) = 16·(4096 + 2·2560 + 4096 + 2·10240 + 10240) = 16·44,032 = 704,512
# elements; autocast's bf16 copies: 1,409,024 B a layer.
LLAMA_LAYER_CACHE = 1_409_024


def _st(arch, **kw):
    return static_terms(arch, Scenario(**kw))


def test_autocast_cache_of_one_layer():
    st = _st(LLAMA, rank=16)
    assert st.lora_cache == 16 * LLAMA_LAYER_CACHE
    # under checkpointing the cache is what holds them through the loss forward
    assert st.fwd_cache == 16 * LLAMA_LAYER_CACHE
    # without checkpointing the layers' graphs save the same copies: counted there, not again
    assert _st(LLAMA, rank=16, grad_checkpointing=False).fwd_cache == 0
    # bf16 adapters are not cast, nothing is cached; nor without autocast
    assert _st(LLAMA, rank=16, adapter_dtype="bf16").lora_cache == 0
    assert _st(LLAMA, rank=16, autocast=False).lora_cache == 0
    # r = 8 halves it; q,v only: 8·(4096 + 2560) = 53,248 elements, 106,496 B a layer
    assert _st(LLAMA, rank=8).lora_cache == 16 * LLAMA_LAYER_CACHE // 2
    assert _st(LLAMA, rank=8, targets=("q_proj", "v_proj")).lora_cache == 16 * 106_496


def test_held_final_hidden_state():
    # hf-peft: fp32 residual and fp32 final norm weight, the norm's output fp32: 4·H = 8,192 B a token
    assert _st(LLAMA).out_held == 4 * 2048
    # a 16-bit LoRA base without the k-bit preparation: bf16 residual, 2·H
    assert _st(LLAMA, quant="none").out_held == 2 * 2048
    # full fine-tuning: the trainable lm_head saves that very tensor; torchtune's loss drops it; the fused
    # losses price their own hidden states
    assert static_terms(LLAMA, Scenario(quant="none", full=True)).out_held == 0
    assert _st(LLAMA, loss="chunked-ce").out_held == 0
    assert _st(LLAMA, loss="liger").out_held == 0
    # TRL's fused head binds the backbone's output through the head, beside its copy of the label rows
    assert _st(LLAMA, loss="chunked-head").out_held == 4 * 2048


def test_loss_forward_phase_adds_both():
    s = Scenario(rank=16, seq=512)
    st = static_terms(LLAMA, s)
    x = ph.batch(st, 512, 1, True, False, 1.0)
    base = x.saved_all + x.mask + x.fin + st.head_copy + x.loss_f
    assert ph.loss_forward(st, x) == base + 512 * 8192 + 16 * LLAMA_LAYER_CACHE
    # the loss backward holds neither: the forward has returned and the autocast region is left
    assert ph.loss_backward(st, x) == x.saved_all + x.mask + x.fin + st.head_copy + x.loss_b
    _, rows = ph.components(ph.LOSS_FORWARD, st, x)
    got = {r[0]: r[2] for r in rows}
    assert got["activations/model_output"] == 512 * 8192
    assert got["activations/autocast_cache"] == 16 * LLAMA_LAYER_CACHE
    assert sum(r[2] for r in rows) + x.layout_batch == ph.totals(st, x, False)[ph.LOSS_FORWARD]


def test_full_fine_tuning_norm_inputs():
    # each trainable RMSNorm's product saves x normalised in x's dtype: bf16 full fine-tuning 2·H a norm
    # (input norm and post-attention norm: 2 · 2·2048 = 8,192 B a token more than the frozen norms' fp32
    # copies + rsqrt); the final norm the same, beside the lm_head's saved input (c·H)
    bf = static_terms(LLAMA, Scenario(quant="none", full=True))
    assert bf.fin == 4 * 2048 + 4 + 2 * 2048 + 2 * 2048
    fp = static_terms(LLAMA, Scenario(quant="none", full=True, dtype="fp32"))
    assert fp.fin == 4 * 2048 + 4 + 4 * 2048 + 4 * 2048


def test_chunked_ce_casts_the_head_per_chunk():
    # hf-peft keeps an fp32 lm_head under bf16 autocast: 8 chunks, each its own bf16 copy c·V·H, saved
    one = lg.head_weight_copy_bytes(128256, 2048, 2, True, 4)
    assert one == 2 * 128256 * 2048
    assert _st(LLAMA, loss="chunked-ce").head_copy == 8 * one
    # torchtune's own recipe: a bf16 head, nothing cast
    assert _st(LLAMA, loss="chunked-ce", recipe="plain", adapter_dtype="bf16", autocast=False).head_copy == 0


def test_fused_head_backward_binds_two_weight_casts():
    # N = 511 scored rows, H = 2048, fp32 hidden states under bf16 autocast, an fp32 lm_head (weight cast
    # 32768·2048·2 = 134,217,728 B). Tile 511·32768·2 = 33,488,896; hidden_chunk copy 511·2048·2 = 2,093,056.
    # forward: tile + 511·2048·4 (4,186,112) + 7·4·511 + 8·511 (18,396) + cast + chunk = 173,994,188
    # backward: tile + 511·2048·(4 + 4) (8,372,224) + 16·511 (8,176) + chunk + max(2·cast, cast + 4,186,112)
    #   = 33,488,896 + 8,372,224 + 8,176 + 2,093,056 + 268,435,456 = 312,397,808
    wc = 32768 * 2048 * 2
    fwd, bwd = lg.fused_head_bytes(511, 2048, 2, 4, wc, True, 128256)
    assert fwd == 33_488_896 + 4_186_112 + 18_396 + wc + 2_093_056
    assert bwd == 312_397_808
    # a bf16 head and bf16 hidden states (TRL's own recipe): no cast, no chunk copy; the return moment's hb
    # copy of grad_hidden: tile + 511·2048·(2 + 4) + 16·511 + 511·2048·2
    assert lg.fused_head_bytes(511, 2048, 2, 2, 0, True, 128256)[1] == 33_488_896 + 511 * 2048 * 8 + 16 * 511


def test_zero2_partition_ready_by_rank():
    # Qwen3-0.6B full fine-tuning at N = 8: the tied embedding's 151,936 · 1,024 = 155,582,464 elements come
    # first in the flat buffer, ⌈P_t/8⌉ a rank (P_t ≈ 596 M). Rank 0's range lies in the embedding: no
    # gradient of it is copied before the embedding's own, so the partition exists only at the step.
    s = Scenario(quant="none", full=True, gpus=8, strategy="zero2")
    st = static_terms(QWEN, zero.priced_scenario(s))
    from vramplan.parallel.common import rank_inventory

    inv = rank_inventory(QWEN, s, st)
    total = sum(t.count * t.numel for t in inv if t.trainable)
    local = zero.flat_partition(total, 8)
    assert zero._partition_ready(inv, 28, local, 0) == ph.OPTIMIZER
    # rank 7 ends at the flat end (the final norm): from the last layer's backward on
    assert zero._partition_ready(inv, 28, local, 7) == ph.LAST_LAYER
    # a rank ending inside layer j >= 1: from the first layer's backward
    embed = sum(t.count * t.numel for t in inv if t.trainable and not t.layer and t.row.endswith("/embeddings"))
    assert embed == 151936 * 1024 and local < embed < 3 * local  # rank 2 ends in the layers
    assert zero._partition_ready(inv, 28, local, 2) == ph.FIRST_LAYER


def test_zero2_partition_ready_hand_inventory():
    # a hand-made flat buffer: a 100-element embedding, 4 layers of 10, a 4-element tail; N = 4 → 36 a rank
    inv = [Tensor("adapter/embeddings", 100, 1, 2, 1, False, True), Tensor("adapter/lora", 10, 1, 2, 4, True, True),
           Tensor("adapter/norms", 4, 1, 2, 1, False, True)]
    assert zero._partition_ready(inv, 4, 36, 0) == ph.OPTIMIZER      # [0, 36): embedding
    assert zero._partition_ready(inv, 4, 36, 2) == ph.EMBEDDING      # [72, 108): ends in layer 0 (100-109)
    assert zero._partition_ready(inv, 4, 36, 3) == ph.LAST_LAYER     # [108, 144): ends in the tail
    assert zero._partition_ready(inv, 4, 30, 3) == ph.FIRST_LAYER    # [90, 120): ends in layer 1 (110-119)


def test_fsdp_tied_loss_forward_holds_the_last_layer_all_gather():
    from vramplan.parallel import fsdp
    from vramplan.parallel.rank import OTHER_PHASES

    a = Arch.from_config({**LLAMA.config, "num_hidden_layers": 2}, name=LLAMA.name)
    s = Scenario(gpus=2, strategy="fsdp", quant_storage="bf16")
    st = static_terms(a, s)
    rk = fsdp.rank_terms(a, s, st)
    ag = dict((r[0], r[2]) for r in rk.phase_rows[ph.LOSS_FORWARD])["temporary/fsdp_all_gather"]
    assert dict((r[0], r[2]) for r in rk.phase_rows[OTHER_PHASES])["temporary/fsdp_all_gather"] == 0
    # one layer's all-gather output: the last layer's, the forward's last gather (the tied tail went first)
    assert ag == dict((r[0], r[2]) for r in rk.phase_rows[ph.LAST_LAYER])["temporary/fsdp_all_gather"] > 0


def test_zero3_loss_backward_holds_the_head_input():
    from vramplan.parallel import zero as z

    s = Scenario(gpus=2, strategy="zero3", seq=512)
    st = static_terms(LLAMA, z.priced_scenario(s))
    rows = dict((r[0], r[2]) for r in z.rank_terms(LLAMA, s, st).phase_rows[ph.LOSS_BACKWARD])
    assert rows["activations/zero3_head_input"] == 512 * 2048 * 2
    s2 = Scenario(gpus=2, strategy="zero2", seq=512)
    rows2 = dict((r[0], r[2]) for r in z.rank_terms(LLAMA, s2, static_terms(LLAMA, z.priced_scenario(s2)))
                 .phase_rows[ph.LOSS_BACKWARD])
    assert "activations/zero3_head_input" not in rows2

"""Issue 14, feature 1: the fused losses that never build the logits, golden numbers derived by hand.

Qwen3-14B: H = 5120, V = 151936. Every figure below is worked out in its comment from the source rule
the function cites (liger-kernel 0.8.5, cut-cross-entropy 25.1.1, unsloth_zoo 2026.10.9).
"""

from __future__ import annotations

import pytest

from vramplan.analytic import estimate
from vramplan.analytic import logits as lg
from vramplan.arch import resolve
from vramplan.scenario import Scenario, ScenarioError

H, V = 5120, 151936


def test_liger_chunk_rule():
    # liger's own example (ops/fused_linear_cross_entropy.py L96-98): BT = 4096·4, V = 32000, H = 4096:
    # inc_factor = ceil(32000/4096) = 8, ceil(16384/8) = 2048, next_pow2 = 2048
    assert lg.liger_chunk_rows(16384, 4096, 32000) == 2048
    # Qwen3-14B, 4096 rows: inc = ceil(151936/5120) = ceil(29.675) = 30; ceil(4096/30) = 137; next_pow2 = 256
    assert lg.liger_chunk_rows(4096, H, V) == 256
    # 100 rows: ceil(100/30) = 4 -> 4; a chunk never exceeds the rows: 3 rows -> ceil(3/30) = 1 -> 1
    assert lg.liger_chunk_rows(100, H, V) == 4 and lg.liger_chunk_rows(3, H, V) == 1
    assert lg.next_pow2(1) == 1 and lg.next_pow2(137) == 256 and lg.next_pow2(256) == 256


def test_liger_bytes_one_dtype():
    # bf16 hidden states and lm_head under bf16 autocast (trl / plain recipes): one preallocated buffer.
    # saved grad_input 4096·5120·2 = 41,943,040; loss_1d + mask 5·4096 = 20,480; the hidden states
    # themselves 41,943,040; the chunk buffer 256·151936·2 = 77,791,232.
    # forward = 41,943,040 + 20,480 + 41,943,040 + 77,791,232 = 161,697,792; backward = grad_input
    assert lg.liger_flce_bytes(4096, H, V, 2, 2, 2, True, False) == (161_697_792, 41_943_040)


def test_liger_bytes_fp32_head_under_autocast():
    # hf-peft k-bit recipe: fp32 hidden states and fp32 lm_head, bf16 autocast. Every `@` casts the frozen
    # weight: 2·151936·5120 = 1,555,824,640 (not cached: not a leaf that requires grad).
    # grad_input 4096·5120·4 = 83,886,080; hidden 83,886,080; 5·4096 = 20,480; bf16 chunk logits
    # 256·151936·2 = 77,791,232; the input chunk's bf16 copy (or the grad matmul's result) 256·5120·2 = 2,621,440.
    # forward = 83,886,080·2 + 20,480 + 77,791,232 + 1,555,824,640 + 2,621,440 = 1,804,029,952
    assert lg.liger_flce_bytes(4096, H, V, 4, 4, 2, True, False) == (1_804_029_952, 83_886_080)


def test_liger_trainable_head_keeps_grad_weight():
    # full fine-tuning, bf16: grad_weight zeros_like(weight) 151936·5120·2 = 1,555,824,640 joins both
    fwd, bwd = lg.liger_flce_bytes(4096, H, V, 2, 2, 2, True, True)
    assert (fwd, bwd) == (161_697_792 + 1_555_824_640, 41_943_040 + 1_555_824_640)


def test_cce_bytes():
    # 1 × 4096 tokens, shift=True: K = 4095 label rows; bf16 throughout.
    # saved: e 4096·5120·2 = 41,943,040; lse 4·4095 = 16,380; valids (int64) 8·4095 = 32,760;
    # logit_avg 4·151936 = 607,744 -> 42,599,924. forward + neg_dot 4·4095 = 16,380 -> 42,616,304.
    # backward: + vocab_ordering 4·151936 = 607,744, + de 41,943,040, + locks: n = ceil(5120/64) = 80,
    # 4·(ceil(4095/80)·80 + ceil(151936/80)·80) = 4·(4160 + 152000) = 624,640 -> 85,775,348
    assert lg.cce_bytes(4096, 4095, H, V, 2, 2, 2, False) == (42_616_304, 85_775_348)


def test_cce_casts_fp32_hidden_states():
    # fp32 hidden states, bf16 classifier: apply_lce casts e to bf16 (both alive in the forward: + 4096·5120·4);
    # backward: max(saved + ordering + de + locks, de + the fp32 gradient of the cast 41,943,040 + 83,886,080)
    fwd, bwd = lg.cce_bytes(4096, 4095, H, V, 4, 2, 2, False)
    assert fwd == 42_616_304 + 83_886_080
    assert bwd == max(85_775_348, 41_943_040 + 83_886_080) == 125_829_120


def test_unsloth_chunk_rule_and_budget():
    # fused_linear_rows(K = 4095, H, V, 4 B/logit): 4095·5120/151936 = 137.99 -> largest pow2 below: 128;
    # lower clamp: 512·151936/151936 = 512 -> 512; cap 2 GiB // (151936·4) = 3533 rows -> 512
    assert lg.unsloth_chunk_rows(4095, H, V, 4) == 512
    # the budget is min(2 GiB, half the free memory): 1 GiB free -> 512 MiB, cap 536,870,912 // 607,744 = 883
    # (512 stays); 512 MiB free -> 256 MiB, cap 268,435,456 // 607,744 = 441 rows
    assert lg.unsloth_budget_bytes(None) == 2 * 2**30 and lg.unsloth_budget_bytes(2**30) == 2**29
    assert lg.unsloth_chunk_rows(4095, H, V, 4, lg.unsloth_budget_bytes(2**30)) == 512
    assert lg.unsloth_chunk_rows(4095, H, V, 4, lg.unsloth_budget_bytes(2**29)) == 441
    # Llama-2 (V = 32000, H = 4096), K = 8191: 8191·4096/32000 = 1048.4 -> 1024; clamp low 512·151936/32000 = 2431
    # -> 2048 (pow2 below) -> rows 2048
    assert lg.unsloth_chunk_rows(8191, 4096, 32000, 4) == 2048


def test_unsloth_chunked_path_bytes():
    # 1 × 4096, K = 4095 < 4096 label rows: the chunked path, R = 512.
    # hidden + grad_h 2·4096·5120·2 = 83,886,080; idx + lp_all 12·4095 = 49,140; fp32 buffer 512·151936·4 =
    # 311,164,928; the chunk's index_select rows 512·5120·2 = 5,242,880; _dz_w fp32 512·5120·4 = 10,485,760 and
    # its bf16 cast 5,242,880 -> 416,071,668. backward: grad_h + its scaled copy 2·41,943,040
    assert not lg.unsloth_flash(4095, V, 2, False)
    assert lg.unsloth_ce_bytes(4096, 4095, H, V, 2, 2, 2, False) == (416_071_668, 83_886_080)


def test_unsloth_tiled_path_bytes():
    # 1 × 8192, K = 8191 >= 4096, V > 32768: the tiled path. R = min(4096, 8191, 256 MiB // (16384·4) = 4096);
    # tile = max(256 MiB // (4096·4), 16384) = 16384; 10 splits.
    # hidden + grad_h 2·8192·5120·2 = 167,772,160; 12·8191 = 98,292; lse 4·8191 = 32,764; buffer 4096·16384·4 =
    # 268,435,456; acc 4·4096·5120 = 83,886,080; m_run 16,384; part 4·8·10·4096 = 1,310,720; rows 4096·5120·2 =
    # 41,943,040 -> 563,494,896
    assert lg.unsloth_flash(8191, V, 2, False)
    assert lg.unsloth_ce_bytes(8192, 8191, H, V, 2, 2, 2, False) == (563_494_896, 167_772_160)


@pytest.mark.parametrize("loss", ["liger", "cce", "unsloth"])
def test_estimate_prices_no_logits_and_says_so(loss):
    arch = resolve("Qwen3-14B")
    sc = Scenario(loss=loss, recipe="plain", seq=4096)
    hf = estimate(arch, Scenario(recipe="plain", seq=4096))
    b = estimate(arch, sc)
    assert b.allocated_peak_bytes < hf.allocated_peak_bytes - 5 * 2**30  # the b·s·V loss terms are gone
    assert any(n.startswith("analytic-only") for n in b.notes)
    assert b.allocated_peak_bytes == sum(c.bytes for c in b.components if c.category in
                                         ("weights", "quant_state", "adapter", "optimizer", "gradients",
                                          "activations", "logits", "temporary"))


def test_unsloth_note_names_the_free_memory_assumed():
    b = estimate(resolve("Qwen3-14B"), Scenario(loss="unsloth", recipe="plain", seq=4096))
    note = next(n for n in b.notes if "Unsloth" in n)
    assert "min(2 GiB, half the free memory" in note and "at least 4 GiB free" in note and "512 rows" in note


def test_loss_validation():
    with pytest.raises(ScenarioError, match="cce needs --dtype bf16"):
        Scenario(loss="cce", dtype="fp32")
    with pytest.raises(ScenarioError, match="label_fraction"):
        Scenario(loss="chunked-ce", label_fraction=0.5)
    for loss in ("liger", "cce", "unsloth"):
        assert Scenario(loss=loss, label_fraction=0.5).kept_positions == 1024


def test_defaults_unchanged():
    """The default loss is still transformers' (every calibrated estimate stays byte-identical)."""
    assert Scenario().loss.value == "hf"

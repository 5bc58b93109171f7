"""Packing and padding-free batches (``Scenario.packing``, issue 14 feature 3): validation, the
analytic engine's packed terms derived by hand, and the fullest micro-batch ``plan`` prices from a
dataset's lengths (``lengths.longest_batch``)."""

from __future__ import annotations

import pytest

from archhelp import small_gemma3, small_llama
from vramplan.analytic import estimate
from vramplan.arch import resolve
from vramplan.lengths import from_values, longest_batch
from vramplan.plan import plan
from vramplan.scenario import BatchLayout, Scenario, ScenarioError


def _delta(layout: str, base: dict | None = None, **kw) -> int:
    arch = small_llama()
    sc = Scenario(seq=512, batch=2, **{**(base or {}), **kw})
    return estimate(arch, sc.replace(packing=layout)).allocated_peak_bytes - estimate(arch, sc).allocated_peak_bytes


# ------------------------------------------------------------------------------------ validation
def test_default_is_unpacked():
    assert Scenario().packing is BatchLayout.NONE


def test_padding_free_needs_flash2():
    with pytest.raises(ScenarioError, match="flash2"):
        Scenario(packing="padding-free")
    with pytest.raises(ScenarioError, match="flash2"):
        Scenario(packing="padding-free", attn="eager")
    assert Scenario(packing="padding-free", attn="flash2").packing is BatchLayout.PADDING_FREE


def test_packed_mask_refuses_flash2():
    with pytest.raises(ScenarioError, match="packed"):
        Scenario(packing="packed-mask", attn="flash2")


def test_unknown_layout():
    with pytest.raises(ScenarioError, match="unknown batchlayout"):
        Scenario(packing="bins")


# ------------------------------------------------------------------------- analytic, by hand
# small_llama at 2 × 512 (T = 1,024 tokens, s = 512), bf16 autocast, hf-peft (fp32 embedding output:
# resid0 = 4), head_dim 64, q = 4·64 = 256, kv = 2·64 = 128, CUDA program, GC on: the peak is the last
# layer's backward.
#   per-token RoPE rows: 2 (cos, sin) · 4 B · 64 = 512 B/token over the T − s = 512 tokens the unpacked
#     run's one shared row lacks: 262,144; position ids: 8 B · 512 = 4,096.
#   packed under sdpa, the recomputed last layer: K/V repeated, 2 B · 2 · (256 − 128) = 512 B/token
#     · 1,024 = 524,288, and the additive mask copy, 2 B · T · s = 1,048,576; transformers' bool mask,
#     1 B · T · s = 524,288, kept by checkpointing.
def test_packed_sdpa_gc_golden():
    # 262,144 + 4,096 + 524,288 + 1,048,576 + 524,288 = 2,363,392 (the trace measures the same delta:
    # tests/engines/test_packing_engines.py)
    assert _delta("packed") == 2_363_392


def test_packed_mask_sdpa_gc_golden():
    # the collator's bf16 mask, 2 B · T · s = 1,048,576, with the batch all step; repeated K/V 524,288;
    # no per-layer copy (already additive); RoPE rows 262,144, position ids 4,096: 1,839,104
    assert _delta("packed-mask") == 1_839_104


def test_padding_free_flash2_golden():
    # varlen attention, no mask: the RoPE rows and position ids only, 262,144 + 4,096 = 266,240
    assert _delta("padding-free", dict(attn="flash2")) == 266_240
    assert _delta("packed", dict(attn="flash2")) == 266_240


def test_packed_sdpa_without_gc_golden():
    # no checkpointing: the peak is the loss backward with every layer's saved tensors: both layers'
    # extras 2 · (524,288 + 1,048,576) = 3,145,728; the bool mask died with the forward; RoPE rows
    # 262,144 and position ids 4,096: 3,411,968
    assert _delta("packed", grad_checkpointing=False) == 3_411_968


def test_one_packed_row_is_the_unpacked_shape():
    """batch 1 with flash2: the position ids and RoPE rows have the unpacked run's one row; nothing moves."""
    arch = small_llama()
    sc = Scenario(seq=512, batch=1, attn="flash2")
    assert estimate(arch, sc.replace(packing="packed")).allocated_peak_bytes == estimate(arch, sc).allocated_peak_bytes


def test_packed_breakdown_row_sums():
    arch = small_llama()
    b = estimate(arch, Scenario(seq=512, batch=2, packing="packed"))
    assert b.get("activations/packing") == 262_144 + 4_096 + 524_288
    assert sum(c.bytes for c in b.allocated) == b.allocated_peak_bytes


# ------------------------------------------------------------------------- the fullest batch
LENGTHS = from_values([100, 700, 300, 2000, 50, 1200])


def test_longest_batch_by_layout():
    # unpacked: the batch that draws the 2,000-token example pads to it
    assert longest_batch(LENGTHS, "none", 4096, 4) == (2000, 4)
    # a collator padding to max length: always the seq
    assert longest_batch(LENGTHS, "none", 4096, 4, pad_to_seq=True) == (4096, 4)
    # padding-free: the 4 longest in one row, 2000 + 1200 + 700 + 300 = 4,200 tokens = 4 × 1,050
    assert longest_batch(LENGTHS, "padding-free", 4096, 4) == (1050, 4)
    # 4,201 tokens would round up: 3 longest of [2000, 1200, 701] = 3,901 -> 3 × 1,301 = 3,903
    assert longest_batch(from_values([2000, 1200, 701, 5]), "padding-free", 4096, 3) == (1301, 3)
    # packed rows are full
    assert longest_batch(LENGTHS, "packed", 4096, 4) == (4096, 4)
    assert longest_batch(LENGTHS, "packed-mask", 1024, 2) == (1024, 2)


def test_plan_checks_the_fullest_batch():
    sc = Scenario(seq=4096, batch=4, attn="flash2")
    assert plan("Qwen3-0.6B", "H100", sc, lengths=LENGTHS).scenario.seq == 2000
    assert plan("Qwen3-0.6B", "H100", sc, lengths=LENGTHS, pad_to_seq=True).scenario.seq == 4096
    packed = plan("Qwen3-0.6B", "H100", sc.replace(packing="packed"), lengths=LENGTHS)
    assert (packed.scenario.seq, packed.scenario.batch) == (4096, 4)
    free = plan("Qwen3-0.6B", "H100", sc.replace(packing="padding-free"), lengths=LENGTHS)
    assert (free.scenario.seq, free.scenario.batch) == (1050, 4)
    assert any("fullest micro-batch" in n for n in free.notes)
    # the packed run is checked at its full rows: more memory than the unpacked run's longest batch
    unpacked = plan("Qwen3-0.6B", "H100", sc, lengths=LENGTHS)
    assert packed.check.need_bytes > unpacked.check.need_bytes > free.check.need_bytes


def test_packed_gemma3_golden():
    """2 × 256 (T = 512, s = 256), GC, hf-peft (fp32 embedding output), the last layer's backward:
    RoPE rows of both rotary modules 2 · 2 · 4 B · 64 = 1,024 B/token over T − s = 256: 262,144; position
    ids 8 · 256 = 2,048; transformers builds the full and the sliding-window bool masks, 2 · T · s =
    262,144; the recomputed layer's repeated K/V 2 B · 2 · (256 − 64) · 512 = 393,216 and its additive
    mask 2 B · T · s = 262,144: 1,181,696 (the trace's delta, tests/engines/test_packing_engines.py;
    the full gemma-3-1b-pt at 2 × 256 gives 1,312,768 in both engines, checked by hand)."""
    arch = small_gemma3()
    sc = Scenario(seq=256, batch=2)
    got = estimate(arch, sc.replace(packing="packed")).allocated_peak_bytes - estimate(arch, sc).allocated_peak_bytes
    assert got == 1_181_696
    full = resolve("gemma-3-1b-pt")
    assert estimate(full, sc.replace(packing="packed")).allocated_peak_bytes - \
        estimate(full, sc).allocated_peak_bytes == 1_312_768

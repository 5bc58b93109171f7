"""Exact golden numbers for the per-rank terms (vramplan.parallel), derived by hand, and the per-rank
analytic engine held to the multi-GPU probe's FSDP2 / DDP figures (../shared/research/multigpu-simulation.md
§1, §3: a tiny Llama under a fake process group; its per-rank steps are exact, so they are checked
exactly)."""

from __future__ import annotations

from dataclasses import fields

import pytest

from vramplan.analytic import estimate, static_terms
from vramplan.arch.lookup import resolve
from vramplan.arch.spec import Arch
from vramplan.breakdown import RUNTIME_CATEGORIES
from vramplan.parallel import STRATEGIES
from vramplan.parallel.ddp import bucket_bytes, bucket_sizes, first_bucket_cap, used_map_bytes
from vramplan.parallel.fsdp import gathered_bytes, local_rows, padded_rows, shard_bytes, unsharded_bytes
from vramplan.parallel.inventory import Tensor
from vramplan.parallel.nccl import nccl_buffer_bytes
from vramplan.parallel.common import rank_inventory, state_bytes
from vramplan.parallel.zero import auto_buckets, flat_partition, ipg_bucket_bytes, partition_numel
from vramplan.scenario import Optim, Scenario, Strategy

TINY = dict(model_type="llama", hidden_size=256, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
            num_key_value_heads=4, vocab_size=8192, tie_word_embeddings=False, max_position_embeddings=2048,
            rms_norm_eps=1e-6, rope_theta=10000.0, hidden_act="silu")
#: The probe's full bf16 fine-tuning step (pure bf16 AdamW, no checkpointing), on the CPU.
FULL = dict(quant="none", full=True, grad_checkpointing=False, recipe="plain", seq=256, batch=2)


def tiny(vocab: int = 8192) -> Arch:
    return Arch.from_config({**TINY, "vocab_size": vocab}, name="tiny")


# ------------------------------------------------------------------ FSDP2 dim-0 shards
def test_uneven_dim0_shards():
    # 10 rows over 4 ranks: chunks of ceil(10/4) = 3 rows: 3, 3, 3, 1
    assert padded_rows(10, 4) == 3
    assert [local_rows(10, 4, r) for r in range(4)] == [3, 3, 3, 1]
    # 5 rows over 8 ranks: one row each for ranks 0-4, none for 5-7 (torch.chunk gives only 5 chunks)
    assert [local_rows(5, 8, r) for r in range(8)] == [1, 1, 1, 1, 1, 0, 0, 0]
    # vocabulary 8191 over 3: 2731, 2731, 2729
    assert [local_rows(8191, 3, r) for r in range(3)] == [2731, 2731, 2729]


def test_shard_and_unsharded_bytes():
    emb = Tensor("weights/embeddings", 8191, 256, 2, 1, False, True)
    # padded shard 2731 rows × 256 × 2 B = 1,398,272 B (a multiple of 512)
    assert shard_bytes(emb, 3) == 1_398_272
    # unsharded: 3 × 2731 rows = 8193 rows (2 padding rows) × 512 B = 4,194,816
    assert unsharded_bytes(emb, 3) == 4_194_816
    norm = Tensor("weights/norms", 256, 1, 2, 1, True, True)
    # 128 bf16 elements = 256 B -> one 512-B block, whatever N
    assert shard_bytes(norm, 2) == shard_bytes(norm, 8) == 512
    # one flat all-gather buffer over both: 3·(2731·256·2) + 3·(86·1·2) = 4,194,816 + 516 -> 4,195,840 in blocks
    assert gathered_bytes([emb, norm], 3) == 4_195_840


def test_adam_state_follows_the_unpadded_shard():
    # AdamW's two moments of rank 2's 2729 rows × 256 bf16: 2 × 1,397,248 B
    assert state_bytes(Optim.ADAMW, 2729 * 256, 2) == 2 * 1_397_248
    assert state_bytes(Optim.ADAMW, 0, 2) == 0  # a rank with no rows has empty state
    assert state_bytes(Optim.SGD, 1000, 4) == 0


# ------------------------------------------------------------------ DDP buckets
def test_bucket_assignment():
    mib = 1 << 20
    # ready order 0.6, 0.6, 10, 10, 10, 10 MiB (one dtype), first cap 1 MiB then 25 MiB:
    # [0.6+0.6 = 1.2 >= 1] closes bucket 1; 10+10+10 = 30 >= 25 closes bucket 2; 10 is left open
    sizes = [(int(0.6 * mib), 2)] * 2 + [(10 * mib, 2)] * 4
    assert bucket_sizes(sizes, 25 * mib, mib) == [2 * int(0.6 * mib), 30 * mib, 10 * mib]
    # two dtypes fill separate buckets, each with its own first cap
    assert bucket_sizes([(mib, 4), (mib, 2), (mib, 4)], 25 * mib, mib) == [mib, mib, mib]
    assert first_bucket_cap(25) == mib and first_bucket_cap(50) == 50 * mib


def test_ddp_buckets_are_one_copy_of_the_gradients():
    a = tiny()
    s = Scenario(gpus=2, strategy="ddp", **FULL)
    inv = rank_inventory(a, s, static_terms(a, s, "cpu"))
    # 6,818,048 trainable bf16 params (2·8192·256 + 4·(4·256² + 3·256·512 + 2·256) + 256) = 13,636,096 B,
    # every bucket a multiple of 512 here
    total, n = bucket_bytes(inv, 4, 25)
    assert total == 13_636_096
    assert n == 2  # lm_head alone (4 MiB >= 1 MiB) closes the first bucket; the rest (9.25 MiB) stays under 25 MiB


def test_ddp_used_parameter_maps():
    # 4 B per trainable tensor, 512-B blocks; one map on the GPU, both (host + device) when the run is on CPU.
    # LoRA all-linear on a 2-layer model: 2 · 7 · 2 = 28 tensors, 112 B: one block each
    assert used_map_bytes(28, cuda=True) == 512 and used_map_bytes(28, cuda=False) == 1024
    # 32 layers: 448 tensors, 1,792 B: four blocks
    assert used_map_bytes(448, cuda=True) == 2048
    assert used_map_bytes(0, cuda=True) == 0
    a = tiny()
    s = Scenario(gpus=2, strategy="ddp", **FULL)
    row = {c.name: c.bytes for c in estimate(a, s, device="cpu").components}["gradients/ddp_buckets"]
    # the full fine-tune: 4 · 9 + 3 = 39 trainable tensors (156 B, one block, twice on CPU) over its buckets
    assert row == 13_636_096 + 1024


# ------------------------------------------------------------------ ZeRO
def test_zero_auto_values_and_partitions():
    # transformers 5.24 deepspeed.py L232-241 at H = 4096
    assert auto_buckets(4096, 0, 0, 0) == (16_777_216, 15_099_494, 40_960)
    assert auto_buckets(4096, 5, 6, 7) == (5, 6, 7)
    assert partition_numel(10, 4) == 3 and partition_numel(8, 4) == 2 and flat_partition(7, 8) == 1
    # H = 4096, bf16: 16,777,216 × 2 B = 32 MiB, doubled by overlap_comm
    assert ipg_bucket_bytes(16_777_216, 2, True) == 64 << 20
    assert ipg_bucket_bytes(16_777_216, 2, False) == 32 << 20


def test_nccl_buffers():
    assert nccl_buffer_bytes(1, 1) == 0
    assert nccl_buffer_bytes(8, 1) == 16 * 2 * (4 << 20) == 134_217_728
    assert nccl_buffer_bytes(16, 2) == 16 * 5 * (4 << 20)


# ------------------------------------------------------------------ the engine per rank vs the probe
def test_fsdp_peak_steps_match_the_probe():
    """C + K/N: the probe's FSDP2 peaks drop by 10,223,616 B from N = 2 to 4 and 5,111,808 B from 4 to 8
    (full bf16; K = 6 B/param over the 6,815,744 params whose shards exceed one 512-B block)."""
    a = tiny()
    peak = {n: estimate(a, Scenario(gpus=n, strategy="fsdp", **FULL), device="cpu").allocated_peak_bytes
            for n in (2, 4, 8)}
    assert peak[2] - peak[4] == 10_223_616
    assert peak[4] - peak[8] == 5_111_808


def test_fsdp_uneven_rank_asymmetry_matches_the_probe():
    """N = 3, vocabulary 8191: rank 0 peaks 61,440 B above rank 2 (AdamW state on the unpadded shard)."""
    a = tiny(8191)
    b = [estimate(a, Scenario(gpus=3, strategy="fsdp", process_rank=r, **FULL), device="cpu") for r in (0, 2)]
    assert b[0].allocated_peak_bytes - b[1].allocated_peak_bytes == 61_440
    assert b[0].get("optimizer/adamw") - b[1].get("optimizer/adamw") == 61_440


def test_fsdp_tail_unsharded_at_the_loss():
    """accelerate 1.16's groups (the trace's wrap): at the loss only the tail (final norm + lm_head, never
    resharded after forward) is unsharded: 2048·... = 8192·256 bf16 + one 512-B norm block; the untied
    embedding was resharded after its forward, and the last all-gather result was freed by the root's
    post-forward. (The probe wrapped embedding, head and norm as one root group: 8 MiB + 512 B there.)"""
    b = estimate(tiny(), Scenario(gpus=2, strategy="fsdp", **FULL), device="cpu")
    assert b.peak_phase == "loss backward"
    assert b.get("weights/fsdp_unsharded") == 8192 * 256 * 2 + 512
    assert b.get("temporary/fsdp_all_gather") == 0


def test_ddp_adds_its_buckets_and_view_removes_grads():
    a = tiny()
    one = estimate(a, Scenario(**FULL), device="cpu")
    ddp = estimate(a, Scenario(gpus=2, strategy="ddp", **FULL), device="cpu")
    # the buckets (13,636,096 B) and the Reducer's two used-parameter maps (test_ddp_used_parameter_maps)
    assert ddp.allocated_peak_bytes - one.allocated_peak_bytes == 13_636_096 + 1024
    view = estimate(a, Scenario(gpus=8, strategy="ddp", gradient_as_bucket_view=True, **FULL), device="cpu")
    # the optimizer step: probe 81,841,664 -> 68,205,568 (one gradient copy fewer)
    assert ddp.extra["phases"]["optimizer step"] - view.extra["phases"]["optimizer step"] == 13_636_096


@pytest.mark.parametrize("strategy", ["ddp", "fsdp", "zero2", "zero3"])
@pytest.mark.parametrize("kw", [dict(), dict(quant="none"), dict(quant="none", full=True),
                                dict(quant_storage="bf16", grad_checkpointing=False)])
def test_rows_sum_to_the_peak(strategy, kw):
    a = resolve("Qwen3-0.6B")
    b = estimate(a, Scenario(gpus=4, strategy=strategy, **kw))
    tensors = sum(c.bytes for c in b.components if c.category not in RUNTIME_CATEGORIES)
    assert tensors == b.allocated_peak_bytes
    peak = tensors - b.get("temporary/cublas_workspace")  # the phases count the tensors only
    assert peak == b.extra["phases"][b.peak_phase] == max(b.extra["phases"].values())
    assert b.get("runtime/nccl") == 16 * 2 * (4 << 20)  # one node: 16 channels × 2 ring peers × 4 MiB
    assert b.total_bytes - b.reserved_peak_bytes >= b.get("runtime/nccl")


def test_quant_state_is_replicated_and_uint8_weights_whole_under_fsdp():
    a = resolve("Qwen3-0.6B")
    one = estimate(a, Scenario())
    for strategy, kw in (("fsdp", dict(quant_storage="bf16")), ("zero3", {})):
        b = estimate(a, Scenario(gpus=8, strategy=strategy, **kw))
        assert b.get("quant_state/absmax") == one.get("quant_state/absmax") > 0
        assert b.get("weights/nf4") < one.get("weights/nf4") // 7
    # accelerate ignores frozen non-floating (uint8-stored) 4-bit weights: whole on every rank
    b = estimate(a, Scenario(gpus=8, strategy="fsdp"))
    assert b.get("weights/nf4") == one.get("weights/nf4")


def test_state_offload_goes_to_host_rows():
    a = resolve("Qwen3-0.6B")
    s = dict(quant="none", full=True, gpus=4)
    dev = estimate(a, Scenario(strategy="zero3", **s))
    off = estimate(a, Scenario(strategy="zero3", state_offload="params", **s))
    assert off.host_bytes > 0 and not dev.host_bytes
    assert off.get("optimizer/adamw") == 0 and off.allocated_peak_bytes < dev.allocated_peak_bytes
    fs = estimate(a, Scenario(strategy="fsdp", state_offload="params", **s))
    assert fs.host_bytes > 0 and fs.get("adapter/full_weights") == 0


def test_every_strategy_priced_analytically():
    assert all(analytic for analytic, _ in STRATEGIES.values())
    assert set(STRATEGIES) == set(Strategy)


def test_zero3_persistence_keeps_small_frozen_parameters_whole():
    a = resolve("Qwen3-0.6B")
    s = dict(quant="none", gpus=8, strategy="zero3")
    # LoRA: the frozen norms (1024 elements <= 10·H) stay whole; with a threshold of 1 they are partitioned
    whole = estimate(a, Scenario(**s)).get("weights/norms")
    split = estimate(a, Scenario(stage3_param_persistence_threshold=1, **s)).get("weights/norms")
    assert whole > split
    # the trainable 16-bit partition is one flat buffer: ⌈bytes/N⌉ whatever the persistence
    lora = [estimate(a, Scenario(stage3_param_persistence_threshold=t, **s)).get("adapter/lora") for t in (1, 0)]
    assert lora[0] == lora[1]


def test_zero3_keeps_layers_within_the_reuse_distance():
    from vramplan.parallel.zero import reuse_kept_layers
    # layers of 0.1e9 elements: distances 0, 0.1e9, ..., 1.0e9 from the last layer: 10 kept
    assert reuse_kept_layers(100_000_000, 28, 200_000_000) == 10
    # a whole small model: every layer (28 × 1e7 elements, largest distance 0.27e9)
    assert reuse_kept_layers(10_000_000, 28, 200_000_000) == 28
    # 70B-sized layers of 0.43e9 elements: distances 0, 0.43e9, 0.86e9 are under 1e9, but a third layer
    # would take the kept elements past stage3_max_live_parameters (1e9): 2
    assert reuse_kept_layers(430_000_000, 80, 1_050_673_152) == 2
    # max_live caps the kept elements
    assert reuse_kept_layers(10_000_000, 28, 200_000_000, max_live=50_000_000) == 5

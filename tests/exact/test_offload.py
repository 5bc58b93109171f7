"""Activation offloading (``Scenario.offload``, issue 14): golden numbers derived by hand, the
host figure's plumbing (Breakdown, tracker, plan --host-ram) and the validation."""

from __future__ import annotations

import pytest

from vramplan.analytic import estimate
from vramplan.analytic import offload as off
from vramplan.arch import resolve
from vramplan.breakdown import Breakdown, Component
from vramplan.scenario import Scenario, ScenarioError

QWEN = resolve("Qwen3-14B")
#: Qwen3-14B, 1 × 4096, QLoRA under hf-peft: the residual stream is fp32 (embeddings upcast), so one
#: layer input is T·H·4 = 4096 · 5120 · 4 = 83,886,080 B; 40 layers.
X = 83_886_080


def _phases(**kw):
    return estimate(QWEN, Scenario(seq=4096, **kw)).extra["phases"]


def test_pinned_block_is_the_next_power_of_two():
    assert [off.pinned_block(n) for n in (0, 1, 3, 4, 393_216, 1 << 20, X)] == \
        [0, 1, 4, 4, 524_288, 1 << 20, 134_217_728]


def test_checkpoint_offload_moves_all_but_layer_0s_input_off_the_gpu():
    """Loss backward: the 40 checkpoints (40·X) become layer 0's input alone (a leaf autograd keeps):
    39·X = 3,271,557,120 B less. Last layer backward: 40·X -> leaf + the restored copy of the last
    layer's input = 2·X: 38·X = 3,187,671,040 B less. Layer 0's backward: its checkpoint X -> the leaf
    and the restored copy, 2·X: X = 83,886,080 B more."""
    none, ckpt = _phases(), _phases(offload="checkpoints")
    assert none["loss backward"] - ckpt["loss backward"] == 3_271_557_120
    assert none["last layer backward"] - ckpt["last layer backward"] == 3_187_671_040
    assert ckpt["first layer backward"] - none["first layer backward"] == 83_886_080


def test_activation_offload_with_checkpointing_prices_as_checkpoints():
    assert _phases(offload="activations") == _phases(offload="checkpoints")


def test_unsloth_keeps_the_last_input_and_two_buffers():
    """Unsloth stores bf16: 41,943,040 B per input (> 2 MiB, offloaded). Loss backward on the GPU:
    layer 0's leaf X + the last layer's input X + two restore buffers 2 · 41,943,040 = 251,658,240 B
    against 40·X = 3,355,443,200 B: 3,103,784,960 B less."""
    none, uns = _phases(reentrant=True), _phases(reentrant=True, offload="unsloth")
    assert none["loss backward"] - uns["loss backward"] == 3_103_784_960


def test_unsloth_below_2_mib_offloads_nothing():
    """A 1 × 128 input stored bf16 is 128 · 5120 · 2 = 1,310,720 B <= 2 MiB: no slot grows, no GPU buffer;
    the host keeps the start-up pool only (200 × 262,144 = 52,428,800 B)."""
    s = Scenario(seq=128, reentrant=True)
    a, u = estimate(QWEN, s), estimate(QWEN, s.replace(offload="unsloth"))
    assert u.allocated_peak_bytes == a.allocated_peak_bytes
    assert u.host_bytes == 52_428_800


def test_offload_without_checkpointing():
    with pytest.raises(ScenarioError, match="needs --grad-checkpointing"):
        Scenario(grad_checkpointing=False, offload="checkpoints")
    with pytest.raises(ScenarioError, match="needs --grad-checkpointing"):
        Scenario(grad_checkpointing=False, offload="unsloth")
    # OffloadActivations without layer checkpointing: every layer's saved tensors go to the host
    a = estimate(QWEN, Scenario(seq=1024, grad_checkpointing=False))
    o = estimate(QWEN, Scenario(seq=1024, grad_checkpointing=False, offload="activations"))
    assert o.allocated_peak_bytes < a.allocated_peak_bytes and o.host_bytes > 0
    assert any("lower bound" in n for n in o.notes)


def _tiny_offload():
    """The 4-layer llama of ``tests/engines/test_offload_engines.py`` (H = 256, I = 512, 4 heads of 64)."""
    from vramplan.arch import Arch

    cfg = dict(resolve("vramplan-debug").config)
    cfg.update(hidden_size=256, intermediate_size=512, num_attention_heads=4, num_key_value_heads=2,
               vocab_size=512, num_hidden_layers=4)
    return Arch.from_config(cfg, name="tiny-offload")


def test_trl_offload_without_checkpointing_keeps_norms_rope_and_two_nodes():
    """QLoRA r8 (lora_dropout 0.05), 2 × 192, no checkpointing, TRL ``OffloadActivations``. T = 384.
    1. resident (``offload.trl_resident_bytes``): each RMSNorm's deduplicated fp32 input and rsqrt,
       4·256 + 4 = 1,028 B/token; 2 norms a layer = 2,056; layer 0's input norm saves nothing under
       LoRA (its input needs no gradient) = 1,028.
    2. rope tables: cos and sin of the one shared row, fp32 (the upcast residual), 64 dims:
       2·4·64 = 512 B per position; · s = 192 -> 98,304.
    3. restored pair (``activations.trl_mlp_node``): act(gate)·up saves its two fp32 factors
       (base bf16 + fp32 LoRA = fp32), 2·4·512 = 4,096, and the node before it, down_proj's bool dropout
       mask, 512: 4,608 B/token -> 384·4,608 = 1,769,472 (the trace: 2·786,432 + 196,608).
    Saved at the loss: 384·(1,028 + 3·2,056) + 98,304 = 2,763,264 + 98,304 = 2,861,568.
    At the last layer's backward: + 1,769,472 = 4,631,040. At layer 0's: 384·1,028 + 98,304 +
    1,769,472 = 394,752 + 98,304 + 1,769,472 = 2,262,528."""
    from vramplan.analytic import phases as ph
    from vramplan.analytic.terms import static_terms

    sc = Scenario(batch=2, seq=192, rank=8, grad_checkpointing=False, offload="activations")
    st = static_terms(_tiny_offload(), sc)
    assert st.trl_resident == (2_056, 1_028, 512) and st.trl_node == (4_608, 4_608)
    x = ph.batch(st, 192, 2, False, False, 1.0)
    assert (x.saved_all, x.saved_last, x.saved_first) == (2_861_568, 4_631_040, 2_262_528)
    # every other scenario keeps the defaults (its estimate unchanged)
    for kw in (dict(offload="none", grad_checkpointing=False), dict(offload="activations")):
        plain = static_terms(_tiny_offload(), Scenario(batch=2, seq=192, rank=8, **kw))
        assert plain.trl_resident == (0, 0, 0) and plain.trl_node == (0, 0)


def test_default_has_no_host_figure_and_json_is_unchanged():
    b = estimate(QWEN, Scenario())
    assert b.host == () and b.host_bytes == 0
    assert "host" not in b.to_dict() and "host_bytes" not in b.to_dict()


def test_breakdown_host_roundtrip_and_separation():
    b = estimate(QWEN, Scenario(seq=4096, offload="checkpoints"))
    d = b.to_dict()
    assert d["host_bytes"] == 5_368_709_120 and d["host"][0]["name"] == "host/pinned"
    back = Breakdown.from_dict(d)
    assert back.host == b.host and back.allocated_peak_bytes == b.allocated_peak_bytes
    with pytest.raises(ValueError, match="Breakdown.host"):
        Breakdown((Component("host/pinned", "host", 1),))
    with pytest.raises(ValueError, match="only 'host'"):
        Breakdown((), host=(Component("weights/x", "weights", 1),))


def test_plan_checks_host_ram():
    from vramplan.plan import plan

    s = Scenario(seq=4096, offload="checkpoints")
    ok = plan(QWEN, "h100", s, host_ram=8 << 30, suggestions=False)
    short = plan(QWEN, "h100", s, host_ram=4 << 30, suggestions=False)
    assert ok.fits and ok.check.host_fits
    assert not short.fits and not short.check.host_fits and short.check.need_bytes <= short.check.budget_bytes
    # the largest seq respects host memory too: 4 GiB hold 32 blocks of 2^27 (seq <= 4096 would need 40)
    assert short.max_seq is not None and short.max_seq < 4096
    d = short.to_dict()
    assert (d["host_bytes"], d["host_budget_bytes"], d["host_fits"]) == (5_368_709_120, 4 << 30, False)
    assert "host_bytes" not in plan(QWEN, "h100", Scenario(), suggestions=False).to_dict()


def test_plan_cli_host_ram(cli_run):
    code, out, _ = cli_run("plan", "-m", "Qwen3-14B", "--gpu", "h100", "--seq", "4096", "--offload", "checkpoints",
                           "--host-ram", "4GiB", "--json")
    assert code == 1
    import json

    d = json.loads(out)
    assert d["host_fits"] is False and d["host_budget_bytes"] == 4 << 30
    code, _, err = cli_run("plan", "-m", "Qwen3-14B", "--gpu", "h100", "--host-ram", "lots")
    assert code == 2 and "--host-ram" in err


def test_tracker_counts_offloaded_copies_as_host():
    torch = pytest.importorskip("torch")
    from vramplan.hf.tracker import LiveTensorTracker

    with LiveTensorTracker() as tr:
        x = torch.empty(98_304, dtype=torch.float32)  # 393,216 B
        assert tr.current_bytes == 393_216
        tr.to_host(x)
        assert (tr.current_bytes, tr.host_bytes, tr.host_peak_bytes) == (0, 524_288, 524_288)
        assert tr.peak_by_category == {"temporary": 393_216}
        del x
        assert tr.host_bytes == 0 and tr.host_peak_by_category == {"host/pinned": 524_288}
        with pytest.raises(ValueError):
            tr.to_host(torch.empty(4), "activations")

"""Gemma 4's MoE layers (``enable_moe_block``: gemma-4-26B-A4B-it), held to transformers and the trace.

The family harness (``test_family_records.py``) has one row per ``model_type``; its ``gemma4_text`` and
``gemma4`` rows are the dense E2B (text-only, and with its towers). This file is the MoE row: gemma-4-26B-A4B-it's published config shrunk as the
harness shrinks a row (``_SMALL`` widths, 2 layers, one sliding and one full), with 8 experts of width
128 and top-2 routing, priced by both engines at seq 256 with checkpointing on and off (within 1 % of
the allocated peak, as the harness asks, and within 1 % of the tensors alone: the cuBLAS workspace is
most of a shrunk model's allocated peak).
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from vramplan.arch import Arch, find_entry

_SMALL = dict(hidden_size=256, intermediate_size=512, num_attention_heads=4, num_key_value_heads=2, head_dim=64,
              vocab_size=1024)
#: The shrunk MoE Gemma 4: full layers at global_head_dim 128 with one global kv head (attention_k_eq_v),
#: 8 experts of width 128, top-2.
_MOE = dict(_SMALL, global_head_dim=128, num_global_key_value_heads=1, num_experts=8, top_k_experts=2,
            moe_intermediate_size=128, num_hidden_layers=2, layer_types=["sliding_attention", "full_attention"])


def shrunk_moe_config(**over: Any) -> dict[str, Any]:
    """gemma-4-26B-A4B-it's config.json (the registry entry, a deep copy) with its text part shrunk, read
    text-only (its vision tower dropped, as the harness's gemma4_text row; the full-size test keeps it)."""
    raw = copy.deepcopy(dict(find_entry("gemma-4-26B-A4B-it").config))
    raw["text_config"].update(_MOE, **over)
    raw.update(vision_config=None, audio_config=None)
    return raw


def shrunk_moe_arch(**over: Any) -> Arch:
    return Arch.from_config(shrunk_moe_config(**over), name="gemma4-moe-shrunk")


def test_shrunk_moe_is_the_family():
    arch = shrunk_moe_arch()
    assert arch.model_type == "gemma4_text" and arch.num_layers == 2
    assert arch.config["enable_moe_block"] is True


@pytest.mark.torch
def test_shrunk_moe_param_counts_match_transformers():
    pytest.importorskip("transformers")
    pytest.importorskip("bitsandbytes")
    import bitsandbytes as bnb

    from vramplan.hf.build import meta_model
    from vramplan.scenario import Scenario

    arch = shrunk_moe_arch()
    total = sum(p.numel() for p in meta_model(arch, Scenario(quant="none", attn="eager")).parameters())
    q4 = meta_model(arch, Scenario(attn="eager"))
    linear = sum(m.in_features * m.out_features for m in q4.modules() if isinstance(m, bnb.nn.Linear4bit))
    assert (arch.all_params, arch.quantized_params) == (total, linear)


def _tensors(bd: Any) -> int:
    """The breakdown's tensor bytes: the allocated peak less the cuBLAS workspace (and the runtime rows)."""
    return sum(c.bytes for c in bd.components if not c.name.startswith(("temporary/cublas", "runtime/")))


@pytest.mark.torch
@pytest.mark.parametrize("gc", [True, False], ids=["gc", "no-gc"])
def test_shrunk_moe_within_1_percent_of_trace(gc):
    pytest.importorskip("transformers")
    pytest.importorskip("peft")
    pytest.importorskip("bitsandbytes")
    from vramplan.analytic import estimate
    from vramplan.scenario import Scenario
    from vramplan.trace import trace

    arch = shrunk_moe_arch()
    sc = Scenario(seq=256, grad_checkpointing=gc)
    ours, theirs = estimate(arch, sc, device="cuda"), trace(arch, sc, extrapolate=False, device="cuda")
    err = ours.allocated_peak_bytes / theirs.allocated_peak_bytes - 1
    assert abs(err) < 0.01, f"{err:+.3%} (ours {ours.peak_phase}, trace {theirs.peak_phase})"
    err_t = _tensors(ours) / _tensors(theirs) - 1
    assert abs(err_t) < 0.01, f"tensors {err_t:+.3%} (ours {ours.peak_phase}, trace {theirs.peak_phase})"


@pytest.mark.torch
@pytest.mark.slow
def test_full_size_moe_entry_within_1_percent():
    """gemma-4-26B-A4B-it (with its vision tower) at r16 all-linear 1×2048 (the harness's full-size scenario),
    both engines; the trace runs all 30 layers (not extrapolated: about 70 s on a shared CPU)."""
    pytest.importorskip("torch")
    from vramplan.analytic import estimate
    from vramplan.arch import resolve
    from vramplan.scenario import Scenario
    from vramplan.trace import trace

    arch, sc = resolve("gemma-4-26B-A4B-it"), Scenario(seq=2048, rank=16)
    theirs = trace(arch, sc, device="cuda")
    ours = estimate(arch, sc, device="cuda")
    err = ours.allocated_peak_bytes / theirs.allocated_peak_bytes - 1
    assert abs(err) < 0.01, f"{err:+.3%} (ours {ours.peak_phase}, trace {theirs.peak_phase})"

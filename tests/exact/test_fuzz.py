"""Fuzzed properties of the public ``vramplan.estimate`` over every registry model and every Scenario
field, bounded for CI by the Hypothesis profile of conftest.py (``HYPOTHESIS_PROFILE=deep`` runs
more). Every exception the library may raise is listed below as an explicit, justified condition;
anything else is a failure.
"""

from __future__ import annotations

import json
import math

from hypothesis import given
from hypothesis import strategies as st

import vramplan
from vramplan.arch.lookup import registry
from vramplan.breakdown import RUNTIME_CATEGORIES
from vramplan.errors import VramplanError
from vramplan.plan import rank_breakpoints
from vramplan.scenario import MAX_TOKENS, Scenario, ScenarioError

ARCHS = [e.arch() for e in registry()]

fields = st.fixed_dictionaries({
    "rank": st.integers(1, 300), "seq": st.integers(1, 70_000), "batch": st.integers(1, 16),
    "quant": st.sampled_from(["nf4", "fp4", "int8", "none"]), "double_quant": st.booleans(),
    "blocksize": st.sampled_from([32, 64, 128, 256, 4096]), "dtype": st.sampled_from(["bf16", "fp16", "fp32"]),
    "targets": st.sampled_from([("all-linear",), ("q_proj", "v_proj"), ("qkv_proj",), ("down_proj",),
                                ("o_proj", "lm_head"), ("gate",), ("shared_expert_gate",)]),
    "lora_dropout": st.sampled_from([0.0, 0.05, 0.5]), "full": st.booleans(), "grad_checkpointing": st.booleans(),
    "attn": st.sampled_from(["eager", "sdpa", "flash2"]),
    "optimizer": st.sampled_from(["adamw", "adamw8bit", "paged_adamw", "paged_adamw8bit", "sgd"]),
    "recipe": st.sampled_from(["hf-peft", "trl", "plain"]), "autocast": st.booleans(),
    "adapter_dtype": st.sampled_from(["fp32", "bf16", "fp16"]), "loss": st.sampled_from(["hf", "legacy"]),
    "hold_logits": st.sampled_from(["none", "step", "loop"]), "bnb_keeps_input": st.booleans(),
})


def _refused_scenario(kw: dict) -> bool:
    """The documented Scenario refusals (``Scenario.__post_init__``), each a run that cannot exist."""
    full_lora = kw["full"] and (kw["rank"] != 8 or kw["targets"] != ("all-linear",) or kw["lora_dropout"] != 0.05
                                or kw["adapter_dtype"] != "fp32")
    return any((
        kw["seq"] * kw["batch"] > MAX_TOKENS,                                # beyond any real batch
        kw["full"] and kw["quant"] != "none",                                # full FT cannot train a quantized base
        kw["adapter_dtype"] not in ("fp32", kw["dtype"]),                    # peft keeps fp32 or the compute dtype
        kw["bnb_keeps_input"] and kw["quant"] not in ("nf4", "fp4"),         # a 4-bit-matmul behaviour
        full_lora,                                                           # LoRA fields mean nothing with --full
    ))


def _unknown_target(arch, kw: dict) -> bool:
    """A target name the architecture does not have (peft raises the same for it)."""
    if kw["full"]:
        return False
    refused = set(arch.family.lora_refused) & set(arch.linear_names())  # peft refuses them (Mamba's out_proj)
    if kw["targets"] == ("all-linear",):
        return bool(refused)
    if refused & set(kw["targets"]):
        return True
    names = set(arch.linear_names()) | {"lm_head"} | set(arch.family.expert_lora_targets if arch.is_moe else ())
    return any(t not in names for t in kw["targets"])


def _price(arch, kw: dict):
    """The breakdown, or None where an explicit condition above says the library must refuse."""
    try:
        sc = Scenario(**kw)
    except ScenarioError:
        assert _refused_scenario(kw), kw
        return None
    assert not _refused_scenario(kw), kw
    try:
        return vramplan.estimate(arch, sc)
    except VramplanError as e:
        assert _unknown_target(arch, kw), (kw, str(e))
        return None


@given(kw=fields, i=st.integers(0, len(ARCHS) - 1))
def test_estimate_never_crashes_and_every_term_is_a_sane_int(kw, i):
    b = _price(ARCHS[i], kw)
    if b is None:
        return
    for c in b.components:
        assert isinstance(c.bytes, int) and not isinstance(c.bytes, bool) and c.bytes >= 0, c
    tensors = sum(c.bytes for c in b.components if c.category not in RUNTIME_CATEGORIES)
    assert tensors == b.allocated_peak_bytes <= b.reserved_peak_bytes <= b.total_bytes
    assert b.upper is not None and b.upper.total >= b.total_bytes
    text = json.dumps(b.to_dict(), allow_nan=False)  # --json is always valid JSON
    assert "NaN" not in text and all(math.isfinite(v) for v in b.extra["phases"].values())


@given(kw=fields, i=st.integers(0, len(ARCHS) - 1), field=st.sampled_from(["seq", "batch", "rank"]),
       step=st.integers(1, 997))
def test_more_tokens_or_rank_never_needs_less(kw, i, field, step):
    """Monotone in seq and batch always. In the rank too, except where a LoRA tensor crosses an
    optimizer's state-layout threshold between the two ranks (``plan.rank_breakpoints``: bitsandbytes
    keeps small tensors' 8-bit state in 32 bits and pages only large ones), which bitsandbytes really
    does and the planner's rank search accounts for."""
    arch = ARCHS[i]
    lo_b = _price(arch, kw)
    hi_kw = dict(kw, **{field: kw[field] + step})
    hi_b = _price(arch, hi_kw) if lo_b is not None else None
    if hi_b is None:
        return
    if field == "rank":
        lo, hi = Scenario(**kw), Scenario(**hi_kw)
        if any(lo.rank < r <= hi.rank for r in rank_breakpoints(arch, lo)):
            return
    assert hi_b.total_bytes >= lo_b.total_bytes
    assert hi_b.allocated_peak_bytes >= lo_b.allocated_peak_bytes

"""ZeRO-3's gathered parameters (``vramplan.parallel.zero3_schedule``): the coordinator replay on a
hand-derived case, and ours vs theirs: the module order and DeepSpeed 0.19.8's own
``PartitionedParameterCoordinator``, event by event, on tiny models under the fake process group."""

from __future__ import annotations

import pytest

from vramplan.arch.lookup import resolve
from vramplan.arch.spec import Arch
from vramplan.parallel import zero3_schedule as zs
from vramplan.scenario import Scenario

W16 = dict(linear=2, embeddings=2, norms=2, lora=2, bias=2)


def _case():
    """Parameters a (100 elements), b (200), c (50, persistent); modules m0 = [a], m1 = [b, c]; the step
    fetches and releases m0, m1, then m0 again (its backward)."""
    params = [zs.Param(100, 2, False, True), zs.Param(200, 2, False, False), zs.Param(50, 2, True, False)]
    ev = [zs.Event("F", 0, True, (0,)), zs.Event("R", 0, True, (0,)), zs.Event("F", 1, True, (1, 2)),
          zs.Event("R", 1, True, (1, 2)), zs.Event("F", 0, False, (0,)), zs.Event("R", 0, False, (0,))]
    return params, ev


def test_replay_by_hand_reuse_keeps():
    """max_live 250, bucket 150, reuse distance 1e9. Step 0 (fetch m0): a gathered (100), its queue entry
    popped, prefetch limit min(250 − 100, 150) = 150: b popped and gathered (300). Release m0 at step 1:
    a is used again at step 2, within the reuse distance: kept. Fetch m1 (step 1): limit 250 − 300 < 0,
    nothing prefetched. Release m1 at step 2: b not used ahead: freed (100). Fetch m0 backward, release
    at step 3: nothing ahead, a freed (0). Bytes: each gathered alone, padded to ⌈n/2⌉·2 elements of 2 B,
    one 512 B block each."""
    params, ev = _case()
    n, b, _ = zs.simulate(params, ev, world=2, max_live=250, bucket=150)
    assert n == [300, 300, 300, 100, 100, 0]
    assert b == [1024, 1024, 1024, 512, 512, 0]


def test_replay_by_hand_distance_frees():
    """The same with reuse distance 150: releasing m0 at step 1 walks m1 only (100 + 250 elements from
    step 1 pass 150 after it), so a is freed (200); fetching m1, the limit min(250 − 200, 150) = 50 pops
    a's backward entry and gathers it again (300); a is then already fetched for step 2."""
    params, ev = _case()
    n, _, _ = zs.simulate(params, ev, world=2, max_live=250, bucket=150, max_reuse=150)
    assert n == [300, 200, 300, 100, 100, 0]


def test_forward_event_count_by_hand():
    """A LoRA decoder layer with all seven linears adapted: the layer, two norms (F + R each), the
    attention (F + R) and the MLP (F + R), the activation (F + R), and per linear 10 events (the LoRA
    wrapper, base_layer, lora_dropout, lora_A, lora_B: F + R each): 2 + 4 + 2 + 2 + 2 + 70 = 82. Around
    the layers: 4 model fetches, the embedding and the rotary embedding (2 + 2), the final norm (2), the
    decoder model's release (1), lm_head (2), the 3 outer releases: 16."""
    a = resolve("debug")
    m = zs.model_spec(a, Scenario(gpus=2, strategy="zero3", quant="none"), W16)
    _, ev, marks, _ = zs.schedule(m)
    assert marks["forward"][1] + 1 == 16 + 82 * a.num_layers


def test_llama_3_2_1b_keeps_layers_4_to_15():
    """Llama-3.2-1B LoRA (bf16, all-linear r 8), 2 ranks, DeepSpeed's defaults: the coordinator,
    instrumented on a whole-model fake trace in this project (issue 16, session M: release_sub_module
    logged over its 1,967 module fetches), released layers 0-3 after their forward and kept 4-15."""
    a = resolve("meta-llama/Llama-3.2-1B")
    s = Scenario(gpus=2, strategy="zero3", quant="none")
    m = zs.model_spec(a, s, W16)
    params, ev, marks, layers = zs.schedule(m)
    assert sum(e.kind == "F" for e in ev) == 1967
    _, _, at_loss = zs.simulate(params, ev, world=2, max_live=10 ** 9, bucket=int(0.9 * 2048 ** 2),
                                probe=marks["forward"][1])
    assert [all(at_loss[p] for p in ps) for ps in layers] == [False] * 4 + [True] * 12


def test_other_layouts_are_not_derived():
    assert zs.model_spec(resolve("debug-moe"), Scenario(gpus=2, strategy="zero3"), W16) is None


# ------------------------------------------------------------------------------------ ours vs DeepSpeed's
TINY_QWEN3 = {"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "hidden_size": 64,
              "intermediate_size": 128, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
              "num_hidden_layers": 2, "vocab_size": 512, "tie_word_embeddings": True, "rms_norm_eps": 1e-6,
              "rope_theta": 10000.0, "max_position_embeddings": 2048, "attention_bias": False,
              "hidden_act": "silu", "torch_dtype": "bfloat16"}


def _arch(name: str, layers: int) -> Arch:
    if name == "tiny-qwen3":
        return Arch.from_config({**TINY_QWEN3, "num_hidden_layers": layers}, name=name)
    a = resolve(name)
    return Arch.from_config({**a.config, "num_hidden_layers": layers}, name=a.name)


CASES = {  # arch, layers, world, scenario fields, stage3_max_reuse_distance
    "lora-3": ("debug", 3, 2, dict(quant="none"), None),
    "qlora-6-live60k": ("debug", 6, 2, dict(stage3_max_live_parameters=60_000), None),
    "full-5-N3-live90k": ("debug", 5, 3, dict(quant="none", full=True, stage3_max_live_parameters=90_000), None),
    "lora-4-reuse20k": ("debug", 4, 2, dict(quant="none", stage3_max_live_parameters=150_000), 20_000),
    "qwen3-lora": ("tiny-qwen3", 2, 2, dict(quant="none"), None),
    "qlora-4-reentrant-live60k": ("debug", 4, 2, dict(reentrant=True, stage3_max_live_parameters=60_000), None),
    "lora-4-reentrant-live100k": ("debug", 4, 2, dict(quant="none", reentrant=True, stage3_max_live_parameters=100_000),
                                  None),
    "qwen3-lora-no-checkpointing": ("tiny-qwen3", 2, 2, dict(quant="none", grad_checkpointing=False), None),
    "qwen3-full-no-checkpointing": ("tiny-qwen3", 2, 4, dict(quant="none", full=True, grad_checkpointing=False), None),
}


def _record(monkeypatch, arch: Arch, s: Scenario, reuse: int | None) -> list[tuple]:
    """DeepSpeed's coordinator on the fake trace of two steps: per fetch and release of the second (the
    first with a complete module trace): kind, forward, the parameters (numel, persistent, trainable)
    and ``n_available`` after it."""
    from deepspeed.runtime.zero import partitioned_param_coordinator as ppc

    from vramplan.hf import interventions
    from vramplan.parallel import zero_torch
    from vramplan.trace.run import trace_run

    C = ppc.PartitionedParameterCoordinator
    fetch, release, reset = C.fetch_sub_module, C.release_sub_module, C.reset_step
    resets, out = [0], []

    def params(sub):
        return tuple(sorted((p.ds_numel, bool(p.ds_persist), bool(p.requires_grad))
                            for p in ppc.iter_params(sub, recurse=ppc.z3_leaf_module(sub))))

    def avail(self):
        return getattr(self, "_PartitionedParameterCoordinator__n_available_params")

    def on_fetch(self, sub, forward):
        fetch(self, sub, forward)
        if resets[0] == 2:
            out.append(("F", bool(forward), params(sub), avail(self)))

    def on_release(self, sub, forward=False):
        release(self, sub, forward)
        if resets[0] == 2:
            out.append(("R", bool(forward), params(sub), avail(self)))

    def on_reset(self):
        reset(self)
        resets[0] += 1

    monkeypatch.setattr(C, "fetch_sub_module", on_fetch)
    monkeypatch.setattr(C, "release_sub_module", on_release)
    monkeypatch.setattr(C, "reset_step", on_reset)
    if reuse is not None:
        config = zero_torch.ds_config

        def with_reuse(*args, **kw):
            c = config(*args, **kw)
            c["zero_optimization"]["stage3_max_reuse_distance"] = reuse
            return c

        monkeypatch.setattr(zero_torch, "ds_config", with_reuse)
    with interventions.quiet_frameworks():
        trace_run(arch, s, steps=3, fake=True, device="cpu")
    return out


@pytest.mark.torch
@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_schedule_and_replay_equal_deepspeeds_coordinator(case, monkeypatch):
    pytest.importorskip("torch")
    pytest.importorskip("deepspeed")
    name, layers, world, fields, reuse = CASES[case]
    arch = _arch(name, layers)
    s = Scenario(gpus=world, strategy="zero3", seq=64, **fields)
    theirs = _record(monkeypatch, arch, s, reuse)
    m = zs.model_spec(arch, s, W16)
    params, ev, _, _ = zs.schedule(m)
    ours = [(e.kind, e.forward, tuple(sorted((params[p].numel, params[p].persist, params[p].trainable)
                                             for p in e.params))) for e in ev]
    assert ours == [t[:3] for t in theirs]
    bucket = s.stage3_prefetch_bucket_size or int(0.9 * arch.hidden_size ** 2)
    n, _, _ = zs.simulate(params, ev, world=world, max_live=s.stage3_max_live_parameters, bucket=bucket,
                          max_reuse=reuse or zs.MAX_REUSE_DISTANCE)
    assert n == [t[3] for t in theirs]

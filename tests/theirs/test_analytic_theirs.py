"""Ours vs theirs: analytic byte counts against bitsandbytes and peft themselves (CPU, no network)."""

from __future__ import annotations

import pytest

pytest.importorskip("bitsandbytes")
torch = pytest.importorskip("torch")

from vramplan.analytic import adapters as ad  # noqa: E402
from vramplan.analytic import optimizer as opt  # noqa: E402
from vramplan.analytic import weights as wt  # noqa: E402
from vramplan.scenario import Optim, Scenario  # noqa: E402

pytestmark = pytest.mark.torch


def _qs_bytes(qs) -> tuple[int, int]:
    """(per-tensor bytes excluding the nested code, nested code bytes) of a bitsandbytes QuantState."""
    own = qs.absmax.nbytes + qs.code.nbytes
    shared = 0
    if qs.nested:
        own += qs.state2.absmax.nbytes + qs.offset.nbytes
        shared = qs.state2.code.nbytes
    return own, shared


@pytest.mark.parametrize("shape", [(256, 512), (1024, 320), (64, 64 * 257)])
@pytest.mark.parametrize("dq", [True, False])
@pytest.mark.parametrize("blocksize", [64, 128])
@pytest.mark.parametrize("qt", ["nf4", "fp4"])
def test_4bit_bytes_match_bitsandbytes(shape, dq, blocksize, qt):
    import bitsandbytes.functional as F

    w = torch.randn(*shape, dtype=torch.bfloat16)
    packed, qs = F.quantize_4bit(w, blocksize=blocksize, compress_statistics=dq, quant_type=qt)
    n = w.numel()
    assert packed.nbytes == wt.packed_4bit_bytes(n)
    own, nested_code = _qs_bytes(qs)
    assert own == wt.quant_state_4bit_bytes(n, blocksize, dq)
    assert nested_code == wt.nested_code_bytes(1, dq)
    if dq:  # every QuantState holds its own copy of the nested code (quantize_blockwise: copy=True)
        _, qs2 = F.quantize_4bit(w, blocksize=blocksize, compress_statistics=True, quant_type=qt)
        assert qs2.state2.code.data_ptr() != qs.state2.code.data_ptr()


def test_bits_per_param():
    """4.5000 bits/param without double quant, 4.1270 with it (blocksize 64), as the QLoRA paper says."""
    n = 4096 * 4096
    bits_nodq = 8 * (wt.packed_4bit_bytes(n) + wt.quant_state_4bit_bytes(n, 64, False)) / n
    bits_dq = 8 * (wt.packed_4bit_bytes(n) + wt.quant_state_4bit_bytes(n, 64, True)) / n
    assert round(bits_nodq, 4) == 4.5000
    assert round(bits_dq, 4) == 4.1270


def test_int8_bytes_match_bitsandbytes():
    import bitsandbytes.functional as F

    w = torch.randn(384, 256, dtype=torch.float16)
    cb, scb, _ = F.int8_vectorwise_quant(w)
    assert (cb.nbytes, scb.nbytes) == wt.int8_weight_bytes(256, 384)


@pytest.mark.parametrize("optim", [Optim.ADAMW8BIT, Optim.PAGED_ADAMW8BIT, Optim.PAGED_ADAMW])
def test_8bit_and_paged_optimizer_state_match_bitsandbytes(optim):
    import bitsandbytes as bnb

    sizes = [1000, 4096, 5000, 70_000, 120_000]
    params = [torch.nn.Parameter(torch.randn(n)) for n in sizes]
    cls = {Optim.ADAMW8BIT: bnb.optim.AdamW8bit, Optim.PAGED_ADAMW8BIT: bnb.optim.PagedAdamW8bit,
           Optim.PAGED_ADAMW: bnb.optim.PagedAdamW}[optim]
    o = cls(params, lr=1e-3)
    for p in params:
        p.grad = torch.randn_like(p)
    try:
        o.step()
    except Exception as e:  # pragma: no cover - depends on the CPU build of bitsandbytes
        pytest.skip(f"bitsandbytes optimizer cannot step on CPU here: {e}")
    qmaps = {id(o.name2qmap[k]) for k in getattr(o, "name2qmap", {})}
    device = managed = 0
    for p in params:
        for k, v in o.state[p].items():
            if not torch.is_tensor(v) or id(v) in qmaps or k.startswith("qmap") or v.numel() <= 1:
                continue
            # paged buffers: bitsandbytes marks them with ``is_paged``
            if getattr(v, "is_paged", False):
                managed += v.nbytes
            else:
                device += v.nbytes
    ours = [(n, 1) for n in sizes]
    if optim.paged:
        # on CPU bitsandbytes falls back to unpaged buffers: the bytes must match in total, and the
        # split rule (>= 1e5 elements paged) is the one in ``get_state_buffer``'s source.
        import inspect

        ours_dev, ours_managed = opt.paged_split_bytes(optim, ours)
        assert device + managed == ours_dev + ours_managed
        assert ours_managed == sum(c * (2 if optim.eight_bit else 8) * n for n, c in ours if n >= 100_000)
        assert "1e5" in inspect.getsource(bnb.optim.optimizer.Optimizer8bit.get_state_buffer)
    else:
        assert device == opt.optimizer_state_bytes(optim, ours)


@pytest.mark.parametrize("model,targets", [
    ("Qwen3-14B", ("all-linear",)), ("Qwen3-14B", ("q_proj", "v_proj")), ("phi-4", ("all-linear",)),
    ("Qwen3-30B-A3B", ("all-linear",)), ("Qwen3-30B-A3B", ("q_proj", "gate_proj", "up_proj")),
    ("Qwen3-30B-A3B", ("down_proj", "gate")), ("Qwen1.5-MoE-A2.7B", ("all-linear",)),
    ("Mixtral-8x7B-v0.1", ("all-linear",)), ("gemma-2-2b", ("all-linear",)),
])
def test_lora_params_match_peft(model, targets):
    """Trainable parameters of the real peft model (meta device, 2 layers) equal ours."""
    from vramplan.arch import resolve
    from vramplan.arch.spec import Arch
    from vramplan.hf.build import build_model

    a = resolve(model)
    cfg = dict(a.config, num_hidden_layers=2)
    a2 = Arch.from_config(cfg, name=model)
    s = Scenario(rank=8, targets=targets, lora_dropout=0.0, attn="eager" if a.attn_logit_softcapping else "sdpa")
    m = build_model(a2, s)
    theirs = sum(p.numel() for p in m.parameters() if p.requires_grad)
    lins = ad.target_linears(a2, s.targets, s.rank)
    ours = sum(n * c for n, c in ad.lora_tensor_sizes(lins, s.rank) + ad.expert_lora_tensors(a2, s.targets, s.rank))
    assert ours == theirs

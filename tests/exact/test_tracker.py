"""LiveTensorTracker: exact storage bytes with the caching allocator's 512-byte rounding."""

import gc

import pytest

from vramplan.hf.tracker import ALLOCATOR_ROUND, round_up

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch

from vramplan.hf.tracker import LiveTensorTracker  # noqa: E402


def test_round_up_golden():
    assert ALLOCATOR_ROUND == 512
    assert round_up(0) == 0
    assert round_up(1) == 512
    assert round_up(512) == 512
    assert round_up(513) == 1024
    assert round_up(4000) == 4096


def _program(tr):
    """1000 fp32 (4000 B -> 4096), a copy, a view of it (no new bytes), then frees."""
    a = torch.ones(1000)
    b = a * 2
    c = b.view(10, 100)
    assert tr.current_bytes == 2 * 4096
    del b
    gc.collect()
    assert tr.current_bytes == 2 * 4096, "the view keeps the storage alive"
    del c
    gc.collect()
    assert tr.current_bytes == 4096
    tr.label = "logits"
    d = torch.empty(10, dtype=torch.bfloat16)  # 20 B -> 512
    assert tr.current_bytes == 4096 + 512
    return a, d


@pytest.mark.parametrize("fake", [False, True])
def test_counts_views_once_frees_and_peaks(fake):
    from torch._subclasses.fake_tensor import FakeTensorMode

    ctx = FakeTensorMode() if fake else torch.no_grad()
    with ctx:
        with LiveTensorTracker(label="activations") as tr:
            keep = _program(tr)
    assert tr.peak_bytes == 2 * 4096
    assert tr.peak_by_category == {"activations": 2 * 4096}
    assert tr.live_by_category() == {"activations": 4096, "logits": 512}
    del keep
    gc.collect()
    assert tr.current_bytes == 0


def test_register_retag_and_reset_peak():
    w = torch.empty(300, dtype=torch.uint8)  # 300 B -> 512
    view = w[:10]
    with LiveTensorTracker(label="temporary") as tr:
        tr.register([w, view], "weights/4bit")
        assert tr.current_bytes == 512
        g = torch.zeros(256)  # 1024 B
        tr.retag(g, "gradients/adapter")
        assert tr.live_by_category() == {"weights/4bit": 512, "gradients/adapter": 1024}
        tr.reset_peak()
        assert tr.peak_bytes == 1536
        assert sum(tr.peak_by_category.values()) == tr.peak_bytes
        del g
        gc.collect()
        t = torch.empty(10)
        assert tr.peak_bytes == 1536 and tr.current_bytes == 1024
        del t


def test_backward_allocations_are_seen():
    with LiveTensorTracker(label="activations") as tr:
        x = torch.randn(1024, requires_grad=True)  # 4096 B
        y = (x * x).sum()
        tr.label = "temporary"
        y.backward()
        assert x.grad is not None
        # x, y (4 B -> 512) and x.grad (4096) are alive; x*x was freed after the sum's backward
        assert tr.current_bytes == 4096 + 512 + 4096
    assert tr.peak_bytes >= tr.current_bytes


def test_uncounted_categories_stay_out_of_the_total():
    with LiveTensorTracker(label="activations") as tr:
        a = torch.empty(1024)  # 4096 B
        m = torch.empty(2048)  # 8192 B
        tr.retag(m, "managed/paged_optimizer")
        assert tr.current_bytes == 4096
        assert tr.live_by_category()["managed/paged_optimizer"] == 8192
        del m
        gc.collect()
        assert tr.live_by_category().get("managed/paged_optimizer", 0) == 0
        assert tr.current_bytes == 4096
        del a


def test_cuda_gemm_4bit_transient_is_counted_inside_the_op():
    """bitsandbytes' CUDA gemm_4bit dequantizes the whole weight inside the op for > 1536 rows: the
    tracker counts it (plus the two fp32 nested-absmax temporaries) for the op's duration."""
    bnb_f = pytest.importorskip("bitsandbytes.functional")
    import bitsandbytes as bnb

    from vramplan.hf.interventions import CUDA_CUSTOM_MAX_M, gemm_4bit_transient

    w = torch.randn(128, 256, dtype=torch.bfloat16)
    packed, qs = bnb_f.quantize_4bit(w, blocksize=64, compress_statistics=True, quant_type="nf4")
    absmax_numel = qs.absmax.numel()  # 128 * 256 / 64 = 512 uint8 after double quantization
    assert absmax_numel == 512
    for rows, expect_extra in ((CUDA_CUSTOM_MAX_M, 0), (CUDA_CUSTOM_MAX_M + 1, 128 * 256 * 2 + 2 * 4 * 512)):
        x = torch.randn(rows, 256, dtype=torch.bfloat16)
        with LiveTensorTracker(label="activations") as tr:
            tr.transient = gemm_4bit_transient
            tr.register([packed, x, qs.absmax, qs.state2.absmax, qs.state2.code, qs.code, qs.offset], "weights")
            tr.reset_peak()
            base = tr.current_bytes
            y = bnb.matmul_4bit(x, packed.t(), quant_state=qs)
            out = round_up(rows * 128 * 2)
            assert tr.current_bytes == base + out
            assert tr.peak_bytes == base + out + expect_extra
            assert tr.live_by_category().get("temporary/fused_dequant", 0) == 0
        del y

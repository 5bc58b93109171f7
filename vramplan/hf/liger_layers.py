"""Stand-ins for Liger's layer kernels (``interventions`` item 25): RMSNorm, SwiGLU and RoPE.

liger-kernel 0.8.5's ``LigerRMSNormFunction`` (``ops/rms_norm.py``), ``LigerSiLUMulFunction``
(``ops/swiglu.py``) and ``LigerRopeFunction`` (``ops/rope.py``) are Triton; the trace cannot run
them on CPU. Each stand-in below is an autograd function that saves exactly the tensors the Liger
function saves, allocates the tensors its Python driver allocates (outputs, and where Liger writes a
gradient into an existing buffer, nothing), returns the same dtype, and computes the values with
torch math in row chunks (``_CHUNKS``) so that torch's temporaries stay a small fraction of one
activation (Triton keeps them in registers); on fake tensors (the trace) the value math is left out,
as ``vramplan.hf.fused_losses`` leaves out each Triton launch. They are patched in the way
``apply_liger_kernel_to_llama`` / ``_qwen3`` (``transformers/monkey_patch.py`` L259-323, L1817-1873)
patches an instantiated model: each RMSNorm's ``forward`` rebound (``_patch_rms_norm_module``), each
dense MLP's ``forward`` rebound to ``LigerSwiGLUMLP.forward`` (``_patch_swiglu_module``), and the
modeling module's ``apply_rotary_pos_emb`` replaced (module-global: a context manager here).

What each saves (per token; c the tensors' own dtype):
- RMSNorm: ``save_for_backward(X, W, RSTD)``: the input itself (``X.view(-1, dim)``) and one fp32 rstd
  per row (casting mode "llama", Liger's default for Llama/Qwen3). Output ``Y`` in ``X.dtype`` (not
  promoted to an fp32 weight's dtype). Backward: ``dX`` written into ``dY`` (``in_place=True``); an fp32
  ``(sm_count, H)`` partial dW only when the weight trains.
- SwiGLU: ``save_for_backward(a, b)`` (gate and up); output ``c = empty_like(a)``. Backward writes da
  and db into a and b.
- RoPE: ``save_for_backward(cos, sin)``; q and k rotated in place (their ``transpose(1, 2).contiguous()``,
  a no-op on the projections' layout), the same in backward on ``dq`` / ``dk``. Like Liger's, the stand-in
  returns views of its inputs without ``mark_dirty``; on real CPU tensors torch 2.x then passes the
  gradient of those views straight through (checked: the q/k gradients equal the incoming ones), so the
  RoPE stand-in is right for memory (what the trace counts) but not for gradient values.
"""

from __future__ import annotations

import contextlib
import sys
import types
from collections.abc import Iterator
from typing import Any

_CHUNKS = 64
"""Row chunks the stand-ins compute their values in (torch temporaries: 1/64 of a tensor at a time)."""


def _chunks(rows: int, t: Any) -> list[tuple[int, int]]:
    """Row ranges to compute ``t``'s values in; none for a fake tensor (no values, and the math's
    temporaries live in Triton's registers in the real kernel: only the driver's allocations count)."""
    from torch._subclasses.fake_tensor import is_fake

    if is_fake(t):
        return []
    step = max(1, -(-rows // _CHUNKS))
    return [(i, min(i + step, rows)) for i in range(0, rows, step)]


def _functions() -> tuple[Any, Any, Any]:
    """(RMSNorm, SiLUMul, RoPE) autograd functions, built on first use (torch imported lazily)."""
    global _FNS
    if _FNS is not None:
        return _FNS
    import torch

    def no_autocast(t: Any) -> Any:
        return torch.autocast(device_type=t.device.type, enabled=False)

    class RMSNorm(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, x: Any, w: Any, eps: float) -> Any:
            shape = x.shape
            X = x.contiguous().view(-1, shape[-1])  # ensure_contiguous, X.view(-1, dim)
            rows, H = X.shape
            Y = torch.empty((rows, H), dtype=X.dtype, device=X.device)
            RSTD = torch.empty(rows, dtype=torch.float32, device=X.device)
            with no_autocast(X), torch.no_grad():
                for i, j in _chunks(rows, X):
                    xf = X[i:j].float()
                    RSTD[i:j] = torch.rsqrt(xf.pow(2).mean(-1) + eps)
                    y = (xf * RSTD[i:j, None]).to(X.dtype)  # casting mode llama: x·rstd back to X's dtype
                    Y[i:j] = y * w if w is not None else y
            ctx.eps = eps
            ctx.shape = shape
            ctx.save_for_backward(X, w, RSTD)
            return Y.view(*shape)

        @staticmethod
        def backward(ctx: Any, dY: Any) -> Any:
            X, w, RSTD = ctx.saved_tensors
            dY = dY.contiguous().view(-1, X.shape[-1])
            rows, H = dY.shape
            needs_dw = w is not None and ctx.needs_input_grad[1]
            dW = torch.zeros((1, H), dtype=torch.float32, device=X.device) if needs_dw else None  # sm_count rows
            with no_autocast(X), torch.no_grad():
                for i, j in _chunks(rows, X):
                    g = dY[i:j].float()
                    xh = X[i:j].float() * RSTD[i:j, None]
                    if needs_dw:
                        dW += (g * xh).sum(0, keepdim=True)
                    gw = g * w.float() if w is not None else g
                    m = (gw * xh).mean(-1, keepdim=True)
                    dY[i:j] = (gw - xh * m) * RSTD[i:j, None]  # dX written into dY (in_place=True)
            return dY.view(*ctx.shape), (dW.sum(0).to(w.dtype) if needs_dw else None), None

    class SiLUMul(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, a: Any, b: Any) -> Any:
            a, b = a.contiguous(), b.contiguous()  # ensure_contiguous
            c = torch.empty_like(a)
            A, B, C = (t.view(-1, t.shape[-1]) for t in (a, b, c))
            with no_autocast(a), torch.no_grad():
                for i, j in _chunks(A.shape[0], A):
                    af = A[i:j].float()
                    C[i:j] = af * torch.sigmoid(af) * B[i:j].float()
            ctx.save_for_backward(a, b)
            return c

        @staticmethod
        def backward(ctx: Any, dc: Any) -> Any:
            a, b = ctx.saved_tensors
            dc = dc.contiguous()
            A, B, D = (t.view(-1, t.shape[-1]) for t in (a, b, dc))
            with no_autocast(a), torch.no_grad():
                for i, j in _chunks(A.shape[0], A):
                    af, bf, df = A[i:j].float(), B[i:j].float(), D[i:j].float()
                    s = torch.sigmoid(af)
                    B[i:j] = df * af * s  # db into b
                    A[i:j] = df * bf * s * (1 + af * (1 - s))  # da into a
            return a, b

    class Rope(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, q: Any, k: Any, cos: Any, sin: Any) -> Any:
            q = _rotate(q.transpose(1, 2).contiguous(), cos, sin, 1.0)
            k = _rotate(k.transpose(1, 2).contiguous(), cos, sin, 1.0)
            ctx.save_for_backward(cos, sin)
            return q.transpose(1, 2), k.transpose(1, 2)

        @staticmethod
        def backward(ctx: Any, dq: Any, dk: Any) -> Any:
            cos, sin = ctx.saved_tensors
            dq = _rotate(dq.transpose(1, 2).contiguous(), cos, sin, -1.0)
            dk = _rotate(dk.transpose(1, 2).contiguous(), cos, sin, -1.0)
            return dq.transpose(1, 2), dk.transpose(1, 2), None, None

    def _rotate(t: Any, cos: Any, sin: Any, sign: float) -> Any:
        """Rotate ``t`` (b, s, heads, hd) in place, row chunks over b·s (cos/sin: (b or 1, s, hd))."""
        b, s, nh, hd = t.shape
        half = hd // 2
        with no_autocast(t), torch.no_grad():
            for bi in range(b if _chunks(1, t) else 0):
                cs, sn = cos[bi if cos.shape[0] == b else 0], sin[bi if sin.shape[0] == b else 0]  # (s, hd)
                for i, j in _chunks(s, t):
                    x = t[bi, i:j].float()
                    rot = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
                    t[bi, i:j] = x * cs[i:j, None].float() + sign * rot * sn[i:j, None].float()
        return t

    _FNS = (RMSNorm, SiLUMul, Rope)
    return _FNS


_FNS: tuple[Any, Any, Any] | None = None


def _norm_forward(self: Any, hidden_states: Any) -> Any:
    """``LigerRMSNorm.forward`` as ``_patch_rms_norm_module`` binds it (offset 0, casting mode llama)."""
    return _functions()[0].apply(hidden_states, self.weight, self.variance_epsilon)


def _mlp_forward(self: Any, x: Any) -> Any:
    """``LigerSwiGLUMLP.forward``: ``down_proj(LigerSiLUMulFunction(gate_proj(x), up_proj(x)))``."""
    return self.down_proj(_functions()[1].apply(self.gate_proj(x), self.up_proj(x)))


def rope(q: Any, k: Any, cos: Any, sin: Any, position_ids: Any = None, unsqueeze_dim: int = 1) -> Any:
    """``liger_rotary_pos_emb`` (``transformers/rope.py``) with the stand-in function."""
    return _functions()[2].apply(q, k, cos, sin)


def _is_rms_norm(m: Any) -> bool:
    return type(m).__name__.endswith("RMSNorm") and hasattr(m, "variance_epsilon") and getattr(m, "weight", None) is not None


def _is_gated_mlp(m: Any) -> bool:
    return all(hasattr(m, n) for n in ("gate_proj", "up_proj", "down_proj", "act_fn")) and type(m).__name__.endswith("MLP")


def patch_model(model: Any, rms_norm: bool, swiglu: bool) -> tuple[int, int]:
    """Rebind the forwards of ``model``'s RMSNorms and dense gated MLPs to the stand-ins, as
    ``_patch_rms_norm_module`` / ``_patch_swiglu_module`` do (instance attributes: they die with the
    model). Returns (norms, MLPs) patched."""
    _functions()
    norms = mlps = 0
    for m in model.modules():
        if rms_norm and _is_rms_norm(m):
            m.forward = types.MethodType(_norm_forward, m)
            norms += 1
        elif swiglu and _is_gated_mlp(m):
            m.forward = types.MethodType(_mlp_forward, m)
            mlps += 1
    return norms, mlps


@contextlib.contextmanager
def rope_patched(model: Any, enabled: bool = True) -> Iterator[None]:
    """``modeling_<model>.apply_rotary_pos_emb = liger_rotary_pos_emb`` for the block, in every modeling
    module of ``model``'s attention classes (backward included: checkpointing recomputes there)."""
    if not enabled:
        yield
        return
    _functions()
    mods = {sys.modules[type(m).__module__] for m in model.modules()
            if type(m).__name__.endswith("Attention") and type(m).__module__ in sys.modules}
    mods = [mod for mod in mods if hasattr(mod, "apply_rotary_pos_emb")]
    saved = [(mod, mod.apply_rotary_pos_emb) for mod in mods]
    try:
        for mod in mods:
            mod.apply_rotary_pos_emb = rope
        yield
    finally:
        for mod, fn in saved:
            mod.apply_rotary_pos_emb = fn

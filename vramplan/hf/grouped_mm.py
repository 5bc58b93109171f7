"""``grouped_mm``'s autograd rule over transformers' fallback op: the stand-in for fused MoE experts
whose weights are not bf16 (``vramplan.hf.interventions.non_bf16_grouped_mm`` routes them here).

torch's ``_grouped_mm`` formula (``tools/autograd/derivatives.yaml``) saves the input only when the
weight needs a gradient and the weight only when the input does, and builds only the needed
gradients. transformers' fallback op (``integrations/moe.py``: ``torch.ops.transformers.
grouped_mm_fallback`` and ``grouped_mm_fallback_backward``) computes the same output, but its own
autograd would save both always and build a full E·in·out weight gradient even for frozen experts.
``GroupedMM`` computes with the fallback op and saves and differentiates as ``grouped_mm`` does.

Built lazily: torch is imported only when tracing.
"""

from __future__ import annotations

from typing import Any

_GROUPED_MM: Any = None


def grouped_mm_function() -> Any:
    """The ``torch.autograd.Function`` (built on first use)."""
    global _GROUPED_MM
    if _GROUPED_MM is None:
        _GROUPED_MM = _build()
    return _GROUPED_MM


def _build() -> Any:
    import torch

    fallback = torch.ops.transformers.grouped_mm_fallback
    fallback_backward = torch.ops.transformers.grouped_mm_fallback_backward

    class GroupedMM(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, input: Any, weight: Any, offs: Any) -> Any:
            need_x, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
            ctx.save_for_backward(input if need_w else None, weight if need_x else None, offs)
            return fallback(input, weight, offs)

        @staticmethod
        def backward(ctx: Any, grad: Any) -> Any:
            x, w, offs = ctx.saved_tensors
            need_x, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
            gx = gw = None
            if need_x and need_w:
                gx, gw = fallback_backward(x, w, offs, grad)
            elif need_w:
                # weight gradient only (the weight was not saved): the op reads the weight for its
                # shape and for the input gradient, which it also returns; a stride-0 stand-in
                # allocates nothing
                shape = (offs.shape[0], x.shape[1], grad.shape[1])
                stand_in = torch.empty((), dtype=x.dtype).expand(shape)
                gw = fallback_backward(x, stand_in, offs, grad)[1]
            elif need_x:
                gx = fallback(grad, w.transpose(-2, -1), offs)
            return gx, gw, None

    return GroupedMM

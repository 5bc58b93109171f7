"""The trace's stand-ins for the fused losses whose kernels are Triton (``Loss.LIGER``, ``CCE``, ``UNSLOTH``).

``interventions`` item 20. liger-kernel, cut-cross-entropy and unsloth_zoo drive Triton kernels from
Python; the kernels allocate nothing, their Python drivers allocate every tensor. Neither runs on CPU
(and none is a dependency of the trace), so each stand-in below is that driver transcribed, op for op
where allocation is concerned: the same tensors of the same shapes and dtypes, created and released at
the same points, with each Triton launch (and each data-dependent ``nonzero``, which fake tensors
cannot count: the label count is passed in, as item 14 does for TRL) left out. Matmuls that the driver
runs through torch run here too, under the caller's autocast, so their casts are torch's own. The
values are never right (no cross-entropy is computed); the memory is what each driver allocates on
CUDA. ``vramplan.analytic.logits`` prices the same tensors from the same sources, so the trace checks
the integration (what the model keeps alive around the loss), not the kernels' arithmetic.

Sources (line numbers of these versions):
- liger-kernel 0.8.5 ``ops/fused_linear_cross_entropy.py`` (``fused_linear_cross_entropy_forward``
  L51-404, ``LigerFusedLinearCrossEntropyFunction`` L455-600), ``transformers/model/loss_utils.py``
  (``LigerForCausalLMLoss`` L67-106), ``transformers/model/qwen3.py`` (``lce_forward``).
- cut-cross-entropy 25.1.1 / axolotl's fork (``axolotl-ai-cloud/ml-cross-entropy``): ``cce.py``
  (``LinearCrossEntropyFunction``, ``cce_linear_cross_entropy``), ``utils.py`` (``_build_flat_valids``),
  ``cce_lse_forward.py``, ``indexed_dot.py``, ``cce_backward.py``, ``transformers/utils.py`` (``apply_lce``).
- unsloth_zoo 2026.10.9 ``fused_losses/fused_linear.py`` (``_ce_impl`` L1286-1386, ``_tiled_forward``
  L1100-1186, ``_ce_backward`` L1700-1714), ``fused_losses/chunked_logprob.py``
  (``unsloth_chunked_ce_loss`` L430-457).

Torch is imported inside the functions.
"""

from __future__ import annotations

from typing import Any

from vramplan.analytic import logits as lg
from vramplan.scenario import Loss, Scenario

IGNORE = -100


def no_logits_loss(model: Any, ids: Any, labels: Any, scenario: Scenario, extra: dict[str, Any] | None = None) -> Any:
    """The forward of a model patched with a fused loss that never builds the logits (Liger's
    ``lce_forward``, axolotl's CCE ``cce_forward``, Unsloth's ``CausalLM_fast_forward``): the decoder's
    last hidden state and the lm_head weight go to the loss, the lm_head module never runs, and no
    logits are returned (``extra``: the collator's position ids / mask of a packed layout). On CPU tensors (the trace, fake or real) the stand-ins below; on a CUDA device
    (``vramplan profile``) the library's own kernel, never a stand-in."""
    import torch

    from vramplan.hf.build import TraceUnsupported

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    head = base.get_output_embeddings()
    if hasattr(head, "lora_A"):
        raise TraceUnsupported(f"loss {scenario.loss.value} passes the lm_head weight to its kernel and skips a "
                               "LoRA adapter on lm_head: leave lm_head out of the LoRA targets")
    hidden = base.model(input_ids=ids, use_cache=False, **(extra or {})).last_hidden_state
    n_valid = labels.shape[0] * max(min(scenario.kept_positions, scenario.seq - 1), 1)
    if scenario.loss is Loss.LIGER:
        k = scenario.kept_positions
        if k < scenario.seq:  # ms-swift's logits_to_keep (as build's hf-loss path); swift's patch copies the rows
            keep: Any = slice(-k, None) if ids.shape[0] > 1 else torch.arange(scenario.seq - k, scenario.seq,
                                                                               device=ids.device)
            hidden, labels = hidden[:, keep, :].contiguous(), labels[:, -k:]
    if ids.device.type == "cuda":
        return _library_loss(scenario.loss, hidden, head.weight, labels, TraceUnsupported)
    if scenario.loss is Loss.LIGER:
        return liger_loss(hidden, head.weight, labels)
    if scenario.loss is Loss.CCE:
        return cce_loss(hidden, head.weight, labels, n_valid)
    return unsloth_loss(hidden, head.weight, labels, n_valid)


def _library_loss(loss: Loss, hidden: Any, weight: Any, labels: Any, error: type) -> Any:
    """The real kernel, called as each framework's patched forward calls it (for CUDA profiles)."""
    try:
        if loss is Loss.LIGER:
            from liger_kernel.transformers.model.loss_utils import LigerForCausalLMLoss

            return LigerForCausalLMLoss(hidden_states=hidden, lm_head_weight=weight, labels=labels,
                                        hidden_size=hidden.shape[-1])
        if loss is Loss.CCE:
            from cut_cross_entropy import linear_cross_entropy

            if weight.dtype != hidden.dtype and hidden.dtype.itemsize == 4:
                hidden = hidden.to(weight.dtype)  # axolotl's apply_lce
            return linear_cross_entropy(hidden, weight, labels, shift=True)
        from unsloth_zoo.fused_losses.chunked_logprob import unsloth_chunked_ce_loss

        return unsloth_chunked_ce_loss(hidden, weight, None, labels)
    except ImportError:
        pkg = {Loss.LIGER: "liger-kernel==0.8.5", Loss.CCE: "cut-cross-entropy==25.1.1"}.get(loss, "unsloth_zoo")
        raise error(f"profiling loss {loss.value} on CUDA runs its own kernel: pip install {pkg}") from None


def _autocast() -> tuple[bool, Any]:
    """(autocast on, its dtype) as the CUDA driver would read it; the trace's CPU autocast stands for CUDA's."""
    import torch

    on = torch.is_autocast_enabled("cpu") or torch.is_autocast_enabled("cuda")
    return on, (torch.get_autocast_dtype("cpu") if on else None)


# ------------------------------------------------------------------------------------------- Liger
def liger_loss(hidden: Any, weight: Any, labels: Any) -> Any:
    """``LigerForCausalLMLoss``: labels padded by one ignored position and shifted (every b·s row is
    projected), hidden states flattened (a view), then the fused function."""
    import torch.nn.functional as F

    padded = F.pad(labels, (0, 1), value=IGNORE)
    shift_labels = padded[..., 1:].contiguous()
    H = hidden.shape[-1]
    return _Liger.apply(hidden.view(-1, H), weight, shift_labels.view(-1))


def _liger_forward(_input: Any, weight: Any, target: Any) -> tuple[Any, Any, Any]:
    """``fused_linear_cross_entropy_forward`` (reduction mean/sum, no bias, no z-loss) on CUDA."""
    import torch

    BT, H = _input.shape
    V = weight.shape[0]
    chunk = lg.liger_chunk_rows(BT, H, V)  # L103-105: inc_factor, next_power_of_2, at most BT
    num_chunks = -(-BT // chunk)
    grad_input = torch.zeros_like(_input)
    grad_weight = torch.zeros_like(weight) if weight.requires_grad else None
    loss_1d = torch.zeros(BT, dtype=torch.float32, device=_input.device)
    target_mask = target != IGNORE  # noqa: F841 - alive to the end, as in the driver
    on, dtype = _autocast()
    # _can_use_mm_out (L32-48) on a CUDA tensor, inside Function.forward (grad disabled)
    mm_out = _input.dtype == weight.dtype and (not on or _input.dtype == dtype)
    storage = torch.empty((chunk, V), dtype=_input.dtype, device=_input.device) if mm_out else None
    for i in range(num_chunks):
        a, b = i * chunk, min((i + 1) * chunk, BT)
        x = _input[a:b]
        if storage is not None:
            logits = storage[: b - a]
            torch.mm(x, weight.t(), out=logits)
        else:
            logits = x @ weight.t()
        logits = logits.contiguous()
        # liger_cross_entropy_kernel writes the logits' gradient into them in place (not run)
        grad_logits = logits
        del logits
        if storage is not None and grad_logits.dtype == grad_input.dtype:
            torch.mm(grad_logits, weight, out=grad_input[a:b])
        else:
            grad_input[a:b] = grad_logits @ weight
        if grad_weight is not None:
            # bf16/fp16 accumulator of the same dtype: addmm(out=grad_weight) in place (L349-366)
            torch.addmm(grad_weight, grad_logits.t(), x.to(grad_logits.dtype), out=grad_weight)
        del grad_logits, x
    del storage
    return torch.sum(loss_1d), grad_input, grad_weight


def _liger_function() -> Any:
    import torch

    class Liger(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, _input: Any, weight: Any, target: Any) -> Any:
            loss, grad_input, grad_weight = _liger_forward(_input, weight, target)
            ctx.save_for_backward(grad_input.detach(), grad_weight.detach() if grad_weight is not None else None)
            return loss

        @staticmethod
        def backward(ctx: Any, grad_output: Any) -> Any:
            grad_input, grad_weight = ctx.saved_tensors
            # element_mul_kernel scales both in place when grad_output != 1 (L411-452)
            return grad_input, grad_weight, None

    return Liger


class _Lazy:
    """An autograd Function class built on first use (torch is imported lazily)."""

    def __init__(self, make: Any) -> None:
        self.make, self.cls = make, None

    def apply(self, *args: Any) -> Any:
        if self.cls is None:
            self.cls = self.make()
        return self.cls.apply(*args)


_Liger = _Lazy(_liger_function)


# --------------------------------------------------------------------------------------------- CCE
def cce_loss(hidden: Any, weight: Any, labels: Any, n_valid: int) -> Any:
    """axolotl's ``apply_lce`` → ``cce_linear_cross_entropy(e, c, labels, shift=True)`` with
    ``n_valid`` label rows (what ``_build_flat_valids``' nonzero returns)."""
    import torch

    if weight.dtype in (torch.bfloat16, torch.float16) and hidden.dtype == torch.float32:
        hidden = hidden.to(weight.dtype)  # apply_lce
    e = hidden.contiguous()
    targets = labels.contiguous()
    # _build_flat_valids(targets, ignore, shift=1): bool mask, nonzero (int64 [K, ndim]), int32, sum(1)
    mask = targets[..., 1:] != IGNORE
    nz = torch.empty((n_valid, targets.ndim), dtype=torch.int64, device=e.device)
    del mask
    v32 = nz.to(torch.int32)
    del nz
    valids = v32.sum(1)
    del v32
    e = e.flatten(0, -2)
    return _CCE.apply(e, weight, targets.flatten(), valids)


def _cce_function() -> Any:
    import torch

    class CCE(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, e: Any, c: Any, targets: Any, valids: Any) -> Any:
            K, V = valids.shape[0], c.shape[0]
            lse = e.new_full((K,), -float("inf"), dtype=torch.float32)
            locks = e.new_full((-(-K // 128),), 0, dtype=torch.int32)  # uint32 in the driver, same bytes
            logit_avg = e.new_full((V,), 0.0, dtype=torch.float32)  # filter_eps is set: return_logit_avg
            del locks
            neg_dot = e.new_zeros((K,), dtype=torch.float32)
            nll = neg_dot.add_(lse)
            loss = nll.mean()
            ctx.save_for_backward(e, c, lse, targets, valids, logit_avg)
            ctx.needs = (e.requires_grad, c.requires_grad)
            return loss

        @staticmethod
        def backward(ctx: Any, grad_out: Any) -> Any:
            e, c, lse, targets, valids, logit_avg = ctx.saved_tensors
            vocab_ordering = torch.argsort(logit_avg).to(torch.int32)  # sort_logit_avg
            de = torch.zeros_like(e) if ctx.needs[0] else None
            dc = torch.zeros_like(c) if ctx.needs[1] else None
            nd = -(-c.shape[1] // 64)
            de_locks = e.new_zeros((-(-valids.shape[0] // nd), nd), dtype=torch.int32)
            dc_locks = c.new_zeros((-(-c.shape[0] // nd), nd), dtype=torch.int32)
            del vocab_ordering, de_locks, dc_locks  # the kernel ran; they die as backward returns
            return de, dc, None, None

    return CCE


_CCE = _Lazy(_cce_function)


# ----------------------------------------------------------------------------------------- Unsloth
def unsloth_loss(hidden: Any, weight: Any, labels: Any, n_keep: int) -> Any:
    """``unsloth_chunked_ce_loss``: targets shifted (the last position ignored), every b·s row passed,
    ``n_keep`` of them labelled; then ``fused_linear_cross_entropy``'s op."""
    import torch

    targets = torch.cat([labels[..., 1:], labels.new_full(labels.shape[:-1] + (1,), IGNORE)], -1).reshape(-1)
    return _Unsloth.apply(hidden.reshape(-1, hidden.shape[-1]), weight, targets, n_keep)


def _unsloth_forward(hidden: Any, weight: Any, n_keep: int) -> tuple[Any, Any]:
    """``_ce_impl`` on CUDA (sm >= 80: fp32 logits), no bias, no label smoothing, ``rows`` 0."""
    import torch

    N, H = hidden.shape
    V = weight.shape[0]
    dev = hidden.device
    f32 = dict(device=dev, dtype=torch.float32)
    on, dtype = _autocast()
    compute = dtype if on else weight.dtype  # _compute_dtype: the autocast dtype, else the head's
    c = torch.empty((), dtype=compute).element_size()
    need_w = weight.requires_grad
    idx = torch.arange(n_keep, device=dev)  # keep.nonzero().squeeze(-1): int64 K (valid rows on real tensors)
    grad_h = torch.zeros((N, H), device=dev, dtype=hidden.dtype)
    acc_w = torch.zeros(weight.shape, device=dev, dtype=weight.dtype) if need_w else None
    w = weight.to(compute)
    lp_all = torch.empty(n_keep, **f32)
    flash = lg.unsloth_flash(n_keep, V, c, need_w)

    def rows(a: int, b: int) -> Any:
        x = hidden[a:b] if n_keep == N else hidden.index_select(0, idx[a:b])
        return x.to(compute)

    if flash:
        R, tile = lg.unsloth_tile_layout(n_keep, V)  # _tiled_layout
        splits = -(-V // lg.UNSLOTH_SPLIT_COLS)
        lse = torch.empty(n_keep, **f32)
        buf = torch.empty((R, -(-tile // 8) * 8), **f32)
        acc = torch.empty((R, H), **f32)
        m_run = torch.empty(R, **f32)
        for a in range(0, n_keep, R):
            b = min(a + R, n_keep)
            h = rows(a, b)
            part = torch.empty((8, splits, b - a), **f32)
            del h, part  # the tiles are projected into buf and folded by Triton (not run)
        del buf, acc, m_run, lse
    else:
        R = min(lg.unsloth_chunk_rows(n_keep, H, V, 4), n_keep)
        buf = torch.empty((R, -(-V // 8) * 8), **f32)  # _Buffers: fp32 logits
        for a in range(0, n_keep, R):
            b = min(a + R, n_keep)
            h = rows(a, b)
            gh = torch.empty((b - a, H), **f32)  # _dz_w: mm(dz, w, out_dtype=float32)
            if n_keep == N:
                grad_h[a:b].copy_(gh)
            else:
                grad_h.index_copy_(0, idx[a:b], gh.to(grad_h.dtype))
            if acc_w is not None:  # _dz_t_h: addmm into the accumulator, dz a half view of the buffer
                torch.addmm(acc_w, buf.view(compute)[: b - a, :V].t(), h, out=acc_w)
            del h, gh
        del buf
    del w, idx, lp_all
    return torch.zeros((), **f32), grad_h, acc_w


def _unsloth_function() -> Any:
    import torch

    class Unsloth(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, hidden: Any, weight: Any, targets: Any, n_keep: int) -> Any:
            loss, grad_h, grad_w = _unsloth_forward(hidden, weight, n_keep)
            ctx.save_for_backward(grad_h, grad_w)
            return loss

        @staticmethod
        def backward(ctx: Any, grad_loss: Any) -> Any:
            grad_h, grad_w = ctx.saved_tensors
            # fused_linear_scale_rows: a new, scaled tensor of each stored gradient
            out_h = torch.empty_like(grad_h)
            out_w = torch.empty_like(grad_w) if grad_w is not None else None
            return out_h, out_w, None, None

    return Unsloth


_Unsloth = _Lazy(_unsloth_function)

"""Every place vramplan changes, replaces or stands in for third-party behaviour, in one index.

The trace runs the real transformers + peft + bitsandbytes step on CPU fake tensors; the profiler
runs it for real. Where that program would not run, or would allocate differently from the CUDA
program users run, one of the interventions below steps in. Each is scoped: a context manager
pairs the patch with its restore, or the change lives on an object of ours (a model or an
optimizer built for one run) and dies with it.

Index (what and why; the third-party source it concerns; how it is undone):

1. ``quiet_frameworks``: the frameworks' warnings and log lines are silenced while tracing (they
   concern the CPU stand-in, not the user's run). Source: ``transformers/utils/logging.py``
   (``set_verbosity``), the ``logging`` levels of transformers, peft, bitsandbytes and torch.
   Restored: levels, verbosity and the ``warnings`` filters put back on exit.
2. ``warm_bitsandbytes``: one real tiny quantization before any fake tensor exists, because the
   double-quantization code table is built with ``.tolist()`` (impossible on fake tensors) and then
   cached. Source: ``bitsandbytes/functional.py`` (``quantize_blockwise``: ``name2qmap["dynamic"]``
   from ``create_dynamic_map``). Restored: nothing to undo (the cache holds what bitsandbytes computes).
3. Fake ``Params4bit`` (``vramplan.hf.build.materialize``): under fake tensors the packed weight is a
   plain ``nn.Parameter`` carrying Params4bit's attributes, since ``Params4bit`` cannot wrap a fake
   tensor. Source: ``bitsandbytes/nn/modules.py`` (``Params4bit``). Restored: lives on our model.
4. ``sequence_layout``: ``find_packed_sequence_indices`` answers from the batch's known layout
   (``Scenario.packing``): ``None`` for one sequence per row, the sequence-index tensor for packed or
   padding-free rows (fake tensors cannot read the position ids and would always answer "packed").
   Source: ``transformers/masking_utils.py`` (``find_packed_sequence_indices``). Restored: the
   original put back after each training step.
5. ``flash2_on_sdpa``: flash-attention-2 cannot run on CPU; its wrapper's fp32 q/k/v cast, then SDPA,
   registered as an attention implementation. Source: ``transformers/integrations/flash_attention.py``,
   ``modeling_utils.py`` (``AttentionInterface.register``). Restored: the previous entry put back.
6. ``cuda_semantics`` (A): dropout through ``native_dropout`` (a bool mask, as on CUDA). Source:
   ``ATen/native/Dropout.cpp`` (``dropout``, ``is_fused_kernel_acceptable``). Restored:
   ``torch.nn.functional.dropout`` put back on exit.
7. ``cuda_semantics`` (B): the argument-less ``torch.is_autocast_enabled()`` answers the CPU autocast
   state (peft's CUDA-only check). Source: peft ``tuners/lora/bnb.py`` (``Linear4bit.forward``:
   ``requires_conversion``). Restored: ``torch.is_autocast_enabled`` put back on exit.
8. ``gemm_4bit_transient`` (C): the bytes CUDA's ``gemm_4bit`` allocates inside the op. Source:
   ``bitsandbytes/backends/cuda/ops.py`` (``_dequant_linear_fallback``). Restored: a tracker callback
   (``LiveTensorTracker.transient``), it patches nothing.
9. ``non_bf16_grouped_mm``: fp32 fused experts through transformers' fallback op with
   ``grouped_mm``'s saving rule (``vramplan.hf.grouped_mm``; the fake kernel accepts bf16 only).
   Source: ``transformers/integrations/moe.py`` (``_grouped_mm``), torch ``derivatives.yaml``
   (``_grouped_mm``). Restored: ``moe._grouped_mm`` put back on exit.
10. ``paged_as_managed``: paged optimizer state of >= 1e5 elements is tagged CUDA managed memory (on
    CPU bitsandbytes falls back to plain tensors). Source: ``bitsandbytes/optim/optimizer.py``
    (``Optimizer8bit.get_state_buffer``). Restored: the instance attribute removed on exit.
11. ``keep_4bit_inputs``: bitsandbytes < 0.43.2 saved the 4-bit matmul's input for backward (the
    presets that describe it). Source: ``bitsandbytes/autograd/_functions.py``
    (``MatMul4Bit.forward``). Restored: forward hooks on our model's layers, they die with it.
12. ``checkpointed``: each checkpointed layer's function is wrapped so that its recomputation inside
    backward is seen (the trace labels it ``activations/recompute``). Source: transformers
    ``modeling_layers.py`` (``GradientCheckpointingLayer``), ``modeling_utils.py``
    (``_set_gradient_checkpointing``). Restored: the instance attribute put back on exit.
13. ``LiveTensorTracker`` (``vramplan.hf.tracker``): counts storages at the dispatcher. Source:
    ``torch/utils/_python_dispatch.py`` (``TorchDispatchMode``). Restored: the mode is popped on
    exit; it patches nothing.
14. ``fused_head_positions``: how many label positions TRL's fused LM head scores on CUDA (its
    ``compact`` path keeps only ``labels != -100``, which fake tensors cannot count), for item D.
    Source: trl 1.16 ``trainer/utils.py`` (``add_fused_lm_head``). Restored: the context variable
    is reset on exit.
15. ``cuda_semantics`` (D): TRL's fused LM head as it runs on CUDA. Source: trl 1.16
    ``kernels/chunked_logprob.py``. Restored: the module attributes put back on exit.
16. ``rope_cache`` (``vramplan.hf.build.add_rope_cache``): the trace's torchtune program is the
    transformers model with torchtune's loss; torchtune's own modules also keep a precomputed fp32
    RoPE table per model (or per layer) as a buffer, which the transformers model lacks, so buffers
    of that shape are added to the model. Source: torchtune 0.6.1 ``modules/position_embeddings.py``,
    ``models/qwen2/_positional_embeddings.py``, ``models/*/_component_builders.py``. Restored: lives
    on our model.
17. LLaMA-Factory on vramplan's stack (``vramplan.profile.frameworks.llamafactory.adapters``, the
    ``profile --config`` runner only): its version check off, a placeholder for trl's removed value-head
    class and a stub ``torchaudio`` for its import, and its checkpoint wrapper handed the bound-method
    form of transformers 5.24's ``partial(forward, self)``. Source: llamafactory 0.9.5
    ``extras/misc.py`` (``check_version``), ``data/mm_plugin.py``, ``model/model_utils/checkpointing.py``.
    Restored: each put back on exit.
18. ``cuda_semantics`` (E) and ``softmax_backward_transient`` (F): eager attention's softmax as CUDA
    runs it (an fp16 input straight to fp32, and the backward's ``grad * output`` temporary). Source:
    ``ATen/native/SoftMax.cpp`` (``softmax``), ``ATen/native/cuda/SoftMax.cu``
    (``softmax_backward_cuda_out``). Restored: ``torch.nn.functional.softmax`` put back on exit; the
    temporary is a tracker callback.
19. ``no_cpu_repack``: the trace's evaluation forward (eval mode, no_grad) leaves the 4-bit weights
    as they are: on a CPU with AVX512-BF16 a bitsandbytes ``Linear4bit`` in eval mode whose input
    needs no gradient repacks its weight in place for the CPU kernel (and dequantizes a nested
    absmax to fp32), a new storage the tracker would count as evaluation memory that never dies; a
    CUDA input never takes that path (``x.device.type == "cpu"``). Source: bitsandbytes 0.50.2
    ``nn/modules.py`` (``Linear4bit.forward``, ``support_avx512bf16_for_cpu``), ``functional.py``
    (``_convert_weight_packed_for_cpu``). Restored: each layer's attribute put back on exit.
20. ``vramplan.hf.fused_losses``: the fused losses whose kernels are Triton (``Loss.LIGER``, ``CCE``,
    ``UNSLOTH``) stand in as their Python drivers transcribed, allocating the same tensors at the
    same points with each Triton launch and data-dependent ``nonzero`` left out (the label count is
    passed in, as item 14 does); the model's forward hands them the decoder's hidden states as the
    frameworks' patched forwards do (``fused_losses.no_logits_loss``; on a CUDA device, for profiles, the
    libraries' own kernels run instead). Source: liger-kernel 0.8.5
    ``ops/fused_linear_cross_entropy.py``, cut-cross-entropy 25.1.1 ``cce.py`` (and axolotl's fork),
    unsloth_zoo 2026.10.9 ``fused_losses/fused_linear.py``. Restored: it patches nothing (our own
    autograd functions, called by our own forward).
21. ``dora_standins``: peft's DoRA on the trace's model. Building on the meta device,
    ``DoraLinearLayer.update_layer`` cannot compute the magnitude (the column norm of the dequantized
    base weight: a meta ``Params4bit`` can be neither deep-copied nor dequantized), so on a meta base
    layer the magnitude is made as an empty ``out_features`` vector of the dtype peft's norm returns
    (the promotion of the LoRA and base dtypes; ``get_peft_model`` then casts it like A and B). In the
    step, DoRA's forward dequantizes the base weight with ``dequantize_module_weight``, which knows a
    ``Params4bit`` by its class name; item 3's stand-in is dequantized as bitsandbytes dequantizes a
    Params4bit (``bitsandbytes.functional.dequantize_4bit`` with its ``quant_state``). Source: peft
    0.21.2 ``tuners/lora/dora.py`` (``update_layer``, ``forward``), ``utils/integrations.py``
    (``dequantize_module_weight``). Restored: both module attributes put back on exit.

22. ``axolotl_lora_kernels``: axolotl 0.19's fused LoRA autograd functions run on the trace's fake
    tensors. Its attention rewrite (``patch_self_attn_lora``) is pointed at the model's own attention
    class (it would read ``base_model``'s config from the hub), then ``apply_lora_kernel_patches`` binds
    ``apply_qkv`` / ``apply_o`` / the MLP forward as in axolotl's loader. The Triton SwiGLU/GeGLU kernels
    need no stand-in: axolotl registers them as torch custom ops whose fake kernels allocate what the
    Triton ones do (``empty_like(gate)`` forward, in place backward; ``kernels/swiglu.py``). The NF4
    dequantization (``kernels/quantize.py::_ctypes_nf4_dequant``, bitsandbytes' CUDA C entry points) is
    replaced by the same two allocations without the kernel calls (the output in the compute dtype and
    the fp32 absmax scratch). Restored: the attention class's ``forward`` and the quantize function put
    back on exit; the per-module bindings live on our model.
23. ``host_offload``: transformers' offloaded checkpoints (``Scenario.offload``) on the CPU the trace
    runs on. transformers 5.24 wraps each checkpoint in ``save_on_cpu(pin_memory=True,
    device_type=...)`` (``modeling_utils.py`` L3160-3167), whose pack hook copies the saved layer input
    into a fresh pinned tensor (``torch/autograd/graph.py``, ``save_on_cpu.pack_to_cpu``) and whose
    unpack copies it back to the device. On CPU the copy is a CPU tensor like any other, and a real
    CPU run fails (no pinned allocator without an accelerator). So ``modeling_utils.save_on_cpu`` is
    replaced, for the block, by torch's own ``save_on_cpu`` built for a device module that is not
    available here (its ``is_pinnable`` branch off: the same ``empty`` + ``copy_``, unpinned), whose
    pack hook allocates its copy as ``host/pinned`` (``LiveTensorTracker.allocating``: the device never
    holds it, host memory does) and, for the CUDA program, whose unpack makes the device copy
    ``tensor.to("cuda")`` makes (on CPU ``.to`` returns the same tensor), labelled
    ``activations/offload_restore``. Restored: the module attribute put back on exit.
24. ``trl_offload``: TRL's ``OffloadActivations`` (``Offload.ACTIVATIONS``; trl 1.16
    ``models/activation_offloading.py``) on the CPU the trace runs on. Its constructor asks
    ``torch.accelerator.current_accelerator()`` (None on CPU): answered ``cpu`` while it is built, so
    its own code runs with ``torch.cpu``'s streams (no-op events) and offloads CPU tensors; its
    ``_get_unique_tensor_key`` reads ``data_ptr`` (refused by fake tensors): keyed by the storage object
    and offset instead (the same deduplication); its ``__enter__`` / ``__exit__`` flush the allocator and
    synchronize streams, which ``torch.cpu`` lacks: the state is cleared and the hooks pushed / popped as
    they do, without the flush and the sync; ``Tensor.record_stream`` (refused for a CPU stream; on CUDA
    it only delays a block's reuse) is a no-op. The pack hook's
    copies go to ``LiveTensorTracker.to_host``; for the CUDA program a tensor brought back from the host
    is a fresh device copy (on CPU ``.to("cpu")`` returns the host tensor), held in TRL's backward stash
    as the GPU tensor is; the pack hook allocates under ``host/pinned``, TRL's device clone of a view moved back. Pinned memory only under fake tensors (a real CPU run cannot pin). Restored:
    the module attributes put back on exit; the hooks live on our model.
25. ``vramplan.hf.liger_layers``: Liger's RMSNorm, SwiGLU and RoPE kernels (Triton;
    ``Scenario.liger_rms_norm`` / ``liger_swiglu`` / ``liger_rope``) as autograd stand-ins that save
    what ``LigerRMSNormFunction`` / ``LigerSiLUMulFunction`` / ``LigerRopeFunction`` save, allocate what
    their drivers allocate (gradients written into existing buffers where Liger writes them) and
    compute the values with torch math in row chunks; patched as ``apply_liger_kernel_to_llama`` /
    ``_qwen3`` patch an instantiated model. Source: liger-kernel 0.8.5 ``ops/rms_norm.py``,
    ``ops/swiglu.py``, ``ops/rope.py``, ``transformers/monkey_patch.py`` (``_patch_rms_norm_module``,
    ``_patch_swiglu_module``). Restored: the norms' and MLPs' ``forward`` are instance attributes of
    our model (they die with it); ``apply_rotary_pos_emb`` of the modeling modules is put back after
    each training step (``liger_layers.rope_patched``).
26. Generation driven step by step (``vramplan.trace.evaluation.generate``, ``Scenario.eval_new_tokens``):
    fake tensors cannot run ``model.generate``, whose checks read tensor values (``(attention_mask ==
    1).all()``, the stopping criteria's ``unfinished_sequences.max() == 0``), so the trace runs its greedy
    loop itself with transformers' own pieces (``DynamicCache(config=...)``,
    ``prepare_inputs_for_generation``, ``_update_model_kwargs_for_generation``, ``logits_to_keep=1``),
    taking the path generate takes for a batch without padding that never meets its EOS; only the prefill,
    the first and the last decode steps run, the cache, input ids and position ids resized in between to
    what the skipped steps leave. Each cache layer's ``update`` is wrapped on our cache object to label its
    bytes. Source: transformers 5.24 ``generation/utils.py`` (``generate``, ``_sample``), ``cache_utils.py``
    (``DynamicLayer.update``). Restored: the cache and its wrappers are ours and die with the loop.
27. ``cuda_semantics`` (G): sdpa with attention dropout runs the dropout-free kernel selection, as CUDA's
    flash / memory-efficient kernels take ``dropout_p`` without materializing anything (CPU's math
    fallback saves the probabilities and a mask). Source: torch ``derivatives.yaml``
    (``_scaled_dot_product_flash_attention``), ``aten/src/ATen/native/transformers/sdp_utils_cpp.cpp``.
    Restored: ``torch.nn.functional.scaled_dot_product_attention`` put back on exit.
28. ``cuda_semantics`` (H): sdpa with a value head dim other than the query's (multi-head latent
    attention) runs as CUDA's memory-efficient kernel instead of the CPU's math fallback. Source: torch
    ``sdp_utils.cpp`` (kernel selection), transformers ``integrations/sdpa_attention.py``. Restored:
    ``torch.nn.functional.scaled_dot_product_attention`` put back on exit.

Torch and the frameworks are imported inside the functions: importing this module costs nothing.

Where the CPU program allocates differently from the CUDA program
-----------------------------------------------------------------

The trace runs on CPU (fake tensors). On a CUDA device (``vramplan.device.Device.semantics`` =
``"cuda"``, the default) it emulates the CUDA behaviours below, each at the op or call that differs, so
the count is what the same program allocates on CUDA; on the CPU device it leaves the CPU program
exactly as it runs (fake-vs-real tests, CPU profiles):

A. ``cuda_semantics()``: dropout. ``aten::dropout`` (``ATen/native/Dropout.cpp``) takes the fused
   ``native_dropout`` only for CUDA inputs (``is_fused_kernel_acceptable``: ``input.is_cuda()``); on
   CPU it is the composite ``input * bernoulli_mask / (1 - p)`` whose saved mask has the input's
   dtype (2 or 4 B/element). On CUDA ``native_dropout`` saves a bool mask (1 B/element). Emulated by
   routing ``torch.nn.functional.dropout`` (training, 0 < p < 1, not in place) through
   ``torch.ops.aten.native_dropout``, whose CPU kernel also returns a bool mask.
B. ``cuda_semantics()``: peft's CPU-only cast. peft 0.21.2 ``lora/bnb.py`` (``Linear8bitLt`` /
   ``Linear4bit.forward``) sets ``requires_conversion = not torch.is_autocast_enabled()``; the
   argument-less call reads CUDA's autocast flag, False under CPU autocast, so on CPU peft casts the
   LoRA input to the fp32 adapter dtype (and the output back) even under autocast; on CUDA under
   autocast it does not. Emulated by answering the argument-less ``torch.is_autocast_enabled()``
   with the CPU autocast state that stands in for CUDA's (calls naming a device are unchanged).
   The unconditional ``self._cast_input_dtype(x, lora_A.weight.dtype)`` of plain ``lora.Linear``
   (``lora/layer.py``, unquantized bases) runs on both devices and is left alone.
C. ``gemm_4bit_transient``: bitsandbytes' in-kernel dequantization, counted in both programs.
D. ``cuda_semantics()``: TRL's fused LM head (``Loss.CHUNKED_HEAD``). On CUDA (Triton present) it
   scores only the label positions, copying their hidden states (``hidden_states[mask]``), folds
   each 4096 × 32768 logits tile in a Triton kernel that allocates nothing, and accumulates the
   gradients with ``addmm(..., out_dtype=float32)`` (no fp32 copies of the tile or the weight
   chunk). On CPU it scores every position and folds each tile with torch ops (several fp32
   tile-sized temporaries, ``a.float()`` / ``b.float()`` copies in ``_addmm_fp32``). Emulated by
   allocation-free stand-ins for ``_forward_tile``, ``_backward_tile`` and ``_addmm_fp32`` (their
   values never matter to memory) and by feeding the kernel a copy of the last
   ``fused_head_positions()`` rows (the compact path's copy), its outputs padded back to every
   position. For a batch of more than one sequence the CPU path's ``reshape`` copy of all positions
   is still alive while the kernel runs (b·(s−1)·H, compute dtype): the one excess left.
G. ``cuda_semantics()``: sdpa with a value head dim other than the query's (multi-head latent
   attention: qk_nope + qk_rope vs v_head_dim). torch 2.13 ``sdp_utils.cpp``: the CUDA flash kernel needs
   one head dim for q, k and v (``check_head_dim_size_flash``), the memory-efficient kernel only q = k
   (``check_head_dim_size_mem_efficient``), so CUDA runs ``_scaled_dot_product_efficient_attention``
   (saves q, k, v, its output and an fp32 log-sum-exp); the CPU dispatcher, without such a kernel, falls
   back to the math path that materialises the b·h·s·s probabilities. Without dropout, such calls go to
   the efficient op itself (its fake-tensor kernel; autocast's cast to the compute dtype first, as CUDA
   autocast casts sdpa; a boolean mask turned into its additive copy in q's dtype, as
   ``convert_boolean_attn_mask`` does, which the kernel saves). Source: transformers 5.24 ``integrations/sdpa_attention.py``
   (``torch.nn.functional.scaled_dot_product_attention``). Restored: the function put back on exit.
E. ``cuda_semantics()``: eager attention's fp16 softmax. ``eager_attention_forward`` calls
   ``softmax(scores, dim=-1, dtype=torch.float32)``; ATen's ``softmax`` (``ATen/native/SoftMax.cpp``)
   runs a CUDA fp16 input through ``_softmax(input, dim, half_to_float=True)`` (no fp32 copy of the
   scores, and its backward returns the fp16 gradient directly), while every other case, CPU
   included, first converts the scores to fp32 (``input.toType(dtype)``) and converts the gradient
   back afterwards; under autocast softmax is on the fp32 list, so the scores are cast first there
   too. Emulated by routing ``torch.nn.functional.softmax`` with an fp16 input and ``dtype=float32``,
   outside autocast, to ``torch._softmax(input, dim, True)`` (accepted by the fake kernels).
F. ``softmax_backward_transient``: on CUDA, ``softmax_backward_cuda_out`` (``ATen/native/cuda/SoftMax.cu``,
   torch 2.13) first forms ``Tensor tmp = grad * output`` in a temporary of the gradient's size and
   dtype and hands it to the kernel; the CPU kernel reduces in place. Counted, for the op's duration,
   as ``temporary/softmax_backward`` (a ``LiveTensorTracker.transient`` callback, with item C's).
   ``log_softmax``'s backward (the loss) has no such temporary.
G. ``cuda_semantics()``: attention dropout under sdpa (``dropout_p`` > 0: Seed-OSS trains with
   ``attention_dropout`` = 0.1). torch 2.13's CUDA flash and memory-efficient kernels apply the dropout
   inside the kernel and save only its philox seed and offset (``derivatives.yaml``
   ``_scaled_dot_product_flash_attention``: ``philox_seed``, ``philox_offset``); on CPU the flash kernel
   refuses dropout (``sdp_utils_cpp.cpp``) and the math fallback saves the b·h·s·s probabilities, a
   dropout mask and the dropped copy. Emulated by calling ``scaled_dot_product_attention`` with
   ``dropout_p=0``: the kernel the CUDA call takes, with its saved tensors (the two RNG scalars, 16 B
   per layer, are left out). The values differ (no dropout); the trace counts bytes.

An op-level trace (fake or real CPU) sees what an operator returns, not what it allocates and frees
inside. bitsandbytes 0.50's CUDA kernel for ``bitsandbytes::gemm_4bit``
(``bitsandbytes/backends/cuda/ops.py``) uses its fused 4-bit GEMM only for inputs of at most
``_gemm_4bit_custom_max_m`` = 1536 rows whose inner dimension is a multiple of the block size; past
that it runs ``_dequant_linear_fallback``, which inside the op allocates:

1. with double quantization: the fp32 absmax dequantized (``absmax_dq``), then ``absmax_dq + offset``
   (a second fp32 tensor of the same size), both alive until the op returns;
2. the whole weight dequantized to the input's dtype (``B_dq``, N x K);
3. the output of ``F.linear`` (the op's result, which the tracker counts anyway).

``gemm_4bit_transient`` returns items 1 and 2 so the tracker can count them for the op's duration.
The fused path (short inputs) allocates nothing extra. Tiny-M heuristics that may pick the fallback
for some short shapes on some GPUs are not modelled.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Any, Callable, Iterator

from vramplan.hf.tracker import round_up

#: Name under which the flash-attention-2 stand-in is registered with transformers' AttentionInterface.
FLASH2_STANDIN = "vramplan_fa2_on_sdpa"

#: ``bitsandbytes/backends/cuda/ops.py``: rows above which CUDA dequantizes then calls F.linear.
CUDA_CUSTOM_MAX_M = 1536
FUSED_DEQUANT = "temporary/fused_dequant"

#: bitsandbytes pages optimizer state only for tensors of at least this many elements
#: (``Optimizer8bit.get_state_buffer``: ``p.numel() < 1e5`` stays on the device).
PAGED_MIN_NUMEL = 100_000


@contextlib.contextmanager
def _attribute(owner: Any, name: str, value: Any) -> Iterator[None]:
    """Set ``owner.name`` to ``value`` for the block, then put the original back."""
    orig = getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, orig)


# ----------------------------------------------------------------------- the frameworks' output
@contextlib.contextmanager
def quiet_frameworks() -> Iterator[None]:
    """Silence the frameworks' warnings and log lines (ERROR and above still show)."""
    import logging
    import warnings

    loggers = [logging.getLogger(n) for n in ("transformers", "peft", "bitsandbytes", "torch")]
    levels = [lg.level for lg in loggers]
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:
        hf_logging = None
    hf_level = hf_logging.get_verbosity() if hf_logging is not None else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        if hf_logging is not None:
            hf_logging.set_verbosity_error()
        try:
            yield
        finally:
            for lg, lv in zip(loggers, levels):
                lg.setLevel(lv)
            if hf_logging is not None:
                hf_logging.set_verbosity(hf_level)


# ------------------------------------------------------------------------ fake-tensor stand-ins
def warm_bitsandbytes() -> None:
    """Fill bitsandbytes' code-table cache with one real tiny double-quantized 4-bit quantization per
    type, so that fake tensors never reach ``create_dynamic_map``'s data-dependent ``.tolist()``
    (``functional.quantize_blockwise`` builds ``name2qmap["dynamic"]`` on first use). The 8-bit
    optimizers build their own tables in ``__init__`` (``Optimizer8bit.fill_qmap``), outside fake mode."""
    import bitsandbytes.functional as F
    import torch

    for qt in ("nf4", "fp4"):
        w = torch.ones(64, 64, dtype=torch.float32)
        F.quantize_4bit(w, blocksize=64, compress_statistics=True, quant_type=qt)


@contextlib.contextmanager
def sequence_layout(packed: bool) -> Iterator[None]:
    """Tell transformers whether the batch's rows hold one sequence each or several (item 4).

    ``masking_utils.find_packed_sequence_indices`` reads the position ids' values: it returns the
    per-token sequence index (``(diff(position_ids) != 1).cumsum(-1)``), or ``None`` when every row
    is one sequence, a data-dependent ``.all()`` that fake tensors cannot answer (they would answer
    "packed", which builds a 4-D mask and makes SDPA repeat K/V). The batch's layout
    (``Scenario.packing``) is known, so the answer is given: ``None`` for one sequence per row (our
    synthetic unpacked batch, as a real run computes), the index tensor, computed as transformers
    computes it, for packed or padding-free rows."""
    import torch
    import transformers.masking_utils as mu

    def packed_indices(position_ids: Any) -> Any:
        # transformers 5.24 masking_utils.py, find_packed_sequence_indices, without the final check
        first_dummy_value = position_ids[:, :1] - 1
        position_diff = torch.diff(position_ids, prepend=first_dummy_value, dim=-1)
        return (position_diff != 1).cumsum(-1)

    with _attribute(mu, "find_packed_sequence_indices", packed_indices if packed else (lambda position_ids: None)):
        yield


@contextlib.contextmanager
def flash2_on_sdpa(enabled: bool = True) -> Iterator[None]:
    """Register the flash-attention-2 stand-in under ``FLASH2_STANDIN`` for the block (build and run
    the model inside it; no-op if not ``enabled``).

    flash-attention-2 cannot run on CPU. Its transformers wrapper casts fp32 q/k/v to the target
    dtype (the autocast dtype, else the weights' dtype) before calling the kernel; the kernel's own
    saved state (output + fp32 log-sum-exp) matches SDPA's flash kernel. So: cast, then SDPA."""
    if not enabled:
        yield
        return
    from transformers import AttentionInterface

    mapping = AttentionInterface._global_mapping
    missing = object()
    before = mapping.get(FLASH2_STANDIN, missing)
    AttentionInterface.register(FLASH2_STANDIN, _flash2_standin)
    try:
        yield
    finally:
        if before is missing:
            mapping.pop(FLASH2_STANDIN, None)
        else:
            mapping[FLASH2_STANDIN] = before


def _flash2_standin(module: Any, query: Any, key: Any, value: Any, attention_mask: Any, **kwargs: Any) -> Any:
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if query.dtype == torch.float32:
        dev = query.device.type
        if torch.is_autocast_enabled(dev):
            target = torch.get_autocast_dtype(dev)
        else:
            target = getattr(module.config, "dtype", None) or torch.bfloat16
            if target == torch.float32:
                target = torch.bfloat16
        query, key, value = query.to(target), key.to(target), value.to(target)
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


# ------------------------------------------------------------------- the CUDA program on CPU
@contextlib.contextmanager
def cuda_semantics(enabled: bool = True) -> Iterator[None]:
    """Emulate behaviours A, B, D, E and G of the module docstring while the block runs (no-op if not ``enabled``)."""
    if not enabled:
        yield
        return
    import torch
    import torch.nn.functional as F

    orig_dropout = F.dropout
    orig_autocast = torch.is_autocast_enabled

    def dropout(input: Any, p: float = 0.5, training: bool = True, inplace: bool = False) -> Any:
        if training and not inplace and 0.0 < p < 1.0 and input.numel() > 0:
            return torch.ops.aten.native_dropout(input, p, True)[0]
        return orig_dropout(input, p, training, inplace)

    def is_autocast_enabled(*args: Any, **kwargs: Any) -> bool:
        if args or kwargs:
            return orig_autocast(*args, **kwargs)
        return orig_autocast() or orig_autocast("cpu")

    orig_softmax = F.softmax

    def softmax(input: Any, dim: Any = None, _stacklevel: int = 3, dtype: Any = None) -> Any:
        # under autocast (CPU's standing in for CUDA's) softmax is an fp32-list op: the scores are cast first
        if dtype is torch.float32 and isinstance(input, torch.Tensor) and input.dtype is torch.float16 \
                and dim is not None and not orig_autocast("cpu"):
            return torch._softmax(input, dim, True)
        return orig_softmax(input, dim, _stacklevel, dtype)

    orig_sdpa = F.scaled_dot_product_attention

    def sdpa(query: Any, key: Any, value: Any, attn_mask: Any = None, dropout_p: float = 0.0,
             is_causal: bool = False, scale: Any = None, enable_gqa: bool = False) -> Any:
        # G: CUDA's flash and memory-efficient kernels take dropout_p themselves (a philox seed and offset,
        # no mask); CPU's flash kernel refuses it and the math path materializes the probabilities and a
        # mask. The dropout-free call takes the kernel the same call takes on CUDA.
        dropout_p = 0.0
        # H: a value head dim other than the query's runs CUDA's memory-efficient kernel (item 28)
        if (isinstance(value, torch.Tensor) and query.shape[-1] != value.shape[-1]
                and not enable_gqa and query.shape[-3] == key.shape[-3] == value.shape[-3]
                and (attn_mask is None or attn_mask.dtype == torch.bool)):
            if orig_autocast("cpu"):  # sdpa is on CUDA autocast's lower-precision list
                dt = torch.get_autocast_dtype("cpu")
                query, key, value = query.to(dt), key.to(dt), value.to(dt)
            bias = None
            if attn_mask is not None:  # ``convert_boolean_attn_mask``: an additive copy in q's dtype
                bias = torch.zeros(attn_mask.shape, dtype=query.dtype, device=query.device)
                bias = bias.masked_fill(attn_mask.logical_not(), float("-inf"))
                bias = bias.expand(query.shape[0], query.shape[1], query.shape[2], key.shape[2])
            return torch.ops.aten._scaled_dot_product_efficient_attention(
                query, key, value, bias, True, 0.0, is_causal and bias is None, scale=scale)[0]
        return orig_sdpa(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal,
                         scale=scale, enable_gqa=enable_gqa)

    with _attribute(F, "dropout", dropout), _attribute(torch, "is_autocast_enabled", is_autocast_enabled), \
            _attribute(F, "softmax", softmax), _attribute(F, "scaled_dot_product_attention", sdpa), \
            _trl_fused_head_on_cuda():
        yield


_FUSED_POSITIONS: "contextvars.ContextVar[int | None]" = contextvars.ContextVar("vramplan_fused_positions",
                                                                              default=None)


@contextlib.contextmanager
def fused_head_positions(n: int) -> Iterator[None]:
    """Item 14: the fused head scores ``n`` label positions on CUDA while the block runs."""
    token = _FUSED_POSITIONS.set(n)
    try:
        yield
    finally:
        _FUSED_POSITIONS.reset(token)


@contextlib.contextmanager
def _trl_fused_head_on_cuda() -> Iterator[None]:
    """Item D (inside ``cuda_semantics``): TRL's fused head with CUDA's allocations; a no-op without trl."""
    try:
        import trl.kernels.chunked_logprob as kern
        import trl.trainer.utils as tu
    except ImportError:
        yield
        return
    import torch

    real = tu._ChunkedLogProbFunction

    class Compact:
        @staticmethod
        def apply(hidden: Any, weight: Any, bias: Any, targets: Any, *rest: Any) -> Any:
            total = hidden.shape[0]
            n = min(_FUSED_POSITIONS.get() or total, total)
            outs = real.apply(hidden[total - n:].clone(), weight, bias, targets[total - n:].clone(), *rest)
            return tuple(None if x is None else torch.cat([x.new_zeros(total - n), x]) for x in outs)

    def nothing(*args: Any, **kwargs: Any) -> None:
        return None

    with _attribute(kern, "_forward_tile", nothing), _attribute(kern, "_backward_tile", nothing), \
            _attribute(kern, "_addmm_fp32", nothing), _attribute(tu, "_ChunkedLogProbFunction", Compact):
        yield


def gemm_4bit_transient(func: Any, args: tuple, kwargs: dict) -> tuple[str, int] | None:
    """Bytes the CUDA ``gemm_4bit`` allocates inside the op for these arguments (None if none):
    item C of the module docstring, as a ``LiveTensorTracker.transient`` callback."""
    import torch

    if func is not torch.ops.bitsandbytes.gemm_4bit.default:
        return None
    names = ("A", "B", "shapeB", "absmax", "blocksize", "quant_type", "bias", "absmax_8bit",
             "absmax_code", "absmax_offset")
    bound = dict(zip(names, args))
    bound.update(kwargs)
    A, shapeB, blocksize = bound["A"], bound["shapeB"], bound["blocksize"]
    K = A.shape[-1]
    M = A.numel() // K
    if M <= CUDA_CUSTOM_MAX_M and K % blocksize == 0:
        return None
    nbytes = round_up(int(shapeB[0]) * int(shapeB[1]) * A.element_size())
    absmax_8bit = bound.get("absmax_8bit")
    if absmax_8bit is not None:
        nbytes += 2 * round_up(4 * absmax_8bit.numel())
    return FUSED_DEQUANT, nbytes


SOFTMAX_BACKWARD = "temporary/softmax_backward"


def softmax_backward_transient(func: Any, args: tuple, kwargs: dict) -> tuple[str, int] | None:
    """Item F of the module docstring: CUDA's ``grad * output`` temporary inside the softmax backward
    (the gradient's size and dtype), as a ``LiveTensorTracker.transient`` callback; None for other ops."""
    import torch

    if func is not torch.ops.aten._softmax_backward_data.default:
        return None
    grad = args[0] if args else kwargs["grad_output"]
    return SOFTMAX_BACKWARD, round_up(grad.numel() * grad.element_size())


def cuda_transients(func: Any, args: tuple, kwargs: dict) -> tuple[str, int] | None:
    """Bytes a CUDA kernel allocates inside one op (items C and F), for the tracker's ``transient``."""
    return gemm_4bit_transient(func, args, kwargs) or softmax_backward_transient(func, args, kwargs)


@contextlib.contextmanager
def non_bf16_grouped_mm() -> Iterator[None]:
    """Fused MoE experts with non-bf16 weights through transformers' fallback op, saving as
    ``grouped_mm`` saves.

    transformers runs fused MoE experts through ``torch.nn.functional.grouped_mm``
    (``integrations/moe.py::_grouped_mm``, input cast to the weights' dtype). Its shape/dtype
    function (which mirrors the CUDA kernel) accepts only bf16, so after hf-peft's fp32 upcast of the
    experts the fake run would stop where real runs go on. For non-bf16 weights we compute with
    transformers' own fallback op (same output) inside ``vramplan.hf.grouped_mm.GroupedMM``, which
    saves and differentiates exactly as grouped_mm's autograd formula does."""
    try:
        import transformers.integrations.moe as moe
    except ImportError:  # pragma: no cover - older transformers
        yield
        return
    from vramplan.hf.grouped_mm import grouped_mm_function

    orig = moe._grouped_mm

    def grouped_mm(input: Any, weight: Any, offs: Any) -> Any:
        import torch

        if weight.dtype == torch.bfloat16:
            return orig(input, weight, offs)
        return grouped_mm_function().apply(input.to(weight.dtype), weight, offs)

    with _attribute(moe, "_grouped_mm", grouped_mm):
        yield


@contextlib.contextmanager
def paged_as_managed(optimizer: Any, retag: Callable[[Any, str], None]) -> Iterator[None]:
    """Paged bitsandbytes optimizers put big state tensors in CUDA managed memory, which the caching
    allocator never sees. On CPU bitsandbytes falls back to ordinary tensors; the ones it would have
    paged are passed to ``retag(tensor, "managed/paged_optimizer")`` so they leave the allocated
    total. ``optimizer.get_state_buffer`` is shadowed by an instance attribute for the block."""
    orig = optimizer.get_state_buffer

    def get_state_buffer(p: Any, dtype: Any = None) -> Any:
        import torch

        buf = orig(p, dtype=dtype if dtype is not None else torch.float32)
        if p.numel() >= PAGED_MIN_NUMEL:
            retag(buf, "managed/paged_optimizer")
        return buf

    optimizer.get_state_buffer = get_state_buffer
    try:
        yield
    finally:
        del optimizer.get_state_buffer


# ------------------------------------------------------------------ older frameworks, missing ones
def keep_4bit_inputs(model: Any) -> int:
    """Emulate bitsandbytes < 0.43.2, whose ``MatMul4Bit.forward`` saved its input ``A`` for backward
    whenever ``A`` needed a gradient (only the weight is used; 0.43.2 saves ``(None, B)``). A forward
    hook on every ``Linear4bit`` threads the output through an identity autograd node that saves the
    layer's input under the same condition and frees it when the layer's backward runs. Returns the
    number of layers hooked."""
    import bitsandbytes as bnb
    import torch

    class KeepInput(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, out: Any, x: Any) -> Any:
            if x.requires_grad:
                ctx.save_for_backward(x)
            return out.view_as(out)

        @staticmethod
        def backward(ctx: Any, grad: Any) -> Any:
            return grad, None

    def hook(module: Any, args: tuple, out: Any) -> Any:
        return KeepInput.apply(out, args[0])

    n = 0
    for m in model.modules():
        if isinstance(m, bnb.nn.Linear4bit):
            m.register_forward_hook(hook)
            n += 1
    return n


# ------------------------------------------------------------------------------ evaluation
@contextlib.contextmanager
def no_cpu_repack(model: Any) -> Iterator[None]:
    """Item 19: no in-place CPU repacking of our model's 4-bit weights while the block runs."""
    import bitsandbytes as bnb

    with contextlib.ExitStack() as stack:
        for module in model.modules():
            if isinstance(module, bnb.nn.Linear4bit) and hasattr(module, "support_avx512bf16_for_cpu"):
                stack.enter_context(_attribute(module, "support_avx512bf16_for_cpu", False))
        yield


# ------------------------------------------------------------------------------- host offload
#: Label of a tensor an offload hook copied back to the device for its backward.
RESTORED = "activations/offload_restore"


@contextlib.contextmanager
def host_offload(tracker: Any, cuda: bool) -> Iterator[None]:
    """Item 23: ``transformers.modeling_utils.save_on_cpu`` replaced for the block by torch's own
    ``save_on_cpu`` (unpinned branch: the same copy) whose pack hook allocates under ``host/pinned``
    (``tracker.allocating``: the copy is host memory from its first byte) and, when ``cuda``, whose unpack
    makes a device copy labelled ``activations/offload_restore``."""
    from vramplan.hf.tracker import HOST_PINNED

    import torch
    from torch.autograd.graph import save_on_cpu, saved_tensors_hooks
    from transformers import modeling_utils

    def offloading(pin_memory: bool = False, device_type: str = "cuda") -> Any:
        # "cuda" is unavailable on this host: torch takes its own non-pinnable branch (empty + copy_)
        hooks = save_on_cpu(pin_memory=True, device_type="cuda" if not torch.cuda.is_available() else device_type)
        pack, unpack = hooks.pack_hook, hooks.unpack_hook

        def pack_to_host(tensor: Any) -> Any:
            with tracker.allocating(HOST_PINNED):
                device, packed = pack(tensor)
            tracker.to_host(packed)
            return device, packed

        def unpack_to_device(packed: Any) -> Any:
            tensor = unpack(packed)
            if cuda:  # ``tensor.to(device)`` from host memory makes a fresh device tensor on CUDA
                tensor = tensor.clone()
                tracker.retag(tensor, RESTORED)
            return tensor

        return saved_tensors_hooks(pack_to_host, unpack_to_device)

    with _attribute(modeling_utils, "save_on_cpu", offloading):
        yield


@contextlib.contextmanager
def trl_offload(model: Any, tracker: Any, cuda: bool, pin: bool) -> Iterator[Callable[[], Any]]:
    """Item 24: yields a factory of the per-step context TRL's ``SFTTrainer.training_step`` runs in
    (``get_act_offloading_ctx_manager(model)``: forward and backward inside its saved-tensor hooks). The
    pack hook allocates under ``host/pinned``; TRL's own device clone of a strided view (kept in its
    forward stash) is moved back to the label it would have had."""
    from vramplan.hf.tracker import HOST, HOST_PINNED

    import torch
    from torch.autograd.graph import saved_tensors_hooks
    from trl.models import activation_offloading as ao

    def key(tensor: Any) -> tuple:
        return (id(tensor.untyped_storage()), tensor.storage_offset(), tensor.dtype)

    with _attribute(torch.accelerator, "current_accelerator", lambda *a, **k: torch.device("cpu")):
        ctx = ao.get_act_offloading_ctx_manager(model, use_pin_memory=pin, use_streams=True)
    pack, unpack = ctx.pack_hook, ctx.unpack_hook

    def pack_to_host(activation: Any) -> int:
        label = tracker.label
        with tracker.allocating(HOST_PINNED):
            tid = pack(activation)
        entry = ctx.tracker.get(tid)
        if entry is not None and entry[1]:  # modified: offloaded to a host tensor
            tracker.to_host(entry[0])
        stashed = ctx.fwd_stash.get(tid)
        if stashed is not None and (tracker.category_of(stashed[0]) or "").startswith(HOST + "/"):
            tracker.retag(stashed[0], label)  # TRL's clone of a view: a device tensor
        return tid

    def unpack_to_device(tid: int) -> Any:
        entry = ctx.tracker.get(tid)
        back = entry is not None and entry[1] and tid not in ctx.fwd_stash
        out = unpack(tid)
        if cuda and back:  # ``.to("cuda")`` from host memory: a fresh device tensor, stashed until the next node
            out = out.clone()
            tracker.retag(out, RESTORED)
            if tid in ctx.bwd_tensor_stash:
                ctx.bwd_tensor_stash[tid] = out
        return out

    ctx.pack_hook, ctx.unpack_hook = pack_to_host, unpack_to_device

    @contextlib.contextmanager
    def step() -> Iterator[None]:
        # OffloadActivations.__enter__ without the allocator flush torch.cpu lacks (empty_cache)
        ctx.tracker.clear()
        ctx.storage_to_tensor_id.clear()
        ctx._storage_key_by_tensor_id.clear()
        ctx.tensor_id = 0
        ctx.is_first_forward_call = ctx.is_first_backward_call = True
        ctx.bwd_tensor_stash.clear()
        ctx.bwd_ev_stash.clear()
        ctx.fwd_stash.clear()
        saved_tensors_hooks.__enter__(ctx)
        try:
            yield
        finally:  # OffloadActivations.__exit__ without the stream sync torch.cpu lacks
            ctx.bwd_tensor_stash.clear()
            ctx.bwd_ev_stash.clear()
            ctx.fwd_stash.clear()
            saved_tensors_hooks.__exit__(ctx)

    # record_stream (a tensor viewed by its backward node) only delays the block's reuse on CUDA
    with _attribute(ao, "_get_unique_tensor_key", key), \
            _attribute(torch.Tensor, "record_stream", lambda self, stream: None):
        yield step


# ------------------------------------------------------------------------ gradient checkpointing
@contextlib.contextmanager
def checkpointed(model: Any, wrap: Callable[[Callable[..., Any]], Callable[..., Any]]) -> Iterator[int]:
    """Pass the function each checkpointed decoder layer hands to ``torch.utils.checkpoint`` through
    ``wrap`` for the block; yields the number of layers wrapped (0 without checkpointing).

    transformers 5 checkpoints a layer's ``forward``, not ``__call__``
    (``modeling_layers.py::GradientCheckpointingLayer``: ``forward_with_checkpointing`` calls
    ``self._gradient_checkpointing_func(partial(forward, self, **kwargs), *args)``), so module hooks
    do not fire when backward recomputes the layer. The checkpoint function is a per-module attribute
    set by ``modeling_utils.py::_set_gradient_checkpointing``; it is replaced here on each checkpointed
    layer by one that hands ``wrap(function)`` to the original: the wrapped function runs in the
    forward and again in backward's recomputation (``torch/utils/checkpoint.py``, non-reentrant
    ``recompute_fn``; with early stop it may end by an exception)."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    layers = [m for m in model.modules()
              if isinstance(m, GradientCheckpointingLayer) and m.gradient_checkpointing]
    saved = []
    for layer in layers:
        orig = layer._gradient_checkpointing_func
        saved.append((layer, orig))
        layer._gradient_checkpointing_func = _wrapping(orig, wrap)
    try:
        yield len(layers)
    finally:
        for layer, orig in saved:
            layer._gradient_checkpointing_func = orig


def _wrapping(checkpoint: Callable[..., Any], wrap: Callable[[Callable[..., Any]], Callable[..., Any]]) -> Any:
    def checkpoint_wrapped(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return checkpoint(wrap(function), *args, **kwargs)

    return checkpoint_wrapped


@contextlib.contextmanager
def dora_standins(enabled: bool = True) -> Iterator[None]:
    """Item 18: peft's DoRA on a meta-built model and on item 3's fake ``Params4bit`` stand-in."""
    if not enabled:
        yield
        return
    import torch
    from peft.tuners.lora import dora
    from peft.utils.integrations import dequantize_module_weight

    original_update = dora.DoraLinearLayer.update_layer

    def update_layer(self: Any, *, base_layer: Any, lora_A: Any, lora_B: Any, scaling: Any,
                     place_on_cpu: bool = False) -> None:
        weight = getattr(base_layer, "weight", None)
        if weight is None or weight.device.type != "meta":
            return original_update(self, base_layer=base_layer, lora_A=lora_A, lora_B=lora_B, scaling=scaling,
                                   place_on_cpu=place_on_cpu)
        # peft: norm(dequantized W + scaling · B·A, dim=1).to(the sum's dtype), one value per output row
        base_dtype = getattr(base_layer, "compute_dtype", None) or weight.dtype
        if not base_dtype.is_floating_point:
            base_dtype = torch.float32
        dtype = torch.promote_types(lora_A.dtype, base_dtype)
        self.weight = torch.nn.Parameter(torch.empty(base_layer.out_features, dtype=dtype, device="meta"))

    def dequantize(module: Any) -> Any:
        w = getattr(module, "weight", None)
        # item 3's stand-in (under fake tensors its class reads FakeTensor, never Params4bit)
        if w is not None and type(w).__name__ not in ("Params4bit", "Int8Params") \
                and getattr(w, "bnb_quantized", False) and getattr(w, "quant_state", None) is not None:
            import bitsandbytes.functional as F

            return F.dequantize_4bit(w.data, w.quant_state)
        return dequantize_module_weight(module)

    with _attribute(dora.DoraLinearLayer, "update_layer", update_layer), \
            _attribute(dora, "dequantize_module_weight", dequantize):
        yield


@contextlib.contextmanager
def axolotl_lora_kernels(groups: tuple[str, ...]) -> Iterator[Callable[[Any], None]]:
    """Item 22: yields ``apply(model)``, which patches a peft model with axolotl 0.19's fused LoRA
    kernels for ``groups`` (``Scenario.kernel_groups``) as axolotl's loader does, on fake tensors."""
    import torch

    try:
        from axolotl.kernels import quantize
        from axolotl.monkeypatch import lora_kernels
        from axolotl.utils.dict import DictDefault
    except ImportError as e:
        from vramplan.hf.build import TraceUnsupported

        raise TraceUnsupported(f"the axolotl LoRA kernels run axolotl's own code: pip install --no-deps "
                               f"axolotl==0.19.0 triton (as .ci/frameworks does) ({e})") from None
    cfg = DictDefault(base_model="vramplan-trace", lora_qkv_kernel="qkv" in groups,
                      lora_o_kernel="o" in groups, lora_mlp_kernel="mlp" in groups)

    def dequant(W: Any, absmax: Any, code2: Any, absmax2: Any, offset: Any, blocksize: int, blocksize2: int,
                shape: Any, dtype: Any) -> Any:
        # _ctypes_nf4_dequant's two allocations and its in-place offset, without the CUDA C calls
        out = torch.empty(tuple(shape), dtype=dtype, device=W.device)
        out_absmax = torch.empty(absmax.numel(), dtype=torch.float32, device=W.device)
        out_absmax += offset
        return out.t() if W.shape[0] == 1 else out

    restore: list[tuple[Any, Any]] = []

    def apply(model: Any) -> None:
        layer = model.get_base_model().get_decoder().layers[0]
        cls = type(layer.self_attn)
        if cfg.lora_qkv_kernel or cfg.lora_o_kernel:
            restore.append((cls, cls.forward))
            with _attribute(lora_kernels, "get_attention_cls_from_config", lambda _cfg: cls):
                lora_kernels.patch_self_attn_lora(cfg)
        lora_kernels.apply_lora_kernel_patches(model, cfg)

    try:
        with _attribute(quantize, "_ctypes_nf4_dequant", dequant):
            yield apply
    finally:
        for cls, forward in restore:
            cls.forward = forward
            if "_original_forward" in cls.__dict__:
                del cls._original_forward

"""Activation offloading: what stays on the GPU and what the host holds (``Scenario.offload``).

One pure function per term, bytes inside. The kinds (``vramplan.scenario.Offload``):

- ``checkpoints``: transformers 5.24 ``activation_checkpointing_enable(offload=True)`` wraps each
  checkpoint in ``torch.autograd.graph.save_on_cpu(pin_memory=True)`` (``modeling_utils.py``
  L3160-3167). The checkpoint saves one tensor per layer, the layer input (``GradientCheckpointingLayer``
  passes only ``hidden_states`` positionally, ``modeling_layers.py``), which the pack hook copies into a
  fresh pinned tensor (torch 2.13 ``autograd/graph.py`` ``save_on_cpu.pack_to_cpu``); the unpack copies it
  back to the device (``tensor.to(device)``) when backward recomputes the layer.
- ``unsloth``: unsloth_zoo 2026.10.9 ``gradient_checkpointing.py`` (``UnslothCheckpointFunction``).
- ``activations``: TRL 1.16 ``models/activation_offloading.py`` (``OffloadActivations``).

Two facts the trace showed and the sources confirm:

1. Under LoRA, layer 0's input stays on the GPU although its copy goes to the host: peft's
   ``enable_input_require_grads`` (transformers ``modeling_utils.py``) calls ``requires_grad_(True)`` on
   the frozen embedding's output, making it a leaf that autograd's ``AccumulateGrad`` node keeps alive
   for as long as the graph exists. Full fine-tuning's embedding output has a ``grad_fn`` and is freed.
2. PyTorch's pinned-memory allocator rounds every block up to a power of two and caches freed blocks
   (torch 2.13 ``ATen/core/CachingHostAllocator.h`` ``allocate``, L300-309), so a 40 MiB hidden state
   takes 64 MiB of page-locked host memory (``pinned_block``).
"""

from __future__ import annotations

#: unsloth_zoo 2026.10.9 ``gradient_checkpointing.py`` L64-67: the host slot pool created at start-up
#: (200 slots of 128 Ki elements of the bf16 buffer dtype) and the smallest input it offloads.
UNSLOTH_INITIAL_SLOTS = 200
UNSLOTH_INITIAL_SLOT_BYTES = 128 * 1024 * 2
UNSLOTH_MIN_OFFLOAD = 2 * 1024 * 1024
#: unsloth_zoo ``DOUBLE_BUFFER_HEADROOM``: a second GPU restore buffer after the first step when more
#: than this much VRAM is free (``cuda.mem_get_info``); vramplan assumes it is (two buffers).
UNSLOTH_DOUBLE_BUFFER_FREE = 512 * 1024 * 1024
#: ``apply_unsloth_gradient_checkpointing`` (unsloth ``models/_utils.py`` L502-515): below this
#: ``max_seq_length`` Unsloth keeps plain checkpointing.
UNSLOTH_MIN_SEQ = 512
#: TRL ``OffloadActivations`` defaults: tensors below this many bytes stay on the GPU; the last
#: ``max_fwd_stash_size`` packed tensors stay alive there while their copy runs.
TRL_MIN_OFFLOAD = 1024
TRL_FWD_STASH = 5


def pinned_block(nbytes: int) -> int:
    """Bytes PyTorch's pinned-memory allocator takes for a request of ``nbytes``: the next power of
    two (torch 2.13 ``ATen/core/CachingHostAllocator.h``, ``allocate``: ``PowerOf2Ceil(size)`` while
    ``size <= pinned_max_round_threshold``, unbounded by default). The same rule as
    ``vramplan.hf.tracker.pinned_block``."""
    if nbytes <= 0:
        return 0
    return 1 << (int(nbytes) - 1).bit_length()


def checkpoint_host_bytes(tokens: int, ckpt0: int, ckpt: int, layers: int) -> int:
    """Pinned host bytes of ``checkpoints`` offload: one copy of every layer input.

    Symbols: T = ``tokens`` (b·s); ckpt0, ckpt = bytes per token of layer 0's input (the embedding
    output) and of a later layer's (the residual stream); L = ``layers``.
    1. save_on_cpu's pack makes one pinned tensor per checkpoint: T·ckpt0, then T·ckpt for L − 1 layers.
    2. each is a pinned block of ``pinned_block`` bytes; all are alive at the end of the forward.
    """
    if layers <= 0:
        return 0
    return pinned_block(tokens * ckpt0) + (layers - 1) * pinned_block(tokens * ckpt)


def unsloth_store_bytes(tokens: int, hidden: int, resid: int) -> int:
    """Bytes Unsloth stores for one layer input of T tokens × H in ``resid`` bytes: fp32 inputs are
    stored as bf16 unless ``UNSLOTH_OFFLOAD_FP32=exact`` (``UnslothCheckpointFunction.forward``:
    ``store_dtype``, ``new_size = numel · store_dtype.itemsize``)."""
    return tokens * hidden * (2 if resid == 4 else resid)


def unsloth_offloads(store: int) -> bool:
    """Unsloth offloads an input only above 2 MiB (``new_size > MINIMUM_SIZE``)."""
    return store > UNSLOTH_MIN_OFFLOAD


def unsloth_host_bytes(store: int, layers: int) -> int:
    """Pinned host bytes of Unsloth's offload: the start-up pool plus one slot per layer input.

    1. ``initialize_unsloth_gradient_checkpointing`` pins 200 slots of 128 Ki bf16 elements (256 KiB,
       already a power of two).
    2. the first step offloads every layer (``FIRST_PASS`` learns which is the last), growing one slot
       per layer to the stored size (``_grow_host_buffer``: a fresh pinned block, ``pinned_block``); the
       replaced 256 KiB blocks stay in the pinned allocator's cache, and the slots persist
       (``CPU_BUFFERS``), so the host keeps L grown slots although later steps skip the last layer.
    3. nothing is offloaded when the stored input is 2 MiB or less.
    """
    pool = UNSLOTH_INITIAL_SLOTS * pinned_block(UNSLOTH_INITIAL_SLOT_BYTES)
    return pool + (layers * pinned_block(store) if unsloth_offloads(store) else 0)


def unsloth_gpu_buffers(store: int) -> int:
    """The persistent GPU restore buffers of Unsloth's offload: two buffers (double buffering, which
    unsloth enables after the first step when more than 512 MiB of VRAM is free, assumed here) of the
    stored size each (``GPU_BUFFER.resize_``, ``GPU_BUFFER_B.resize_``); none when nothing is offloaded."""
    return 2 * store if unsloth_offloads(store) else 0


def trl_offloaded(nbytes: int) -> int:
    """Pinned bytes TRL's ``OffloadActivations`` takes for one saved tensor of ``nbytes``: a pinned copy
    (``torch.empty_like(..., pin_memory=True)``) when it is at least ``min_offload_size`` = 1024 B, else
    nothing (the tensor stays on the GPU)."""
    return pinned_block(nbytes) if nbytes >= TRL_MIN_OFFLOAD else 0


def trl_head_host_bytes(tokens: int, hidden: int, vocab: int) -> int:
    """Host copies TRL's hooks make after the last decoder layer (the output head itself is excluded by
    its ``NoOpManager``), transformers 5.24's final RMSNorm and ``ForCausalLMLoss``:
    1. the norm saves its fp32 input (T·H·4) and the rsqrt (T·4);
    2. the loss's ``log_softmax`` saves its fp32 output (T·V·4); ``nll_loss`` saves the same storage
       (deduplicated by TRL's storage key) and the int64 shifted labels (T·8).
    Each is copied (``trl_offloaded``); the last five stay on the GPU as well (the forward stash) until
    backward starts, so the device keeps them and the host holds their copies."""
    return sum(trl_offloaded(n) for n in (tokens * hidden * 4, tokens * 4, tokens * vocab * 4, tokens * 8))


def trl_resident_bytes(hidden: int, norms: int) -> int:
    """Bytes per token of one decoder layer that TRL 1.16's ``OffloadActivations`` never moves off the
    device: its ``norms`` RMSNorms' fp32 input and rsqrt(var).

    transformers 5.24 ``LlamaRMSNorm.forward`` saves the fp32 input twice (``pow(2)`` and the ``mul``
    by ``rsqrt``) and the rsqrt twice (``rsqrt`` saves its output, the ``mul`` saves it again), four
    packs in a row. TRL (``models/activation_offloading.py`` L217-225) offloads the first pack of a
    storage and, while that storage's key is tracked (its tensor is in the forward stash of the last
    ``max_fwd_stash_size`` = 5 packs, L280-290, L335-338), keeps every later pack of it on the device
    ("Keep on GPU, don't offload") until its backward: so each norm's 4·H + 4 B per token stay on the
    device from its forward to its backward, and the host holds their first copy as well."""
    return norms * (4 * hidden + 4)


def trl_rope_resident(table_bytes: int) -> int:
    """Bytes per sequence position of the rotary cos/sin tables TRL keeps on the device without
    checkpointing: every layer's RoPE ``mul`` saves the same two tensors, the first layer's pack is
    offloaded and every later one is deduplicated (as ``trl_resident_bytes``; the key stays tracked
    because each deduplicated pack re-tracks it, L224, and is never in the forward stash), so the
    tables (``activations.rope_table_bytes`` per position of the one shared row) live until layer 0's
    backward."""
    return table_bytes


def trl_restored_bytes(node: int, whole_layer: int) -> int:
    """Bytes per token TRL has brought back to the device at a layer's busiest backward moment: the
    current autograd node's and the previous unpacking node's saved tensors (``node``,
    ``activations.trl_mlp_node``; TRL frees a node's restored tensors in the next node's hook,
    L425-428 and L514-522). Where ``node`` is not derived (0) the layer's whole saved set
    (``whole_layer``) is used instead, an upper bound."""
    return node or whole_layer

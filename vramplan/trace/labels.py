"""Which component each new allocation of a traced step belongs to, and where each phase's peak is read.

The tracker (``vramplan.hf.tracker.LiveTensorTracker``) gives every new storage its current
``label``; the ``Labeller`` moves that label as the step goes, and records each phase's peak with
the bytes per component at it:

- ``Phase.FORWARD``: ``activations/saved``; from lm_head's forward on (or, for a loss that never
  calls the lm_head module, TRL's fused head and torchtune's chunked output, from the decoder's
  return on), ``logits/loss``.
- ``Phase.BACKWARD``: starts in ``logits/loss``. When the gradient reaches lm_head's input the part
  so far is recorded as ``Phase.LOSS_BACKWARD`` and the rest runs as ``Phase.LAYERS_BACKWARD``
  (``temporary/backward``): each part's peak is affine in the layer count, while the whole
  backward's peak moment can move from the loss to the layers with depth, which would break the
  extrapolation. Without an lm_head call the boundary is the gradient reaching the decoder's output. A backward that never reaches lm_head's input is recorded whole as ``backward``.
- A checkpointed decoder layer recomputed inside backward: ``activations/recompute`` while its
  function runs again (``vramplan.hf.interventions.checkpointed``: transformers checkpoints the
  layer's ``forward``, so module hooks do not see the recomputation), then back to the label before.
- A gradient that lands in ``.grad``: ``gradients/trainable`` (post-accumulate-grad hook).
- ``Phase.OPTIMIZER``: ``optimizer/state``; ``Phase.DONE`` (``zero_grad``): ``temporary/backward``.

The hooks are torch's public hook APIs on our own model, removed when ``attached`` exits.
"""

from __future__ import annotations

import contextlib
import enum
from typing import Any, Callable, Iterator

from vramplan.hf import interventions

#: What each traced component name means (notes shown in the breakdown).
NOTES: dict[str, str] = {
    "weights/4bit": "bitsandbytes packed 4-bit weights (2 values per byte)",
    "weights/float": "unquantized parameters and buffers (embeddings, norms, lm_head, experts, biases)",
    "quant_state/bnb": "absmax, nested absmax, code tables and offsets of the 4-bit layers",
    "adapter/lora": "trainable parameters (LoRA A/B, or every weight in full fine-tuning)",
    "gradients/trainable": ".grad of the trainable parameters",
    "optimizer/state": "optimizer state (and its step-time buffers)",
    "activations/saved": "tensors alive from the forward pass (saved for backward, inputs)",
    "activations/recompute": "gradient-checkpointing recomputation inside backward",
    "activations/offload_restore": "an offloaded checkpoint copied back from host memory for its layer's backward",
    "logits/loss": "logits, fp32 upcast, log-softmax and their gradients",
    "temporary/backward": "transient backward buffers (input gradients, dequantized weights)",
    "temporary/fused_dequant": "weight dequantized inside bitsandbytes' CUDA gemm_4bit for inputs > 1536 rows "
                               "(CUDA path, see vramplan.hf.interventions)",
    "temporary/softmax_backward": "CUDA softmax backward's grad * output temporary, score-sized, inside eager "
                                  "attention's backward (see vramplan.hf.interventions)",
    "gradients/ddp_buckets": "DDP's gradient buckets (bucket_cap_mb; a second copy of the trainable gradients "
                             "unless gradient_as_bucket_view): vramplan.parallel.ddp_torch",
    "weights/fsdp_unsharded": "FSDP2's all-gather outputs and unsharded parameters (the root's, plus the "
                              "layers being run or prefetched): vramplan.parallel.fsdp_torch",
    "gradients/fsdp_reduce_scatter": "FSDP2's reduce-scatter inputs (unsharded gradients of a layer, held until "
                                     "the next one): vramplan.parallel.fsdp_torch",
    "weights/zero_partition": "DeepSpeed ZeRO: this rank's partitions of the frozen parameters (ZeRO-3) and "
                              "what deepspeed.initialize allocates besides the named buffers",
    "weights/zero_gathered": "DeepSpeed ZeRO-3: parameters all-gathered for the module being run (and prefetched)",
    "adapter/zero_partition": "DeepSpeed ZeRO-3: this rank's flat 16-bit partition of the trainable parameters",
    "optimizer/fp32_master": "DeepSpeed ZeRO: this rank's fp32 master partition of the trainable parameters",
    "gradients/zero_partition": "DeepSpeed ZeRO: this rank's gradient partition",
    "gradients/zero_buckets": "DeepSpeed ZeRO: gradient reduce buckets (reduce_bucket_size)",
}
#: Breakdown order of the traced components.
ORDER = tuple(NOTES)


class Phase(enum.Enum):
    """The parts of one training step whose peaks are recorded (values name them in the figures)."""

    FORWARD = "forward"
    BACKWARD = "backward"
    LOSS_BACKWARD = "loss backward"
    LAYERS_BACKWARD = "layers backward"
    OPTIMIZER = "optimizer"
    DONE = "done"

    @property
    def in_backward(self) -> bool:
        return self in (Phase.BACKWARD, Phase.LAYERS_BACKWARD)


#: ``train_step``'s phase callbacks: the phase that ended -> the phase that starts, and its label.
_NEXT: dict[str, tuple[Phase, str]] = {
    "forward": (Phase.BACKWARD, "logits/loss"),
    "backward": (Phase.OPTIMIZER, "optimizer/state"),
    "optimizer": (Phase.DONE, "temporary/backward"),
}


class Labeller:
    """Moves ``tracker.label`` through one training step after another and records the phases' peaks.

    ``phases``: phase name -> (peak bytes, bytes per component at it), for the current step."""

    def __init__(self, tracker: Any) -> None:
        self.tracker = tracker
        self.phase = Phase.FORWARD
        self.phases: dict[str, tuple[int, dict[str, int]]] = {}

    @contextlib.contextmanager
    def attached(self, model: Any) -> Iterator["Labeller"]:
        """Hook ``model`` (lm_head, the trainable parameters, the checkpointed layers) for the block."""
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        # the decoder: ``base_model`` (PreTrainedModel's own resolution; Llama4ForCausalLM names its
        # prefix ``language_model`` but holds the decoder as ``model``, which ``base_model`` falls back to)
        decoder = getattr(base, base.base_model_prefix, None) or getattr(base, "model")
        handles = [base.get_output_embeddings().register_forward_pre_hook(self._lm_head_pre),
                   decoder.register_forward_hook(self._decoder_done)]
        handles += [p.register_post_accumulate_grad_hook(self._grad_landed)
                    for p in model.parameters() if p.requires_grad]
        try:
            with interventions.checkpointed(model, self.recomputing):
                yield self
        finally:
            for h in handles:
                h.remove()

    def start_step(self) -> None:
        """A new step: forward, ``activations/saved``, a fresh peak."""
        self.tracker.reset_peak()
        self.phases = {}
        self.phase = Phase.FORWARD
        self.tracker.label = "activations/saved"

    def end_phase(self, name: str) -> None:
        """``train_step``'s ``on_phase``: ``name`` ("forward", "backward", "optimizer") just ended."""
        self._record(self.phase)
        self.phase, self.tracker.label = _NEXT[name]

    def recomputing(self, function: Callable[..., Any]) -> Callable[..., Any]:
        """``function`` (a checkpointed layer's forward), labelled ``activations/recompute`` when it
        runs inside backward. The label before is restored however it ends (non-reentrant
        checkpointing stops a recomputation early by raising)."""

        def run(*args: Any, **kwargs: Any) -> Any:
            if not self.phase.in_backward:
                return function(*args, **kwargs)
            saved, self.tracker.label = self.tracker.label, "activations/recompute"
            try:
                return function(*args, **kwargs)
            finally:
                self.tracker.label = saved

        return run

    # --------------------------------------------------------------------------------- hooks
    def _record(self, phase: Phase) -> None:
        self.phases[phase.value] = (self.tracker.peak_bytes, dict(self.tracker.peak_by_category))
        self.tracker.reset_peak(host=False)  # the host peak spans the whole step

    def _lm_head_pre(self, module: Any, args: tuple) -> None:
        if self.phase is not Phase.FORWARD:
            return
        self.tracker.label = "logits/loss"
        x = args[0] if args else None
        if x is not None and getattr(x, "requires_grad", False):
            x.register_hook(self._lm_head_input_grad)

    def _decoder_done(self, module: Any, args: tuple, output: Any) -> None:
        if self.phase is not Phase.FORWARD:
            return
        self.tracker.label = "logits/loss"
        x = getattr(output, "last_hidden_state", None)
        if x is not None and getattr(x, "requires_grad", False):
            x.register_hook(self._lm_head_input_grad)

    def _lm_head_input_grad(self, grad: Any) -> None:
        if self.phase is Phase.BACKWARD:
            self._record(Phase.LOSS_BACKWARD)
            self.phase = Phase.LAYERS_BACKWARD
        self.tracker.label = "temporary/backward"

    def _grad_landed(self, p: Any) -> None:
        if p.grad is not None:
            self.tracker.retag(p.grad, "gradients/trainable")

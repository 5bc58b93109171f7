"""The training step being priced: one frozen dataclass that every engine and the planner take."""

from __future__ import annotations

import math
from dataclasses import Field, asdict, dataclass, field, fields, replace
from enum import Enum
from typing import Any

from vramplan.errors import VramplanError


class ScenarioError(VramplanError):
    """A scenario that cannot be run as stated (bad sizes, conflicting flags)."""


class _Choice(str, Enum):
    """A str enum whose values are the CLI spellings."""

    def __str__(self) -> str:  # pragma: no cover - trivial
        return self.value

    @classmethod
    def parse(cls, value: "str | _Choice") -> Any:
        if isinstance(value, cls):
            return value
        key = str(value).strip().lower().replace("_", "-")
        for member in cls:
            if member.value.replace("_", "-") == key:
                return member
        choices = ", ".join(m.value for m in cls)
        raise ScenarioError(f"unknown {cls.__name__.lower()} '{value}' (choose from: {choices})")


class Quant(_Choice):
    """How bitsandbytes stores the frozen base linears."""

    NF4 = "nf4"
    """4-bit NormalFloat (QLoRA paper, arXiv 2305.14314 §3)."""
    FP4 = "fp4"
    """4-bit float, same storage as NF4."""
    INT8 = "int8"
    """LLM.int8 (``Linear8bitLt``): int8 weights plus one fp32 scale per output row."""
    NONE = "none"
    """No quantization: base weights in the compute dtype (LoRA or full fine-tuning)."""


class Dtype(_Choice):
    """Compute dtype (``bnb_4bit_compute_dtype`` and the load ``dtype``)."""

    BF16 = "bf16"
    FP16 = "fp16"
    FP32 = "fp32"

    @property
    def nbytes(self) -> int:
        return 4 if self is Dtype.FP32 else 2


class Attn(_Choice):
    """``attn_implementation``."""

    EAGER = "eager"
    """Materialised b·h·s·s scores and probabilities."""
    SDPA = "sdpa"
    """``torch.nn.functional.scaled_dot_product_attention`` (memory-efficient/flash kernels)."""
    FLASH2 = "flash2"
    """flash-attention-2: q/k/v cast to the compute dtype, O(s) saved state."""


class Optim(_Choice):
    """Optimizer, by its HF ``TrainingArguments.optim`` meaning."""

    ADAMW = "adamw"
    """torch AdamW: exp_avg + exp_avg_sq, fp32, 8 B/param."""
    ADAMW8BIT = "adamw8bit"
    """bitsandbytes AdamW8bit: 2 B/param + block stats; tensors < 4096 elements stay 32-bit."""
    PAGED_ADAMW = "paged_adamw"
    """bitsandbytes PagedAdamW (32-bit state in CUDA managed memory)."""
    PAGED_ADAMW8BIT = "paged_adamw8bit"
    """bitsandbytes PagedAdamW8bit."""
    SGD = "sgd"
    """torch SGD without momentum: no state."""

    @property
    def paged(self) -> bool:
        return self in (Optim.PAGED_ADAMW, Optim.PAGED_ADAMW8BIT)

    @property
    def eight_bit(self) -> bool:
        return self in (Optim.ADAMW8BIT, Optim.PAGED_ADAMW8BIT)


class Recipe(_Choice):
    """How the training framework leaves the dtypes of the non-4-bit parameters."""

    HF_PEFT = "hf-peft"
    """transformers + peft ``prepare_model_for_kbit_training``: non-4-bit params upcast to fp32."""
    TRL = "trl"
    """As hf-peft, then TRL casts embeddings and lm_head back to the compute dtype (norms stay fp32)."""
    PLAIN = "plain"
    """Everything left in the compute dtype."""
    AXOLOTL = "axolotl"
    """As hf-peft, then axolotl casts norms, embeddings and lm_head back to the compute dtype
    (axolotl 0.19 ``loaders/model.py``); the other upcast params (biases, router) stay fp32."""


class Loss(_Choice):
    """Where the logits are upcast and shifted for the causal-LM loss."""

    HF = "hf"
    """transformers ≥ 4.46 (``loss_utils.py::ForCausalLMLoss``): the model returns logits in the
    compute dtype; the loss upcasts them to fp32 and shifts the labels, not the logits."""
    LEGACY = "legacy"
    """transformers ≤ 4.44 (e.g. 4.38 ``LlamaForCausalLM.forward``): ``logits = logits.float()``
    inside the model (``output.logits`` is fp32), then ``logits[..., :-1, :].contiguous()`` and
    ``CrossEntropyLoss``; torchtune's 2024 recipes compute the same copies."""
    CHUNKED_HEAD = "chunked-head"
    """TRL ≥ 1.15 ``SFTTrainer``: a fused LM head (``trl.trainer.utils.add_fused_lm_head``,
    ``trl/kernels/chunked_logprob.py``) projects the label positions in 4096 × 32768 tiles and folds
    each into online log-sum-exp statistics: the b·s·V logits never exist."""
    CHUNKED_CE = "chunked-ce"
    """torchtune ``CEWithChunkedOutputLoss`` (0.3 – 0.6): the output projection runs on 8 sequence
    chunks, the loss upcasts and log-softmaxes each chunk in fp32."""
    LIGER = "liger"
    """Liger's ``LigerFusedLinearCrossEntropyFunction`` (liger-kernel 0.8.5
    ``ops/fused_linear_cross_entropy.py``; HF ``use_liger_kernel``, LLaMA-Factory ``enable_liger_kernel``,
    axolotl's Liger plugin): the b·s rows are projected ``next_pow2(ceil(b·s / ceil(V/H)))`` at a time
    into one logits buffer in the input dtype; the gradient of the hidden states (b·s × H) is computed in
    the forward and kept for backward. Triton: priced from its allocations, the trace stands in."""
    CCE = "cce"
    """Apple's Cut Cross-Entropy (``cut-cross-entropy`` 25.1.1 and axolotl's fork, ``cce.py``; axolotl's
    CutCrossEntropyPlugin): the log-sum-exp of each row is computed blockwise in SRAM; the hidden states,
    the per-row LSE, the valid-row index and a V-sized logit average are kept for backward, which builds
    the hidden-state gradient. No logits buffer. Triton: priced from its allocations, the trace stands in."""
    UNSLOTH = "unsloth"
    """Unsloth's fused linear cross-entropy (unsloth_zoo 2026.10.9 ``fused_losses/fused_linear.py``
    ``fused_linear_cross_entropy``): the label rows are projected in chunks whose size follows a rule of
    rows, hidden and vocabulary under a budget of min(2 GiB, half the free memory); the hidden-state
    gradient is computed in the forward and scaled into a second b·s × H tensor in backward. Triton:
    priced from its allocations, the trace stands in."""


class RopeCache(_Choice):
    """A rotary-embedding table the model keeps as a buffer (transformers computes cos/sin per forward
    from ``inv_freq``, priced in ``weights/buffers``; torchtune's modules precompute it for every
    position up to the builder's ``max_seq_len``)."""

    NONE = "none"
    """No table: transformers' rotary embeddings."""
    SHARED = "shared"
    """One fp32 table of max_seq_len × head_dim/2 × (cos, sin) shared by every layer: torchtune's
    ``RotaryPositionalEmbeddings`` / ``Llama3ScaledRoPE`` (llama2, llama3.x, mistral, gemma builders)."""
    WIDE = "wide"
    """One fp32 table of max_seq_len × 2·head_dim (cos and sin of the doubled angles), shared: torchtune's
    ``Qwen2RotaryPositionalEmbeddings`` / ``Phi3RotaryPositionalEmbeddings`` in the full-model builders."""
    PER_LAYER = "per-layer"
    """The ``WIDE`` table built again inside every layer's attention: torchtune's Qwen2 / Phi-3 LoRA
    builders (``lora_qwen2_self_attention``, ``lora_phi3_self_attention``)."""


class Offload(_Choice):
    """Which saved tensors a training loop moves to host memory during the forward (and copies back to
    the GPU for their backward). Every kind keeps what it moves in pinned (page-locked) host memory."""

    NONE = "none"
    """Nothing leaves the GPU."""
    CHECKPOINTS = "checkpoints"
    """Every checkpointed layer input: transformers 5.24 ``activation_checkpointing_enable(offload=True)``
    (``gradient_checkpointing_kwargs={"offload": True}``) runs each checkpoint inside
    ``torch.autograd.graph.save_on_cpu(pin_memory=True)`` (``modeling_utils.py`` L3160-3167), so the layer's
    saved input goes to pinned host memory and comes back as a fresh device copy when the layer is
    recomputed; LLaMA-Factory ``use_unsloth_gc`` (its copy of Unsloth's early checkpoint: every layer
    input ``.to("cpu", non_blocking=True)``, reentrant) and TRL / axolotl activation offloading with
    layer checkpointing on (only the checkpoint inputs reach its hooks) move the same tensors."""
    UNSLOTH = "unsloth"
    """Unsloth's ``use_gradient_checkpointing="unsloth"`` (unsloth_zoo 2026.10.9
    ``gradient_checkpointing.py``): each checkpointed layer input over 2 MiB but the last layer's is copied
    into a pinned host slot (fp32 inputs stored as bf16), restored in backward into a persistent GPU buffer
    of one hidden state (two after the first step when more than 512 MiB of VRAM is free)."""
    ACTIVATIONS = "activations"
    """TRL ``OffloadActivations`` (torchtune's, also run by axolotl ``activation_offloading: true``): every
    tensor autograd saves that is at least 1 KiB, but the output head's, goes to pinned host memory; the
    last 5 stay on the GPU while their copy runs. With layer checkpointing on, checkpointing's own hooks
    save the layer internals, so only the layer inputs (and the final norm's and the loss's saved
    tensors) reach these hooks."""


class Hold(_Choice):
    """How long the training loop keeps the model output (and its logits) referenced."""

    NONE = "none"
    """Dropped before backward: the HF ``Trainer.compute_loss`` keeps only the loss."""
    STEP = "step"
    """Through backward and the optimizer step, deleted before the next forward
    (``outputs = model(**batch); outputs.loss.backward(); opt.step(); outputs = None``, as
    AnswerDotAI fsdp_qlora's ``train.py`` does)."""
    LOOP = "loop"
    """Never deleted: the previous step's output lives until the next forward returns and rebinds
    the name (a plain loop without ``del``; torchtune's 2024 recipes hold their shifted logits so)."""


class EvalKeep(_Choice):
    """What the HF Trainer's evaluation loop keeps on the device from each eval batch
    (transformers 5.24 ``trainer.py`` ``evaluation_loop`` L2974-3048, ``prediction_step`` L3193-3300)."""

    NONE = "none"
    """Only the loss: ``prediction_loss_only``, which ``Trainer.evaluate`` forces when no
    ``compute_metrics`` is given (``trainer.py`` L2871-2877)."""
    LOGITS = "logits"
    """Every batch's logits and labels, concatenated on the device (``all_preds.add``) until the
    loop ends or ``eval_accumulation_steps`` moves them to the CPU: fp32 under mixed precision
    (accelerate 1.15 ``convert_outputs_to_fp32`` wraps the forward), else the lm_head's dtype."""
    IDS = "ids"
    """Argmax token ids (int64) and labels: ``preprocess_logits_for_metrics`` reducing the logits
    first, as LLaMA-Factory's ``compute_accuracy`` does (``train/sft/metric.py::eval_logit_processor``)."""


class BatchLayout(_Choice):
    """How the micro-batch lays its samples out (the collator's output the model sees).

    What each layout costs, at the same ``seq`` × ``batch`` tokens (``vramplan.analytic.activations``
    prices it; what the longest batch of a dataset holds is ``vramplan.lengths``):"""

    NONE = "none"
    """``batch`` rows of ``seq`` tokens, one sample per row (padded): no position ids, no mask beyond
    the causal one (sdpa runs ``is_causal``)."""
    PADDING_FREE = "padding-free"
    """The micro-batch concatenated into one row of ``batch·seq`` tokens with ``position_ids``
    restarting at every sample (TRL ``padding_free``, ms-swift ``--padding_free`` / ``--packing``,
    Unsloth's auto padding-free, ``DataCollatorWithFlattening``); flash-attention's varlen kernel
    attends per sample (transformers ``modeling_flash_attention_utils._is_packed_sequence``), so the
    attention state is per token. Needs ``attn flash2`` (ms-swift and TRL refuse anything else)."""
    PACKED = "packed"
    """``batch`` rows of ``seq`` tokens, each row several samples with per-sample ``position_ids``
    (axolotl multipack, torchtune ``packed``, LLaMA-Factory ``neat_packing`` with FA2). With flash2 the
    attention is varlen (per token); with sdpa or eager, transformers 5.24 reads the position ids
    (``masking_utils.find_packed_sequence_indices``) and builds a b×1×s×s block-diagonal mask: a bool
    mask for sdpa (the kernel saves its additive copy per layer, and K/V are repeated per query head),
    the float causal-shaped one for eager."""
    PACKED_MASK = "packed-mask"
    """``batch`` rows of ``seq`` tokens whose block-diagonal mask the collator builds itself, b×1×s×s in
    the compute dtype, passed as ``attention_mask`` (LLaMA-Factory ``neat_packing`` without FA2:
    ``data/collator.py::prepare_4d_attention_mask``; axolotl's 4D mask without varlen); alive with the
    batch through the whole step. sdpa or eager only."""


class VisionMode(_Choice):
    """What a multimodal model's vision tower and projector do in the step (``Scenario.vision``)."""

    FROZEN = "frozen"
    """Kept in the load dtype (bitsandbytes told to skip them: ms-swift's ``llm_int8_skip_modules``,
    Unsloth's ``SKIP_QUANTIZATION_MODULES``), no adapter, nothing trained (ms-swift ``freeze_vit`` /
    ``freeze_aligner``, LLaMA-Factory ``freeze_vision_tower``)."""
    QUANTIZED = "quantized"
    """Frozen, its linears replaced by bitsandbytes as ``from_pretrained(quantization_config=...)`` does
    when nothing skips them (a quantized base only; under ``quant none`` the same as frozen)."""
    TRAINED = "trained"
    """Adapted with the decoder: LoRA on its linears too (peft's ``all-linear`` reaches every
    ``nn.Linear``, ms-swift ``freeze_vit false``, LLaMA-Factory ``freeze_vision_tower false``), or
    trained in full with ``--full``; quantized with a quantized base."""


class Strategy(_Choice):
    """How the training step is spread over ``Scenario.world_size`` processes, one GPU each
    (``vramplan.parallel`` prices one rank of each; docs/multigpu.md derives every term)."""

    SINGLE = "single"
    """One process, no process group: the whole model on one GPU."""
    DDP = "ddp"
    """``torch.nn.parallel.DistributedDataParallel``: every rank holds the whole model, gradients are
    all-reduced through ``bucket_cap_mb`` buckets (the HF Trainer's mode under torchrun when no FSDP or
    DeepSpeed config is given)."""
    FSDP = "fsdp"
    """FSDP2 ``fully_shard`` per decoder layer and on the root: parameters, gradients and optimizer state
    sharded over the ranks on dim 0, one layer unsharded at a time (two with prefetch)."""
    ZERO2 = "zero2"
    """DeepSpeed ZeRO stage 2: gradients and optimizer state partitioned, parameters replicated."""
    ZERO3 = "zero3"
    """DeepSpeed ZeRO stage 3: parameters partitioned too, gathered per module as the step reaches it."""


class StateOffload(_Choice):
    """Which sharded training state lives in host memory (FSDP2 ``CPUOffloadPolicy``, DeepSpeed
    ``offload_optimizer`` / ``offload_param`` with ``device: cpu``); reported as host memory."""

    NONE = "none"
    """Everything on the GPU."""
    OPTIMIZER = "optimizer"
    """The optimizer state (and ZeRO's fp32 master partition and gradient partition) on the host; the
    optimizer step runs on the CPU (DeepSpeed ``offload_optimizer``: ZeRO-2 or ZeRO-3)."""
    PARAMS = "params"
    """The parameter shards too (DeepSpeed ZeRO-3 ``offload_param`` with ``offload_optimizer``; FSDP2
    ``CPUOffloadPolicy``, which keeps sharded parameters, their gradients and the optimizer state on the
    host and copies each shard to the GPU before its all-gather)."""


class QuantStorage(_Choice):
    """``bnb_4bit_quant_storage``: the dtype the packed 4-bit weight is stored as. The bytes are the
    same; FSDP-QLoRA (Answer.AI fsdp_qlora, the PEFT FSDP-QLoRA guide) stores it in the compute dtype
    so that FSDP can flatten and shard it with the other parameters."""

    UINT8 = "uint8"
    BF16 = "bf16"
    FP16 = "fp16"
    FP32 = "fp32"


#: The modules ``Scenario.modules_to_save`` may name (peft ``ModulesToSaveWrapper``): the input embedding
#: and the output projection, by their transformers names.
MODULES_TO_SAVE = ("embed_tokens", "lm_head")


class LoraKernels(_Choice):
    """Whose fused LoRA autograd functions replace peft's per-linear LoRA forward (q/k/v, o, MLP)."""

    NONE = "none"
    """peft 0.21's ``lora.Linear`` / ``lora/bnb.py::Linear4bit`` forward, one linear at a time."""
    AXOLOTL = "axolotl"
    """axolotl 0.19 ``kernels/lora.py`` ``LoRA_QKV`` / ``LoRA_O`` / ``LoRA_MLP`` (patched in by
    ``monkeypatch/lora_kernels.py``; on by default for lora/qlora): each saves its input and
    compute-dtype copies of A and B (the MLP also its gate and up outputs)."""
    UNSLOTH = "unsloth"
    """Unsloth 2026.10.9 ``kernels/fast_lora.py`` ``LoRA_QKV`` / ``LoRA_W`` / ``LoRA_MLP`` (with
    ``lora_dropout`` 0): each saves its input (the MLP also gate and up), keeps a resident dequantization
    scratch buffer and writes the MLP's and QKV's input gradient into the saved input."""


#: The projection groups a fused LoRA kernel covers (``Scenario.kernel_groups``).
KERNEL_GROUPS = ("qkv", "o", "mlp")


#: Largest seq × batch accepted (10M tokens); beyond this the budget is meaningless.
MAX_TOKENS = 10_000_000


@dataclass(frozen=True)
class FieldMeta:
    """What the CLI and the reference CSV know of a Scenario field, besides its type and default.

    The CLI flag is ``--`` and the name with dashes (a bool defaulting to on also gets ``--no-...``);
    its choices come from the field's enum, its default from the field (``vramplan.cli.options``).
    The reference CSV (``vramplan.reference``) has one column per field, named as the field."""

    column: int
    """Position among the scenario columns of the reference CSV."""
    help: str | None = None
    """The flag's ``--help`` text."""
    short: str | None = None
    """Short flag, e.g. ``-r``."""
    sweep: bool = False
    """``vramplan profile`` takes a comma list of values (a grid to sweep)."""
    optional: bool = False
    """A reference column added later: a CSV may leave it out (then the field's default)."""


def _field(default: Any, column: int, help: str | None = None, **meta: Any) -> Any:
    return field(default=default, metadata={"vramplan": FieldMeta(column, help, **meta)})


def field_meta(f: "Field[Any]") -> FieldMeta:
    """The ``FieldMeta`` of a field of ``dataclasses.fields(Scenario)``."""
    return f.metadata["vramplan"]


@dataclass(frozen=True)
class Scenario:
    """One fine-tuning step. Sizes are counts; no field carries units of memory."""

    rank: int = _field(8, 4, "LoRA rank r.", short="-r", sweep=True)
    """LoRA rank r (``LoraConfig.r``)."""
    seq: int = _field(2048, 13, "Sequence length in tokens.", short="-s", sweep=True)
    """Tokens per sequence."""
    batch: int = _field(1, 14, "Micro-batch size.", short="-b", sweep=True)
    """Micro-batch size (per device, per step)."""
    quant: Quant = _field(Quant.NF4, 0, "Base-weight storage.")
    double_quant: bool = _field(True, 1, "bnb_4bit_use_double_quant.")
    """``bnb_4bit_use_double_quant``."""
    blocksize: int = _field(64, 2, "4-bit quantization block size.")
    """4-bit quantization block size (bitsandbytes default 64)."""
    dtype: Dtype = _field(Dtype.BF16, 3, "Compute dtype.")
    targets: tuple[str, ...] = _field(("all-linear",), 5,
                                      "LoRA target_modules: all-linear or names, e.g. q_proj,v_proj.")
    """``LoraConfig.target_modules``: ``("all-linear",)`` or leaf names."""
    lora_dropout: float = _field(0.05, 6)
    full: bool = _field(False, 7, "Full fine-tuning, no LoRA (needs --quant none).")
    """Full fine-tuning (no LoRA); requires ``quant == none``."""
    grad_checkpointing: bool = _field(True, 8)
    attn: Attn = _field(Attn.SDPA, 9, "attn_implementation.")
    optimizer: Optim = _field(Optim.ADAMW, 10)
    recipe: Recipe = _field(Recipe.HF_PEFT, 11, "hf-peft (fp32 upcast), trl (embeddings/lm_head bf16) or plain.")
    autocast: bool = _field(True, 12, "Forward under torch.autocast, as the HF Trainer with bf16=True.")
    """Forward under ``torch.autocast(dtype)`` as the HF Trainer runs it with ``bf16=True``."""
    adapter_dtype: Dtype = _field(
        Dtype.FP32, 15, "LoRA weights, grads and AdamW state: fp32 (peft autocast_adapter_dtype=True) or the --dtype "
                        "(autocast_adapter_dtype=False, torchtune, pure-bf16 loops).", optional=True)
    """Storage dtype of the LoRA A/B weights, their gradients and AdamW state. fp32 is peft's
    default (``get_peft_model(..., autocast_adapter_dtype=True)`` upcasts 16-bit adapters); the
    compute dtype is what ``autocast_adapter_dtype=False``, torchtune and pure-bf16 loops keep."""
    loss: Loss = _field(
        Loss.HF, 16, "hf: transformers >= 4.46 loss (bf16 logits, fp32 upcast in the loss); legacy: transformers <= "
                     "4.44 / torchtune 2024 (fp32 logits in the output + a shifted copy); chunked-head: TRL >= 1.15; "
                     "chunked-ce: torchtune; liger: Liger fused linear CE; cce: Cut Cross-Entropy; unsloth: "
                     "Unsloth's fused CE (the last three never build the b·s·V logits).", optional=True)
    hold_logits: Hold = _field(
        Hold.NONE, 17, "How long the loop keeps `outputs` (the logits): none (HF Trainer), step (through backward "
                       "and optimizer.step, then deleted) or loop (never deleted: until the next forward rebinds "
                       "it).", optional=True)
    """Whether the training loop keeps the model output (and its logits) past the loss; see ``Hold``."""
    reentrant: bool = _field(
        False, 19, "Reentrant gradient checkpointing (use_reentrant=True: peft's k-bit prep, ms-swift on one GPU, "
                   "LLaMA-Factory, axolotl); off = non-reentrant (transformers 5 Trainer, TRL, torchtune). The "
                   "kind of checkpointing: no effect without --grad-checkpointing.",
        optional=True)
    """``torch.utils.checkpoint(use_reentrant=True)``: the recomputed layer's output is held while its
    backward runs (``CheckpointFunction.backward``), one more b·s·H residual tensor than non-reentrant."""
    label_fraction: float = _field(
        1.0, 20, "Share of tokens that carry labels when logits are computed only there (ms-swift "
                 "logits_to_keep, also with Liger; TRL's fused head on CUDA; CCE's and Unsloth's label rows): the "
                 "response share of your data; 1.0 = every token.",
        optional=True)
    """Fraction of positions whose logits are computed (ms-swift ``use_logits_to_keep``: only label
    positions reach the lm_head). 1.0 computes every position, the upper bound."""
    rope_cache: RopeCache = _field(
        RopeCache.NONE, 21, "A rotary table kept as a buffer for every position up to the model's "
                            "max_position_embeddings: none (transformers), shared (torchtune llama/mistral/gemma), "
                            "wide (torchtune qwen2/phi3 full builders), per-layer (torchtune qwen2/phi3 LoRA "
                            "builders).", optional=True)
    """torchtune's precomputed RoPE cache (``RopeCache``), sized at ``max_position_embeddings``."""
    bnb_keeps_input: bool = _field(
        False, 18, "bitsandbytes < 0.43.2: each 4-bit layer also saves its input for backward.", optional=True)
    """bitsandbytes < 0.43.2: ``MatMul4Bit`` saves every 4-bit layer's input for backward whenever
    that input needs a gradient, although only the weight is used (0.43.2 keeps the weight only)."""

    eval_batch: int = _field(
        0, 28, "Evaluation batch size (per_device_eval_batch_size) of the HF Trainer's evaluation loop, run "
               "while the training state is alive; its peak is priced beside the training peak. 0 = no "
               "evaluation.", optional=True)
    """``per_device_eval_batch_size`` of the evaluation run between training steps (0: none). The eval
    forward runs at ``seq`` under ``torch.no_grad()`` with the model in eval mode."""
    eval_keep: EvalKeep = _field(
        EvalKeep.NONE, 29, "What evaluation keeps on the device per batch: none (no compute_metrics, or "
                           "prediction_loss_only), logits (compute_metrics without preprocess_logits_for_metrics: "
                           "fp32 under mixed precision) or ids (argmax ids, LLaMA-Factory compute_accuracy).",
        optional=True)
    """What ``evaluation_loop`` accumulates on the device (``EvalKeep``)."""
    eval_samples: int = _field(
        0, 30, "Eval samples whose kept predictions accumulate on the device: the eval set's size, or "
               "eval_accumulation_steps × the eval batch when that moves them to the CPU; needs --eval-keep "
               "logits or ids.", optional=True)
    """Samples whose predictions are on the device at once (0 unless ``eval_keep`` keeps some)."""
    packing: BatchLayout = _field(
        BatchLayout.NONE, 31, "Batch layout: none (a padded row per sample), padding-free (the micro-batch as one row "
                          "with position_ids, flash2 varlen), packed (rows of --seq holding several samples, "
                          "per-sample position_ids) or packed-mask (packed rows with the collator's 4D "
                          "block-diagonal mask in the compute dtype: LLaMA-Factory neat_packing without FA2).",
        optional=True)
    """The micro-batch's layout (``BatchLayout``)."""
    dora: bool = _field(
        False, 22, "DoRA (peft use_dora=True): a trainable magnitude vector per target, and each target's "
                   "forward also keeps its base and LoRA outputs for the magnitude's gradient.", optional=True)
    """peft ``LoraConfig(use_dora=True)`` (``tuners/lora/dora.py``): weight-decomposed LoRA."""
    modules_to_save: tuple[str, ...] = _field(
        (), 23, "Modules trained in full beside the adapters (peft modules_to_save), e.g. "
                "embed_tokens,lm_head: a trainable copy, its gradient and optimizer state.", optional=True)
    """peft ``LoraConfig.modules_to_save``: ``embed_tokens`` and/or ``lm_head``, each wrapped by
    ``ModulesToSaveWrapper`` (the original kept, a trainable deep copy used)."""
    lora_fa: bool = _field(
        False, 24, "LoRA-FA (peft create_lorafa_optimizer): lora_A frozen, only B trained: no A gradient or "
                   "state, and lora_A saves no input.", optional=True)
    """peft ``optimizers.create_lorafa_optimizer``: every ``lora_A`` frozen, AdamW on B."""
    lora_kernels: LoraKernels = _field(
        LoraKernels.NONE, 37, "Fused LoRA autograd functions instead of peft's per-linear forward: none, axolotl "
                              "(lora_qkv/o/mlp_kernel, axolotl's default for lora/qlora) or unsloth (with "
                              "lora_dropout 0).", optional=True)
    """Fused LoRA kernels (``LoraKernels``); a group whose projections are not all LoRA targets stays on
    peft's path, as both frameworks leave it."""
    kernel_groups: tuple[str, ...] = _field(
        KERNEL_GROUPS, 38, "The groups --lora-kernels fuses: qkv, o, mlp (axolotl lora_qkv_kernel, "
                           "lora_o_kernel, lora_mlp_kernel).", optional=True)
    """Projection groups the fused kernels cover (``KERNEL_GROUPS``); only read with ``lora_kernels``."""
    offload: Offload = _field(
        Offload.NONE, 34, "Activation offloading to pinned host memory: none; checkpoints (every checkpointed "
                          "layer input: HF gradient_checkpointing_kwargs offload, LLaMA-Factory use_unsloth_gc); "
                          "unsloth (Unsloth's default: all but the last layer input, restored through GPU "
                          "buffers); activations (TRL / torchtune / axolotl activation offloading: every saved "
                          "tensor but the output head's). The host bytes are reported apart from the GPU's.",
        optional=True)
    """Activation offloading (``Offload``): what leaves the GPU for pinned host memory."""
    liger_rms_norm: bool = _field(
        False, 41, "Liger's RMSNorm kernel (apply_liger_kernel_to_*(rms_norm=True), on by default with "
                   "use_liger_kernel): each norm saves its own input and an fp32 rstd per row (no fp32 copy) and "
                   "returns its input's dtype.", optional=True)
    """liger-kernel 0.8.5 ``LigerRMSNormFunction`` replaces every RMSNorm (``ops/rms_norm.py``
    L674-690: ``save_for_backward(X, W, RSTD)``, ``Y`` in ``X.dtype``; backward writes dX into dY)."""
    liger_swiglu: bool = _field(
        False, 42, "Liger's SwiGLU kernel (swiglu=True, on by default with use_liger_kernel): the gated MLP "
                   "saves gate and up only, and its backward writes their gradients into them.", optional=True)
    """liger-kernel 0.8.5 ``LigerSiLUMulFunction`` (``ops/swiglu.py`` L240-306: ``save_for_backward(a, b)``;
    ``swiglu_backward`` stores da, db into a and b) in ``LigerSwiGLUMLP`` (dense MLPs only)."""
    liger_rope: bool = _field(
        False, 43, "Liger's RoPE kernel (rope=True, on by default with use_liger_kernel): q and k rotated in "
                   "place, cos and sin saved; the same saved bytes as transformers' RoPE.", optional=True)
    """liger-kernel 0.8.5 ``LigerRopeFunction`` (``ops/rope.py`` L265-304: ``save_for_backward(cos, sin)``, q and
    k rotated in their own storage). transformers' ``q * cos + rotate_half(q) * sin`` saves only cos and
    sin too (``mul`` saves the other operand), so the analytic engine prices both alike; the trace runs it."""
    eval_new_tokens: int = _field(
        0, 39, "Tokens each eval sequence generates after its prompt of --seq tokens (predict_with_generate: "
               "LLaMA-Factory, ms-swift eval_metric nlg): the eval loop runs model.generate with a DynamicCache "
               "instead of the loss forward; 0 = no generation.", optional=True)
    """New tokens per eval sequence when the evaluation generates (``Seq2SeqTrainer.prediction_step`` ->
    ``model.generate``, greedy, every sequence running to the length bound): a prefill of ``seq`` tokens,
    then one forward per new token with the KV cache (``vramplan.analytic.evaluation.generation_peak``)."""

    images: int = _field(
        0, 44, "Images per sample (multimodal models): each adds its placeholder tokens to --seq (which counts "
               "every token, image tokens included) and runs the vision tower; 0 = text only (the tower's "
               "weights are still priced).", optional=True)
    """Images per sample (``vramplan.arch.vision``: tokens per image from ``image_size``)."""
    image_size: str = _field(
        "1024x1024", 45, "Size of each image as WxH pixels, before the processor's resize.", optional=True)
    """Width × height of each image; the processor's resize rule maps it to patches and tokens."""
    vision: VisionMode = _field(
        VisionMode.FROZEN, 46, "The vision tower and projector of a multimodal model: frozen (load dtype, no "
                               "adapter), quantized (bitsandbytes replaces its linears) or trained (LoRA on its "
                               "linears, or full with --full).", optional=True)
    """What the vision tower does (``VisionMode``); ignored for a text-only model."""

    gpus: int = _field(
        1, 47, "GPUs (training processes) per node; with more than one process and --strategy single, "
               "the run is DDP, as the HF Trainer runs under torchrun.", optional=True)
    """Processes per node, one GPU each (``torchrun --nproc_per_node``, ``accelerate --num_processes``)."""
    nodes: int = _field(1, 48, "Nodes, each with --gpus GPUs.", optional=True)
    """Nodes (``torchrun --nnodes``); the world size is ``gpus × nodes``."""
    strategy: Strategy = _field(
        Strategy.SINGLE, 49, "How the step is spread over the GPUs: single, ddp, fsdp (FSDP2 fully_shard), "
                             "zero2 or zero3 (DeepSpeed). Every figure is one rank's.", optional=True)
    """Data-parallel strategy (``Strategy``); the engines price one rank (``process_rank``)."""
    state_offload: StateOffload = _field(
        StateOffload.NONE, 50, "Sharded training state in host memory: none, optimizer (DeepSpeed "
                               "offload_optimizer) or params (DeepSpeed ZeRO-3 offload_param + optimizer; FSDP "
                               "CPU offload). Not --offload, which moves activations.", optional=True)
    """``StateOffload``; activation offloading is ``offload``."""
    reshard_after_forward: bool = _field(
        True, 51, "FSDP: free each layer's gathered parameters after its forward (FSDP2's default; off = "
                  "ZeRO-2-like, the gathered layers stay until backward).", optional=True)
    """FSDP2 ``fully_shard(reshard_after_forward=...)`` of the decoder layers (the root is never resharded
    after forward, as the HF/accelerate FSDP2 wrapping leaves it)."""
    quant_storage: QuantStorage = _field(
        QuantStorage.UINT8, 52, "bnb_4bit_quant_storage: uint8 (default) or the compute dtype (FSDP-QLoRA).",
        optional=True)
    """``BitsAndBytesConfig(bnb_4bit_quant_storage=...)`` (``QuantStorage``)."""
    process_rank: int = _field(
        0, 53, "The rank priced (0 .. world size - 1): uneven shards make ranks differ (not --rank, which is "
               "the LoRA rank).", optional=True)
    """Global rank of the process priced."""
    bucket_cap_mb: int = _field(25, 54, "DDP gradient bucket size in MiB (DistributedDataParallel bucket_cap_mb).",
                                optional=True)
    """``DistributedDataParallel(bucket_cap_mb=...)`` (torch default 25; the first bucket is 1 MiB)."""
    gradient_as_bucket_view: bool = _field(
        False, 55, "DDP: gradients are views into the buckets (no separate .grad copy).", optional=True)
    """``DistributedDataParallel(gradient_as_bucket_view=...)``."""
    reduce_bucket_size: int = _field(
        0, 56, "ZeRO reduce_bucket_size in elements; 0 = auto (the HF integration's hidden_size²).", optional=True)
    """DeepSpeed ``zero_optimization.reduce_bucket_size`` (elements); 0 means ``"auto"``, which
    transformers' DeepSpeed integration fills with hidden_size²."""
    allgather_bucket_size: int = _field(
        500_000_000, 57, "ZeRO-2 allgather_bucket_size in elements (DeepSpeed default 5e8).", optional=True)
    """DeepSpeed ``zero_optimization.allgather_bucket_size`` (ZeRO-1/2)."""
    stage3_prefetch_bucket_size: int = _field(
        0, 58, "ZeRO-3 stage3_prefetch_bucket_size in elements; 0 = auto (0.9 × hidden_size²).", optional=True)
    """DeepSpeed ``stage3_prefetch_bucket_size``; 0 means ``"auto"`` (transformers: 0.9 · hidden_size²)."""
    stage3_max_live_parameters: int = _field(
        1_000_000_000, 59, "ZeRO-3 stage3_max_live_parameters (DeepSpeed default 1e9).", optional=True)
    """DeepSpeed ``stage3_max_live_parameters``: gathered parameters kept before releasing."""
    stage3_param_persistence_threshold: int = _field(
        0, 60, "ZeRO-3: parameters smaller than this stay unpartitioned; 0 = auto (10 × hidden_size).",
        optional=True)
    """DeepSpeed ``stage3_param_persistence_threshold``; 0 means ``"auto"`` (transformers: 10 · hidden_size)."""
    stage3_max_reuse_distance: int = _field(
        1_000_000_000, 63, "ZeRO-3 stage3_max_reuse_distance in elements (DeepSpeed default 1e9).", optional=True)
    """DeepSpeed ``stage3_max_reuse_distance``: a module's parameters stay gathered when they are used again
    within this many elements of modules ahead (``vramplan.parallel.zero3_schedule``)."""
    overlap_comm: bool = _field(
        True, 61, "ZeRO overlap_comm (on in the HF/ms-swift/LLaMA-Factory DeepSpeed configs).", optional=True)
    """DeepSpeed ``zero_optimization.overlap_comm``: reduction buckets double-buffered."""
    contiguous_gradients: bool = _field(
        True, 62, "ZeRO contiguous_gradients: gradients copied into one contiguous partition buffer.",
        optional=True)
    """DeepSpeed ``zero_optimization.contiguous_gradients``."""

    def __post_init__(self) -> None:
        for name, enum in _ENUM_FIELDS.items():
            object.__setattr__(self, name, enum.parse(getattr(self, name)))
        for name in _BOOL_FIELDS:
            if not isinstance(getattr(self, name), bool):
                raise ScenarioError(f"{name} must be true or false, got {getattr(self, name)!r}")
        targets = self.targets
        if isinstance(targets, str):
            targets = tuple(t.strip() for t in targets.split(",") if t.strip())
        if not isinstance(targets, (tuple, list)) or not all(isinstance(t, str) and t for t in targets):
            raise ScenarioError(f"targets must be module names (strings), got {targets!r}")
        object.__setattr__(self, "targets", tuple(targets))
        mts = self.modules_to_save
        if isinstance(mts, str):
            mts = tuple(t.strip() for t in mts.split(",") if t.strip())
        if not isinstance(mts, (tuple, list)) or not all(isinstance(t, str) and t for t in mts):
            raise ScenarioError(f"modules_to_save must be module names (strings), got {mts!r}")
        mts = tuple(dict.fromkeys(mts))
        bad = [t for t in mts if t not in MODULES_TO_SAVE]
        if bad:
            raise ScenarioError(f"modules_to_save: {', '.join(bad)} is not priced (choose from: "
                                f"{', '.join(MODULES_TO_SAVE)})")
        object.__setattr__(self, "modules_to_save", mts)
        groups = self.kernel_groups
        if isinstance(groups, str):
            groups = tuple(g.strip() for g in groups.split(",") if g.strip())
        if not isinstance(groups, (tuple, list)) or not groups or any(g not in KERNEL_GROUPS for g in groups):
            raise ScenarioError(f"kernel_groups must name one or more of {', '.join(KERNEL_GROUPS)}, got {groups!r}")
        object.__setattr__(self, "kernel_groups", tuple(g for g in KERNEL_GROUPS if g in groups))
        for name in ("rank", "seq", "batch", "blocksize"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ScenarioError(f"{name} must be a positive integer, got {value!r}")
        if self.seq * self.batch > MAX_TOKENS:
            raise ScenarioError(
                f"seq × batch = {self.seq * self.batch:,} tokens exceeds the supported {MAX_TOKENS:,}"
            )
        if self.blocksize not in (32, 64, 128, 256, 512, 1024, 2048, 4096):
            raise ScenarioError(f"blocksize must be a power of two from 32 to 4096, got {self.blocksize}")
        if isinstance(self.label_fraction, bool) or not isinstance(self.label_fraction, (int, float)) \
                or not 0.0 < self.label_fraction <= 1.0:
            raise ScenarioError(f"label_fraction must be in (0, 1], got {self.label_fraction!r}")
        object.__setattr__(self, "label_fraction", float(self.label_fraction))
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ScenarioError(f"lora_dropout must be in [0, 1), got {self.lora_dropout}")
        if self.full and self.quant is not Quant.NONE:
            raise ScenarioError(
                f"--full fine-tunes every weight and cannot train a {self.quant.value}-quantized base; "
                "use --quant none"
            )
        if self.adapter_dtype not in (Dtype.FP32, self.dtype):
            raise ScenarioError(
                f"adapter_dtype {self.adapter_dtype.value} conflicts with dtype {self.dtype.value}: LoRA adapters "
                f"are kept in fp32 (peft's default) or in the compute dtype ({self.dtype.value})")
        if self.full:
            lora = [n for n in LORA_ONLY_FIELDS if getattr(self, n) != _DEFAULTS[n]]
            if lora:
                raise ScenarioError(f"{', '.join(lora)} appl{'ies' if len(lora) == 1 else 'y'} to LoRA adapters; "
                                    "--full trains the base weights in --dtype (leave them unset)")
        if self.label_fraction < 1.0 and self.loss in (Loss.LEGACY, Loss.CHUNKED_CE):
            raise ScenarioError(f"label_fraction < 1 (logits only at label positions) needs loss hf, chunked-head, "
                                f"liger, cce or unsloth, not {self.loss.value}")
        if self.loss is Loss.CCE and self.dtype is Dtype.FP32:
            raise ScenarioError("loss cce needs --dtype bf16 or fp16: Cut Cross-Entropy's backward asserts "
                                "half-precision hidden states and classifier (cut_cross_entropy cce_backward.py)")
        if self.bnb_keeps_input and not self.quantized_4bit:
            raise ScenarioError(
                f"bnb_keeps_input describes bitsandbytes' 4-bit matmul and needs quant nf4 or fp4, not {self.quant.value}")
        self._check_eval()
        if isinstance(self.images, bool) or not isinstance(self.images, int) or not 0 <= self.images <= 1024:
            raise ScenarioError(f"images must be an integer from 0 to 1024, got {self.images!r}")
        w, h = parse_image_size(self.image_size)
        object.__setattr__(self, "image_size", f"{w}x{h}")
        if self.packing is BatchLayout.PADDING_FREE and self.attn is not Attn.FLASH2:
            raise ScenarioError(
                f"padding-free batches need flash-attention's varlen kernel (--attn flash2; ms-swift and TRL refuse "
                f"{self.attn.value}): with {self.attn.value} the one row would attend as one (batch·seq)² block")
        if self.packing is BatchLayout.PACKED_MASK and self.attn is Attn.FLASH2:
            raise ScenarioError("packed-mask is the 4D mask built for sdpa or eager; flash2 takes no mask and "
                                "attends per sample from the position ids (use --packing packed)")
        if self.lora_fa and self.optimizer is not Optim.ADAMW:
            raise ScenarioError(f"lora_fa is peft's LoRA-FA optimizer (an AdamW on the B matrices): it replaces "
                                f"--optimizer, leave it adamw (not {self.optimizer.value})")
        if self.lora_fa and self.dora:
            raise ScenarioError("lora_fa and dora: peft's LoRA-FA optimizer pairs every lora_A with its lora_B "
                                "and has no rule for DoRA's magnitude vectors; choose one")
        self._check_kernels()
        self._check_parallel()
        if self.offload in (Offload.CHECKPOINTS, Offload.UNSLOTH) and not self.grad_checkpointing:
            raise ScenarioError(f"offload {self.offload.value} moves gradient checkpoints to host memory and needs "
                                "--grad-checkpointing")
        if not self.targets:
            raise ScenarioError("targets must name at least one module or 'all-linear'")
        if "all-linear" in self.targets and len(self.targets) > 1:
            raise ScenarioError("targets: 'all-linear' cannot be combined with module names")

    @property
    def world_size(self) -> int:
        """Processes in the run (``gpus × nodes``), one GPU each."""
        return self.gpus * self.nodes

    @property
    def distributed(self) -> bool:
        """Whether a process group exists (any strategy but ``single``)."""
        return self.strategy is not Strategy.SINGLE

    def _check_parallel(self) -> None:
        """The multi-GPU fields: sizes, the strategy a world of several processes implies, and the knobs
        that belong to one strategy only."""
        for name in ("gpus", "nodes", "process_rank", "bucket_cap_mb", "reduce_bucket_size", "allgather_bucket_size",
                     "stage3_prefetch_bucket_size", "stage3_max_live_parameters",
                     "stage3_param_persistence_threshold", "stage3_max_reuse_distance"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ScenarioError(f"{name} must be a non-negative integer, got {value!r}")
        for name in ("gpus", "nodes", "bucket_cap_mb"):
            if getattr(self, name) < 1:
                raise ScenarioError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.world_size > MAX_WORLD:
            raise ScenarioError(f"gpus × nodes = {self.world_size} exceeds the supported {MAX_WORLD} processes")
        if self.strategy is Strategy.SINGLE and self.world_size > 1:  # torchrun without FSDP/DeepSpeed: DDP
            object.__setattr__(self, "strategy", Strategy.DDP)
        if self.process_rank >= self.world_size:
            raise ScenarioError(f"process_rank {self.process_rank} is not a rank of a world of {self.world_size} "
                                "(ranks 0 .. gpus × nodes - 1)")
        s = self.strategy
        allowed = _OFFLOADS[s]
        if self.state_offload not in allowed:
            raise ScenarioError(
                f"state_offload {self.state_offload.value} is not a mode of {s.value} (it allows: "
                f"{', '.join(o.value for o in allowed)}){_OFFLOAD_WHY.get(s, '')}")
        for names, owner in ((("bucket_cap_mb", "gradient_as_bucket_view"), (Strategy.DDP,)),
                             (("reshard_after_forward",), (Strategy.FSDP,)),
                             (("reduce_bucket_size", "allgather_bucket_size", "overlap_comm",
                               "contiguous_gradients"), (Strategy.ZERO2, Strategy.ZERO3)),
                             (("stage3_prefetch_bucket_size", "stage3_max_live_parameters",
                               "stage3_param_persistence_threshold", "stage3_max_reuse_distance"),
                              (Strategy.ZERO3,))):
            if s in owner:
                continue
            set_ = [n for n in names if getattr(self, n) != _DEFAULTS[n]]
            if set_:
                raise ScenarioError(f"{', '.join(set_)} configure{'s' if len(set_) == 1 else ''} "
                                    f"{' or '.join(o.value for o in owner)}, not strategy {s.value}")
        if self.quant_storage is not QuantStorage.UINT8 and not self.quantized_4bit:
            raise ScenarioError(f"quant_storage is bnb_4bit_quant_storage and needs quant nf4 or fp4, not "
                                f"{self.quant.value}")

    @property
    def image_wh(self) -> tuple[int, int]:
        """``image_size`` as (width, height)."""
        return parse_image_size(self.image_size)

    def _check_eval(self) -> None:
        """The evaluation fields: sizes, and the combinations the evaluation loop can run."""
        for name in ("eval_batch", "eval_samples", "eval_new_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ScenarioError(f"{name} must be a non-negative integer, got {value!r}")
        if self.eval_batch * self.seq > MAX_TOKENS:
            raise ScenarioError(f"eval_batch × seq = {self.eval_batch * self.seq:,} tokens exceeds the supported "
                                f"{MAX_TOKENS:,}")
        if self.eval_batch == 0:
            if self.eval_keep is not EvalKeep.NONE or self.eval_samples or self.eval_new_tokens:
                raise ScenarioError("eval_keep, eval_samples and eval_new_tokens describe an evaluation: set "
                                    "eval_batch too")
            return
        if self.eval_new_tokens:
            if self.eval_keep is EvalKeep.LOGITS:
                raise ScenarioError("a generating evaluation keeps the generated token ids, not logits: use "
                                    "eval_keep ids (or none)")
            if self.attn is not Attn.SDPA:
                raise ScenarioError(f"generation during evaluation is priced with sdpa attention, not "
                                    f"{self.attn.value}")
            if (self.seq + self.eval_new_tokens) * self.eval_batch > MAX_TOKENS:
                raise ScenarioError(f"eval_batch × (seq + eval_new_tokens) exceeds the supported {MAX_TOKENS:,} "
                                    "tokens")
        if self.eval_keep is EvalKeep.NONE and self.eval_samples:
            raise ScenarioError("eval_samples counts kept predictions: with eval_keep none nothing is kept "
                                "(leave eval_samples 0)")
        if self.eval_keep is not EvalKeep.NONE and self.eval_samples < 1:
            raise ScenarioError(f"eval_keep {self.eval_keep.value} keeps every eval sample's predictions: give "
                                "eval_samples (the eval set's size, or eval_accumulation_steps × eval_batch)")
        if self.loss not in (Loss.HF, Loss.LEGACY):
            raise ScenarioError(f"evaluation is priced for the model's own loss (loss hf or legacy: the HF "
                                f"Trainer's prediction_step), not {self.loss.value}")
        if self.hold_logits is not Hold.NONE:
            raise ScenarioError("evaluation is the HF Trainer's loop, whose training step keeps no outputs: "
                                f"hold_logits must be none, not {self.hold_logits.value}")

    @property
    def eval_batches(self) -> int:
        """Eval batches whose predictions accumulate on the device (1 when nothing is kept)."""
        if not self.eval_batch:
            return 0
        return max(1, -(-self.eval_samples // self.eval_batch))
    def _check_kernels(self) -> None:
        """Where the frameworks refuse their fused LoRA kernels (``LoraKernels``)."""
        if self.lora_kernels is LoraKernels.NONE:
            if self.kernel_groups != KERNEL_GROUPS:
                raise ScenarioError("kernel_groups chooses the groups of --lora-kernels, which is none")
            return
        if self.quant is Quant.INT8:
            raise ScenarioError(
                f"{self.lora_kernels.value}'s fused LoRA kernels dequantize 4-bit or read 16-bit base weights; an 8-bit "
                "(LLM.int8) base runs peft's layers (use --lora-kernels none)")
        if self.lora_kernels is LoraKernels.UNSLOTH:
            if self.lora_dropout > 0:
                raise ScenarioError(
                    f"Unsloth 2026.10.9 fuses its LoRA kernels only with lora_dropout 0 (got {self.lora_dropout}; "
                    "models/llama.py get_peft_model): use --lora-kernels none")
            if self.dtype is Dtype.FP32:
                raise ScenarioError("Unsloth 2026.10.9 runs peft's forward on an fp32 base (its fused LoRA kernels "
                                    "need 16-bit weights): use --lora-kernels none")

    @property
    def tokens(self) -> int:
        return self.seq * self.batch

    @property
    def kept_positions(self) -> int:
        """Positions per sequence whose logits are computed (``label_fraction`` of ``seq``, at least 1)."""
        return kept_positions(self.seq, self.label_fraction)

    @property
    def quantized_4bit(self) -> bool:
        return self.quant in (Quant.NF4, Quant.FP4)

    def replace(self, **changes: Any) -> "Scenario":
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, CLI spellings."""
        d = asdict(self)
        for k, v in d.items():
            if isinstance(v, Enum):
                d[k] = v.value
        for k, v in d.items():
            if isinstance(v, tuple):  # targets, modules_to_save, kernel_groups
                d[k] = list(v)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Scenario":
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(d) - known
        if unknown:
            raise ScenarioError(f"unknown scenario field(s): {', '.join(sorted(unknown))}")
        kw = dict(d)
        for k, v in kw.items():
            if isinstance(v, list):  # the tuple fields, as to_dict writes them
                kw[k] = tuple(v)
        return cls(**kw)


def parse_image_size(text: Any) -> tuple[int, int]:
    """``"WxH"`` -> (W, H), each side from 1 to 65536 pixels (``Scenario.image_size``)."""
    try:
        w, h = (int(x) for x in str(text).lower().split("x"))
    except ValueError:
        raise ScenarioError(f"image_size must be WxH (e.g. 1024x1024), got {text!r}") from None
    if not (0 < w <= 1 << 16 and 0 < h <= 1 << 16):
        raise ScenarioError(f"image_size must be WxH with sides from 1 to 65536, got {text!r}")
    return w, h


def kept_positions(seq: int, fraction: float) -> int:
    """Positions of a ``seq``-token sequence whose logits are computed when ``fraction`` of them carry
    labels: ceil(fraction · seq), at least 1; every position at 1.0."""
    return seq if fraction >= 1.0 else max(1, math.ceil(fraction * seq))

#: Largest world size accepted (gpus × nodes).
MAX_WORLD = 4096
#: The state-offload modes each strategy has.
_OFFLOADS = {Strategy.SINGLE: (StateOffload.NONE,), Strategy.DDP: (StateOffload.NONE,),
             Strategy.FSDP: (StateOffload.NONE, StateOffload.PARAMS),
             Strategy.ZERO2: (StateOffload.NONE, StateOffload.OPTIMIZER),
             Strategy.ZERO3: (StateOffload.NONE, StateOffload.OPTIMIZER, StateOffload.PARAMS)}
_OFFLOAD_WHY = {
    Strategy.FSDP: ": FSDP2's CPUOffloadPolicy moves parameter shards, their gradients and the optimizer state "
                   "together (params)",
    Strategy.ZERO2: ": ZeRO-2 keeps parameters on every GPU; only offload_optimizer exists",
    Strategy.DDP: ": DDP keeps the whole training state on every GPU",
    Strategy.SINGLE: ": sharded-state offload needs a sharding strategy (fsdp, zero2, zero3)"}


#: Scenario field -> its enum type (read from the field annotations: the one list of mode fields).
_ENUM_FIELDS: dict[str, type[_Choice]] = {
    f.name: globals()[f.type] for f in fields(Scenario)
    if isinstance(globals().get(f.type), type) and issubclass(globals()[f.type], _Choice)}
#: The LoRA-only fields: a full fine-tuning scenario must leave them at their defaults.
LORA_ONLY_FIELDS = ("rank", "targets", "lora_dropout", "adapter_dtype", "dora", "modules_to_save", "lora_fa",
                    "lora_kernels", "kernel_groups")
_DEFAULTS = {f.name: f.default for f in fields(Scenario)}
#: The on/off fields (their annotation is ``bool``): only True or False, never a truthy string.
_BOOL_FIELDS = tuple(f.name for f in fields(Scenario) if f.type == "bool")

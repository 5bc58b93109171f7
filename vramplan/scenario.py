"""The training step being priced: one frozen dataclass that every engine and the planner take."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
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


class Loss(_Choice):
    """Where the logits are upcast and shifted for the causal-LM loss."""

    HF = "hf"
    """transformers ≥ 4.46 (``loss_utils.py::ForCausalLMLoss``): the model returns logits in the
    compute dtype; the loss upcasts them to fp32 and shifts the labels, not the logits."""
    LEGACY = "legacy"
    """transformers ≤ 4.44 (e.g. 4.38 ``LlamaForCausalLM.forward``): ``logits = logits.float()``
    inside the model (``output.logits`` is fp32), then ``logits[..., :-1, :].contiguous()`` and
    ``CrossEntropyLoss``; torchtune's 2024 recipes compute the same copies."""


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


#: Largest seq × batch accepted (10M tokens); beyond this the budget is meaningless.
MAX_TOKENS = 10_000_000


@dataclass(frozen=True)
class Scenario:
    """One fine-tuning step. Sizes are counts; no field carries units of memory."""

    rank: int = 8
    """LoRA rank r (``LoraConfig.r``)."""
    seq: int = 2048
    """Tokens per sequence."""
    batch: int = 1
    """Micro-batch size (per device, per step)."""
    quant: Quant = Quant.NF4
    double_quant: bool = True
    """``bnb_4bit_use_double_quant``."""
    blocksize: int = 64
    """4-bit quantization block size (bitsandbytes default 64)."""
    dtype: Dtype = Dtype.BF16
    targets: tuple[str, ...] = ("all-linear",)
    """``LoraConfig.target_modules``: ``("all-linear",)`` or leaf names."""
    lora_dropout: float = 0.05
    full: bool = False
    """Full fine-tuning (no LoRA); requires ``quant == none``."""
    grad_checkpointing: bool = True
    attn: Attn = Attn.SDPA
    optimizer: Optim = Optim.ADAMW
    recipe: Recipe = Recipe.HF_PEFT
    autocast: bool = True
    """Forward under ``torch.autocast(dtype)`` as the HF Trainer runs it with ``bf16=True``."""
    adapter_dtype: Dtype = Dtype.FP32
    """Storage dtype of the LoRA A/B weights, their gradients and AdamW state. fp32 is peft's
    default (``get_peft_model(..., autocast_adapter_dtype=True)`` upcasts 16-bit adapters); the
    compute dtype is what ``autocast_adapter_dtype=False``, torchtune and pure-bf16 loops keep."""
    loss: Loss = Loss.HF
    hold_logits: Hold = Hold.NONE
    """Whether the training loop keeps the model output (and its logits) past the loss; see ``Hold``."""
    bnb_keeps_input: bool = False
    """bitsandbytes < 0.43.2: ``MatMul4Bit`` saves every 4-bit layer's input for backward whenever
    that input needs a gradient, although only the weight is used (0.43.2 keeps the weight only)."""

    def __post_init__(self) -> None:
        enums = {"quant": Quant, "dtype": Dtype, "attn": Attn, "optimizer": Optim, "recipe": Recipe,
                 "adapter_dtype": Dtype, "loss": Loss, "hold_logits": Hold}
        for name, enum in enums.items():
            object.__setattr__(self, name, enum.parse(getattr(self, name)))
        targets = self.targets
        if isinstance(targets, str):
            targets = tuple(t.strip() for t in targets.split(",") if t.strip())
        object.__setattr__(self, "targets", tuple(targets))
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
        if self.full and self.adapter_dtype is not Dtype.FP32:
            raise ScenarioError("adapter_dtype applies to LoRA adapters; --full trains the base weights in --dtype")
        if self.bnb_keeps_input and not self.quantized_4bit:
            raise ScenarioError(
                f"bnb_keeps_input describes bitsandbytes' 4-bit matmul and needs quant nf4 or fp4, not {self.quant.value}")
        if not self.targets:
            raise ScenarioError("targets must name at least one module or 'all-linear'")
        if "all-linear" in self.targets and len(self.targets) > 1:
            raise ScenarioError("targets: 'all-linear' cannot be combined with module names")

    @property
    def tokens(self) -> int:
        return self.seq * self.batch

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
        d["targets"] = list(self.targets)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Scenario":
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(d) - known
        if unknown:
            raise ScenarioError(f"unknown scenario field(s): {', '.join(sorted(unknown))}")
        kw = dict(d)
        if "targets" in kw and isinstance(kw["targets"], list):
            kw["targets"] = tuple(kw["targets"])
        return cls(**kw)

"""Build the real transformers + peft + bitsandbytes training step from an (Arch, Scenario).

One code path for two callers: the trace (``vramplan.trace``, fake tensors on CPU) and the profiler
(real tensors on CPU or CUDA). The model is first built on the ``meta`` device exactly as
``from_pretrained(..., quantization_config=bnb_config(scenario))`` builds it before loading weights
(transformers' own ``replace_with_bnb_linear`` with its own skip list), then the recipe and peft are
applied on meta, and only then are the tensors made concrete by ``materialize``: real random weights
quantized by bitsandbytes, or fake ones under ``FakeTensorMode``. ``prepare`` is the one
preparation (recipe, LoRA, checkpointing) both callers apply to a loaded model.

What the build changes in or stands in for the frameworks (the flash-attention-2 stand-in, the
older-bitsandbytes input saving, the packed-sequence hint, TRL's casting without trl...) is in
``vramplan.hf.interventions``, indexed there.

Torch, transformers, peft and bitsandbytes are imported inside the functions.
"""

from __future__ import annotations

import contextlib
import re
from typing import Any, Callable, Iterator

from vramplan.arch.spec import Arch
from vramplan.errors import VramplanError
from vramplan.hf import interventions
from vramplan.recipes import spec as recipe_spec
from vramplan.scenario import Attn, BatchLayout, Dtype, Hold, Loss, Offload, Optim, Quant, Recipe, RopeCache, Scenario, Strategy

INSTALL_HINT = "the trace needs the torch extra: pip install 'vramplan[torch]'"


class TraceUnsupported(VramplanError):
    """A scenario or architecture the real-framework build cannot honour."""


def require_torch() -> None:
    """Raise a one-line install hint when the heavy stack is missing."""
    try:
        import bitsandbytes  # noqa: F401
        import peft  # noqa: F401
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as e:
        raise VramplanError(f"{INSTALL_HINT} (missing: {e.name})") from None


def torch_dtype(scenario: Scenario) -> Any:
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[scenario.dtype.value]


# --------------------------------------------------------------------------------- configs
def hf_config(arch: Arch, layers: int | None = None) -> Any:
    """The transformers config of ``arch`` (its real config.json dict; for gemma3 the text part).

    ``layers`` truncates the decoder to its first ``layers`` layers, cutting per-layer lists
    (``layer_types``, ``mlp_only_layers``) to match. ``use_cache`` is off, as the Trainer runs it."""
    require_torch()
    from transformers import AutoConfig

    multimodal = arch.vision is not None  # the whole multimodal config, the decoder in text_config or flat
    cfg = dict(arch.vision.outer) if multimodal else dict(arch.config)
    model_type = arch.model_type
    cfg.pop("model_type", None)
    for key in ("architectures", "auto_map", "quantization_config", "torch_dtype", "dtype"):
        cfg.pop(key, None)
    text = cfg
    if multimodal and isinstance(cfg.get("text_config"), dict):
        text = cfg["text_config"] = dict(cfg["text_config"])
        text.pop("dtype", None), text.pop("torch_dtype", None)
    if layers is not None:
        if not 1 <= layers <= arch.num_layers:
            raise TraceUnsupported(f"layers must be between 1 and {arch.num_layers}, got {layers}")
        text["num_hidden_layers"] = layers
        for key in ("layer_types", "mlp_layer_types", "indexer_types", "no_rope_layers"):  # one entry per layer
            if isinstance(text.get(key), list):
                text[key] = text[key][:layers]
        if isinstance(text.get("hybrid_override_pattern"), str):  # Nemotron-H: the pattern sets the depth
            text["hybrid_override_pattern"] = text["hybrid_override_pattern"][:layers]
        for key in ("mlp_only_layers", "moe_layers"):  # layer indices (Llama 4's moe_layers)
            if isinstance(text.get(key), list):
                text[key] = [i for i in text[key] if i < layers]
        lac = text.get("linear_attn_config")
        if isinstance(lac, dict):  # Kimi Linear: 1-based layer numbers of each mixer kind
            text["linear_attn_config"] = lac = dict(lac)
            for key in ("kda_layers", "full_attn_layers"):
                if isinstance(lac.get(key), list):
                    lac[key] = [n for n in lac[key] if isinstance(n, int) and n <= layers]
        if isinstance(text.get("num_kv_shared_layers"), int):  # Gemma 4: the last layers reuse keys/values
            text["num_kv_shared_layers"] = max(0, text["num_kv_shared_layers"] - (arch.num_layers - layers))
    cfg["use_cache"] = False
    _require_known_type(arch)
    with transformers_rejects(arch):
        config = AutoConfig.for_model(model_type, **cfg)
    return config


def _require_known_type(arch: Arch) -> None:
    """A ``model_type`` transformers does not know is a remote-code model (its modeling file ships in the
    checkpoint's repository, ``auto_map``): vramplan never runs remote code (no ``trust_remote_code``)."""
    import transformers
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    if arch.model_type not in CONFIG_MAPPING:
        remote = " (its config's auto_map points at remote code)" if arch.config.get("auto_map") else ""
        raise TraceUnsupported(
            f"model_type '{arch.model_type}' is not a transformers {transformers.__version__} model{remote}: vramplan "
            "never runs remote code (trust_remote_code), so neither engine can price it; a transformers-native "
            "port of the model (its own model_type) can be priced")


@contextlib.contextmanager
def transformers_rejects(arch: Arch) -> Iterator[None]:
    """transformers validates a config (and reads rope types, activations...) as it builds one; its
    refusal, whatever the exception class, becomes one ``TraceUnsupported`` line naming the
    config.json field where it can be told (the key the message names, or whose value it quotes)."""
    try:
        yield
    except VramplanError:
        raise
    except Exception as e:  # noqa: BLE001 - any refusal of transformers' (huggingface_hub's strict
        # dataclass validation raises a plain Exception subclass)
        msg = (str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)).strip().splitlines()
        text = " ".join(ln.strip() for ln in msg)[:240] if msg else type(e).__name__
        key = _field_named(arch.config, e, " ".join(msg))
        where = f" (config.json field '{key}')" if key else ""
        raise TraceUnsupported(f"transformers rejects {arch.name}'s config.json{where}: {type(e).__name__}: "
                               f"{text}; the analytic engine may still price it (--method analytic)") from None


def _field_named(cfg: Any, e: BaseException, message: str, prefix: str = "") -> str | None:
    """The config key a transformers error is about: one whose value the KeyError is, or whose name
    (with spaces or underscores) the message contains; nested objects are searched too."""
    if not isinstance(cfg, dict):
        return None
    low = message.lower()
    for key, value in cfg.items():
        name = f"{prefix}{key}"
        if isinstance(e, KeyError) and e.args and isinstance(value, (str, int)) and value == e.args[0]:
            return name
        if isinstance(value, dict):
            inner = _field_named(value, e, message, f"{name}.")
            if inner:
                return inner
    for key in cfg:
        if isinstance(key, str) and "_" in key and (key.lower() in low or key.replace("_", " ").lower() in low):
            return f"{prefix}{key}"
    return None


def bnb_config(scenario: Scenario) -> Any:
    """``BitsAndBytesConfig`` with every field explicit (transformers' defaults are fp4, no double
    quantization, fp32 compute). ``None`` when the scenario does not quantize.

    The 4-bit block size is not a config field (transformers always gets bitsandbytes' default of
    64); ``materialize`` passes ``scenario.blocksize`` to ``quantize_4bit`` directly."""
    if scenario.quant is Quant.NONE:
        return None
    import torch
    from transformers import BitsAndBytesConfig

    four = scenario.quantized_4bit
    return BitsAndBytesConfig(
        load_in_4bit=four,
        load_in_8bit=not four,
        llm_int8_threshold=6.0,
        llm_int8_skip_modules=None,
        llm_int8_enable_fp32_cpu_offload=False,
        llm_int8_has_fp16_weight=False,
        bnb_4bit_compute_dtype=torch_dtype(scenario),
        bnb_4bit_quant_type=scenario.quant.value if four else "nf4",
        bnb_4bit_use_double_quant=scenario.double_quant,
        bnb_4bit_quant_storage=quant_storage_dtype(scenario),
    )


def quant_storage_dtype(scenario: Scenario) -> Any:
    """``bnb_4bit_quant_storage`` (``Scenario.quant_storage``): the dtype the packed 4-bit bytes are stored
    as (uint8 by default; a floating dtype lets FSDP shard them, as FSDP-QLoRA does)."""
    import torch

    return {"uint8": torch.uint8, "bf16": torch.bfloat16, "fp16": torch.float16,
            "fp32": torch.float32}[scenario.quant_storage.value]


def attn_implementation(scenario: Scenario) -> str:
    """The ``attn_implementation`` the model is built with. flash2 -> the sdpa stand-in's name: build
    and run such a model inside ``interventions.flash2_on_sdpa()``, which registers it."""
    if scenario.attn is Attn.FLASH2:
        return interventions.FLASH2_STANDIN
    return scenario.attn.value


# ------------------------------------------------------------------------------ the model
def _check_supported(arch: Arch, scenario: Scenario) -> None:
    if scenario.attn is Attn.SDPA and arch.attn_logit_softcapping:
        # what from_pretrained(attn_implementation="sdpa") does for Gemma 2 (_supports_sdpa = False);
        # vramplan.trace.trace and the analytic engine price the default request as eager instead
        # (vramplan.analytic.effective_attention)
        raise TraceUnsupported(
            f"{arch.name}: transformers refuses attn_implementation='sdpa' for this model (soft-capped "
            "attention scores, _supports_sdpa = False); use --attn eager (or flash2)")
    if scenario.attn is Attn.FLASH2 and arch.family.sdpa_refusal:
        # the CPU stand-in for flash-attention-2 runs sdpa (interventions item 5), which transformers refuses
        # here; on CUDA transformers swaps the request for the model's _compatible_flash_implementations
        raise TraceUnsupported(f"{arch.name}: the trace's flash-attention stand-in runs on sdpa, which transformers "
                               f"refuses for this model ({arch.family.sdpa_refusal}); price --attn flash2 with "
                               "--method analytic, or trace --attn eager")
    if scenario.attn is Attn.SDPA and arch.family.sdpa_refusal:
        raise TraceUnsupported(f"{arch.name}: transformers refuses attn_implementation='sdpa' for this model "
                               f"({arch.family.sdpa_refusal}, _supports_sdpa = False); use --attn eager (or flash2)")
    if scenario.quant is Quant.INT8:
        raise TraceUnsupported("int8 (LLM.int8) layers are not supported by the trace yet; use nf4, fp4 or none")


def meta_model(arch: Arch, scenario: Scenario, layers: int | None = None) -> Any:
    """The bare causal-LM on the meta device, its linears replaced by bitsandbytes layers as
    ``from_pretrained(quantization_config=...)`` does, floating parameters in the load dtype."""
    require_torch()
    _check_supported(arch, scenario)
    import torch
    from transformers import AutoModelForCausalLM

    config = hf_config(arch, layers)
    dtype = torch_dtype(scenario)
    auto = AutoModelForCausalLM
    if arch.vision is not None:  # the multimodal model itself (tower, projector, decoder, lm_head)
        from transformers import AutoModelForImageTextToText as auto
    impl: Any = attn_implementation(scenario)
    if arch.vision is not None and arch.vision.tower.attn_default:  # one per sub-config, those left to transformers
        impl = {k: impl for k in ("text_config", "vision_config", "audio_config")
                if isinstance(arch.vision.outer.get(k), dict) and k not in arch.vision.tower.attn_default}
    with torch.device("meta"), transformers_rejects(arch):
        model = auto.from_config(config, dtype=dtype, attn_implementation=impl)
    qcfg = bnb_config(scenario)
    if qcfg is not None:
        from transformers.integrations.bitsandbytes import replace_with_bnb_linear
        from transformers.quantizers.base import get_keys_to_not_convert

        keep_fp32 = list(getattr(model, "_keep_in_fp32_modules", None) or [])
        skip = list(set(get_keys_to_not_convert(model)) | set(keep_fp32) | set(vision_skip_modules(arch, scenario)))
        model = replace_with_bnb_linear(model, modules_to_not_convert=skip, quantization_config=qcfg)
        # from_pretrained loads every non-quantized tensor in ``dtype`` (biases of the new bnb layers
        # were created in the default fp32 on meta).
        for name, p in model.named_parameters():
            if p.is_floating_point() and p.dtype != dtype and type(p).__name__ not in ("Params4bit", "Int8Params"):
                if not any(k in name for k in keep_fp32):
                    p.data = p.data.to(dtype)
        model.is_loaded_in_4bit = scenario.quantized_4bit
        model.is_loaded_in_8bit = scenario.quant is Quant.INT8
        model.config.quantization_config = qcfg
    return model


def vision_skip_modules(arch: Arch, scenario: Scenario) -> list[str]:
    """``llm_int8_skip_modules`` entries that keep a frozen vision tower and projector unquantized
    (``Scenario.vision`` frozen: ms-swift's and Unsloth's skip lists); none otherwise."""
    from vramplan.scenario import VisionMode

    if arch.vision is None or scenario.vision is not VisionMode.FROZEN:
        return []
    return list(arch.vision.tower.modules)


def freeze_vision(model: Any, arch: Arch, scenario: Scenario) -> None:
    """Full fine-tuning with a frozen tower: its parameters keep ``requires_grad=False`` (ms-swift
    ``freeze_vit`` / ``freeze_aligner``, LLaMA-Factory ``freeze_vision_tower``)."""
    from vramplan.scenario import VisionMode

    if arch.vision is None or scenario.vision is VisionMode.TRAINED:
        return
    prefixes = tuple(f"{m}." for m in arch.vision.tower.modules)
    for name, p in model.named_parameters():
        if name.startswith(prefixes):
            p.requires_grad_(False)


def apply_recipe(model: Any, scenario: Scenario) -> Any:
    """The framework's preparation of a quantized model, as ``vramplan.recipes.spec(recipe)`` says.

    - ``spec.upcasts(quantized)`` (hf-peft, trl, axolotl on a quantized base): peft's
      ``prepare_model_for_kbit_training`` (freezes everything, upcasts every fp16/bf16 parameter that
      is not ``Params4bit`` to fp32, enables checkpointing as asked). Without quantization there is
      no k-bit preparation.
    - ``spec.cast_back`` then returns groups to the compute dtype: trl runs TRL's own
      ``peft_module_casting_to_bf16`` (norms fp32; embeddings and lm_head back to bf16; the trl extra
      is needed for it); axolotl's conversion (0.19 ``loaders/model.py``: modules whose name holds
      "norm", and the embedding modules, to ``torch_dtype``) is ``cast_groups``.
    - otherwise (plain): nothing (checkpointing is enabled by ``enable_checkpointing``).
    """
    rs = recipe_spec(scenario.recipe)
    if not rs.upcasts(scenario.quant is not Quant.NONE):
        return model
    from peft import prepare_model_for_kbit_training

    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=scenario.grad_checkpointing)
    if scenario.recipe is Recipe.TRL:
        try:
            from trl.experimental.utils import peft_module_casting_to_bf16 as trl_cast
        except ImportError:  # pragma: no cover - depends on the installed trl
            raise TraceUnsupported("the trl recipe runs TRL's own peft_module_casting_to_bf16: "
                                   "pip install 'vramplan[trl]' (trl >= 0.20 with trl.experimental)") from None
        trl_cast(model)
    elif rs.cast_back:
        cast_groups(model, rs.cast_back, torch_dtype(scenario))
    return model


def cast_groups(model: Any, groups: frozenset[str], dtype: Any) -> None:
    """Cast the floating parameters of the named groups (``vramplan.recipes.GROUPS``: "norms" = modules
    whose name contains ``norm``; "embeddings" / "lm_head" = the input / output embedding modules)
    to ``dtype``, as axolotl 0.19 does after peft's k-bit preparation."""
    mods: list[Any] = []
    if "norms" in groups:
        mods += [m for n, m in model.named_modules() if "norm" in n.rsplit(".", 1)[-1].lower()]
    if "embeddings" in groups:
        mods.append(model.get_input_embeddings())
    if "lm_head" in groups and model.get_output_embeddings() is not None:
        mods.append(model.get_output_embeddings())
    for m in mods:
        for p in m.parameters(recurse=False):
            if p.is_floating_point() and type(p).__name__ != "Params4bit":
                p.data = p.data.to(dtype)


#: Why peft cannot target a router that is an ``nn.Linear`` subclass (``Family.router_linear``).
ROUTER_LINEAR_REFUSAL = (
    "peft 0.21.2 cannot train {name} with all-linear (or a 'router' target): its all-linear reaches the "
    "MoE router (Llama4Router, an nn.Linear subclass whose forward returns (scores, logits)) and the "
    "LoRA wrapper's forward fails on that tuple (tuners/lora/layer.py Linear.forward: result.dtype); "
    "name the targets, e.g. --targets q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj")


def apply_lora(model: Any, arch: Arch, scenario: Scenario) -> Any:
    """``get_peft_model`` with the scenario's LoRA (alpha = 2r); full fine-tuning trains every
    parameter and returns the model itself."""
    if scenario.full:
        for p in model.parameters():
            p.requires_grad_(True)
        freeze_vision(model, arch, scenario)
        return model
    from peft import get_peft_model

    if arch.family.router_linear and arch.moe_layers and ("all-linear" in scenario.targets or "router" in scenario.targets):
        raise TraceUnsupported(ROUTER_LINEAR_REFUSAL.format(name=arch.name))
    try:
        model = get_peft_model(model, lora_config(scenario, arch))
    except ValueError as e:
        msg = str(e).splitlines()[0]
        if "ParamWrapper" in msg and "dropout" in msg:
            msg += (" (peft maps all-linear onto the fused MoE expert and router parameters of transformers 5,"
                    " whose LoRA wrapper has no dropout: use --lora-dropout 0)")
        raise TraceUnsupported(f"peft cannot apply LoRA to {arch.name}: {msg}") from None
    if scenario.lora_fa:
        # LoRA-FA (peft ``optimizers/lorafa.py::create_lorafa_optimizer``): every lora_A frozen, as the
        # optimizer's builder freezes them (make_optimizer builds it)
        for name, p in model.named_parameters():
            if "lora_A" in name:
                p.requires_grad_(False)
    if scenario.adapter_dtype is not Dtype.FP32:
        # adapters kept in the compute dtype (torchtune, pure-bf16 loops; peft with
        # autocast_adapter_dtype=False on a 16-bit base): cast every trainable tensor
        dt = torch_dtype(scenario)
        for p in model.parameters():
            if p.requires_grad:
                p.data = p.data.to(dt)
    return model


def lora_config(scenario: Scenario, arch: Arch | None = None) -> Any:
    """peft's ``LoraConfig`` of the scenario (alpha = 2r, no bias), shared with the framework trainers'
    profiles (``vramplan.profile.frameworks``)."""
    from peft import LoraConfig

    targets: Any = "all-linear" if scenario.targets == ("all-linear",) else list(scenario.targets)
    if arch is not None and arch.vision is not None and scenario.vision.value != "trained":
        # the decoder's linears only (ms-swift's regex over the language model, ``get_multimodal_target_regex``:
        # ``{module}(?=\.).*\.({targets})``, which also reaches a linear directly under it, such as Gemma 4's
        # per_layer_model_projection; LLaMA-Factory's freeze_vision_tower drops the tower's modules from the targets)
        names = arch.linear_names() if targets == "all-linear" else list(scenario.targets)
        heads = [n for n in names if n == "lm_head"]
        body = "|".join(sorted({re.escape(n) for n in names if n != "lm_head"}))
        targets = rf"^{re.escape(arch.vision.tower.text_prefix)}(?=\.).*\.({body})$" + ("|^lm_head$" if heads else "")
    return LoraConfig(r=scenario.rank, lora_alpha=2 * scenario.rank, lora_dropout=scenario.lora_dropout,
                      target_modules=targets, bias="none", task_type="CAUSAL_LM", use_dora=scenario.dora,
                      modules_to_save=list(scenario.modules_to_save) or None)


def enable_checkpointing(model: Any, scenario: Scenario) -> None:
    """Gradient checkpointing as the training framework enables it, then ``train()`` mode.

    Non-reentrant (``scenario.reentrant`` off) is what the transformers 5 Trainer enables
    (``TrainingArguments(gradient_checkpointing=True)``), replacing the reentrant default that peft's
    ``prepare_model_for_kbit_training`` set (it passes empty kwargs, so torch falls back to
    reentrant); reentrant is what survives when no Trainer re-enables it (peft's prep alone, ms-swift
    on one GPU, LLaMA-Factory, axolotl: ``use_reentrant=True``). Inputs require grad for peft models
    (reentrant checkpointing needs a layer input that requires grad). ``Offload.CHECKPOINTS`` runs
    transformers' ``offload=True``; the other offload kinds are frameworks' hooks the trace does not run
    (``offload_unsupported``)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if scenario.grad_checkpointing:
        kwargs = {"use_reentrant": scenario.reentrant}
        enable = getattr(base, "activation_checkpointing_enable", None)
        if enable is not None:
            # offloaded checkpoints: transformers' own ``offload=True`` (save_on_cpu around each checkpoint)
            enable(activation_checkpointing_kwargs=kwargs, offload=scenario.offload is Offload.CHECKPOINTS)
        else:  # pragma: no cover - transformers < 5
            base.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        if not scenario.full:
            base.enable_input_require_grads()
    model.train()


def prepare(model: Any, arch: Arch, scenario: Scenario) -> Any:
    """A loaded base model made ready to train, the one preparation of the trace and the profiler:
    recipe -> LoRA -> (bitsandbytes < 0.43.2 input saving, when the scenario says so) ->
    checkpointing and ``train()``. Returns the model to train (the peft model for LoRA)."""
    model = apply_recipe(model, scenario)
    if scenario.loss is Loss.CHUNKED_HEAD:
        add_fused_head(model)
    elif scenario.loss is Loss.CHUNKED_CE:
        chunked_ce_loss_class()  # loaded before any fake tensor exists
    if scenario.rope_cache is not RopeCache.NONE:
        add_rope_cache(model, arch, scenario)
    model = apply_lora(model, arch, scenario)
    if scenario.liger_rms_norm or scenario.liger_swiglu or scenario.liger_rope:
        # interventions item 25: Liger's layer kernels as the HF Trainer applies them, after peft
        from vramplan.hf import liger_layers

        if arch.family.norm_keeps_input_dtype or arch.moe_layers:
            raise TraceUnsupported("Liger's layer kernels have stand-ins for the Llama-style RMSNorm and SwiGLU MLP "
                                   "only (not Gemma's offset norms and GeGLU, nor MoE experts): price them "
                                   "with the analytic engine")

        liger_layers.patch_model(model, scenario.liger_rms_norm, scenario.liger_swiglu)
    if scenario.bnb_keeps_input:
        interventions.keep_4bit_inputs(model)
    enable_checkpointing(model, scenario)
    return model


def add_rope_cache(model: Any, arch: Arch, scenario: Scenario) -> None:
    """torchtune's precomputed RoPE table(s) (``interventions`` item 16; sizes in
    ``analytic.weights.rope_cache_bytes``): fp32 non-persistent buffers of torchtune's shapes, one on
    the decoder or one per layer's attention."""
    import torch

    n, d = arch.max_position_embeddings, arch.head_dim
    shape = (n, d // 2, 2) if scenario.rope_cache is RopeCache.SHARED else (n, 2 * d)
    dev = next(model.parameters()).device
    decoder = model.get_decoder()
    owners = [layer.self_attn for layer in decoder.layers] if scenario.rope_cache is RopeCache.PER_LAYER \
        else [decoder]
    for m in owners:
        m.register_buffer("torchtune_rope_cache", torch.empty(shape, dtype=torch.float32, device=dev),
                          persistent=False)


def add_fused_head(model: Any) -> None:
    """TRL's own fused LM head (``trl.trainer.utils.add_fused_lm_head``, as ``SFTTrainer`` ≥ 1.15 adds
    it before wrapping the model with peft, with the outputs its metrics read)."""
    try:
        from trl.trainer.utils import add_fused_lm_head
    except ImportError:
        raise TraceUnsupported("the chunked-head loss runs TRL's own fused LM head: pip install "
                               "'vramplan[trl]' (trl >= 1.15)") from None
    add_fused_lm_head(model, outputs=("log_probs", "entropy", "is_top1"))


def build_model(arch: Arch, scenario: Scenario, *, layers: int | None = None) -> Any:
    """``prepare`` on the meta model: the full module tree, all tensors on meta."""
    return prepare(meta_model(arch, scenario, layers), arch, scenario)


# ---------------------------------------------------------------------------- materialize
def materialize(model: Any, scenario: Scenario, device: str = "cpu", *, fake: bool = False,
                seed: int = 0) -> None:
    """Replace every meta tensor of ``model`` with a concrete one on ``device``.

    Real: random weights (values are irrelevant to memory), 4-bit layers quantized by
    ``bitsandbytes.functional.quantize_4bit`` into a real ``Params4bit``. Fake (call inside
    ``FakeTensorMode``): empty fake tensors; ``Params4bit`` cannot wrap a fake tensor, so the packed
    weight is a plain ``nn.Parameter`` carrying the same attributes (``quant_state``,
    ``blocksize``, ``quant_type``...; item 3 of ``vramplan.hf.interventions``). Ties (tied lm_head)
    are preserved."""
    import bitsandbytes as bnb
    import torch

    concrete = _concrete(device, fake, seed)
    memo: dict[int, Any] = {}
    for module in list(model.modules()):
        if isinstance(module, bnb.nn.Linear4bit) and module.weight.device.type == "meta":
            w = module.weight
            if id(w) not in memo:
                memo[id(w)] = _packed_weight(module, scenario, concrete(torch.empty(
                    w.shape, dtype=torch_dtype(scenario), device="meta")), fake)
            module.weight = memo[id(w)]
            module.quant_state = module.weight.quant_state
        for name, p in list(module._parameters.items()):
            if p is None or p.device.type != "meta":
                continue
            if id(p) not in memo:
                memo[id(p)] = torch.nn.Parameter(concrete(p), requires_grad=p.requires_grad)
            module._parameters[name] = memo[id(p)]
        for name, b in list(module._buffers.items()):
            if b is None or b.device.type != "meta":
                continue
            if id(b) not in memo:
                memo[id(b)] = concrete(b) if fake else torch.ones(b.shape, dtype=b.dtype, device=device)
            module._buffers[name] = memo[id(b)]


def _concrete(device: str, fake: bool, seed: int) -> Callable[[Any], Any]:
    """``f(meta_tensor)`` -> a concrete tensor of its shape and dtype on ``device``: empty (fake),
    random floating point values (scale 0.02), zeros otherwise.

    CUDA draws on the device (a 14B model's randn on the host takes a minute; values never matter
    to memory); CPU keeps its host generator and fp32 draw, so CPU runs stay reproducible."""
    import torch

    on_cuda = str(device).startswith("cuda")
    gen = None if fake else torch.Generator(device=device if on_cuda else "cpu").manual_seed(seed)

    def concrete(t: Any) -> Any:
        if fake:
            return torch.empty(t.shape, dtype=t.dtype, device=device)
        if t.is_floating_point():
            if on_cuda:
                return torch.randn(t.shape, generator=gen, dtype=t.dtype, device=device).mul_(0.02)
            x = torch.randn(t.shape, generator=gen, dtype=torch.float32) * 0.02
            return x.to(dtype=t.dtype, device=device)
        return torch.zeros(t.shape, dtype=t.dtype, device=device)

    return concrete


def _packed_weight(module: Any, scenario: Scenario, dense: Any, fake: bool) -> Any:
    """``dense`` quantized by ``bitsandbytes.functional.quantize_4bit`` at the scenario's block size:
    a real ``Params4bit``, or under fake tensors a plain ``nn.Parameter`` with its attributes."""
    import bitsandbytes as bnb
    import bitsandbytes.functional as F
    import torch

    packed, qs = F.quantize_4bit(
        dense, blocksize=scenario.blocksize, compress_statistics=scenario.double_quant,
        quant_type=scenario.quant.value, quant_storage=quant_storage_dtype(scenario),
    )
    if not fake:
        return bnb.nn.Params4bit(
            packed, requires_grad=False, quant_state=qs, blocksize=scenario.blocksize,
            compress_statistics=scenario.double_quant, quant_type=scenario.quant.value,
            quant_storage=packed.dtype, module=module, bnb_quantized=True,
        )
    p = torch.nn.Parameter(packed, requires_grad=False)
    p.quant_state, p.blocksize, p.quant_type = qs, scenario.blocksize, scenario.quant.value
    p.compress_statistics, p.quant_storage, p.bnb_quantized = scenario.double_quant, packed.dtype, True
    p.module = module
    return p


# ------------------------------------------------------------------------------- training
def make_optimizer(model: Any, scenario: Scenario) -> Any:
    """The optimizer over trainable parameters. torch AdamW is the fused kernel, as the HF Trainer's
    default ``adamw_torch_fused``. Build 8-bit optimizers outside fake mode (bitsandbytes fills its
    quantization maps from Python lists)."""
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise TraceUnsupported("the scenario leaves no trainable parameter")
    opt = scenario.optimizer
    lr = 1e-4
    if scenario.lora_fa:
        from peft.optimizers import create_lorafa_optimizer

        return create_lorafa_optimizer(model, r=scenario.rank, lora_alpha=2 * scenario.rank, lr=lr)
    if opt is Optim.ADAMW:
        return torch.optim.AdamW(params, lr=lr, weight_decay=0.0, fused=True)
    if opt is Optim.SGD:
        return torch.optim.SGD(params, lr=lr, momentum=0.0)
    import bitsandbytes as bnb

    if opt is Optim.ADAMW8BIT:
        return bnb.optim.AdamW8bit(params, lr=lr, weight_decay=0.0)
    if opt is Optim.PAGED_ADAMW:
        return bnb.optim.PagedAdamW(params, lr=lr, weight_decay=0.0)
    if opt is Optim.PAGED_ADAMW8BIT:
        return bnb.optim.PagedAdamW8bit(params, lr=lr, weight_decay=0.0)
    raise TraceUnsupported(f"optimizer {opt.value} is not supported")  # pragma: no cover


def synthetic_batch(arch: Arch, scenario: Scenario, device: str = "cpu", *, seed: int = 0) -> dict[str, Any]:
    """``input_ids`` (int64, in the shape of ``batch_shape``), ``labels`` a copy, and the layout's
    ``layout_inputs`` (none for one sample per row: an all-ones mask is equivalent to none, as
    transformers then skips the mask and runs SDPA with ``is_causal``)."""
    import torch

    g = torch.Generator(device="cpu").manual_seed(seed)
    ids = torch.randint(0, arch.vocab_size, batch_shape(scenario), generator=g)
    if arch.vision is not None:  # no stray image placeholder among the random text ids
        image_id = arch.vision.outer.get("image_token_id", arch.vision.outer.get("image_token_index"))
        ids[ids == image_id] = 0
        for key in ("video_token_id", "vision_start_token_id", "audio_token_id"):
            if arch.vision.outer.get(key) is not None:
                ids[ids == arch.vision.outer[key]] = 0
    images = {k: t.to(device) for k, t in vision_inputs(arch, scenario, ids).items()}
    ids = ids.to(device)
    return {"input_ids": ids, "labels": ids.clone(), **images, **layout_inputs(scenario, device)}


def vision_inputs(arch: Arch, scenario: Scenario, ids: Any) -> dict[str, Any]:
    """The processor's image inputs for ``scenario.images`` images per sample of ``image_size``, and
    their placeholder tokens written into ``ids`` (in place, from position 1 on: Qwen's
    ``<|vision_start|>`` + one ``<|image_pad|>`` per merged feature + ``<|vision_end|>``; Mistral 3's
    rows of ``[IMG]`` per feature, each closed by a break token, here a text id). ``pixel_values``
    in fp32, as the processors return them (the model casts them to the tower's dtype):

    - Qwen (``Tower.inputs`` ``grid_thw``): ``pixel_values`` (images · patches, C·tp·p²) and
      ``image_grid_thw`` (images, 3) = (1, h/p, w/p) (transformers 5.24 ``image_processing_qwen2_vl.py``),
      and ``mm_token_type_ids`` (int64, as ``ids``: 1 at image tokens; ``processing_utils.py``
      ``create_mm_token_type_ids``, which M-RoPE reads);
    - Pixtral: ``pixel_values`` (images, C, h, w) and ``image_sizes`` (images, 2) = (h, w) after the
      resize (``image_processing_pixtral.py``);
    - Gemma 4 (``position_ids``): ``<boi>`` + one image token per soft token + ``<eoi>`` in the text,
      ``pixel_values`` padded to max_patches, ``image_position_ids`` and ``mm_token_type_ids``
      (``_gemma4_inputs``).
    Empty for a text-only model or no images."""
    import torch

    v = arch.vision
    if v is None or not scenario.images:
        return {}
    n = scenario.images * ids.shape[0]
    W, H = scenario.image_wh
    patches, features, tokens = v.image(W, H)
    if scenario.images * (tokens + 2) + 1 > ids.shape[1]:
        raise TraceUnsupported(f"{scenario.images} image(s) of {tokens} tokens each do not fit in --seq {scenario.seq}")
    image_id = v.outer.get("image_token_id", v.outer.get("image_token_index"))
    start, end = v.outer.get("vision_start_token_id"), v.outer.get("vision_end_token_id")
    pos = 1
    for _ in range(scenario.images):
        if v.tower.inputs == "pixel_values":  # Gemma 3: <start_of_image>, the soft tokens, <end_of_image>
            start, end = v.outer.get("boi_token_index"), v.outer.get("eoi_token_index")
        if v.tower.inputs == "position_ids":  # Gemma 4: <boi>, one image token per soft token, <eoi>
            start, end = v.outer.get("boi_token_id"), v.outer.get("eoi_token_id")
        if v.tower.inputs in ("grid_thw", "pixel_values", "position_ids"):
            for tok, width in ((start, 1), (image_id, features), (end, 1)):
                if tok is not None:
                    ids[:, pos:pos + width] = tok
                    pos += width
        else:
            rows = tokens - features  # one break token per row of merged features
            for _r in range(rows):
                ids[:, pos:pos + features // rows] = image_id
                pos += features // rows + 1
    if v.tower.inputs == "pixel_values":  # every image resized to the tower's square (Gemma 3's processor)
        S = v.get("image_size")
        return {"pixel_values": torch.zeros(n, v.get("num_channels"), S, S, dtype=torch.float32)}
    if v.tower.inputs == "position_ids":
        return _gemma4_inputs(v, n, W, H, patches, ids, image_id)
    if v.tower.inputs == "grid_thw":
        p, tp, C = v.get("patch_size"), v.get("temporal_patch_size"), v.get("in_channels")
        gh, gw = _qwen_grid_sides(v, W, H)
        return {"pixel_values": torch.zeros(n * patches, C * tp * p * p, dtype=torch.float32),
                "image_grid_thw": torch.tensor([[1, gh, gw]] * n, dtype=torch.long),
                # the processor's per-token modality ids (1 = image), which M-RoPE reads
                "mm_token_type_ids": (ids == image_id).long()}
    P = v.get("patch_size") * v.outer.get("spatial_merge_size", 2)
    rows = tokens - features
    h, w = rows * P, (features // rows) * P
    return {"pixel_values": torch.zeros(n, v.get("num_channels"), h, w, dtype=torch.float32),
            "image_sizes": torch.tensor([[h, w]] * n, dtype=torch.long)}


def _gemma4_inputs(v: Any, n: int, width: int, height: int, max_patches: int, ids: Any, image_id: int) -> dict[str, Any]:
    """Gemma 4's processor outputs for ``n`` W × H images (transformers 5.24 ``image_processing_gemma4.py``
    ``_preprocess``): ``pixel_values`` (n, max_patches, 3·p²) fp32, the (h/p)·(w/p) patches of the
    resized image (``vision.gemma4_resize``) then zero padding; ``image_position_ids`` (n, max_patches, 2)
    int64, each patch's (x, y) in x-fastest order (``torch.meshgrid(..., indexing="xy")``), padding
    (-1, -1); and ``mm_token_type_ids`` (1 at image tokens; ``processing_utils.py``
    ``create_mm_token_type_ids``), which ``Gemma4Model`` reads for the bidirectional image mask."""
    import torch

    from vramplan.arch import vision as vis

    p = v.get("patch_size")
    h, w = vis.gemma4_resize(v, width, height)
    ph, pw = h // p, w // p
    gx, gy = torch.meshgrid(torch.arange(pw), torch.arange(ph), indexing="xy")
    real = torch.stack((gx, gy), dim=-1).reshape(ph * pw, 2)
    pos = torch.full((max_patches, 2), -1, dtype=torch.long)
    pos[: ph * pw] = real
    return {"pixel_values": torch.zeros(n, max_patches, 3 * p * p, dtype=torch.float32),
            "image_position_ids": pos.unsqueeze(0).repeat(n, 1, 1),
            "mm_token_type_ids": (ids == image_id).long()}


def _qwen_grid_sides(v: Any, width: int, height: int) -> tuple[int, int]:
    """(h/p, w/p) of a Qwen image after the processor's resize (``Vision.image``'s grid)."""
    from vramplan.arch import vision as vis

    p, m = v.get("patch_size"), v.get("spatial_merge_size")
    h, w = vis.smart_resize(height, width, p * m, *v.tower.pixels)
    return h // p, w // p


#: The image inputs a multimodal batch carries (``vision_inputs``), passed to the model's forward.
IMAGE_KEYS = ("pixel_values", "image_grid_thw", "image_sizes", "mm_token_type_ids", "image_position_ids")


def batch_shape(scenario: Scenario) -> tuple[int, int]:
    """(rows, tokens per row): one row of batch·seq for padding-free batches, else batch × seq."""
    if scenario.packing is BatchLayout.PADDING_FREE:
        return 1, scenario.batch * scenario.seq
    return scenario.batch, scenario.seq


def packed_positions(seq: int) -> list[int]:
    """Position ids of one packed row of ``seq`` tokens: two samples (the halves), each counting from 0.
    How many samples share a row changes no tensor's size; two make the row packed."""
    half = seq // 2
    return list(range(half)) + list(range(seq - half)) if seq >= 2 else [0]


def layout_inputs(scenario: Scenario, device: str = "cpu") -> dict[str, Any]:
    """The collator's extra inputs for ``scenario.packing``:

    - padding-free: ``position_ids`` (1, batch·seq) restarting at every sample (transformers
      ``DataCollatorWithFlattening``; TRL ``DataCollatorForLanguageModeling(padding_free=True)``);
    - packed: ``position_ids`` (batch, seq), two samples per row (``packed_positions``): axolotl's
      multipack collator (``utils/collators/batching.py``), torchtune ``PackedDataset``;
    - packed-mask: the same position ids and LLaMA-Factory's 4D mask, (batch, 1, seq, seq) in the
      compute dtype, 0 where a token may attend and the dtype's minimum elsewhere
      (llamafactory 0.9.5 ``data/collator.py::prepare_4d_attention_mask``, built on the host by the
      collator; only its result reaches the device)."""
    import torch

    layout = scenario.packing
    if layout is BatchLayout.NONE:
        return {}
    if layout is BatchLayout.PADDING_FREE:
        pos = torch.arange(scenario.seq, device=device).repeat(scenario.batch).unsqueeze(0)
        return {"position_ids": pos}
    row = torch.tensor(packed_positions(scenario.seq), device=device)
    pos = row.unsqueeze(0).repeat(scenario.batch, 1)
    if layout is BatchLayout.PACKED:
        return {"position_ids": pos}
    dtype = torch_dtype(scenario)
    seg = (row == 0).cumsum(0)  # segment id of each token, from 1 (prepare_4d_attention_mask's input)
    same = seg.unsqueeze(0) == seg.unsqueeze(1)
    allowed = same & torch.tril(torch.ones(scenario.seq, scenario.seq, dtype=torch.bool, device=device))
    mask = torch.where(allowed, torch.zeros((), dtype=dtype, device=device), torch.finfo(dtype).min)
    return {"position_ids": pos, "attention_mask": mask.expand(scenario.batch, 1, -1, -1).contiguous()}


def native_amp(scenario: Scenario) -> bool:
    """Whether accelerate wraps the model's forward in ``torch.autocast`` and its outputs in
    ``convert_to_fp32`` (its ``native_amp``): under 16-bit mixed precision, except under DeepSpeed,
    whose engine casts the parameters itself (accelerate 1.16 ``accelerator.py`` L535-566)."""
    return (scenario.autocast and scenario.dtype is not Dtype.FP32
            and scenario.strategy not in (Strategy.ZERO2, Strategy.ZERO3))


def autocast_context(scenario: Scenario, device_type: str) -> Any:
    import torch

    if native_amp(scenario):
        return torch.autocast(device_type=device_type, dtype=torch_dtype(scenario))
    return contextlib.nullcontext()


def _forward_loss(model: Any, batch: dict[str, Any], scenario: Scenario) -> tuple[Any, Any]:
    """(model output, loss) of one forward, by ``scenario.loss`` (see ``train_step``)."""
    import torch

    ids, labels = batch["input_ids"], batch["labels"]
    extra = {k: batch[k] for k in ("position_ids", "attention_mask", *IMAGE_KEYS) if k in batch}
    if scenario.loss is Loss.LEGACY:
        outputs = model(input_ids=ids, use_cache=False, **extra)
        outputs["logits"] = outputs["logits"].float()
        shifted = outputs["logits"][..., :-1, :].contiguous()
        targets = labels[..., 1:].contiguous()
        loss = torch.nn.functional.cross_entropy(shifted.view(-1, shifted.shape[-1]), targets.view(-1))
        return outputs, loss
    if scenario.loss is Loss.CHUNKED_HEAD:
        with interventions.fused_head_positions(scenario.batch * min(scenario.kept_positions, scenario.seq - 1)):
            outputs = model(input_ids=ids, labels=labels, use_cache=False, fused_lm_head=True, **extra)
        return outputs, outputs.loss
    if scenario.loss is Loss.CHUNKED_CE:
        return None, _chunked_ce_loss(model, ids, labels, extra)
    if scenario.loss in (Loss.LIGER, Loss.CCE, Loss.UNSLOTH):
        from vramplan.hf.fused_losses import no_logits_loss

        return None, no_logits_loss(model, ids, labels, scenario, extra)
    k = scenario.kept_positions
    if k >= scenario.seq:
        outputs = model(input_ids=ids, labels=labels, use_cache=False, **extra)
        return outputs, outputs.loss
    if ids.shape[1] != scenario.seq:
        raise TraceUnsupported("label_fraction < 1 (logits at the label positions) is traced for one sample per "
                               "row of --seq tokens; a padding-free row keeps its labels' positions by index")
    # logits only at the label positions (ms-swift ``use_logits_to_keep``): the last k positions, by
    # an index tensor for one sequence (swift's boolean-mask indexing copies the rows) or a suffix
    # length for a batch
    keep: Any = k if ids.shape[0] > 1 else torch.arange(scenario.seq - k, scenario.seq, device=ids.device)
    outputs = model(input_ids=ids, labels=labels[:, -k:], use_cache=False, logits_to_keep=keep, **extra)
    return outputs, outputs.loss


def chunked_ce_loss_class() -> Any:
    """torchtune's own ``CEWithChunkedOutputLoss`` (the torchtune extra), loaded from its source file:
    ``import torchtune`` imports torchao, whose NF4 path torchtune 0.6 needs (torchao <= 0.10) and which
    peft 0.21 refuses (it requires torchao > 0.16) once installed; the loss module itself needs only torch."""
    import importlib.util
    import sys
    from pathlib import Path

    name = "vramplan_torchtune_ce_chunked_output_loss"
    if name in sys.modules:
        return sys.modules[name].CEWithChunkedOutputLoss
    spec = importlib.util.find_spec("torchtune")
    path = Path(spec.origin).parent / "modules" / "loss" / "ce_chunked_output_loss.py" if spec and spec.origin \
        else None
    if path is None or not path.is_file():
        raise TraceUnsupported("the chunked-ce loss runs torchtune's own CEWithChunkedOutputLoss: pip install "
                               "'vramplan[torchtune]'")
    mod_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(module)  # type: ignore[union-attr]
    sys.modules[name] = module
    return module.CEWithChunkedOutputLoss


def _chunked_ce_loss(model: Any, ids: Any, labels: Any, extra: dict[str, Any] | None = None) -> Any:
    """torchtune's loss step on a transformers model: the decoder's normed hidden states cut into
    ``num_output_chunks`` sequence chunks, the output projection per chunk (torchtune's
    ``TransformerDecoder`` with ``set_num_output_chunks(8)``), labels shifted as the recipe shifts
    them, and torchtune's own ``CEWithChunkedOutputLoss``; the chunk list is deleted after the loss
    (``del logits`` in the 0.6 recipe's ``_loss_step``)."""
    import torch
    import torch.nn.functional as F

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    loss_fn = chunked_ce_loss_class()()
    hidden = base.model(input_ids=ids, use_cache=False, **(extra or {})).last_hidden_state
    head = base.get_output_embeddings()
    if hasattr(head, "lora_A"):
        raise TraceUnsupported("the chunked-ce loss projects with the frozen output weight: leave lm_head out "
                               "of the LoRA targets (torchtune's apply_lora_to_output: False)")
    logits = [F.linear(chunk, head.weight, head.bias) for chunk in hidden.chunk(loss_fn.num_output_chunks, dim=1)]
    del hidden
    ignore = torch.full_like(labels[:, :1], loss_fn.ignore_index)
    shifted = torch.hstack((labels[:, 1:], ignore))
    loss = loss_fn(logits, shifted)
    del logits
    return loss


def train_step(model: Any, optimizer: Any, batch: dict[str, Any], scenario: Scenario,
               on_phase: Callable[[str], None] | None = None, max_grad_norm: float | None = 1.0,
               carry: dict[str, Any] | None = None, backward: Callable[[Any], None] | None = None,
               step: Callable[[], None] | None = None) -> None:
    """One training step: forward and loss (under autocast when asked), backward, gradient
    clipping to ``max_grad_norm`` (``TrainingArguments`` default 1.0; ``None`` skips it),
    ``optimizer.step()``, ``zero_grad(set_to_none=True)``.

    - ``scenario.loss == hf``: the model computes its own loss from ``labels`` (transformers 5
      ``ForCausalLMLoss``).
    - ``scenario.loss == legacy``: the transformers ≤ 4.44 sequence, written out here on a
      transformers 5 model: the logits are replaced by their fp32 upcast in the output (the 16-bit
      ones are freed), the shifted logits are copied (``[..., :-1, :].contiguous()``) and fed with
      the shifted labels to ``cross_entropy``; the copy dies with the loss computation.
    - ``scenario.loss == chunked-head``: TRL's fused LM head (``add_fused_head``), called with
      ``fused_lm_head=True`` as ``SFTTrainer.compute_loss`` calls it.
    - ``scenario.loss == chunked-ce``: torchtune's chunked output and loss (``_chunked_ce_loss``).
    - ``scenario.loss`` liger / cce / unsloth: the decoder's hidden states into the stand-in of that
      fused loss (``vramplan.hf.fused_losses.no_logits_loss``).
    - ``scenario.label_fraction < 1`` (hf loss): logits only at the last ``kept_positions``
      (``logits_to_keep``), labels cut to match.
    - ``scenario.hold_logits``: ``none`` drops the output before backward (``Trainer.compute_loss``
      returns only the loss); ``step`` keeps it to the end of this step; ``loop`` also keeps it in
      ``carry["outputs"]`` until the next step's forward has returned and rebinds it.
    - ``backward(loss)`` / ``step()``: a strategy's engine that replaces ``loss.backward()`` and the
      clip + ``optimizer.step()`` + ``zero_grad`` (DeepSpeed's ``engine.backward`` / ``engine.step``;
      ``vramplan.parallel.torch_wrap.Wrapped``); None runs them as above.
    """
    from vramplan.hf.liger_layers import rope_patched

    with rope_patched(model, scenario.liger_rope):  # backward too: checkpointing recomputes there
        _train_step(model, optimizer, batch, scenario, on_phase, max_grad_norm, carry, backward, step)


def _train_step(model: Any, optimizer: Any, batch: dict[str, Any], scenario: Scenario,
                on_phase: Callable[[str], None] | None, max_grad_norm: float | None,
                carry: dict[str, Any] | None, backward: Callable[[Any], None] | None = None,
                step: Callable[[], None] | None = None) -> None:
    import torch

    device_type = batch["input_ids"].device.type
    with interventions.sequence_layout(scenario.packing is not BatchLayout.NONE), \
            autocast_context(scenario, device_type):
        outputs, loss = _forward_loss(model, batch, scenario)
    held = outputs if scenario.hold_logits is not Hold.NONE else None  # alive to the end of this step
    if scenario.hold_logits is Hold.LOOP and carry is not None:
        carry["outputs"] = outputs  # rebinding releases the previous step's output only now
    del outputs
    if on_phase:
        on_phase("forward")
    if backward is not None:
        backward(loss)
    else:
        loss.backward()
    del loss
    if on_phase:
        on_phase("backward")
    if step is not None:
        step()
        if on_phase:
            on_phase("optimizer")
        return
    if max_grad_norm is not None:
        params = [p for p in model.parameters() if p.grad is not None]
        torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    optimizer.step()
    if on_phase:
        on_phase("optimizer")
    optimizer.zero_grad(set_to_none=True)


# ----------------------------------------------------------------------------- evaluation
def eval_forward(model: Any, batch: dict[str, Any], scenario: Scenario) -> tuple[Any, Any]:
    """(loss, logits) of one eval batch as the HF Trainer's ``prediction_step`` computes them
    (transformers 5.24 ``trainer.py`` L3193-3300): under ``torch.no_grad()`` the model's own loss
    forward (``compute_loss(return_outputs=True)``, autocast as accelerate wraps the forward), and
    under mixed precision accelerate's ``convert_to_fp32`` on the outputs (``prepare_model``:
    ``convert_outputs_to_fp32(autocast(forward))``). The model is in eval mode (the caller's)."""
    import torch

    from vramplan.hf.liger_layers import rope_patched

    device_type = batch["input_ids"].device.type
    with torch.no_grad(), rope_patched(model, scenario.liger_rope):
        with interventions.sequence_layout(False), autocast_context(scenario, device_type):
            outputs, loss = _forward_loss(model, batch, scenario)
        if native_amp(scenario):
            from accelerate.utils import convert_to_fp32

            outputs = convert_to_fp32(outputs)
        logits = outputs["logits"]
        del outputs
    return loss.detach().mean(), logits.detach()

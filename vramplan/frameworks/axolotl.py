"""axolotl (``axolotl train config.yml``): its YAML.

Read from axolotl 0.19.0 (research §2): with ``adapter: qlora`` + ``load_in_4bit`` the bnb config is
fixed (nf4, double quant, compute = torch_dtype); peft's k-bit preparation runs, then norms,
embeddings and lm_head are cast back to torch_dtype (``Recipe.AXOLOTL``); checkpointing kwargs
default to ``use_reentrant: True``; fp32 adapters unless ``peft_autocast_adapter_dtype: false``.
"""

from __future__ import annotations

from typing import Any

from vramplan.frameworks import base as b
from vramplan.frameworks import parallel as par
from vramplan.frameworks.base import MISSING, Era, Framework, Key

KEYS = (
    Key("base_model", MISSING, "model id or path"),
    Key("adapter", None, "lora / qlora; unset = full fine-tuning"),
    Key("load_in_4bit", False, "4-bit base (with adapter: qlora)"),
    Key("load_in_8bit", False, "8-bit base"),
    Key("bnb_config_kwargs", None, "overrides of the fixed bnb config"),
    Key("lora_r", MISSING, "LoRA rank (no default)"),
    Key("lora_dropout", 0.0, "LoRA dropout"),
    Key("lora_target_modules", None, "LoRA target names"),
    Key("lora_target_linear", None, "true = every linear but lm_head"),
    Key("peft_autocast_adapter_dtype", None, "false = adapters in torch_dtype"),
    Key("peft_use_dora", None, "DoRA"),
    Key("peft_use_rslora", None, "rsLoRA (scaling only: memory-neutral)"),
    Key("lora_modules_to_save", None, "modules_to_save (embed_tokens, lm_head)"),
    Key("sequence_len", 512, "tokens per row"),
    Key("pad_to_sequence_len", None, "None: pad each batch to a multiple of pad_to_multiple_of; true: of "
                                     "sequence_len; false: no padding to a multiple"),
    Key("pad_to_multiple_of", None, "None = 64"),
    Key("micro_batch_size", 1, "micro-batch"),
    Key("gradient_checkpointing", False, "checkpointing (schema default off; true, offload)"),
    Key("gradient_checkpointing_kwargs", None, "None = {use_reentrant: true}"),
    Key("bf16", "auto", "bf16 (auto = when the GPU has it)"),
    Key("fp16", None, "fp16"),
    Key("bfloat16", None, "bf16 weights (older flag)"),
    Key("float16", None, "fp16 weights (older flag)"),
    Key("attn_implementation", None, "attention (None = sdpa)"),
    Key("flash_attention", None, "legacy flag: flash_attention_2"),
    Key("sdp_attention", None, "legacy flag: sdpa"),
    Key("eager_attention", None, "legacy flag: eager"),
    Key("optimizer", "adamw_torch_fused", "HF optimizer name"),
    Key("sample_packing", None, "multipack: rows of sequence_len holding several samples"),
    Key("sdpa_varlen", None, "None = auto varlen_attn for sdpa packing (torch >= 2.10, head_dim <= 256, no "
                             "sliding window)"),
    Key("activation_offloading", False, "true/disk: TRL OffloadActivations; legacy/hidden_states: offloaded "
                                        "checkpoints"),
    Key("chunked_cross_entropy", None, "compiled chunked CE (not priced: the full-vocabulary loss)"),
    Key("plugins", None, "integrations: LigerPlugin, CutCrossEntropyPlugin (priced); others noted"),
    Key("liger_fused_linear_cross_entropy", None, "with LigerPlugin: Liger's FLCE (Loss.LIGER); None = off"),
    Key("liger_rms_norm", None, "with LigerPlugin: Liger RMSNorm (priced as transformers')"),
    Key("liger_glu_activation", None, "with LigerPlugin: Liger SwiGLU (priced as transformers')"),
    Key("liger_rope", None, "with LigerPlugin: Liger RoPE (priced as transformers')"),
    Key("liger_cross_entropy", None, "with LigerPlugin: Liger CE on the full logits (priced as transformers')"),
    Key("cut_cross_entropy", True, "with CutCrossEntropyPlugin: on once the plugin is listed (Loss.CCE)"),
    Key("lora_mlp_kernel", None, "fused LoRA kernel (kernels/lora.py), None = auto on for lora/qlora"),
    Key("lora_qkv_kernel", None, "fused LoRA kernel (kernels/lora.py), None = auto on for lora/qlora"),
    Key("lora_o_kernel", None, "fused LoRA kernel (kernels/lora.py), None = auto on for lora/qlora"),
    Key("lora_embedding_kernel", None, "fused LoRA embedding kernel (an explicit value stops the auto rule)"),
    Key("trust_remote_code", None, "remote model code (no fused LoRA kernels by default)"),
    Key("fp32_norms", None, "norms kept fp32"),
    Key("deepspeed", None, "DeepSpeed config path (deepspeed_configs/zero*.json known when absent) or mapping"),
    Key("fsdp", None, "legacy FSDP option list (full_shard, offload ...)"),
    Key("fsdp_config", None, "FSDP settings: presence turns FSDP on"),
    Key("fsdp_version", None, "FSDP version (None = fsdp_config's, else 1: FSDP1)"),
    Key("fsdp_config.fsdp_version", None, "FSDP version (fsdp_config spelling)", aliases=("fsdp_config.version",)),
    Key("fsdp_config.offload_params", None, "FSDP CPU offload of parameters, gradients and optimizer state",
        aliases=("fsdp_config.fsdp_offload_params",)),
    Key("fsdp_config.reshard_after_forward", None, "only true is passed on (FSDP_RESHARD_AFTER_FORWARD)",
        aliases=("fsdp_config.fsdp_reshard_after_forward",)),
    Key("fsdp_config.activation_checkpointing", None, "FSDP's non-reentrant layer checkpointing",
        aliases=("fsdp_config.fsdp_activation_checkpointing",)),
    Key("fsdp_config.cpu_ram_efficient_loading", None, "rank 0 loads the weights (load time only)",
        aliases=("fsdp_config.fsdp_cpu_ram_efficient_loading",)),
    Key("ddp_bucket_cap_mb", None, "DDP bucket size in MiB (None = torch's 25)"),
    Key("ddp_find_unused_parameters", None, "DDP unused-parameter search (no memory priced)"),
    Key("rl", None, "preference training (issue 17)"),
    Key("val_set_size", 0.0, "validation split: a fraction, or a count when >= 1"),
    Key("test_datasets", None, "validation datasets"),
    Key("eval_batch_size", None, "evaluation batch (None = micro_batch_size)"),
    Key("eval_steps", None, "evaluate every n steps"),
    Key("evals_per_epoch", None, "evaluations per epoch"),
    Key("eval_strategy", None, "evaluation strategy"),
    Key("do_causal_lm_eval", None, "generation metrics in a callback (not priced)"),
)

_SOURCE = "axolotl 0.19.0: loaders/model.py, utils/schemas/*, utils/config/__init__.py (research §2)"


def seq_multiple(data: dict[str, Any]) -> int:
    """The multiple a batch's length is padded to (1: none), for ``plan`` and the profile runner."""
    pad, m = data.get("pad_to_sequence_len"), data.get("pad_to_multiple_of")
    if pad is not None and not b.boolean(pad, "pad_to_sequence_len"):
        return 1
    return b.integer(m, "pad_to_multiple_of", minimum=1) if m is not None else 64


def pads_to_seq(data: dict[str, Any]) -> bool:
    """``pad_to_sequence_len: true``: axolotl's collator pads every batch to ``sequence_len`` (rounded up to
    the multiple), not to its longest row (``core/builders/causal.py``, ``build_collator``)."""
    pad = data.get("pad_to_sequence_len")
    return pad is not None and b.boolean(pad, "pad_to_sequence_len")


def padded_length(r: b.Reader, length: int) -> int:
    """The longest row a batch runs at: axolotl's collator (``core/builders/causal.py``,
    ``build_collator``) pads to a multiple of ``pad_to_multiple_of or 64`` unless ``pad_to_sequence_len``
    is false (true pads every batch to that multiple of ``sequence_len``; unset pads the longest row,
    which is ``sequence_len`` at worst; ``sample_packing`` sets it true). Both keys read through ``r``
    (recorded as used or defaulted), the rule is ``seq_multiple``'s."""
    r.get("pad_to_sequence_len")
    r.get("pad_to_multiple_of")
    m = seq_multiple(r.data)
    return m * -(-length // m)


def scenario(r: b.Reader, era: Era, arch: Any, notes: list[str]) -> dict[str, Any]:
    who = "axolotl"
    if r.get("rl"):
        raise b.ConfigError(f"{who}: rl: {r.get('rl')} (preference training) is not priced yet (issue 17)")
    out: dict[str, Any] = {}
    adapter = r.get("adapter")
    bf16 = r.get("bf16")
    bf16_on = str(bf16).lower() in ("auto", "full") or b.boolean(bf16, "bf16") or b.boolean(r.get("bfloat16"), "bfloat16")
    fp16_on = b.boolean(r.get("fp16"), "fp16") or b.boolean(r.get("float16"), "float16")
    out["dtype"] = "bf16" if bf16_on else ("fp16" if fp16_on else "fp32")
    if adapter is None:
        out["full"] = True
        out["quant"] = "none"
    else:
        adapter = str(adapter).lower()
        if adapter not in ("lora", "qlora"):
            raise b.ConfigError(f"{who}: adapter '{adapter}' is not priced (lora or qlora)")
        four = b.boolean(r.get("load_in_4bit"), "load_in_4bit")
        eight = b.boolean(r.get("load_in_8bit"), "load_in_8bit")
        if adapter == "qlora" and not four:
            raise b.ConfigError(f"{who}: adapter: qlora needs load_in_4bit: true")
        if four and adapter == "lora":
            notes.append("adapter: lora with load_in_4bit builds no bnb config in axolotl 0.19: priced unquantized")
            four = False
        out["quant"] = "nf4" if four else ("int8" if eight else "none")
        if four:
            out["double_quant"] = True
            kw = r.get("bnb_config_kwargs") or {}
            if not isinstance(kw, dict):
                raise b.ConfigError(f"{who}: bnb_config_kwargs must be a mapping")
            if "bnb_4bit_quant_type" in kw:
                out["quant"] = str(kw["bnb_4bit_quant_type"]).lower()
            if "bnb_4bit_use_double_quant" in kw:
                out["double_quant"] = b.boolean(kw["bnb_4bit_use_double_quant"], "bnb_4bit_use_double_quant")
        out["rank"] = b.integer(r.get("lora_r"), "lora_r")
        out["lora_dropout"] = b.fraction(r.get("lora_dropout"), "lora_dropout")
        names = b.targets(r.get("lora_target_modules"), "lora_target_modules")
        linear = r.get("lora_target_linear")
        if linear is not None and b.boolean(linear, "lora_target_linear"):
            out["targets"] = ("all-linear",)
        else:
            out["targets"] = names or b.peft_default_targets(arch, who)
        b.adapter_variant(r, out, "peft_use_dora", "lora_modules_to_save", "peft_use_rslora")
        autocast_adapter = r.get("peft_autocast_adapter_dtype")
        if autocast_adapter is not None and not b.boolean(autocast_adapter, "peft_autocast_adapter_dtype"):
            out["adapter_dtype"] = out["dtype"]
        out.update(_kernels(r, eight and not four, notes))
        if four:
            from vramplan.breakdown import fmt_bytes

            n = arch.embed_params + arch.lm_head_params + arch.norm_params
            notes.append(f"axolotl 0.19 upcasts embeddings, lm_head and norms to fp32 while loading and casts them "
                         f"back before training: {fmt_bytes(4 * n)} at that moment against {fmt_bytes(2 * n)} in "
                         "the step, a load-time peak the step's budget does not include")
        if r.get("fp32_norms"):
            notes.append("fp32_norms: norms kept fp32 are not priced separately; priced with norms in torch_dtype")
    gc = r.get("gradient_checkpointing")
    off = r.get("activation_offloading")
    off = str(off).lower() if off is not None and not isinstance(off, bool) else off
    if isinstance(gc, str) and gc.lower() in ("offload", "offload_disk"):
        # utils/schemas/validation.py L1576-1593: converted to gradient_checkpointing: true +
        # activation_offloading: true (or "disk")
        off = True if gc.lower() == "offload" else "disk"
        gc = True
    out["grad_checkpointing"] = b.boolean(gc, "gradient_checkpointing")
    kwargs = b.mapping(r.get("gradient_checkpointing_kwargs"), "gradient_checkpointing_kwargs")
    reent = kwargs.get("use_reentrant", True)
    out["reentrant"] = b.boolean(reent, "use_reentrant")
    out["attn"] = _attn(r)
    length = b.integer(r.get("sequence_len"), "sequence_len")
    out["seq"] = padded_length(r, length)
    if out["seq"] != length:
        notes.append(f"axolotl's collator pads each batch to a multiple of {seq_multiple(r.data)} "
                     f"(pad_to_multiple_of, default 64; pad_to_sequence_len false turns it off): a row of "
                     f"sequence_len {length} runs at {out['seq']} positions, priced so")
    out["batch"] = b.integer(r.get("micro_batch_size"), "micro_batch_size")
    out["optimizer"] = b.optimizer(r.get("optimizer"), who)
    if b.boolean(r.get("sample_packing") or False, "sample_packing"):
        out["packing"] = "packed"  # multipack bins, padded as any batch (pad_to_sequence_len defaults on)
        out["attn"] = _packed_attn(r, arch, out["attn"], notes)
    if off in (True, "true", "1"):
        # TRL OffloadActivations around training_step (core/trainers/mixins/activation_checkpointing.py);
        # the loader still enables layer checkpointing when gradient_checkpointing is set, so with it
        # only the checkpoint inputs reach the hooks (loaders/model.py L355-381)
        out["offload"] = "activations"
    elif off in ("legacy", "hidden_states"):
        if not out["grad_checkpointing"]:
            raise b.ConfigError(f"{who}: activation_offloading {off} offloads checkpoints and needs "
                                "gradient_checkpointing")
        # legacy: CPU_Offloaded_Gradient_Checkpointer copies each layer input to the CPU and recomputes;
        # hidden_states: the checkpoint inputs offloaded (monkeypatch/gradient_checkpointing/offload_cpu.py)
        out["offload"] = "checkpoints"
    elif off == "disk":
        notes.append("activation_offloading: disk writes the activations to disk: priced as offloading to host "
                     "memory (the host figure is disk space then)")
        out["offload"] = "activations"
    elif off not in (None, False, "false", "0"):
        raise b.ConfigError(f"{who}: activation_offloading '{off}' is not priced (true, legacy, disk, hidden_states)")
    if r.get("chunked_cross_entropy"):
        notes.append("chunked_cross_entropy: axolotl's compiled chunked loss is not yet priced; "
                     "priced with the full-vocabulary loss")
    plugins = r.get("plugins") or []
    for p in plugins if isinstance(plugins, list) else [plugins]:
        loss = _plugin_loss(r, str(p), arch, out, notes)
        if loss:
            out["loss"] = loss
    out.update(_evaluation(r, notes, out["batch"]))
    _parallel(r, out, notes)
    if out.get("quant") in ("nf4", "fp4"):
        # loaders/model.py L795-827: bnb_4bit_quant_storage=torch.bfloat16, fp32 for jamba / qwen2_moe /
        # nemotron_h without DeepSpeed or FSDP (bnb_config_kwargs may override it)
        sharded = out.get("strategy") in ("fsdp", "zero2", "zero3")
        storage = "fp32" if getattr(arch, "model_type", None) in ("jamba", "qwen2_moe", "nemotron_h") and \
            not sharded else "bf16"
        kw = r.data.get("bnb_config_kwargs") or {}
        given = b.quant_storage(kw.get("bnb_4bit_quant_storage"), "bnb_4bit_quant_storage") if isinstance(kw, dict) \
            else None
        out["quant_storage"] = given or storage
    return out


def _parallel(r: b.Reader, out: dict[str, Any], notes: list[str]) -> None:
    """axolotl 0.19's multi-GPU keys. ``deepspeed``: a JSON path (its ``deepspeed_configs/`` files known
    when absent) or mapping. FSDP is on when ``fsdp_config`` (or the legacy ``fsdp`` list) is set
    (``utils/config/__init__.py`` L231); ``utils/trainer.py::setup_fsdp_envs`` (L597-628) passes it to
    accelerate as environment: ``FSDP_VERSION=2`` only for ``fsdp_version: 2`` (top level, else
    ``fsdp_config.fsdp_version``, else 1: ``utils/schemas/validation.py`` L922-927), ``FSDP_OFFLOAD_PARAMS``
    when ``offload_params``, and ``FSDP_RESHARD_AFTER_FORWARD=true`` only when ``reshard_after_forward`` is
    true, so false leaves accelerate's default (true, accelerate 1.16 ``utils/dataclasses.py`` L1731-1737)."""
    fsdp = None
    if (r.has("fsdp_config") and r.data.get("fsdp_config") is not None) or r.get("fsdp"):
        version = r.get("fsdp_version")
        if version is None:
            version = r.get("fsdp_config.fsdp_version")
        version = 1 if version is None else version
        reshard = r.get("fsdp_config.reshard_after_forward")
        if reshard is not None and not b.boolean(reshard, "reshard_after_forward"):
            notes.append("fsdp_config.reshard_after_forward: false is not passed on by axolotl 0.19 (setup_fsdp_envs "
                         "sets the variable only when true): accelerate's default, true, applies; priced so")
        offload = r.get("fsdp_config.offload_params")
        items = r.get("fsdp") or []
        offload = (offload is not None and b.boolean(offload, "offload_params")) or "offload" in items
        fsdp = par.fsdp_fields(version, True, offload, "axolotl")
        if b.boolean(r.get("fsdp_config.activation_checkpointing") or False, "activation_checkpointing"):
            fsdp.update(grad_checkpointing=True, reentrant=False)
            notes.append("fsdp_config.activation_checkpointing: FSDP_ACTIVATION_CHECKPOINTING, each decoder layer in "
                         "torch's non-reentrant checkpoint_wrapper (accelerate fsdp2_apply_ac)")
        if b.boolean(r.get("fsdp_config.cpu_ram_efficient_loading") or False, "cpu_ram_efficient_loading"):
            notes.append("fsdp_config.cpu_ram_efficient_loading: rank 0 alone loads the weights (load time); the step "
                         "is priced as usual")
    launcher = r.side_get("axolotl:--launcher", None)
    if launcher is not None:
        notes.append(f"axolotl train starts {launcher} with no launcher options (none after --): one process per "
                     "visible GPU, or the machine's accelerate config, which vramplan cannot see; priced as one "
                     "process (give --gpus)")
    par.resolve(r, notes, out, "axolotl", "axolotl", deepspeed=par.framework_deepspeed(r, "deepspeed", "axolotl"),
                fsdp=fsdp, bucket_cap_mb=r.get("ddp_bucket_cap_mb"))
    par.ddp_keys(r, out, notes, "ddp_find_unused_parameters")


def _evaluation(r: b.Reader, notes: list[str], micro_batch: int) -> dict[str, Any]:
    """axolotl 0.19: evaluation runs when there is eval data (``val_set_size`` > 0 or ``test_datasets``) and
    ``eval_steps`` / ``evals_per_epoch`` / ``eval_strategy`` schedule it (``core/builders/base.py``
    ``_configure_save_and_eval_strategy`` L523-533, ``utils/config/__init__.py`` L257-264); its batch is
    ``eval_batch_size`` or ``micro_batch_size`` (L215-216). The trainer builders pass no compute_metrics,
    so the HF loop keeps only the loss."""
    data = bool(r.get("test_datasets")) or float(r.get("val_set_size") or 0) > 0
    strategy = r.get("eval_strategy")
    scheduled = bool(r.get("eval_steps") or r.get("evals_per_epoch")) or (
        strategy is not None and str(strategy).lower() != "no")
    if not (data and scheduled):
        return {}
    batch = r.get("eval_batch_size")
    if r.get("do_causal_lm_eval"):
        notes.append("do_causal_lm_eval: its callback generates for the metrics; not priced")
    return {"eval_batch": b.integer(batch, "eval_batch_size") if batch is not None else micro_batch}


#: The plugins whose loss vramplan prices (``integrations/liger``, ``integrations/cut_cross_entropy``).
LIGER_PLUGIN = "axolotl.integrations.liger.LigerPlugin"
CCE_PLUGIN = "axolotl.integrations.cut_cross_entropy.CutCrossEntropyPlugin"


def _plugin_loss(r: b.Reader, plugin: str, arch: Any, out: dict[str, Any], notes: list[str]) -> str | None:
    """The loss one listed plugin gives (None: the plugin leaves the loss alone or is not priced).

    LigerPlugin (``integrations/liger/args.py`` L35-80, ``plugin.py``): every kernel is opt-in by its
    own ``liger_*`` key (all None), FLCE included. CutCrossEntropyPlugin (``integrations/cut_cross_entropy``
    ``args.py``, ``__init__.py`` L77-128): ``cut_cross_entropy`` defaults to True once listed, needs bf16
    or fp16 and refuses ``chunked_cross_entropy``."""
    who = "axolotl"
    if plugin == LIGER_PLUGIN:
        flce = r.get("liger_fused_linear_cross_entropy")
        config = {"fused_linear_cross_entropy": bool(flce) and b.boolean(flce, "liger_fused_linear_cross_entropy"),
                  "rope": bool(r.get("liger_rope")), "rms_norm": bool(r.get("liger_rms_norm")),
                  "swiglu": bool(r.get("liger_glu_activation")), "cross_entropy": bool(r.get("liger_cross_entropy"))}
        return b.liger(arch, config, notes, who, out=out)
    if plugin == CCE_PLUGIN:
        if not b.boolean(r.get("cut_cross_entropy"), "cut_cross_entropy"):
            return None
        if out.get("dtype") == "fp32" or out.get("autocast") is False:
            raise b.ConfigError(f"{who}: Cut Cross Entropy requires bf16 or fp16 training (its args.py refuses this "
                                "config)")
        if r.get("chunked_cross_entropy"):
            raise b.ConfigError(f"{who}: Cut Cross Entropy does not support chunked_cross_entropy (its args.py "
                                "refuses this config)")
        return "cce"
    notes.append(f"plugin {plugin}: not priced (vramplan prices the Liger and Cut Cross-Entropy plugins)")
    return None


def _packed_attn(r: b.Reader, arch: Any, attn: str, notes: list[str]) -> str:
    """The attention multipack rows run (axolotl 0.19 ``loaders/patch_manager.py::_apply_sdpa_varlen_patch``,
    ``monkeypatch/attention/sdpa_varlen.py``): flash-attention's varlen kernel; with sdpa, ``sdpa_varlen``
    (None: auto) routes packed rows through torch's ``varlen_attn`` with no mask when torch >= 2.10 on
    CUDA in 16-bit, head_dim <= 256 and no sliding window; otherwise stock sdpa with the block-diagonal
    4D mask transformers builds from the position ids."""
    if attn != "sdpa":
        return attn
    opt = r.get("sdpa_varlen")
    sliding = bool(arch.family.sliding_layers(arch.config, arch.num_layers)) if arch is not None else False
    if opt is not False and not sliding and (arch is None or arch.head_dim <= 256):
        notes.append("sample_packing with sdpa: sdpa_varlen (auto) runs packed rows through torch's varlen_attn "
                     "without a mask (torch >= 2.10, CUDA, 16-bit): priced as flash-attention's varlen kernel, the "
                     "same saved state; sdpa_varlen: false keeps the b×1×s×s mask")
        return "flash2"
    return attn


#: axolotl's fused-kernel keys -> the projection group each fuses (``Scenario.kernel_groups``).
_KERNEL_KEYS = {"lora_qkv_kernel": "qkv", "lora_o_kernel": "o", "lora_mlp_kernel": "mlp"}


def _kernels(r: b.Reader, eight_bit: bool, notes: list[str]) -> dict[str, Any]:
    """``lora_kernels`` / ``kernel_groups`` from axolotl 0.19's rule (``utils/schemas/config.py:L1974-2070``
    ``check_auto_enable_lora_kernels``): for lora/qlora without ``rl``, ``trust_remote_code`` or an 8-bit
    LoRA base, and when none of the four kernel keys is set, all are turned on; once any is set, each
    unset one stays off. Models that declare the kernels unsupported (``utils/config/__init__.py:L304-322``)
    and multi-GPU FSDP1 are not modelled (single GPU)."""
    keys = (*_KERNEL_KEYS, "lora_embedding_kernel")
    explicit = any(k in r.data for k in keys)
    auto = not explicit and not r.get("rl") and not r.get("trust_remote_code") and not eight_bit
    on = [k for k in _KERNEL_KEYS if (auto if k not in r.data else b.boolean(r.get(k), k))]
    if not on:
        return {}
    if eight_bit:
        notes.append(f"{', '.join(on)}: axolotl's fused LoRA kernels cannot read an 8-bit base; priced as peft's layers")
        return {}
    notes.append(f"axolotl 0.19 fused LoRA kernels on ({', '.join(on)}{'; auto for lora/qlora' if auto else ''})")
    return dict(lora_kernels="axolotl", kernel_groups=tuple(_KERNEL_KEYS[k] for k in on))


def _attn(r: b.Reader) -> str:
    impl = r.get("attn_implementation")
    if impl is not None:
        table = {"sdpa": "sdpa", "eager": "eager", "flash_attention_2": "flash2"}
        if str(impl) not in table:
            raise b.ConfigError(f"axolotl: attn_implementation '{impl}' is not priced (sdpa, eager, "
                                "flash_attention_2)")
        return table[str(impl)]
    if r.get("flash_attention"):
        return "flash2"
    if r.get("eager_attention"):
        return "eager"
    r.get("sdp_attention")
    return "sdpa"


FRAMEWORK = Framework(
    name="axolotl", title="axolotl", package="axolotl",
    eras=(Era("0.19.0", dict(recipe="axolotl", autocast=True, loss="hf", hold_logits="none"), source=_SOURCE),),
    keys=KEYS, scenario=scenario, model_key="base_model", style="yaml",
    launchers=(("axolotl", "train"),),
    seq_multiple=seq_multiple, pads_to_seq=pads_to_seq, plan_keys=dict(seq="sequence_len", batch="micro_batch_size", rank="lora_r",
                   grad_checkpointing="gradient_checkpointing", optimizer="optimizer",
                   lora_dropout="lora_dropout", targets="lora_target_modules"),
    spell=b.hf_spell, companions={"targets": ("lora_target_linear", False)}, known_latest="0.19.0",
    examples=(dict(base_model="M", adapter="qlora", load_in_4bit=True, lora_r=8, lora_target_linear=True, bf16=True),
              dict(base_model="M", adapter="lora", lora_r=8, lora_target_linear=True, bf16=True)))

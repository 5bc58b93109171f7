"""torchtune: its own ``lora_finetune_single_device`` recipe (what ``tune run`` runs) on the user's YAML.

The recipe is the file torchtune's distribution installs (``recipes/lora_finetune_single_device.py``),
loaded by path; its ``setup``/``train`` run on an OmegaConf copy of the user's config in which only
what a CPU run of random weights needs is replaced:

- ``model``: torchtune's *component* builder of the same family (``lora_llama3_1``, ``lora_qwen2``...:
  the one the user's ``lora_*``/``qlora_*`` builder calls, or the family's for another ``--model``)
  with the resolved architecture's dimensions from its config.json (``max_seq_len`` its
  ``max_position_embeddings``, which sizes torchtune's RoPE cache as the named builder would). The
  user's LoRA keys are kept (``lora_attn_modules``, ``apply_lora_to_mlp``/``_output``, rank, alpha,
  dropout, ``use_dora``; ``quantize_base`` as the ``qlora_*`` builders set it; unset ones take the
  named builder's defaults);
- ``checkpointer``: torchtune's ``FullModelHFCheckpointer`` on the random HF checkpoint, so its own
  HF -> torchtune weight conversion runs, with the family's ``model_type``;
- ``tokenizer``: a stand-in holding only ``pad_id`` and ``max_seq_len`` (the recipe reads ``pad_id``
  for the collate; the rows are already token ids, and torchtune's tokenizers need the model's own
  tokenizer files);
- ``dataset``: ``batch * steps`` synthetic rows of exactly ``seq`` token ids in ``[3, vocab)``, labels
  the tokens (the recipe shifts them itself: the last position is ignored), collated by the user's
  (or torchtune's default) ``collate_fn``; packing is refused;
- the CPU, ``compile`` off, one epoch of ``steps`` optimizer steps, ``gradient_accumulation_steps``
  1 (each step one micro-batch), no profiler, metrics to a ``DiskLogger`` in the work folder, no
  resuming, and no checkpoint saved at the epoch's end (the recipe's ``save_checkpoint`` is a no-op:
  the measurement ends with the last step).

Each optimizer step is measured from the start of the recipe's ``_loss_step`` (the forward) to the
end of ``optimizer.zero_grad``.
"""

from __future__ import annotations

import importlib.util
import inspect
import time
from pathlib import Path
from typing import Any

from vramplan.profile.runner import ProfileRunError

#: HF ``model_type`` -> torchtune families that build it (the first is the default), each with its
#: component builder and the checkpointer's ``model_type``.
FAMILIES: dict[str, tuple[tuple[str, str, str], ...]] = {
    "llama": (("llama3_2", "torchtune.models.llama3_2._component_builders.lora_llama3_2", "LLAMA3_2"),
              ("llama3_1", "torchtune.models.llama3_1._component_builders.lora_llama3_1", "LLAMA3"),
              ("llama3_3", "torchtune.models.llama3_1._component_builders.lora_llama3_1", "LLAMA3"),
              ("llama3", "torchtune.models.llama3._component_builders.lora_llama3", "LLAMA3"),
              ("llama2", "torchtune.models.llama2._component_builders.lora_llama2", "LLAMA2")),
    "qwen2": (("qwen2_5", "torchtune.models.qwen2._component_builders.lora_qwen2", "QWEN2"),
              ("qwen2", "torchtune.models.qwen2._component_builders.lora_qwen2", "QWEN2")),
    "mistral": (("mistral", "torchtune.models.mistral._component_builders.lora_mistral", "MISTRAL"),),
    "phi3": (("phi3", "torchtune.models.phi3._component_builders.lora_phi3", "PHI3_MINI"),),
    "gemma": (("gemma", "torchtune.models.gemma._component_builders.lora_gemma", "GEMMA"),),
    "gemma2": (("gemma2", "torchtune.models.gemma2._component_builders.lora_gemma2", "GEMMA2"),),
}

#: Component-builder argument -> config.json key.
DIMS = {"vocab_size": "vocab_size", "num_layers": "num_hidden_layers", "num_heads": "num_attention_heads",
        "num_kv_heads": "num_key_value_heads", "embed_dim": "hidden_size", "intermediate_dim": "intermediate_size",
        "max_seq_len": "max_position_embeddings", "norm_eps": "rms_norm_eps", "rope_base": "rope_theta",
        "head_dim": "head_dim", "tie_word_embeddings": "tie_word_embeddings",
        "hidden_capping_value": "attn_logit_softcapping", "final_capping_value": "final_logit_softcapping",
        "sliding_window_size": "sliding_window", "query_pre_attn_scalar": "query_pre_attn_scalar"}

#: LoRA keys of the user's ``model`` section the recipe or the builders read.
LORA_KEYS = ("lora_attn_modules", "apply_lora_to_mlp", "apply_lora_to_output", "lora_rank", "lora_alpha",
             "lora_dropout", "use_dora", "quantize_base")


class Tokenizer:
    """What the recipe asks of its tokenizer here: ``pad_id`` (the collate's padding)."""

    def __init__(self, max_seq_len: int | None = None, **_: Any) -> None:
        self.pad_id, self.eos_id, self.bos_id = 0, 1, 2
        self.max_seq_len = max_seq_len


def synthetic_rows(tokenizer: Any, rows: int, seq: int, vocab_size: int, seed: int = 0,
                   packed: bool = False) -> list[dict[str, list[int]]]:
    """``rows`` rows of ``seq`` random token ids in ``[3, vocab_size)``; labels are the tokens."""
    import torch

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab_size, (rows, seq), generator=g).tolist()
    return [{"tokens": r, "labels": list(r)} for r in ids]


def recipe_class() -> Any:
    """``LoRAFinetuneRecipeSingleDevice`` from the recipe file torchtune's distribution installs."""
    from importlib.metadata import distribution

    path = Path(str(distribution("torchtune").locate_file("recipes/lora_finetune_single_device.py")))
    if not path.is_file():
        raise ProfileRunError(f"torchtune's recipe file is not installed ({path})")
    spec = importlib.util.spec_from_file_location("vramplan_torchtune_lora_finetune_single_device", path)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module.LoRAFinetuneRecipeSingleDevice


def family(arch: Any, component: str) -> tuple[str, str]:
    """(component builder path, checkpointer model_type) for ``arch``: the family the user's builder
    names when it builds this architecture, else the model type's default."""
    options = FAMILIES.get(arch.model_type)
    if not options:
        raise ProfileRunError(f"torchtune 0.6 has no component builder for {arch.name} ({arch.model_type}): "
                              f"its recipe cannot build that architecture")
    named = component.split(".")[2] if component.startswith("torchtune.models.") else ""
    tied = bool(arch.config.get("tie_word_embeddings", False))
    for fam, path, mtype in options:
        if fam == named and (not tied or "tie_word_embeddings" in _params(path)):
            return path, mtype
    return options[0][1], options[0][2]


def _resolve(path: str) -> Any:
    from torchtune.config._utils import _get_component_from_path

    return _get_component_from_path(path)


def _params(path: str) -> dict[str, inspect.Parameter]:
    return dict(inspect.signature(_resolve(path)).parameters)


def model_section(arch: Any, user: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """The ``model`` section (the component builder at ``arch``'s dimensions, the user's LoRA keys) and
    the checkpointer's ``model_type``."""
    from vramplan.frameworks.torchtune import builder

    comp = str(user.get("_component_") or "")
    path, mtype = family(arch, comp)
    params = _params(path)
    kind, _ = builder(comp)
    if kind == "full":
        raise ProfileRunError("profile --config runs torchtune's LoRA recipe: the config's model is not a "
                              "lora_*/qlora_* builder")
    cfg = arch.config
    head_dim = cfg.get("head_dim")
    if "head_dim" not in params and head_dim and head_dim * cfg["num_attention_heads"] != cfg["hidden_size"]:
        raise ProfileRunError(f"torchtune's {path.rsplit('.', 1)[-1]} derives head_dim from hidden_size / heads, "
                              f"which is not {arch.name}'s head_dim {head_dim}")
    try:
        defaults = {k: p.default for k, p in _params(comp).items() if p.default is not inspect.Parameter.empty}
    except Exception:  # the named builder is not in this torchtune: only the user's keys
        defaults = {}
    out: dict[str, Any] = {"_component_": path}
    for k in LORA_KEYS:
        if k in params and (k in user or k in defaults):
            out[k] = user.get(k, defaults.get(k))
    if kind == "qlora":
        out["quantize_base"] = True
    out["lora_alpha"] = out.get("lora_alpha", 2 * out.get("lora_rank", 8))
    for k, key in DIMS.items():
        if k in params and cfg.get(key) is not None:
            out[k] = cfg[key]
    scaling = cfg.get("rope_scaling") or {}
    if "scale_factor" in params and scaling.get("factor"):
        out["scale_factor"] = scaling["factor"]
    return out, mtype


def config(job: Any) -> dict[str, Any]:
    """The recipe's config: the user's (its scalars re-read by OmegaConf's YAML loader, as ``tune run``
    reads them: ``lr: 3e-4`` is a float there, a string to PyYAML), the command-line changes, then
    what this run replaces."""
    import yaml
    from omegaconf import OmegaConf

    from vramplan.frameworks import set_dotted

    data = OmegaConf.to_container(OmegaConf.create(yaml.safe_dump(dict(job.resolved.source.data))))
    assert isinstance(data, dict)
    for key, value in job.changes():
        set_dotted(data, key, value)
    ds = data.get("dataset") or {}
    if not isinstance(ds, dict) or ds.get("packed"):
        raise ProfileRunError("profile --config does not run torchtune with packed or several datasets")
    model, mtype = model_section(job.arch, dict(data.get("model") or {}))
    sc = job.scenario
    data.update(
        model=model, device="cpu", compile=False, epochs=1, max_steps_per_epoch=job.steps,
        gradient_accumulation_steps=1, resume_from_checkpoint=False, output_dir=str(job.work / "out"),
        enable_activation_offloading=bool(data.get("enable_activation_offloading", False)),
        shuffle=bool(data.get("shuffle", False)), seed=data.get("seed", 0),
        tokenizer={"_component_": f"{__name__}.Tokenizer",
                   "max_seq_len": (data.get("tokenizer") or {}).get("max_seq_len")},
        dataset={"_component_": f"{__name__}.synthetic_rows", "rows": sc.batch * job.steps, "seq": sc.seq,
                 "vocab_size": job.arch.vocab_size, "packed": False},
        checkpointer={"_component_": "torchtune.training.FullModelHFCheckpointer",
                      "checkpoint_dir": str(job.ckpt), "model_type": mtype, "output_dir": str(job.work / "out"),
                      "checkpoint_files": sorted(p.name for p in job.ckpt.glob("*.safetensors"))},
        metric_logger={"_component_": "torchtune.training.metric_logging.DiskLogger",
                       "log_dir": str(job.work / "logs")},
        profiler={"enabled": False}, log_peak_memory_stats=False,
    )
    data.setdefault("lr_scheduler", {"_component_": "torchtune.training.lr_schedulers."
                                                    "get_cosine_schedule_with_warmup", "num_warmup_steps": 100})
    return data


def run(job: Any) -> None:
    from omegaconf import OmegaConf

    data = config(job)
    accumulate = (job.resolved.source.data or {}).get("gradient_accumulation_steps", 1)
    if accumulate not in (None, 1):
        job.notes.append(f"torchtune ran with gradient_accumulation_steps 1 (the config's {accumulate}): "
                         f"each measured step is one micro-batch")
    cfg = OmegaConf.create(data)

    class Measured(recipe_class()):  # type: ignore[misc]
        def _setup_model(self, *a: Any, **kw: Any) -> Any:
            model = super()._setup_model(*a, **kw)
            job.attach(model)
            return model

        def _setup_optimizer(self, *a: Any, **kw: Any) -> Any:
            opt = super()._setup_optimizer(*a, **kw)
            zero_grad = opt.zero_grad

            def zero_and_end(*za: Any, **zkw: Any) -> None:
                zero_grad(*za, **zkw)
                job.step_end()

            opt.zero_grad = zero_and_end
            return opt

        def _loss_step(self, batch: Any) -> Any:
            job.step_begin()
            return super()._loss_step(batch)

        def save_checkpoint(self, epoch: int) -> None:
            """Nothing saved: the measurement ends with the last step."""

    recipe = Measured(cfg=cfg)
    recipe.setup(cfg=cfg)
    t0 = time.perf_counter()
    try:
        recipe.train()
    finally:
        job.wall = time.perf_counter() - t0
        recipe.cleanup()

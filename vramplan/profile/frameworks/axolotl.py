"""axolotl: what ``axolotl train config.yml`` runs (``axolotl.cli.config.load_cfg``: validation and
normalisation of the YAML, then ``axolotl.cli.train.do_train``: axolotl's dataset preparation and
``axolotl.train.train``: its ModelLoader, trainer builder and ``execute_training``), on the user's YAML.

Replaced in the YAML (the rest is the user's, with the command line's changes over it):
- ``base_model`` / ``tokenizer_config``: the random checkpoint and its word-level tokenizer (the YAML's
  ``tokenizer_type``, ``base_model_config``, chat template and added/special tokens dropped with it);
- ``datasets``: axolotl's own ``_synthetic`` type (``prompt_strategies/_synthetic.py``, "for benchmarking
  memory usage"): ``batch × steps`` pre-tokenized rows of exactly ``sequence_len`` tokens (the priced
  seq, already a length axolotl's collator does not pad further: ``frameworks.axolotl.padded_length``), every
  position a label (axolotl's loss is the model's, over all positions: ``label_fraction`` 1);
- ``val_set_size: 0``, ``output_dir`` and ``dataset_prepared_path`` in the run's folder, ``max_steps``,
  ``gradient_accumulation_steps: 1`` (one micro-batch per measured step), saving, evaluation, logging
  and wandb/mlflow/comet off, ``resume_from_checkpoint`` and hub pushes dropped;
- the CPU: ``device_map: cpu``; ``use_cpu`` in the trainer's arguments (through the builder's
  ``hook_pre_create_training_args``, a no-op in axolotl; HF refuses bf16 on CPU without it);
  ``bf16: auto`` resolved as on a bf16 GPU (axolotl asks CUDA, and on the CPU would fall back to fp16),
  i.e. the dtype the profile prices;
- ``lora_{mlp,qkv,o,embedding}_kernel: false`` where unset: axolotl auto-enables its fused LoRA kernels,
  Triton kernels with a CUDA dequantize (``kernels/quantize.py`` asks for the CUDA stream) that cannot
  run on the CPU; the run then uses peft's LoRA layers, and the profile's scenario records it
  (``lora_kernels: none``: the engines price what ran, where the config reader prices the kernels).
  Kernels set true in the YAML are refused;
- axolotl's telemetry off (``AXOLOTL_DO_NOT_TRACK=1``, among the package's ``OFFLINE`` settings).

axolotl 0.19 imports ``trl.experimental.prm`` (its process-reward-model trainer) with its other trainers;
trl 1.16 dropped it. Where it is missing, a placeholder module stands in: it is used only with
``process_reward_model: true``, which this runner refuses. The hook: axolotl's ``execute_training`` runs
as it is; its ``trainer.train(...)`` goes through ``job.train`` (step callback and tensor count).
"""

from __future__ import annotations

import sys
import types
from typing import Any

from vramplan.profile.runner import ProfileRunError

_DROP = ("resume_from_checkpoint", "auto_resume_from_checkpoints", "hub_model_id", "hub_strategy",
         "push_dataset_to_hub", "batch_size", "test_datasets", "eval_steps", "evals_per_epoch", "saves_per_epoch",
         "save_steps", "wandb_project", "wandb_entity", "wandb_name", "wandb_run_id", "wandb_log_model",
         "mlflow_experiment_name", "use_comet", "comet_project_name", "use_tensorboard", "tokenizer_config",
         "base_model_config", "tokenizer_type", "chat_template", "special_tokens", "tokens", "added_tokens_overrides")
_KERNELS = ("lora_mlp_kernel", "lora_qkv_kernel", "lora_o_kernel", "lora_embedding_kernel")


def _trl_prm() -> bool:
    """trl 1.16 has no ``trl.experimental.prm``, which axolotl 0.19's trainer module imports: a
    placeholder module (True when placed, to be removed after the run)."""
    import importlib.util

    if importlib.util.find_spec("trl.experimental.prm") is None and "trl.experimental.prm" not in sys.modules:
        mod = types.ModuleType("trl.experimental.prm")
        mod.PRMTrainer = type("PRMTrainer", (), {})  # type: ignore[attr-defined]
        mod.PRMConfig = type("PRMConfig", (), {})  # type: ignore[attr-defined]
        sys.modules["trl.experimental.prm"] = mod
        return True
    return False


def config(job: Any) -> dict[str, Any]:
    """The YAML axolotl runs: the user's, the command line's changes, then the replacements."""
    sc = job.scenario
    cfg = {k: v for k, v in dict(job.resolved.source.data).items() if k not in _DROP}
    if cfg.get("rl") or cfg.get("process_reward_model") or cfg.get("reward_model"):
        raise ProfileRunError("profile --config runs axolotl's supervised fine-tuning only (no rl / reward model)")
    cfg.update(dict(job.changes()))
    on = [k for k in _KERNELS if cfg.get(k)]
    if on:
        raise ProfileRunError(f"axolotl's fused LoRA kernels ({', '.join(on)}) are Triton/CUDA kernels that do not run "
                              f"on the CPU: profile --config cannot run them (set them false to measure peft's layers)")
    if cfg.get("adapter") in ("lora", "qlora"):
        cfg.update(dict.fromkeys(_KERNELS, False))
        if job.scenario.lora_kernels.value != "none":
            from vramplan.scenario import KERNEL_GROUPS

            job.scenario = job.scenario.replace(lora_kernels="none", kernel_groups=KERNEL_GROUPS)
        job.notes.append("axolotl's fused LoRA kernels (auto-on when unset) need CUDA: run off, with peft's LoRA "
                         "layers, and priced so (lora_kernels none)")
    if str(cfg.get("bf16")).lower() == "auto":
        cfg["bf16"] = sc.dtype.value == "bf16"
    cfg.update(base_model=str(job.ckpt), tokenizer_config=str(job.ckpt), device_map="cpu",
               datasets=[dict(path="synthetic", type="_synthetic", length=sc.batch * job.steps,
                              sequence_length=sc.seq, seed=0)],
               val_set_size=0.0, dataset_prepared_path=str(job.work / "prepared"), output_dir=str(job.work / "out"),
               max_steps=job.steps, num_epochs=1, gradient_accumulation_steps=1, save_strategy="no",
               eval_strategy="no", logging_steps=10 ** 6, use_wandb=False, use_mlflow=False, dataset_num_proc=1,
               dataloader_num_workers=0, dataloader_pin_memory=False, save_first_step=False)
    return cfg


def run(job: Any) -> None:
    import yaml

    placed = _trl_prm()
    import axolotl.train
    from axolotl.cli.args import TrainerCliArgs
    from axolotl.cli.config import load_cfg
    from axolotl.cli.train import do_train
    from axolotl.core.builders.base import TrainerBuilderBase

    path = job.work / "config.yml"
    path.write_text(yaml.safe_dump(config(job), sort_keys=False))
    execute, hook = axolotl.train.execute_training, TrainerBuilderBase.hook_pre_create_training_args

    def measured(cfg: Any, trainer: Any, resume: Any) -> None:
        def train(*a: Any, **kw: Any) -> Any:
            del trainer.train  # axolotl's own call, through the hook, to the trainer's train()
            return job.train(trainer, *a, **kw)

        trainer.train = train
        execute(cfg, trainer, resume)

    def on_cpu(self: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        return dict(hook(self, kwargs), use_cpu=True)

    axolotl.train.execute_training = measured
    TrainerBuilderBase.hook_pre_create_training_args = on_cpu  # type: ignore[method-assign]
    try:
        do_train(load_cfg(str(path)), TrainerCliArgs())
    finally:
        axolotl.train.execute_training = execute
        TrainerBuilderBase.hook_pre_create_training_args = hook  # type: ignore[method-assign]
        if placed:
            sys.modules.pop("trl.experimental.prm", None)

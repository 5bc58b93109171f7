"""The DeepSpeed configs the frameworks ship under well-known names, for configs that name one that is
not on this machine: only their ``zero_optimization`` section (what moves memory), as facts read from
the files cited.

- ms-swift 4.6.0 maps ``--deepspeed zero0|zero1|zero2|zero3|zero2_offload|zero3_offload`` to
  ``swift/config/<name>.json`` inside the package (``swift/arguments/sft_args.py`` L252-267);
- LLaMA-Factory's configs name ``examples/deepspeed/ds_z*_config.json`` of its repository
  (hiyouga/LLaMA-Factory@ff6d4d12);
- axolotl's name ``deepspeed_configs/zero*.json`` of its repository (axolotl-ai-cloud/axolotl@067b021c;
  ``axolotl fetch deepspeed_configs`` copies them).
"""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Any

_5E8, _2E8, _1E9 = 500_000_000, 200_000_000, 1_000_000_000

#: ms-swift 4.6.0 swift/config/*.json
_SWIFT_Z12 = dict(allgather_partitions=True, allgather_bucket_size=_2E8, overlap_comm=False, reduce_scatter=True,
                  reduce_bucket_size=_2E8, contiguous_gradients=True)
_SWIFT_Z3 = dict(overlap_comm=False, contiguous_gradients=True, sub_group_size=_1E9, reduce_bucket_size="auto",
                 stage3_prefetch_bucket_size="auto", stage3_param_persistence_threshold="auto",
                 stage3_max_live_parameters=_1E9, stage3_max_reuse_distance=_1E9,
                 stage3_gather_16bit_weights_on_model_save=True)
_OFF_NONE, _OFF_CPU = {"device": "none", "pin_memory": True}, {"device": "cpu", "pin_memory": True}
MS_SWIFT = {
    "zero0": dict(stage=0, **_SWIFT_Z12),
    "zero1": dict(stage=1, offload_optimizer=_OFF_NONE, **_SWIFT_Z12),
    "zero2": dict(stage=2, offload_optimizer=_OFF_NONE, **_SWIFT_Z12),
    "zero2_offload": dict(stage=2, offload_optimizer=_OFF_CPU, **_SWIFT_Z12),
    "zero3": dict(stage=3, offload_optimizer=_OFF_NONE, offload_param=_OFF_NONE, **_SWIFT_Z3),
    "zero3_offload": dict(stage=3, offload_optimizer=_OFF_CPU, offload_param=_OFF_CPU, **_SWIFT_Z3),
}

#: hiyouga/LLaMA-Factory@ff6d4d12 examples/deepspeed/*.json
_LF_Z02 = dict(allgather_partitions=True, allgather_bucket_size=_5E8, overlap_comm=False, reduce_scatter=True,
               reduce_bucket_size=_5E8, contiguous_gradients=True, round_robin_gradients=True)
_LF_Z3 = dict(overlap_comm=False, contiguous_gradients=True, sub_group_size=_1E9, reduce_bucket_size="auto",
              stage3_prefetch_bucket_size="auto", stage3_param_persistence_threshold="auto",
              stage3_max_live_parameters=_1E9, stage3_max_reuse_distance=_1E9,
              stage3_gather_16bit_weights_on_model_save=True)
LLAMAFACTORY = {
    "ds_z0_config.json": dict(stage=0, **_LF_Z02),
    "ds_z2_config.json": dict(stage=2, **_LF_Z02),
    "ds_z2_offload_config.json": dict(stage=2, offload_optimizer=_OFF_CPU, **_LF_Z02),
    "ds_z3_config.json": dict(stage=3, **_LF_Z3),
    "ds_z3_offload_config.json": dict(stage=3, offload_optimizer=_OFF_CPU, offload_param=_OFF_CPU, **_LF_Z3),
}

#: axolotl-ai-cloud/axolotl@067b021c deepspeed_configs/*.json (note: zero2.json offloads the optimizer;
#: the ZeRO-3 files spell max_live_parameters without the stage3_ prefix, and set it to 0)
_AX_Z3 = dict(overlap_comm=True, contiguous_gradients=True, sub_group_size=0, reduce_bucket_size="auto",
              stage3_prefetch_bucket_size="auto", stage3_param_persistence_threshold="auto", max_live_parameters=0,
              max_reuse_distance=0, gather_16bit_weights_on_model_save=True)
AXOLOTL = {
    "zero1.json": dict(stage=1, overlap_comm=True),
    "zero1_torch_compile.json": dict(stage=1, overlap_comm=True),
    "zero2.json": dict(stage=2, offload_optimizer={"device": "cpu"}, contiguous_gradients=True, overlap_comm=True),
    "zero2_torch_compile.json": dict(stage=2, offload_optimizer={"device": "cpu"}, contiguous_gradients=True,
                                     overlap_comm=True),
    "zero3.json": dict(stage=3, **_AX_Z3),
    "zero3_bf16.json": dict(stage=3, **_AX_Z3),
    "zero3_bf16_cpuoffload_all.json": dict(stage=3, offload_optimizer=_OFF_CPU, offload_param=_OFF_CPU, **_AX_Z3),
    "zero3_bf16_cpuoffload_params.json": dict(stage=3, offload_param=_OFF_CPU, **_AX_Z3),
}

_TABLES = {
    "ms-swift": (MS_SWIFT, "ms-swift 4.6.0 swift/config/{}.json (the --deepspeed name, sft_args.py L252-267)", False),
    "llamafactory": (LLAMAFACTORY, "LLaMA-Factory's shipped examples/deepspeed/{} (hiyouga/LLaMA-Factory@ff6d4d12; "
                                   "the file is not here)", True),
    "axolotl": (AXOLOTL, "axolotl's shipped deepspeed_configs/{} (axolotl-ai-cloud/axolotl@067b021c; the file is "
                         "not here)", True),
}


def shipped_deepspeed(framework: str, name: str) -> tuple[dict[str, Any], str] | None:
    """(the DeepSpeed config, its source) for a framework's shipped name (ms-swift: the bare name;
    LLaMA-Factory, axolotl: a path ending in the shipped file's name), None otherwise."""
    if framework not in _TABLES:
        return None
    table, where, by_file = _TABLES[framework]
    key = PurePosixPath(name.replace("\\", "/")).name if by_file else name
    if key not in table:
        return None
    return {"zero_optimization": dict(table[key])}, where.format(key)


#: trl 1.16.0 ``trl/accelerate_configs/<name>.yaml`` (``trl sft --accelerate_config NAME``,
#: ``trl/cli/accelerate_config.py`` L19-48): the keys that size the run.
_TRL_NONE = {"offload_optimizer_device": "none", "offload_param_device": "none"}
_TRL_FSDP = {"fsdp_activation_checkpointing": False, "fsdp_cpu_ram_efficient_loading": True,
             "fsdp_offload_params": False}
TRL_ACCELERATE = {
    "single_gpu": dict(distributed_type="NO", num_machines=1, num_processes=8),
    "multi_gpu": dict(distributed_type="MULTI_GPU", num_machines=1, num_processes=8),
    "zero1": dict(distributed_type="DEEPSPEED", num_machines=1, num_processes=8, deepspeed_config={"zero_stage": 1}),
    "zero2": dict(distributed_type="DEEPSPEED", num_machines=1, num_processes=8,
                  deepspeed_config={**_TRL_NONE, "zero_stage": 2}),
    "zero3": dict(distributed_type="DEEPSPEED", num_machines=1, num_processes=8,
                  deepspeed_config={**_TRL_NONE, "zero_stage": 3}),
    "fsdp1": dict(distributed_type="FSDP", num_machines=1, num_processes=8,
                  fsdp_config={**_TRL_FSDP, "fsdp_reshard_after_forward": "FULL_SHARD", "fsdp_version": 1}),
    "fsdp2": dict(distributed_type="FSDP", num_machines=1, num_processes=8,
                  fsdp_config={**_TRL_FSDP, "fsdp_reshard_after_forward": True, "fsdp_version": 2}),
}

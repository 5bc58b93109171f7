"""Issue 16: the multi-GPU part of each framework's config read into the Scenario's multi-GPU fields.

Every expected value is written out by hand from the framework's code (cited in
vramplan/frameworks/parallel.py and shipped.py): the world from the launch command or the framework's
environment, the strategy and its knobs from the DeepSpeed JSON / FSDP keys / accelerate config, with
DeepSpeed 0.19.8's defaults where a JSON leaves a key out. Only the parsed Scenario is checked (the
engines price the strategies elsewhere). No torch, no network; launch commands are parsed, never run.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from vramplan import frameworks as F
from vramplan.arch import resolve
from vramplan.frameworks.base import ConfigError
from vramplan.scenario import Scenario

DATA = Path(__file__).resolve().parents[1] / "data" / "frameworks"
QWEN = resolve("Qwen3-14B")
MULTI = ("gpus", "nodes", "strategy", "state_offload", "reshard_after_forward", "bucket_cap_mb",
         "reduce_bucket_size", "allgather_bucket_size", "stage3_prefetch_bucket_size", "stage3_max_live_parameters",
         "stage3_param_persistence_threshold", "stage3_max_reuse_distance", "overlap_comm", "contiguous_gradients")


def _res(paths=(), argv=None, framework=None):
    loaded = F.load([str(p) for p in paths], argv, framework)
    return F.resolve(loaded, QWEN)


def _multi(res) -> dict:
    """The multi-GPU fields of the Scenario the config builds (built, so its checks run)."""
    s = Scenario(**res.fields)
    return {k: getattr(getattr(s, k), "value", getattr(s, k)) for k in MULTI}


def _script(tmp_path: Path, text: str, name: str = "run.sh") -> Path:
    p = tmp_path / name
    p.write_text("#!/bin/sh\n" + text + "\n")
    return p


#: Scenario defaults of the multi-GPU fields (a field not listed in an expectation keeps these).
BASE = dict(gpus=1, nodes=1, strategy="single", state_offload="none", reshard_after_forward=True, bucket_cap_mb=25,
            reduce_bucket_size=0, allgather_bucket_size=500_000_000, stage3_prefetch_bucket_size=0,
            stage3_max_live_parameters=1_000_000_000, stage3_param_persistence_threshold=0,
            stage3_max_reuse_distance=1_000_000_000, overlap_comm=True, contiguous_gradients=True)

ZERO3_AUTO = {"zero_optimization": {"stage": 3, "offload_optimizer": {"device": "cpu"},
                                    "offload_param": {"device": "cpu"}, "reduce_bucket_size": "auto", "stage3_prefetch_bucket_size": "auto",
                                    "stage3_param_persistence_threshold": "auto"},
              "train_micro_batch_size_per_gpu": "auto", "bf16": {"enabled": "auto"}}


# ------------------------------------------------------------------------------------------ HF Trainer
def _hf(tmp_path: Path, **extra) -> Path:
    args = json.loads((DATA / "training_args.json").read_text())
    args.update(extra)
    p = tmp_path / "training_args.json"
    p.write_text(json.dumps(args))
    return p


def test_hf_deepspeed_json_zero3_offload_with_auto_values(tmp_path):
    (tmp_path / "ds.json").write_text(json.dumps(ZERO3_AUTO))
    res = _res([_hf(tmp_path, deepspeed="ds.json"), DATA / "adapter_config.json"])
    # stage 3, both offloads on cpu -> params; "auto" -> 0 (the HF fill); overlap_comm unset -> stage == 3;
    # stage3_max_live_parameters unset -> DeepSpeed's 1e9; no launch: one process
    assert _multi(res) == {**BASE, "strategy": "zero3", "state_offload": "params", "overlap_comm": True}
    assert res.used["ds_config:zero_optimization.stage"] == 3
    assert res.used["ds_config:zero_optimization.reduce_bucket_size"] == "auto"
    assert res.defaults["ds_config:zero_optimization.stage3_max_live_parameters"] == 1_000_000_000
    assert "ds_config:train_micro_batch_size_per_gpu" in res.ignored and "ds_config:bf16.enabled" in res.ignored
    assert any("single process" in n for n in res.notes)


@pytest.mark.parametrize("fsdp, config, expected", [
    ("full_shard auto_wrap offload", None, dict(reshard_after_forward=True, state_offload="params")),
    ("shard_grad_op", {"fsdp_version": 2}, dict(reshard_after_forward=False)),
    (True, {"reshard_after_forward": False, "cpu_offload": True},
     dict(reshard_after_forward=False, state_offload="params")),
])
def test_hf_fsdp_options_fsdp2_by_default(tmp_path, fsdp, config, expected):
    res = _res([_hf(tmp_path, fsdp=fsdp, fsdp_config=config), DATA / "adapter_config.json"])
    assert _multi(res) == {**BASE, "strategy": "fsdp", **expected}
    assert "training_args.fsdp" in res.used


@pytest.mark.parametrize("fsdp, config, words", [
    ("full_shard", {"fsdp_version": 1}, "FSDP1"),
    ("hybrid_shard", None, "FSDP1"),
    ("full_shard sideways", None, "unknown fsdp option"),
])
def test_hf_fsdp_refusals(tmp_path, fsdp, config, words):
    with pytest.raises(ConfigError, match=words):
        _res([_hf(tmp_path, fsdp=fsdp, fsdp_config=config), DATA / "adapter_config.json"])


# ------------------------------------------------------------------------------------------ TRL
def test_trl_accelerate_zero3_config_world_from_the_config(tmp_path):
    acc = tmp_path / "zero3.yaml"
    acc.write_text("compute_environment: LOCAL_MACHINE\ndistributed_type: DEEPSPEED\nnum_machines: 2\n"
                   "num_processes: 16\nmixed_precision: bf16\ndeepspeed_config:\n  zero_stage: 3\n"
                   "  offload_optimizer_device: cpu\n  offload_param_device: none\n  zero3_init_flag: true\n")
    sh = _script(tmp_path, f"accelerate launch --config_file {acc.name} trl/scripts/sft.py --config "
                           f"{DATA / 'trl_qlora.yaml'}")
    res = _res([sh])
    # 16 processes over 2 machines -> 8 per node; accelerate builds zero_optimization from zero_stage and the
    # offload devices only: DeepSpeed's defaults for the rest (5e8 buckets, overlap_comm = stage 3)
    assert _multi(res) == {**BASE, "gpus": 8, "nodes": 2, "strategy": "zero3", "state_offload": "optimizer",
                           "reduce_bucket_size": 500_000_000, "stage3_prefetch_bucket_size": 50_000_000,
                           "stage3_param_persistence_threshold": 100_000}
    assert res.used["accelerate_config:deepspeed_config.zero_stage"] == 3
    assert res.used["accelerate_config:num_processes"] == 16
    assert "accelerate_config:deepspeed_config.zero3_init_flag" in res.ignored
    assert "accelerate_config:mixed_precision" in res.ignored


def test_trl_accelerate_shipped_fsdp2_yaml_with_a_flag_overriding_num_processes(tmp_path):
    import trl

    shipped = Path(trl.__file__).parent / "accelerate_configs" / "fsdp2.yaml"  # theirs, as installed
    shutil.copy(shipped, tmp_path / "fsdp2.yaml")
    sh = _script(tmp_path, "accelerate launch --config_file fsdp2.yaml --num_processes 4 trl/scripts/sft.py "
                           f"--config {DATA / 'trl_qlora.yaml'}")
    res = _res([sh])
    # fsdp2.yaml: distributed_type FSDP, fsdp_version 2, reshard true, offload false; --num_processes 4 wins
    # over its num_processes 8 (accelerate launch.py: an explicit flag is kept)
    assert _multi(res) == {**BASE, "gpus": 4, "strategy": "fsdp"}
    assert res.used["accelerate:--num_processes"] == "4"
    assert res.used["accelerate_config:fsdp_config.fsdp_version"] == 2
    assert any("cpu_ram_efficient_loading" in n for n in res.notes)


def test_trl_accelerate_fsdp_without_version_is_fsdp1_refused(tmp_path):
    (tmp_path / "f.yaml").write_text("distributed_type: FSDP\nnum_processes: 2\nfsdp_config:\n"
                                     "  fsdp_sharding_strategy: FULL_SHARD\n")
    sh = _script(tmp_path, "accelerate launch --config_file f.yaml trl/scripts/sft.py --config "
                           f"{DATA / 'trl_qlora.yaml'}")
    with pytest.raises(ConfigError, match="FSDP1"):
        _res([sh])


def test_trl_torchrun_ddp_with_bucket(tmp_path):
    sh = _script(tmp_path, f"torchrun --nproc_per_node 4 --nnodes=2 trl/scripts/sft.py --config "
                           f"{DATA / 'trl_qlora.yaml'} --ddp_bucket_cap_mb 50")
    res = _res([sh])
    assert _multi(res) == {**BASE, "gpus": 4, "nodes": 2, "strategy": "ddp", "bucket_cap_mb": 50}
    assert res.used["torchrun:--nproc_per_node"] == "4" and res.used["torchrun:--nnodes"] == "2"


def test_torchrun_elastic_node_range_is_refused(tmp_path):
    sh = _script(tmp_path, f"torchrun --nnodes 1:4 trl/scripts/sft.py --config {DATA / 'trl_qlora.yaml'}")
    with pytest.raises(ConfigError, match="process count"):
        _res([sh])


# ------------------------------------------------------------------------------------------ axolotl
def _axolotl(tmp_path: Path, extra: str) -> Path:
    p = tmp_path / "ax.yml"
    p.write_text((DATA / "axolotl_qlora.yml").read_text() + "\n" + extra + "\n")
    return p


def test_axolotl_shipped_zero3_bf16_when_absent_launched_by_accelerate(tmp_path):
    cfg = _axolotl(tmp_path, "deepspeed: deepspeed_configs/zero3_bf16.json")
    sh = _script(tmp_path, f"accelerate launch --num_processes 2 -m axolotl.cli.train {cfg.name}")
    res = _res([sh])
    # axolotl@067b021c zero3_bf16.json: auto buckets/prefetch/persistence -> 0, max_live_parameters and
    # max_reuse_distance 0 (spelled without stage3_), overlap_comm true, no offload
    assert _multi(res) == {**BASE, "gpus": 2, "strategy": "zero3", "stage3_max_live_parameters": 0,
                           "stage3_max_reuse_distance": 0}
    assert any("axolotl's shipped deepspeed_configs/zero3_bf16.json" in n for n in res.notes)
    assert res.used["ds_config:zero_optimization.max_live_parameters"] == 0
    assert "ds_config:zero_optimization.sub_group_size" in res.ignored


def test_axolotl_shipped_zero2_offloads_the_optimizer(tmp_path):
    res = _res([_axolotl(tmp_path, "deepspeed: deepspeed_configs/zero2.json")])
    # zero2.json offloads the optimizer to cpu; its buckets unset -> DeepSpeed's 5e8; overlap_comm true
    assert _multi(res) == {**BASE, "strategy": "zero2", "state_offload": "optimizer",
                           "reduce_bucket_size": 500_000_000}


def test_axolotl_deepspeed_file_present_wins_over_shipped(tmp_path):
    (tmp_path / "deepspeed_configs").mkdir()
    (tmp_path / "deepspeed_configs" / "zero2.json").write_text(json.dumps(
        {"zero_optimization": {"stage": 2, "reduce_bucket_size": 1e8, "allgather_bucket_size": 3e8}}))
    res = _res([_axolotl(tmp_path, "deepspeed: deepspeed_configs/zero2.json")])
    assert _multi(res) == {**BASE, "strategy": "zero2", "reduce_bucket_size": 100_000_000,
                           "allgather_bucket_size": 300_000_000, "overlap_comm": False}


def test_axolotl_fsdp2_offload_and_reshard_false_not_passed_on(tmp_path):
    cfg = _axolotl(tmp_path, "fsdp_version: 2\nfsdp_config:\n  offload_params: true\n  reshard_after_forward: false\n"
                             "  transformer_layer_cls_to_wrap: Qwen3DecoderLayer")
    sh = _script(tmp_path, f"torchrun --nproc_per_node 8 -m axolotl.cli.train {cfg.name}")
    res = _res([sh])
    assert _multi(res) == {**BASE, "gpus": 8, "strategy": "fsdp", "state_offload": "params",
                           "reshard_after_forward": True}
    assert any("reshard_after_forward: false is not passed on" in n for n in res.notes)
    assert "fsdp_config.transformer_layer_cls_to_wrap" in res.ignored


@pytest.mark.parametrize("extra, words", [
    ("fsdp_config:\n  offload_params: false", "FSDP1"),
    ("deepspeed: deepspeed_configs/zero1.json", "stage 1 is not priced"),
    ("deepspeed: deepspeed_configs/zero3_bf16_cpuoffload_params.json", "offload_param without offload_optimizer"),
    ("deepspeed: nowhere/mine.json", "not found"),
    ("deepspeed: deepspeed_configs/zero3.json\nfsdp_config:\n  fsdp_version: 2", "both DeepSpeed and FSDP"),
])
def test_axolotl_refusals(tmp_path, extra, words):
    with pytest.raises(ConfigError, match=words) as e:
        _res([_axolotl(tmp_path, extra)])
    assert "\n" not in str(e.value)


# ------------------------------------------------------------------------------------------ LLaMA-Factory
def _lf(tmp_path: Path, extra: str = "") -> Path:
    p = tmp_path / "lf.yaml"
    p.write_text((DATA / "llamafactory_qlora.yaml").read_text() + "\n" + extra + "\n")
    return p


def test_llamafactory_force_torchrun_shipped_z2_offload(tmp_path):
    cfg = _lf(tmp_path, "deepspeed: examples/deepspeed/ds_z2_offload_config.json")
    sh = _script(tmp_path, f"FORCE_TORCHRUN=1 NNODES=2 NPROC_PER_NODE=8 llamafactory-cli train {cfg.name}")
    res = _res([sh])
    # LLaMA-Factory@ff6d4d12 ds_z2_offload_config.json: 5e8 buckets, overlap_comm false, contiguous true
    assert _multi(res) == {**BASE, "gpus": 8, "nodes": 2, "strategy": "zero2", "state_offload": "optimizer",
                           "reduce_bucket_size": 500_000_000, "overlap_comm": False}
    assert res.used["env:NPROC_PER_NODE"] == "8" and res.used["env:FORCE_TORCHRUN"] == "1"


def test_llamafactory_shipped_z3_and_visible_devices(tmp_path):
    cfg = _lf(tmp_path, "deepspeed: examples/deepspeed/ds_z3_config.json")
    res = _res([_script(tmp_path, f"CUDA_VISIBLE_DEVICES=0,1,2,3 llamafactory-cli train {cfg.name}")])
    # four visible GPUs: torchrun with NPROC_PER_NODE = the device count (launcher.py L61-66)
    assert _multi(res) == {**BASE, "gpus": 4, "strategy": "zero3", "overlap_comm": False}


def test_llamafactory_nproc_without_force_is_one_process(tmp_path):
    res = _res([_script(tmp_path, f"NPROC_PER_NODE=4 llamafactory-cli train {_lf(tmp_path).name}")])
    assert _multi(res) == BASE
    assert any("FORCE_TORCHRUN" in n for n in res.notes)


def test_llamafactory_accelerate_src_train_fsdp2(tmp_path):
    (tmp_path / "fsdp.yaml").write_text("distributed_type: FSDP\nnum_processes: 2\nfsdp_config:\n  fsdp_version: 2\n"
                                        "  fsdp_offload_params: true\n  fsdp_activation_checkpointing: true\n")
    cfg = _lf(tmp_path)
    res = _res([_script(tmp_path, f"accelerate launch --config_file fsdp.yaml src/train.py {cfg.name}")])
    assert _multi(res) == {**BASE, "gpus": 2, "strategy": "fsdp", "state_offload": "params"}
    assert res.fields["reentrant"] is False and res.fields["grad_checkpointing"] is True
    (tmp_path / "fsdp.yaml").write_text("distributed_type: FSDP\nnum_processes: 2\nfsdp_config:\n  fsdp_version: 2\n")
    plain = _res([_script(tmp_path, f"accelerate launch --config_file fsdp.yaml src/train.py {cfg.name}", "b.sh")])
    # LLaMA-Factory's own checkpointing (reentrant by default) is made non-reentrant under FSDP2
    assert plain.fields["reentrant"] is False and plain.fields["grad_checkpointing"] is True


# ------------------------------------------------------------------------------------------ ms-swift
SWIFT = ["swift", "sft", "--model", "Qwen/Qwen3-14B", "--tuner_type", "lora", "--torch_dtype", "bfloat16",
         "--max_length", "2048"]


def test_swift_shipped_zero3_offload_by_name(tmp_path):
    res = _res([_script(tmp_path, "NPROC_PER_NODE=4 " + " ".join(SWIFT) + " --deepspeed zero3_offload")])
    # swift/config/zero3_offload.json: cpu offload of both, auto -> 0, max_live 1e9, overlap_comm false
    assert _multi(res) == {**BASE, "gpus": 4, "strategy": "zero3", "state_offload": "params", "overlap_comm": False}
    assert res.used["deepspeed"] == "zero3_offload"


def test_swift_zero2_two_nodes(tmp_path):
    res = _res([_script(tmp_path, "NNODES=2 NPROC_PER_NODE=8 " + " ".join(SWIFT) + " --deepspeed zero2")])
    assert _multi(res) == {**BASE, "gpus": 8, "nodes": 2, "strategy": "zero2", "reduce_bucket_size": 200_000_000,
                           "allgather_bucket_size": 200_000_000, "overlap_comm": False}


def test_swift_ddp_is_non_reentrant_unless_told(tmp_path):
    res = _res([_script(tmp_path, "NPROC_PER_NODE=2 " + " ".join(SWIFT))])
    assert _multi(res) == {**BASE, "gpus": 2, "strategy": "ddp"}
    assert res.fields["reentrant"] is False
    told = _res([_script(tmp_path, "NPROC_PER_NODE=2 " + " ".join(SWIFT) +
                         " --gradient_checkpointing_kwargs '{\"use_reentrant\": true}'", "b.sh")])
    assert told.fields["reentrant"] is True


def test_swift_visible_devices_without_nproc_is_one_process(tmp_path):
    res = _res([_script(tmp_path, "CUDA_VISIBLE_DEVICES=0,1 " + " ".join(SWIFT))])
    assert _multi(res) == BASE and res.fields["reentrant"] is True
    assert any("device_map" in n for n in res.notes)


def test_swift_fsdp_json_file(tmp_path):
    (tmp_path / "f.json").write_text(json.dumps({"fsdp": "shard_grad_op auto_wrap offload",
                                                 "fsdp_config": {"fsdp_version": 2}}))
    res = _res([_script(tmp_path, "NPROC_PER_NODE=2 " + " ".join(SWIFT) + " --fsdp f.json")])
    assert _multi(res) == {**BASE, "gpus": 2, "strategy": "fsdp", "reshard_after_forward": False,
                           "state_offload": "params"}


# ------------------------------------------------------------------------------------------ bad DeepSpeed JSON
@pytest.mark.parametrize("content, words", [
    ('{"zero_optimization": {"stage": 3,', "malformed JSON"),
    ('{"zero_optimization": {"stage": 4}}', "not a ZeRO stage"),
    ('{"zero_optimization": {"stage": 3, "offload_param": {"device": "nvme"}, '
     '"offload_optimizer": {"device": "nvme"}}}', "nvme is not priced"),
    ('{"zero_optimization": {"stage": 2, "allgather_bucket_size": "auto"}}', "'auto' is not filled"),
    ('{"zero_optimization": {"stage": 2, "offload_param": {"device": "cpu"}}}', "only with ZeRO stage 3"),
    ('[1, 2]', "expected a mapping"),
])
def test_bad_deepspeed_json_one_line(tmp_path, content, words):
    (tmp_path / "ds.json").write_text(content)
    with pytest.raises(ConfigError, match=words) as e:
        _res([_lf(tmp_path, "deepspeed: ds.json")])
    assert "\n" not in str(e.value)


def test_cli_bad_deepspeed_exits_2_in_one_line(tmp_path, cli_run):
    (tmp_path / "ds.json").write_text('{"zero_optimization": {"stage": 3, "offload_optimizer": {"device": "nvme"}}}')
    code, out, err = cli_run("estimate", "--config", str(_lf(tmp_path, "deepspeed: ds.json")))
    assert code == 2 and "nvme is not priced" in err and len(err.strip().splitlines()) == 1


# ------------------------------------------------------------------------------------------ plan --write
def test_plan_write_keeps_the_multi_gpu_keys(tmp_path):
    cfg = _axolotl(tmp_path, "deepspeed: deepspeed_configs/zero3_bf16.json")
    res = _res([cfg])
    changes = F.framework_changes(res.framework, {"batch": 2, "strategy": "zero2"})
    path, text, written = F.patched_text(res, changes)
    assert [c[1] for c in written] == ["batch"]  # no axolotl key carries strategy: not written
    assert "no axolotl key" in F.describe_change(res.framework, *[c for c in changes if c[1] == "strategy"][0])
    new = tmp_path / "patched.yml"
    new.write_text(text)
    again = _res([new])
    assert again.fields["batch"] == 2 and _multi(again) == _multi(res)


# ------------------------------------------------------------------------------------------ torchtune
def test_torchtune_distributed_recipe_fsdp2(tmp_path):
    cfg = tmp_path / "tt.yaml"
    cfg.write_text((DATA / "torchtune_qlora.yaml").read_text() + "\nfsdp_cpu_offload: true\n"
                   "fsdp_reshard_after_forward: false\n")
    sh = _script(tmp_path, f"tune run --nproc_per_node 4 lora_finetune_distributed --config {cfg.name}")
    res = _res([sh])
    assert _multi(res) == {**BASE, "gpus": 4, "strategy": "fsdp", "state_offload": "params",
                           "reshard_after_forward": False}
    assert res.used["tune:recipe"] == "lora_finetune_distributed" and res.used["fsdp_cpu_offload"] is True


def test_torchtune_single_device_recipe_is_one_gpu(tmp_path):
    res = _res([_script(tmp_path, f"tune run lora_finetune_single_device --config {DATA / 'torchtune_qlora.yaml'}")])
    assert _multi(res) == BASE
    with pytest.raises(ConfigError, match="single-device recipe"):
        _res([_script(tmp_path, f"tune run --nproc_per_node 2 lora_finetune_single_device --config "
                                f"{DATA / 'torchtune_qlora.yaml'}", "b.sh")])


# ------------------------------------------------------------------------------------------ bnb_4bit_quant_storage
def test_quant_storage_per_framework(tmp_path):
    # LLaMA-Factory: the compute dtype; axolotl: bfloat16 (fixed in its bnb config); ms-swift / TRL: their key
    assert _res([DATA / "llamafactory_qlora.yaml"]).fields["quant_storage"] == "bf16"
    assert _res([DATA / "axolotl_qlora.yml"]).fields["quant_storage"] == "bf16"
    swift = SWIFT + ["--quant_method", "bnb", "--quant_bits", "4", "--bnb_4bit_quant_storage", "bfloat16"]
    assert Scenario(**_res(argv=swift).fields).quant_storage.value == "bf16"
    assert "quant_storage" not in _res(argv=swift[:-2]).fields  # unset: bitsandbytes' uint8
    trl = tmp_path / "trl.yaml"
    trl.write_text((DATA / "trl_qlora.yaml").read_text() + "bnb_4bit_quant_storage: float16\n")
    assert _res([trl]).fields["quant_storage"] == "fp16"
    trl.write_text((DATA / "trl_qlora.yaml").read_text() + "bnb_4bit_quant_storage: int4\n")
    with pytest.raises(ConfigError, match="not a storage dtype"):
        _res([trl])


def test_trl_cli_accelerate_config_name_and_num_processes():
    argv = ["trl", "sft", "--config", str(DATA / "trl_qlora.yaml"), "--accelerate_config", "zero3",
            "--num_processes", "4"]
    res = _res(argv=argv)
    # trl 1.16 accelerate_configs/zero3.yaml: DEEPSPEED zero_stage 3, no offload; --num_processes 4 wins over its 8
    assert _multi(res) == {**BASE, "gpus": 4, "strategy": "zero3", "reduce_bucket_size": 500_000_000,
                           "stage3_prefetch_bucket_size": 50_000_000, "stage3_param_persistence_threshold": 100_000}
    # PEFT + ZeRO-3 + checkpointing: TRL forces reentrant checkpointing (non-reentrant on one GPU)
    assert res.fields["reentrant"] is True and _res(argv=argv[:4]).fields["reentrant"] is False
    with pytest.raises(ConfigError, match="FSDP1"):
        _res(argv=argv[:5] + ["fsdp1"])


def test_trl_shipped_accelerate_table_matches_the_installed_files():
    import yaml

    trl = pytest.importorskip("trl")
    from vramplan.frameworks.shipped import TRL_ACCELERATE

    folder = Path(trl.__file__).parent / "accelerate_configs"
    assert sorted(p.stem for p in folder.glob("*.yaml")) == sorted(TRL_ACCELERATE)
    for name, ours in TRL_ACCELERATE.items():
        theirs = yaml.safe_load((folder / f"{name}.yaml").read_text())
        for key, value in ours.items():
            if isinstance(value, dict):
                assert {k: theirs[key][k] for k in value} == value, (name, key)
            else:
                assert theirs[key] == value, (name, key)


def test_swift_args_file_env_block_and_command_line_env_wins(tmp_path):
    args = json.loads((DATA / "swift_args.json").read_text())
    args.update(ENV={"NPROC_PER_NODE": 4, "NNODES": 2}, deepspeed="zero2")
    (tmp_path / "args.json").write_text(json.dumps(args))
    res = _res([_script(tmp_path, "swift sft args.json")])
    assert (_multi(res)["gpus"], _multi(res)["nodes"], _multi(res)["strategy"]) == (4, 2, "zero2")
    assert res.used["env:NPROC_PER_NODE"] == "4"
    res = _res([_script(tmp_path, "NPROC_PER_NODE=8 swift sft args.json", "b.sh")])
    assert (_multi(res)["gpus"], _multi(res)["nodes"]) == (8, 2)


def test_axolotl_cli_launcher_options_after_double_dash(tmp_path):
    cfg = _axolotl(tmp_path, "deepspeed: deepspeed_configs/zero2.json")
    res = _res([_script(tmp_path, f"axolotl train {cfg.name} --launcher torchrun -- --nproc_per_node 4 --nnodes 2")])
    assert (_multi(res)["gpus"], _multi(res)["nodes"], _multi(res)["strategy"]) == (4, 2, "zero2")
    res = _res([_script(tmp_path, f"axolotl train {cfg.name} -- --num_processes 2", "b.sh")])
    assert _multi(res)["gpus"] == 2 and res.used["accelerate:--num_processes"] == "2"


def test_trl_accelerate_single_gpu_config_is_one_process_whatever_num_processes():
    # trl's single_gpu.yaml: distributed_type "NO" with num_processes 8: accelerate's simple_launcher, one process
    res = _res(argv=["trl", "sft", "--config", str(DATA / "trl_qlora.yaml"), "--accelerate_config", "single_gpu"])
    assert _multi(res) == BASE
    assert any("distributed_type NO" in n for n in res.notes)
    multi = _res(argv=["trl", "sft", "--config", str(DATA / "trl_qlora.yaml"), "--accelerate_config", "multi_gpu"])
    assert _multi(multi) == {**BASE, "gpus": 8, "strategy": "ddp"}

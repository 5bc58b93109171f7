"""The multi-GPU part of a framework config -> ``Scenario``'s multi-GPU fields (issue 16).

Where the world size and the strategy come from, read as data (never executed):

- the launch command before the framework's words: ``torchrun --nproc_per_node N --nnodes M``,
  ``accelerate launch --num_processes N --num_machines M [--config_file f] [--use_fsdp|--use_deepspeed|
  --multi_gpu]``, ``deepspeed --num_gpus N --num_nodes M``, and ``VAR=value`` prefixes
  (ms-swift's ``NPROC_PER_NODE`` / ``NNODES``, LLaMA-Factory's ``FORCE_TORCHRUN``, ``CUDA_VISIBLE_DEVICES``);
- accelerate's config YAML (``--config_file``): ``distributed_type``, ``num_processes``, ``num_machines``,
  ``fsdp_config``, ``deepspeed_config`` (accelerate 1.16 ``commands/config/config_args.py`` L103-126,
  L179-196; merged into the launch arguments by ``commands/launch.py`` L1266-1340, where an explicit
  flag wins);
- the framework's own keys: a DeepSpeed JSON (``deepspeed``), FSDP keys, DDP keys.

Everything read is recorded as the framework keys are (``Reader.side_get``): launch values as
``torchrun:--nproc_per_node``, ``env:NPROC_PER_NODE``, accelerate's YAML as ``accelerate_config:<key>``,
a DeepSpeed JSON as ``ds_config:<dotted key>``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from vramplan.frameworks.base import ConfigError, Reader, boolean, integer, parse_mapping
from vramplan.frameworks.shipped import shipped_deepspeed

#: Launcher flags that take no value (torchrun, accelerate launch, deepspeed).
_FLAGS = {"multi_gpu", "use_fsdp", "use_deepspeed", "use_megatron_lm", "cpu", "tpu", "standalone", "no_python",
          "module", "m", "debug", "quiet", "same_network", "dynamo_use_fullgraph", "no_local_rank",
          "enable_cpu_affinity", "monitor_interval"}
_WRAPPERS = {"env", "nohup", "time", "exec", "sudo"}
_PROGRAMS = ("torchrun", "accelerate", "deepspeed")


def launch_side(pre: list[str], base: Path) -> dict[str, Any]:
    """The ``VAR=value`` prefixes and the launcher program's options in the tokens before the framework's
    launch words (``pre``: up to and including a ``-m module`` or script), flat, as side keys; an
    accelerate ``--config_file`` is read here (ConfigError when it is missing or malformed)."""
    side: dict[str, Any] = {}
    i = 0
    while i < len(pre):
        m = re.fullmatch(r"([A-Za-z_][A-Za-z0-9_]*)=(.*)", pre[i])
        if m:
            side[f"env:{m.group(1)}"] = m.group(2)
        elif pre[i] not in _WRAPPERS:
            break
        i += 1
    rest = pre[i:]
    if not rest:
        return side
    prog = Path(rest[0]).name
    if prog.startswith("python") and rest[1:3] == ["-m", "torch.distributed.run"]:
        prog, args = "torchrun", rest[3:]
    elif prog == "accelerate" and rest[1:2] == ["launch"]:
        args = rest[2:]
    elif prog in ("torchrun", "deepspeed"):
        args = rest[1:]
    else:
        return side
    if len(args) >= 2 and args[-2] in ("-m", "--module"):
        args = args[:-2]
    elif args and not args[-1].startswith("-"):
        args = args[:-1]  # the script
    j = 0
    while j < len(args):
        a = args[j]
        if not a.startswith("-"):
            j += 1
            continue
        key, eq, val = a.lstrip("-").partition("=")
        key = key.replace("-", "_")
        if eq:
            side[f"{prog}:--{key}"] = val
            j += 1
        elif key in _FLAGS or j + 1 >= len(args) or args[j + 1].startswith("--"):
            side[f"{prog}:--{key}"] = True
            j += 1
        else:
            side[f"{prog}:--{key}"] = args[j + 1]
            j += 2
    cfg = side.get("accelerate:--config_file")
    if cfg is not None:
        side.update(_accelerate_yaml(str(cfg), base))
    return side


def _accelerate_yaml(name: str, base: Path) -> dict[str, Any]:
    """accelerate's config file (YAML, or JSON by its suffix, as ``load_config_from_file`` reads it,
    accelerate 1.16 ``commands/config/config_args.py`` L43-73), flattened as ``accelerate_config:`` keys."""
    path = _find(name, [base, Path.cwd()])
    if path is None:
        raise ConfigError(f"accelerate --config_file {name}: file not found")
    data = read_mapping(path, "accelerate config")
    out: dict[str, Any] = {}
    _flatten(data, "accelerate_config:", out)
    return out


def _flatten(node: dict[str, Any], prefix: str, out: dict[str, Any]) -> None:
    for k, v in node.items():
        if isinstance(v, dict) and v:
            _flatten(v, f"{prefix}{k}.", out)
        else:
            out[f"{prefix}{k}"] = v


def _find(name: str, bases: list[Path]) -> Path | None:
    p = Path(name).expanduser()
    if p.is_absolute():
        return p if p.is_file() else None
    for b in bases:
        if (b / p).is_file():
            return b / p
    return None


def read_mapping(path: Path, what: str) -> dict[str, Any]:
    """A JSON or YAML file holding one mapping (``base.parse_mapping``); ConfigError in one line."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{what} {path}: cannot read ({getattr(e, 'strerror', None) or e})") from None
    return parse_mapping(path, text, what)


# ------------------------------------------------------------------------------------ world size
def _count(value: Any, key: str) -> int:
    if isinstance(value, str) and not value.strip().isdigit():
        raise ConfigError(f"{key}: {value!r} is not a process count vramplan can read (give a number; elastic "
                          "ranges and 'auto'/'gpu' depend on the machine)")
    return integer(value, key)


def _devices(r: Reader) -> int | None:
    """How many devices ``CUDA_VISIBLE_DEVICES`` lists (None when it is not given)."""
    text = r.side_get("env:CUDA_VISIBLE_DEVICES", None)
    if text is None:
        return None
    return len([d for d in str(text).split(",") if d.strip()])


def world(r: Reader, notes: list[str], env_rule: str | None = None) -> tuple[int | None, int | None]:
    """(processes per node, nodes) from the launch command, None where nothing says.

    ``env_rule``: how the framework's own launcher reads the environment: ``ms-swift`` (4.6
    ``swift/cli/main.py`` L30-35, L76-99: torchrun only when ``NPROC_PER_NODE`` or ``NNODES`` is set,
    with their values; otherwise one process that spreads the model over the visible GPUs with
    ``device_map``) or ``llamafactory`` (0.9.5 ``launcher.py`` L58-66: torchrun when ``FORCE_TORCHRUN``
    or more than one device is visible, ``NPROC_PER_NODE`` defaulting to the device count, ``NNODES`` to 1)."""
    side = r.side
    if any(k.startswith("torchrun:") for k in side):
        gpus = _count(r.side_get("torchrun:--nproc_per_node", "1"), "torchrun --nproc_per_node")
        nodes = _count(r.side_get("torchrun:--nnodes", "1"), "torchrun --nnodes")
        return gpus, nodes
    if any(k.startswith("deepspeed:") for k in side):
        nodes = _count(r.side_get("deepspeed:--num_nodes", "1"), "deepspeed --num_nodes")
        given = r.side_get("deepspeed:--num_gpus", None)
        if given is None:
            n = _devices(r)
            if n is None:
                notes.append("deepspeed without --num_gpus starts one process per GPU of the machine: not known from "
                             "the command; priced as 1 process per node (give --gpus)")
            return n or 1, nodes
        return _count(given, "deepspeed --num_gpus"), nodes
    if any(k.startswith("accelerate:") for k in side):
        if "accelerate:--config_file" in side and accelerate_mode(r) == "NO":
            # distributed_type NO and no --multi_gpu/--use_* flag: launch_command runs simple_launcher, one
            # process, whatever num_processes says (commands/launch.py L1266-1296, L1417-1440)
            if r.side.get("accelerate_config:num_processes") not in (None, 1, -1):
                notes.append("accelerate config distributed_type NO: one process (simple_launcher); its "
                             "num_processes is not used")
            return 1, 1
        total = r.side_get("accelerate:--num_processes", None)
        if total is None:
            total = r.side_get("accelerate_config:num_processes", None)
        machines = r.side_get("accelerate:--num_machines", None)
        if machines is None:
            machines = r.side_get("accelerate_config:num_machines", 1)
        machines = _count(machines, "num_machines")
        if total is None or str(total) == "-1":
            notes.append("accelerate launch without num_processes starts one process per visible GPU "
                         "(commands/launch.py L1362-1364): not known from the command; priced as 1 (give --gpus)")
            return None, machines
        total = _count(total, "num_processes")
        if total % machines:
            raise ConfigError(f"accelerate: num_processes {total} is not a multiple of num_machines {machines}")
        # num_processes is the total over the machines (launch.py L201); utils/launch.py L199-209
        return total // machines, machines
    if env_rule == "ms-swift":
        nproc, nnodes = r.side_get("env:NPROC_PER_NODE", None), r.side_get("env:NNODES", None)
        if nproc is None and nnodes is None:
            n = _devices(r)
            if n and n > 1:
                notes.append(f"CUDA_VISIBLE_DEVICES lists {n} GPUs but NPROC_PER_NODE is unset: ms-swift 4.6 starts "
                             "one "
                             "process (swift/cli/main.py use_torchrun) and spreads the model over the GPUs with "
                             "device_map (model parallel, not priced): priced as one GPU holding the whole model; set "
                             "NPROC_PER_NODE for data parallel")
            return None, None
        return (_count(nproc, "NPROC_PER_NODE") if nproc is not None else 1,
                _count(nnodes, "NNODES") if nnodes is not None else 1)
    if env_rule == "llamafactory":
        force = r.side_get("env:FORCE_TORCHRUN", None)
        nproc, nnodes = r.side_get("env:NPROC_PER_NODE", None), r.side_get("env:NNODES", None)
        n = _devices(r)
        if not (force is not None and boolean(force, "FORCE_TORCHRUN")) and not (n and n > 1):
            if nproc is not None or nnodes is not None:
                notes.append("NPROC_PER_NODE/NNODES without FORCE_TORCHRUN=1: llamafactory-cli uses torchrun only "
                             "when FORCE_TORCHRUN is set or more than one GPU is visible; priced as one process")
            return None, None
        if nproc is None and n is None:
            notes.append("FORCE_TORCHRUN without NPROC_PER_NODE: LLaMA-Factory starts one process per visible GPU "
                         "(launcher.py L66): not known from the command; priced as 1 (give --gpus)")
            return None, _count(nnodes, "NNODES") if nnodes is not None else 1
        return (_count(nproc, "NPROC_PER_NODE") if nproc is not None else n or 1,
                _count(nnodes, "NNODES") if nnodes is not None else 1)
    return None, None


def accelerate_mode(r: Reader) -> str | None:
    """What accelerate launches: ``DEEPSPEED``, ``FSDP``, ``MULTI_GPU``, ``NO`` (None: not accelerate).
    A ``--use_*`` / ``--multi_gpu`` flag wins over the file's ``distributed_type`` (launch.py L1268-1296)."""
    if not any(k.startswith("accelerate:") for k in r.side):
        return None
    for flag, mode in (("use_deepspeed", "DEEPSPEED"), ("use_fsdp", "FSDP"), ("multi_gpu", "MULTI_GPU")):
        if r.side_get(f"accelerate:--{flag}", False):
            return mode
    if "accelerate:--config_file" in r.side:
        kind = r.side_get("accelerate_config:distributed_type", None)
        if kind is None:
            raise ConfigError("accelerate config: a `distributed_type` must be given (accelerate refuses the file "
                              "without one, config_args.py L109-110)")
        kind = str(kind).upper()
        if kind not in ("NO", "MULTI_GPU", "DEEPSPEED", "FSDP"):
            raise ConfigError(f"accelerate config: distributed_type {kind} is not priced (NO, MULTI_GPU, DEEPSPEED, "
                              "FSDP)")
        return kind
    return "NO"


# ------------------------------------------------------------------------------------ DeepSpeed
def deepspeed_config(value: Any, r: Reader, key: str, framework: str) -> tuple[dict[str, Any], str]:
    """A framework's ``deepspeed`` value -> (the DeepSpeed config, where it came from): an inline mapping,
    a JSON string, a file (looked up beside the config, then in the working directory), or, when no
    such file exists, the framework's shipped config of that name (``vramplan.frameworks.shipped``)."""
    if isinstance(value, dict):
        return value, f"{key} (inline)"
    text = str(value).strip()
    if text.startswith("{"):
        try:
            data = json.loads(text)
        except ValueError as e:
            raise ConfigError(f"{key}: malformed DeepSpeed JSON ({e})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{key}: the DeepSpeed config must be a JSON object")
        return data, f"{key} (inline JSON)"
    path = _find(text, r.bases)
    if path is not None:
        return read_mapping(path, f"{key}: DeepSpeed config"), str(path)
    found = shipped_deepspeed(framework, text)
    if found is not None:
        return found
    looked = ", ".join(str(b) for b in r.bases) or "."
    raise ConfigError(f"{key}: DeepSpeed config {text} not found (looked in {looked})")


def _ds_int(get: Any, name: str, default: int, auto: bool) -> int:
    """A DeepSpeed size: a number (JSON floats such as 5e8 too), ``"auto"`` -> 0 where the HF integration
    fills it (transformers 5.24 ``integrations/deepspeed.py`` L194-245)."""
    v = get(name, default)
    if isinstance(v, str) and v.strip().lower() == "auto":
        if not auto:
            raise ConfigError(f"DeepSpeed zero_optimization.{name}: 'auto' is not filled by the HF integration (it "
                              "fills reduce_bucket_size, stage3_prefetch_bucket_size, "
                              "stage3_param_persistence_threshold); give a number")
        return 0
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise ConfigError(f"DeepSpeed zero_optimization.{name}: expected a number or 'auto', got {v!r}") from None
    if f < 0 or f != int(f) or isinstance(v, bool):
        raise ConfigError(f"DeepSpeed zero_optimization.{name}: expected a non-negative integer, got {v!r}")
    return int(f)


def zero_fields(r: Reader, ds: dict[str, Any], where: str, notes: list[str], record: bool = True) -> dict[str, Any]:
    """A DeepSpeed config -> ``strategy`` zero2/zero3, ``state_offload`` and the ZeRO knobs. Defaults are
    DeepSpeed 0.19.8's (``runtime/zero/config.py``): stage 0 (L95), contiguous_gradients true (L102),
    reduce_bucket_size and allgather_bucket_size 5e8 (L113, L132), overlap_comm = (stage == 3) when unset
    (L138, L384-386), stage3_prefetch_bucket_size 5e7 (L222), stage3_param_persistence_threshold 1e5 (L228),
    stage3_max_live_parameters 1e9 (L245), stage3_max_reuse_distance 1e9 (L251); offload devices none / cpu / nvme (``offload_config.py`` L14-18).
    A ZeRO-3 field may be spelled by its name or its ``stage3_`` alias (``populate_by_name``,
    ``runtime/config_utils.py`` L109). ``record``: the config's keys are recorded as ``ds_config:`` keys
    (False: ``ds`` was built from another file's keys, recorded there)."""
    zo = ds.get("zero_optimization", {})
    if not isinstance(zo, dict):
        raise ConfigError(f"DeepSpeed config {where}: zero_optimization must be a mapping, got {zo!r}")
    flat: dict[str, Any] = {}
    _flatten(zo, "", flat)
    if record:
        side: dict[str, Any] = {}
        _flatten(ds, "ds_config:", side)
        r.side.update(side)
        notes.append(f"DeepSpeed config read from {where}")

    def has(name: str) -> bool:
        return name in flat

    def get(name: str, default: Any) -> Any:
        if record:
            return r.side_get(f"ds_config:zero_optimization.{name}", default)
        return flat.get(name, default)

    stage = get("stage", 0)
    if stage not in (0, 1, 2, 3) or isinstance(stage, bool):
        raise ConfigError(f"DeepSpeed zero_optimization.stage {stage!r} is not a ZeRO stage (0, 1, 2, 3)")
    if stage in (0, 1):
        kept = "every gradient" if stage == 1 else "the whole training state"
        raise ConfigError(f"DeepSpeed ZeRO stage {stage} is not priced (vramplan prices stages 2 and 3): stage "
                          f"{stage} keeps {kept} on every GPU")
    out: dict[str, Any] = {"strategy": f"zero{stage}"}
    dev = {}
    for part, legacy in (("offload_optimizer", "cpu_offload"), ("offload_param", "cpu_offload_param")):
        d = get(f"{part}.device", "none")
        if has(legacy) and boolean(get(legacy, False), legacy):
            d = "cpu"  # the deprecated booleans (runtime/zero/config.py L188-220)
        d = "none" if d is None else str(d).strip().lower()
        if d == "nvme":
            raise ConfigError(f"DeepSpeed {part}.device nvme is not priced (vramplan prices device cpu or none)")
        if d not in ("none", "cpu"):
            raise ConfigError(f"DeepSpeed {part}.device {d!r} is not one of none, cpu, nvme")
        dev[part] = d
    if dev["offload_param"] == "cpu":
        if stage != 3:
            raise ConfigError("DeepSpeed offload_param is valid only with ZeRO stage 3 (DeepSpeed refuses it)")
        if dev["offload_optimizer"] != "cpu":
            raise ConfigError("DeepSpeed offload_param without offload_optimizer is not priced (vramplan prices "
                              "offload_optimizer alone, or both)")
        out["state_offload"] = "params"
    elif dev["offload_optimizer"] == "cpu":
        out["state_offload"] = "optimizer"
    out["reduce_bucket_size"] = _ds_int(get, "reduce_bucket_size", 500_000_000, auto=True)
    out["allgather_bucket_size"] = _ds_int(get, "allgather_bucket_size", 500_000_000, auto=False)
    ov = get("overlap_comm", None)
    out["overlap_comm"] = (stage == 3) if ov is None else boolean(ov, "overlap_comm")
    out["contiguous_gradients"] = boolean(get("contiguous_gradients", True), "contiguous_gradients")
    if stage == 3:
        for short, fieldname, default, auto in (
                ("prefetch_bucket_size", "stage3_prefetch_bucket_size", 50_000_000, True),
                ("param_persistence_threshold", "stage3_param_persistence_threshold", 100_000, True),
                ("max_live_parameters", "stage3_max_live_parameters", 1_000_000_000, False),
                ("max_reuse_distance", "stage3_max_reuse_distance", 1_000_000_000, False)):
            out[fieldname] = _ds_int(get, short if has(short) else fieldname, default, auto)
    return out


def accelerate_deepspeed(r: Reader, notes: list[str], framework: str) -> dict[str, Any]:
    """accelerate's DeepSpeed plugin: ``deepspeed_config.deepspeed_config_file`` (read as the framework's
    DeepSpeed JSON), else the config accelerate builds from ``zero_stage`` (default 2, launch.py L421-425)
    and the offload devices (default none): only those keys, the rest DeepSpeed's defaults
    (``utils/dataclasses.py`` L1205-1218)."""
    file = r.side_get("accelerate:--deepspeed_config_file", None)
    if file is None:
        file = r.side_get("accelerate_config:deepspeed_config.deepspeed_config_file", None)
    if file is not None:
        ds, where = deepspeed_config(file, r, "deepspeed_config_file", framework)
        return zero_fields(r, ds, where, notes)
    zo: dict[str, Any] = {}
    for name, default in (("zero_stage", 2), ("offload_optimizer_device", "none"), ("offload_param_device", "none")):
        v = r.side_get(f"accelerate:--{name}", None)
        if v is None:
            v = r.side_get(f"accelerate_config:deepspeed_config.{name}", default)
        zo[name] = v
    try:
        stage = int(zo["zero_stage"])
    except (TypeError, ValueError):
        raise ConfigError(f"accelerate zero_stage {zo['zero_stage']!r} is not a ZeRO stage (0, 1, 2, 3)") from None
    ds = {"zero_optimization": {"stage": stage, "offload_optimizer": {"device": zo["offload_optimizer_device"]},
                                "offload_param": {"device": zo["offload_param_device"]}}}
    return zero_fields(r, ds, "accelerate's deepspeed_config", notes, record=False)


# ------------------------------------------------------------------------------------ FSDP
def fsdp_fields(version: Any, reshard: Any, offload: bool, who: str) -> dict[str, Any]:
    """FSDP2 (``fully_shard``) -> ``strategy fsdp``, ``reshard_after_forward``, ``state_offload params``
    (``CPUOffloadPolicy``). FSDP1 is refused: its ``FlatParameter`` flattens each wrapped unit's frozen
    and trainable weights together, and with LoRA (``use_orig_params=True``) torch warns of "higher than
    expected gradient memory" (torch 2.13 ``distributed/fsdp/fully_sharded_data_parallel.py`` L208-213),
    which vramplan's FSDP2 terms do not hold."""
    v = str(version).strip()
    if v != "2":
        raise ConfigError(f"{who}: FSDP version {v} (FSDP1) is not priced: vramplan prices FSDP2 fully_shard (set "
                          "fsdp_version: 2); FSDP1's flat parameters hold LoRA's frozen weights' gradients too")
    if isinstance(reshard, str) and reshard.strip().upper() in ("FULL_SHARD", "SHARD_GRAD_OP", "NO_RESHARD",
                                                                 "HYBRID_SHARD", "HYBRID_SHARD_ZERO2", "NO_SHARD"):
        raise ConfigError(f"{who}: reshard_after_forward {reshard} is an FSDP1 sharding strategy; FSDP2 takes true "
                          "or false")
    out: dict[str, Any] = {"strategy": "fsdp", "reshard_after_forward": boolean(reshard, "reshard_after_forward")}
    if offload:
        out["state_offload"] = "params"
    return out


def accelerate_fsdp(r: Reader, notes: list[str], who: str) -> dict[str, Any]:
    """accelerate's FSDP plugin from its config's ``fsdp_config`` (keys copied to ``fsdp_*`` launch arguments,
    launch.py L1313-1318) or the launch flags: ``fsdp_version`` (default 1, launch.py L518-523),
    ``fsdp_reshard_after_forward`` (default true), ``fsdp_offload_params`` (default false);
    ``fsdp_cpu_ram_efficient_loading`` changes loading only; ``fsdp_activation_checkpointing`` wraps each
    decoder layer in torch's non-reentrant ``checkpoint_wrapper`` (``utils/fsdp_utils.py`` L690-711)."""
    def get(name: str, default: Any) -> Any:
        v = r.side_get(f"accelerate:--fsdp_{name}", None)
        if v is None:
            for k in (f"accelerate_config:fsdp_config.fsdp_{name}", f"accelerate_config:fsdp_config.{name}"):
                if k in r.side:
                    return r.side_get(k, default)
            return r.side_get(f"accelerate_config:fsdp_config.fsdp_{name}", default)
        return v

    out = fsdp_fields(get("version", 1), get("reshard_after_forward", True),
                      boolean(get("offload_params", False), "fsdp_offload_params"), who)
    if boolean(get("cpu_ram_efficient_loading", False), "fsdp_cpu_ram_efficient_loading"):
        notes.append("fsdp_cpu_ram_efficient_loading: only rank 0 loads the weights into host memory before they are "
                     "sharded (a host-memory saving at load time; the step is priced as usual)")
    if boolean(get("activation_checkpointing", False), "fsdp_activation_checkpointing"):
        out.update(grad_checkpointing=True, reentrant=False)
        notes.append("fsdp_activation_checkpointing: each decoder layer in torch's non-reentrant checkpoint_wrapper "
                     "(accelerate utils/fsdp_utils.py fsdp2_apply_ac): priced as non-reentrant checkpointing")
    return out


def hf_fsdp(fsdp: Any, config: Any, r: Reader, who: str, notes: list[str]) -> dict[str, Any]:
    """HF ``TrainingArguments.fsdp`` / ``fsdp_config`` (transformers 5.24 ``training_args.py`` L2775-2885,
    L2888-2938): ``fsdp_``-prefixed config keys lose the prefix; ``version`` defaults to **2**;
    ``reshard_after_forward`` defaults true; legacy ``fsdp`` strings: ``full_shard`` -> reshard true,
    ``shard_grad_op`` -> false, ``offload`` -> ``cpu_offload``, the hybrid strategies FSDP1 only."""
    if isinstance(config, str):
        path = _find(config, r.bases)
        if path is None:
            raise ConfigError(f"{who}: fsdp_config {config} not found")
        config = read_mapping(path, "fsdp_config")
    cfg = {(k[5:] if k.startswith("fsdp_") else k): v for k, v in dict(config or {}).items()}
    version = cfg.get("version", 2)
    items = fsdp.split() if isinstance(fsdp, str) else (list(fsdp) if isinstance(fsdp, (list, tuple)) else [])
    reshard = cfg.get("reshard_after_forward")
    offload = boolean(cfg.get("cpu_offload", False), "cpu_offload")
    for item in items:
        it = str(item).lower()
        if it in ("true", "1"):
            continue
        if it == "full_shard":
            reshard = True if reshard is None else reshard
        elif it == "shard_grad_op":
            reshard = False if reshard is None else reshard
        elif it == "offload":
            offload = True
        elif it == "auto_wrap":
            pass
        elif it in ("hybrid_shard", "hybrid_shard_zero2", "no_shard"):
            raise ConfigError(f"{who}: fsdp {it} is an FSDP1 strategy, not priced (vramplan prices FSDP2)")
        else:
            raise ConfigError(f"{who}: unknown fsdp option {item!r} (full_shard, shard_grad_op, offload, auto_wrap)")
    out = fsdp_fields(version, True if reshard is None else reshard, offload, who)
    if "offload_params" in cfg and "cpu_offload" not in cfg:
        notes.append("fsdp_config offload_params is accelerate's key: the HF Trainer reads cpu_offload (or 'offload' "
                     "in fsdp), so it does not offload here")
    if boolean(cfg.get("activation_checkpointing", False), "activation_checkpointing"):
        out.update(grad_checkpointing=True, reentrant=False)
        notes.append("fsdp_config activation_checkpointing: each decoder layer in torch's non-reentrant "
                     "checkpoint_wrapper (accelerate fsdp2_apply_ac): priced as non-reentrant checkpointing")
    return out


# ------------------------------------------------------------------------------------ all together
def resolve(r: Reader, notes: list[str], out: dict[str, Any], who: str, framework: str, *,
            deepspeed: dict[str, Any] | None = None, fsdp: dict[str, Any] | None = None,
            bucket_cap_mb: Any = None, env_rule: str | None = None) -> None:
    """Set the multi-GPU fields of ``out``: the world size from the launch, the strategy from the framework's
    DeepSpeed/FSDP settings (``deepspeed``: the read DeepSpeed config as ``{"config":…, "where":…}``;
    ``fsdp``: its FSDP fields) or from accelerate's, else DDP when there is more than one process."""
    gpus, nodes = world(r, notes, env_rule)
    mode = accelerate_mode(r)
    fields: dict[str, Any] = {}
    if deepspeed is not None and fsdp is not None:
        raise ConfigError(f"{who}: both DeepSpeed and FSDP configured; choose one")
    if deepspeed is not None:
        if mode == "FSDP":
            raise ConfigError(f"{who}: a DeepSpeed config, launched by accelerate with FSDP; choose one")
        fields = zero_fields(r, deepspeed["config"], deepspeed["where"], notes)
    elif fsdp is not None:
        if mode == "DEEPSPEED":
            raise ConfigError(f"{who}: FSDP configured, launched by accelerate with DeepSpeed; choose one")
        fields = dict(fsdp)
    elif mode == "DEEPSPEED":
        fields = accelerate_deepspeed(r, notes, framework)
    elif mode == "FSDP":
        fields = accelerate_fsdp(r, notes, who)
    world_size = (gpus or 1) * (nodes or 1)
    if not fields and world_size > 1:
        fields = {"strategy": "ddp"}
        if bucket_cap_mb is not None:
            fields["bucket_cap_mb"] = integer(bucket_cap_mb, "ddp_bucket_cap_mb")
    if gpus is not None:
        out["gpus"] = gpus
    if nodes is not None:
        out["nodes"] = nodes
    if fields.get("strategy") and world_size == 1:
        notes.append(f"{fields['strategy']} configured for a single process: priced as one rank of a world of 1 "
                     "(give the launch command, or --gpus)")
    out.update(fields)


def framework_deepspeed(r: Reader, key: str, framework: str) -> dict[str, Any] | None:
    """The framework's ``deepspeed`` key read (None when unset) as ``resolve`` takes it."""
    value = r.get(key)
    if value is None or value is False or (isinstance(value, str) and not value.strip()):
        return None
    config, where = deepspeed_config(value, r, key, framework)
    return {"config": config, "where": where}


def ddp_keys(r: Reader, out: dict[str, Any], notes: list[str], find_unused: str | None) -> None:
    """``ddp_find_unused_parameters`` (HF: ``find_unused_parameters`` defaults to not-checkpointing,
    transformers 5.24 ``trainer.py`` L749-757): DDP then marks the unused parameters after each forward,
    a per-parameter flag, no tensor priced; read so that it is reported."""
    if find_unused and r.get(find_unused) is not None and out.get("strategy") == "ddp":
        boolean(r.get(find_unused), find_unused)
        notes.append(f"{find_unused}: DDP's search for unused parameters after each forward holds no tensor "
                     "vramplan prices (a flag per parameter)")


def hf_fsdp_key(r: Reader, prefix: str, who: str, notes: list[str]) -> dict[str, Any] | None:
    """HF ``TrainingArguments`` ``fsdp`` + ``fsdp_config`` (as ``prefix`` spells them) -> FSDP fields, or None."""
    value = r.get(prefix + "fsdp")
    if value in (None, False, "", [], "false", "False"):
        return None
    return hf_fsdp(value, r.get(prefix + "fsdp_config"), r, who, notes)


def hf_trainer_parallel(r: Reader, notes: list[str], out: dict[str, Any], who: str, framework: str,
                        prefix: str = "", env_rule: str | None = None) -> None:
    """The multi-GPU keys every HF-Trainer-based framework passes to ``TrainingArguments`` (``deepspeed``,
    ``fsdp``, ``fsdp_config``, ``ddp_bucket_cap_mb``, ``ddp_find_unused_parameters``), with the launch."""
    ds = framework_deepspeed(r, prefix + "deepspeed", framework)
    fsdp = hf_fsdp_key(r, prefix, who, notes)
    resolve(r, notes, out, who, framework, deepspeed=ds, fsdp=fsdp,
            bucket_cap_mb=r.get(prefix + "ddp_bucket_cap_mb"), env_rule=env_rule)
    ddp_keys(r, out, notes, prefix + "ddp_find_unused_parameters")

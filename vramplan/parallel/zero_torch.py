"""DeepSpeed ZeRO-2 / ZeRO-3 for the trace and the profiler (``vramplan.parallel.torch_wrap`` interface).

The model is wrapped as the HF Trainer wraps it under ``--deepspeed``: ``deepspeed.initialize(model,
optimizer, config)`` with

- the config ``ds_config`` writes from the Scenario, its ``"auto"`` values resolved as transformers
  5.24 ``integrations/deepspeed.py`` resolves them (``HfTrainerDeepSpeedConfig``);
- the Trainer's own optimizer (``ctx.make_optimizer``: torch AdamW, fused) as the client optimizer,
  with ``zero_allow_untested_optimizer``: what ``deepspeed_optim_sched`` (L575-589) does when the
  DeepSpeed config has no ``"optimizer"`` section. A config *with* one makes DeepSpeed build its own
  (FusedAdam on CUDA, DeepSpeedCPUAdam with offload): not traced here (see ``NOTES``).

The step is the engine's: ``engine(**batch)``, ``engine.backward(loss)``, ``engine.step()`` (clip to
``gradient_clipping``, the optimizer step on the fp32 partition, zero_grad). No ``torch.autocast``:
accelerate 1.15 ``accelerator.py`` L536-566 never turns native AMP on for DeepSpeed
(``vramplan.hf.build.native_amp``); the engine
itself casts every floating parameter to bf16/fp16 (deepspeed 0.19.8 ``runtime/engine.py`` L1859-1862,
``_cast_module_mixed_precision``: peft's fp32 LoRA weights and fp32 norms included) and keeps the fp32
master copy in the ZeRO optimizer.

ZeRO-3 loading. transformers builds a non-quantized model under ``deepspeed.zero.Init`` (partitioned as
it is built, ``modeling_utils.py`` L1435-1448), a quantized one on meta and loads it whole
(L3820-3834: ``zero.Init`` only ``if not is_quantized``); either way ``deepspeed.initialize`` leaves
every parameter partitioned (``DeepSpeedZeRoOffload`` converts the ones not yet partitioned), so the
steady-state step is the same (checked: a transformers Llama built under ``zero.Init`` and the same one
built whole, full bf16, world 2, real tensors: the same step peaks to the byte, 6,516,224 and 7,357,440 B). vramplan builds on meta and materializes the whole model, then
``deepspeed.initialize`` partitions it: the load-time peak differs (not traced), the step does not.
QLoRA: the packed 4-bit weight is a parameter and is partitioned and all-gathered like the others (uint8
or the ``bnb_4bit_quant_storage`` dtype, same bytes); its quant state is a module attribute, kept whole
on every rank.

Components (names in the breakdown's categories): ``weights/zero_partition`` (what
``deepspeed.initialize`` allocates: frozen parameters' ZeRO-3 partitions and anything not named below),
``adapter/zero_partition`` (ZeRO-3: this rank's flat 16-bit partition of the trainable parameters; under
ZeRO-2 the flat 16-bit copy is the parameters themselves, ``adapter/lora``), ``optimizer/fp32_master``
(the fp32 master partition), ``gradients/zero_partition`` (the gradient partition),
``gradients/zero_buckets`` (the reduce buckets), ``weights/zero_gathered`` (ZeRO-3's all-gathered
parameters, allocated in ``PartitionedParameterCoordinator.fetch_sub_module``). The buffers are found by
the optimizer's attribute names (``_BUFFERS``) and retagged after ``initialize`` and around every
backward and step. Everything else keeps the trace's labels.

Known limit of the layer extrapolation: ZeRO-3 keeps a gathered parameter while the parameters
gathered stay under ``stage3_max_live_parameters`` and its next use is within ``stage3_max_reuse_distance``
(DeepSpeed default 1e9 elements; not a Scenario field): on a model whose traced layers fall under those
thresholds and whose whole depth does not, the extrapolated ``weights/zero_gathered`` is too high (a
small model keeps every parameter gathered through the step, as the real run does).

Under fake tensors the data-dependent checks are stood in for (none allocates):

1. ``is_invalid_grad_norm`` (``runtime/utils.py`` L231; used in ``zero/stage3.py`` L2888,
   ``zero/stage_1_and_2.py`` L3043, L3203) -> False;
2. ``assert_ints_same_as_other_ranks`` (``zero/utils.py`` L114; ``partitioned_param_coordinator.py``
   L260-267 and ``stage3.py`` L1671, the ``.item()`` of the second forward) -> no-op, also on real
   tensors in the fake group (its all-reduce leaves every rank's own list);
3. ``DeepSpeedZeroOptimizer.has_overflow`` (``stage_1_and_2.py`` L3237; a 16-bit ZeRO-2 step) -> False;
4. ``nn.Module.to`` -> identity during ``deepspeed.initialize`` (``engine.py`` L2093-2094 moves the model
   to its device, which is where it is already on the CPU; under fake tensors ``Module.to`` cannot swap
   the parameters);
5. ``LOCAL_RANK`` (``engine.py`` L1972 asserts it, ``zero/utils.py`` L85 reads it) set to the simulated
   rank's local rank for the run.
"""

from __future__ import annotations

import contextlib
import functools
import os
from typing import Any

from vramplan.parallel import StrategyUnsupported
from vramplan.parallel.torch_wrap import WrapContext, Wrapped
from vramplan.scenario import Dtype, Optim, Scenario, StateOffload, Strategy

#: What the trace's ZeRO assumes, for the breakdown's notes.
NOTES = (
    "ZeRO: the HF Trainer's own torch AdamW as DeepSpeed's client optimizer (a DeepSpeed config with an "
    "\"optimizer\" section runs FusedAdam on CUDA instead: same state bytes, not traced)",
    "ZeRO: traced with DeepSpeed's CPU accelerator; CUDA-only buffers (pinned copies, streams, NCCL) are not seen",
)


def hidden_size(config: Any) -> int:
    """The ``hidden_size`` transformers 5.24 sizes the ``"auto"`` buckets by (``integrations/deepspeed.py``
    L210-222: ``hidden_size``, else the largest of ``hidden_sizes``, else the same in ``text_config``)."""
    for cfg in (config, getattr(config, "text_config", None)):
        if cfg is None:
            continue
        if getattr(cfg, "hidden_size", None):
            return int(cfg.hidden_size)
        if getattr(cfg, "hidden_sizes", None):
            return int(max(cfg.hidden_sizes))
    raise StrategyUnsupported("the model config has neither hidden_size nor hidden_sizes: the ZeRO \"auto\" "
                              "bucket sizes cannot be resolved (give --reduce-bucket-size ...)")


def ds_config(scenario: Scenario, hidden: int, max_grad_norm: float = 1.0) -> dict[str, Any]:
    """The DeepSpeed config the HF Trainer hands ``deepspeed.initialize`` for ``scenario``.

    ``"auto"`` (a 0 in the Scenario) resolved as transformers 5.24 ``integrations/deepspeed.py`` does:
    ``reduce_bucket_size`` = hidden² (L232), ZeRO-3 ``stage3_prefetch_bucket_size`` = int(0.9·hidden²)
    (L235-238), ``stage3_param_persistence_threshold`` = 10·hidden (L239-242);
    ``train_micro_batch_size_per_gpu`` = the batch (L144), ``gradient_accumulation_steps`` 1,
    ``gradient_clipping`` = ``max_grad_norm`` (L161), ``bf16``/``fp16`` ``enabled`` from the training
    dtype (L183-184); ``zero_allow_untested_optimizer`` for the Trainer's client optimizer (L589)."""
    if scenario.strategy not in (Strategy.ZERO2, Strategy.ZERO3):
        raise StrategyUnsupported(f"strategy {scenario.strategy.value} is not a DeepSpeed ZeRO stage")
    stage = 3 if scenario.strategy is Strategy.ZERO3 else 2
    zero: dict[str, Any] = {
        "stage": stage,
        "overlap_comm": scenario.overlap_comm,
        "contiguous_gradients": scenario.contiguous_gradients,
        "reduce_bucket_size": scenario.reduce_bucket_size or hidden * hidden,
    }
    if stage == 2:
        zero["allgather_bucket_size"] = scenario.allgather_bucket_size
    else:
        zero["stage3_prefetch_bucket_size"] = scenario.stage3_prefetch_bucket_size or int(0.9 * hidden * hidden)
        zero["stage3_max_live_parameters"] = scenario.stage3_max_live_parameters
        zero["stage3_max_reuse_distance"] = scenario.stage3_max_reuse_distance
        zero["stage3_param_persistence_threshold"] = (scenario.stage3_param_persistence_threshold or 10 * hidden)
    if scenario.state_offload is not StateOffload.NONE:
        zero["offload_optimizer"] = {"device": "cpu"}
        if scenario.state_offload is StateOffload.PARAMS:
            zero["offload_param"] = {"device": "cpu"}
    return {
        "train_micro_batch_size_per_gpu": scenario.batch,
        "gradient_accumulation_steps": 1,
        "train_batch_size": scenario.batch * scenario.world_size,
        "gradient_clipping": max_grad_norm,
        "bf16": {"enabled": scenario.dtype is Dtype.BF16},
        "fp16": {"enabled": scenario.dtype is Dtype.FP16},
        "zero_optimization": zero,
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 1 << 30,
        "wall_clock_breakdown": False,
    }


def check(scenario: Scenario) -> None:
    """Refuse, in one line, what the ZeRO trace does not run."""
    from vramplan.hf.build import TraceUnsupported

    if scenario.state_offload is not StateOffload.NONE:
        raise TraceUnsupported(
            f"ZeRO state_offload {scenario.state_offload.value} is not traced: on the CPU the simulation cannot "
            "tell DeepSpeed's host buffers (offloaded fp32 partition, optimizer state, pinned copies) from device ones; use "
            "--state-offload none or --method analytic")
    if scenario.optimizer not in (Optim.ADAMW, Optim.SGD) or scenario.lora_fa:
        raise TraceUnsupported(f"optimizer {scenario.optimizer.value}{' (LoRA-FA)' if scenario.lora_fa else ''} "
                               "is not traced under DeepSpeed ZeRO (the trace runs torch AdamW or SGD as the "
                               "client optimizer)")


#: How to install DeepSpeed next to vramplan's torch (docs/multigpu.md; .ci/run does the same).
INSTALL_HINT = ("the ZeRO trace needs deepspeed: pip install --no-deps 'deepspeed==0.19.8' hjson ninja py-cpuinfo "
                "msgpack einops (--no-deps keeps torch as it is)")


def require_deepspeed() -> Any:
    """``deepspeed``, or a one-line install hint."""
    from vramplan.hf.build import TraceUnsupported

    try:
        import deepspeed
    except ImportError as e:
        raise TraceUnsupported(f"{INSTALL_HINT} (missing: {e.name})") from None
    return deepspeed


def wrap(ctx: WrapContext) -> Wrapped:
    sc = ctx.scenario
    check(sc)
    import torch

    deepspeed = require_deepspeed()

    patches = contextlib.ExitStack()
    # ZeRO-3's engine swaps torch.nn.functional.linear for its memory-efficient autograd function and leaves
    # it so ("This will persist unless manually reset": deepspeed 0.19.8 zero/partition_parameters.py
    # L412-419): the ZeRO-3 step runs with it, as a real one does, and it is put back for what runs next
    patches.callback(setattr, torch.nn.functional, "linear", torch.nn.functional.linear)
    patches.enter_context(_fresh_groups())
    if str(ctx.device) == "cpu":
        patches.enter_context(_cpu_accelerator())
    patches.enter_context(_local_rank(ctx.rank % sc.gpus))
    ctx.register(ctx.model)
    if ctx.fake:
        patches.enter_context(_fake_stand_ins())
    if ctx.fake or ctx.fake_group:
        patches.enter_context(_same_as_other_ranks())
    if sc.strategy is Strategy.ZERO3:
        patches.enter_context(_gathered_labelled(ctx.labelled))
    optimizer = ctx.make_optimizer(ctx.model) if ctx.make_optimizer else None
    config = ds_config(sc, hidden_size(ctx.model.config))
    with ctx.labelled("weights/zero_partition"), \
            (_attr(torch.nn.Module, "to", _same_module) if ctx.fake else contextlib.nullcontext()):
        engine, *_ = deepspeed.initialize(model=ctx.model, optimizer=optimizer, config=config)
    patches.callback(engine.destroy)
    retag = functools.partial(_retag_buffers, ctx.retag, engine.optimizer)
    retag()

    def backward(loss: Any) -> None:
        retag()
        engine.backward(loss)
        retag()

    def step() -> None:
        engine.step()
        retag()

    return Wrapped(module=engine, inner=ctx.model, optimizer=None, backward=backward, step=step,
                   patches=patches, notes=NOTES)


#: ZeRO optimizer attribute -> component (deepspeed 0.19.8 ``zero/stage3.py``
#: ``DeepSpeedZeroOptimizer_Stage3``, ``zero/stage_1_and_2.py`` ``DeepSpeedZeroOptimizer``); a list
#: attribute holds one tensor per parameter group.
_BUFFERS: dict[str, str] = {
    "fp16_partitioned_groups_flat": "adapter/zero_partition",
    "fp32_partitioned_groups_flat": "optimizer/fp32_master",
    "grad_partitions_flat_buffer": "gradients/zero_partition",
    "_DeepSpeedZeroOptimizer_Stage3__ipg_bucket_flat_buffer": "gradients/zero_buckets",
    "bit16_groups_flat": "adapter/lora",
    "single_partition_of_fp32_groups": "optimizer/fp32_master",
    "ipg_buffer": "gradients/zero_buckets",
    "grads_in_partition": "gradients/zero_partition",
}


def _retag_buffers(retag: Any, optimizer: Any) -> None:
    """Give the ZeRO optimizer's live buffers their ``_BUFFERS`` component."""
    import torch

    for attr, component in _BUFFERS.items():
        value = getattr(optimizer, attr, None)
        tensors = value if isinstance(value, (list, tuple)) else [value]
        retag([t for t in tensors if isinstance(t, torch.Tensor)], component)


@contextlib.contextmanager
def _cpu_accelerator() -> Any:
    """DeepSpeed's CPU accelerator for a run on CPU tensors (the trace), also where DeepSpeed detected a
    GPU (``deepspeed/accelerator/real_accelerator.py`` ``get_accelerator`` / ``set_accelerator``), put back
    afterwards. On a CPU-only machine it is already the one; the switch on a CUDA machine is unchecked."""
    from deepspeed.accelerator import real_accelerator as ra

    current = ra.get_accelerator()
    if current.device_name() == "cpu":
        yield
        return
    from deepspeed.accelerator.cpu_accelerator import CPU_Accelerator

    ra.set_accelerator(CPU_Accelerator())
    try:
        yield
    finally:
        ra.set_accelerator(current)


@contextlib.contextmanager
def _fresh_groups() -> Any:
    """DeepSpeed caches the process groups it made in module globals (``deepspeed.utils.groups``,
    ``deepspeed.comm.comm.cdb``); each run makes its own group (``torch_wrap.process_group``), so the
    globals are put back as they were once the run ends."""
    from deepspeed.comm import comm
    from deepspeed.utils import groups

    saved = {k: v for k, v in vars(groups).items() if k.startswith("_") and k.isupper() or k in ("mpu", "mesh_device")}
    saved = {k: (dict(v) if isinstance(v, dict) else v) for k, v in saved.items()}
    cdb = comm.cdb
    try:
        yield
    finally:
        for k, v in saved.items():
            setattr(groups, k, v)
        comm.cdb = cdb


def _same_module(self: Any, *args: Any, **kwargs: Any) -> Any:
    return self


@contextlib.contextmanager
def _fake_stand_ins() -> Any:
    """Items 1-3 of the module docstring."""
    import deepspeed.runtime.utils as ds_utils
    from deepspeed.runtime.zero import partitioned_param_coordinator as coordinator
    from deepspeed.runtime.zero import stage3, stage_1_and_2

    with contextlib.ExitStack() as stack:
        for mod in (ds_utils, stage3, stage_1_and_2):
            stack.enter_context(_attr(mod, "is_invalid_grad_norm", lambda *a, **k: False))
        stack.enter_context(_attr(stage_1_and_2.DeepSpeedZeroOptimizer, "has_overflow", lambda self, *a, **k: False))
        yield


@contextlib.contextmanager
def _same_as_other_ranks() -> Any:
    """Item 2 of the module docstring: also with real tensors in the fake group, whose all-reduce leaves
    each rank's own value (rank 1 would see its -1 markers disagree with rank 0's)."""
    from deepspeed.runtime.zero import partitioned_param_coordinator as coordinator
    from deepspeed.runtime.zero import stage3

    with _attr(coordinator, "assert_ints_same_as_other_ranks", lambda *a, **k: None), \
            _attr(stage3, "assert_ints_same_as_other_ranks", lambda *a, **k: None):
        yield


@contextlib.contextmanager
def _gathered_labelled(labelled: Any) -> Any:
    """ZeRO-3's all-gathers (``fetch_sub_module``, forward and backward) allocate under ``zero/gathered``."""
    from deepspeed.runtime.zero.partitioned_param_coordinator import PartitionedParameterCoordinator as C

    fetch = C.fetch_sub_module

    def fetch_labelled(self: Any, *args: Any, **kwargs: Any) -> Any:
        with labelled("weights/zero_gathered"):
            return fetch(self, *args, **kwargs)

    with _attr(C, "fetch_sub_module", fetch_labelled):
        yield


@contextlib.contextmanager
def _local_rank(rank: int) -> Any:
    """``LOCAL_RANK`` for the engine's check (item 5); torchrun's own value is kept."""
    if "LOCAL_RANK" in os.environ:
        yield
        return
    os.environ["LOCAL_RANK"] = str(rank)
    try:
        yield
    finally:
        os.environ.pop("LOCAL_RANK", None)


@contextlib.contextmanager
def _attr(obj: Any, name: str, value: Any) -> Any:
    saved = obj.__dict__[name] if name in getattr(obj, "__dict__", {}) else getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, saved)

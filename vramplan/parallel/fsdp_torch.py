"""FSDP2's wrapping for the trace and the profiler (``vramplan.parallel.torch_wrap`` interface).

The units accelerate 1.16 makes (``accelerate/utils/fsdp_utils.py`` ``fsdp2_prepare_model``,
L740-904), with its own helpers where they are public enough to call:

- every module of a class named in the model's ``_no_split_modules`` (the decoder layers; the
  transformer-based auto-wrap policy, L955-980), bottom-up (``get_module_children_bottom_up``), with
  ``reshard_after_forward = Scenario.reshard_after_forward`` (L865-874);
- the input embedding on its own when untied (L885);
- the tail, ``[final norm, output embedding]`` (``_find_final_norm``), with ``reshard_after_forward=False``
  (L898);
- the root with torch's default, which resolves to False for the root (L900-904).

A frozen non-floating 4-bit weight (``bnb_4bit_quant_storage`` uint8, the default) is excluded from
sharding (``ignored_params``, L773-781 and L836-846): every rank keeps it whole; a floating storage
(``--quant-storage bf16``) is sharded with the other parameters. The 4-bit quantization state is a
module attribute, never sharded: every rank holds all of it.

The mixed-precision policy is torch's default (no cast; the step's autocast casts as on one GPU) and
accelerate's upcast of 16-bit trainable parameters to fp32 under mixed precision (L790-800) is not
made: the scenario's dtypes are kept.

Buffers are tagged while FSDP makes them: ``fsdp/unsharded`` (all-gather outputs and unsharded
parameters, ``FSDPParamGroup.unshard`` / ``wait_for_unshard``), ``fsdp/reduce_scatter`` (the pending
reduce-scatter inputs, ``post_backward``); the new sharded gradient is moved to ``gradients/trainable``
as ``post_backward`` returns. DTensor's sharding propagation (``ShardingPropagator.
_propagate_tensor_meta_non_cached``) runs each new op once on fake tensors of the global shapes and
caches the result: those tensors are not counted. FSDP2's lazy init (the first forward) re-pads uneven
shards into new storages: the model's categories are given again after it (``ctx.retag_model``) (the first run in a process read 276,480 B high at
the first optimizer step without this).

Under fake tensors bitsandbytes' ``fix_4bit_weight_quant_state_from_module`` would re-wrap FSDP's
unsharded parameter as a ``Params4bit``, which cannot wrap a fake tensor: it only hands the module's
quantization state to the parameter FSDP installed (on real tensors it runs as it is; the bytes are
the same).
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any

from vramplan.parallel.torch_wrap import WrapContext, Wrapped, device_mesh
from vramplan.scenario import StateOffload


def wrap(ctx: WrapContext) -> Wrapped:
    import bitsandbytes as bnb
    import torch
    from accelerate.utils.fsdp_utils import _find_final_norm
    from accelerate.utils.other import get_module_children_bottom_up
    from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

    from vramplan.parallel import StrategyUnsupported

    sc, model = ctx.scenario, ctx.model
    if sc.state_offload is not StateOffload.NONE:
        raise StrategyUnsupported("fsdp with state_offload params (CPUOffloadPolicy) is not traced: on the CPU the "
                                  "host copies and the device copies are one memory; use the analytic engine")
    patches = contextlib.ExitStack()
    patches.enter_context(_tagged(ctx))
    if ctx.fake:
        patches.enter_context(_plain_4bit_state())
    ignored = {m.weight for m in model.modules()
               if isinstance(m, bnb.nn.Linear4bit) and not m.weight.is_floating_point() and not m.weight.requires_grad}
    kwargs: dict[str, Any] = dict(mesh=device_mesh(ctx.device), reshard_after_forward=sc.reshard_after_forward,
                                  mp_policy=MixedPrecisionPolicy())
    if ignored:
        kwargs["ignored_params"] = ignored
    names = set(getattr(model, "_no_split_modules", None) or ())
    for module in get_module_children_bottom_up(model)[:-1]:
        if type(module).__name__ in names and not isinstance(module, FSDPModule):
            fully_shard(module, **kwargs)
    embed = getattr(model, "get_input_embeddings", lambda: None)()
    head = getattr(model, "get_output_embeddings", lambda: None)()
    tied = embed is not None and head is not None and getattr(embed, "weight", None) is getattr(head, "weight", 0)
    if not tied and embed is not None and not isinstance(embed, FSDPModule):
        fully_shard(embed, **kwargs)
    tail = [m for m in ((_find_final_norm(model), embed, head) if tied else (_find_final_norm(model), head))
            if m is not None and not isinstance(m, FSDPModule)]
    if tail:
        fully_shard(tail, **{**kwargs, "reshard_after_forward": False})
    if not isinstance(model, FSDPModule):
        fully_shard(model, **{k: v for k, v in kwargs.items() if k != "reshard_after_forward"})
    del torch
    ctx.register(model)
    optimizer = ctx.make_optimizer(model) if ctx.make_optimizer else None
    note = (f"FSDP2: decoder layers sharded over {ctx.world_size} ranks (reshard_after_forward "
            f"{sc.reshard_after_forward}), embedding and head as accelerate 1.16 groups them; "
            + ("the uint8-stored 4-bit weights are kept whole on every rank (accelerate excludes them from "
               "sharding: use --quant-storage bf16 to shard them); " if ignored else "")
            + "quantization state is replicated")
    return Wrapped(module=model, inner=model, optimizer=optimizer, patches=patches, notes=(note,))


@contextlib.contextmanager
def _tagged(ctx: WrapContext) -> Any:
    """FSDP2's buffers under their own categories while its param groups unshard and reduce."""
    from torch.distributed.fsdp._fully_shard._fsdp_param_group import FSDPParamGroup

    saved = {n: getattr(FSDPParamGroup, n) for n in ("unshard", "wait_for_unshard", "post_backward")}

    def labelled(name: str, category: str) -> Any:
        method = saved[name]

        @functools.wraps(method)
        def run(self: Any, *args: Any, **kwargs: Any) -> Any:
            with ctx.labelled(category):
                out = method(self, *args, **kwargs)
            if name == "post_backward":
                ctx.retag([fp.sharded_param.grad for fp in self.fsdp_params if fp.sharded_param.grad is not None],
                          "gradients/trainable")
            return out

        return run

    from torch.distributed.tensor._sharding_prop import ShardingPropagator

    propagate = ShardingPropagator._propagate_tensor_meta_non_cached

    @functools.wraps(propagate)
    def uncounted(self: Any, *args: Any, **kwargs: Any) -> Any:
        with ctx.uncounted():
            return propagate(self, *args, **kwargs)

    ShardingPropagator._propagate_tensor_meta_non_cached = uncounted
    from torch.distributed.fsdp._fully_shard._fsdp_state import FSDPState

    lazy_init = FSDPState._lazy_init

    @functools.wraps(lazy_init)
    def lazy_init_retag(self: Any) -> None:
        lazy_init(self)
        ctx.retag_model(ctx.model)

    FSDPState._lazy_init = lazy_init_retag
    FSDPParamGroup.unshard = labelled("unshard", "fsdp/unsharded")
    FSDPParamGroup.wait_for_unshard = labelled("wait_for_unshard", "fsdp/unsharded")
    FSDPParamGroup.post_backward = labelled("post_backward", "fsdp/reduce_scatter")
    try:
        yield
    finally:
        ShardingPropagator._propagate_tensor_meta_non_cached = propagate
        FSDPState._lazy_init = lazy_init
        for n, m in saved.items():
            setattr(FSDPParamGroup, n, m)


@contextlib.contextmanager
def _plain_4bit_state() -> Any:
    """bitsandbytes' ``fix_4bit_weight_quant_state_from_module`` without the ``Params4bit`` re-wrap
    (``bitsandbytes/nn/modules.py`` L487-501): the module's state on whatever parameter FSDP installed."""
    import bitsandbytes.nn.modules as mods

    saved = mods.fix_4bit_weight_quant_state_from_module

    def fix(module: Any) -> None:
        if getattr(module.weight, "quant_state", None) is None:
            module.weight.quant_state = module.quant_state

    mods.fix_4bit_weight_quant_state_from_module = fix
    try:
        yield
    finally:
        mods.fix_4bit_weight_quant_state_from_module = saved

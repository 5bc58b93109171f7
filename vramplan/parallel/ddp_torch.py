"""DDP's wrapping for the trace and the profiler (``vramplan.parallel.torch_wrap`` interface).

``DistributedDataParallel(model, bucket_cap_mb=..., gradient_as_bucket_view=...,
find_unused_parameters=...)`` as the HF Trainer builds it (transformers 5.24 ``trainer.py`` L749-760:
``find_unused_parameters`` is ``not gradient checkpointing`` for a ``PreTrainedModel``, True for any
other model, e.g. a peft ``PeftModel``). The Reducer allocates its gradient buckets in C++ through the
dispatcher while the wrapper is built, so the wrapper is built inside ``ctx.labelled("ddp/buckets")``
after the model's own tensors are registered.

Under fake tensors three data-dependent steps of DDP cannot run and are stood in for (none allocates):

1. ``_verify_param_shape_across_processes`` (``torch/nn/parallel/distributed.py`` L1064) reads the
   parameter shapes as data: a no-op;
2. (the fake group, fake or real tensors) the default all-reduce comm hook waits on a future the fake group leaves empty
   (``c10d/comm.cpp``: ``result.isTensor()`` assert): a Python hook doing the same in-place
   ``div_(world)`` and ``all_reduce`` on the bucket buffer, returning it;
3. ``reducer._rebuild_buckets()`` in the second forward (L1775) reads bucket indices: it is skipped
   (the first step's buckets stay; on real tensors the rebuilt buckets have the same bytes);
4. ``find_unused_parameters=True`` reads the Reducer's used map as data in backward: the wrapper is
   built without it and the two maps it allocates are made alongside (``_used_maps``).

On real tensors (the profiler) DDP runs as it is.
"""

from __future__ import annotations

import contextlib
from typing import Any

from vramplan.parallel.torch_wrap import WrapContext, Wrapped


def wrap(ctx: WrapContext) -> Wrapped:
    import torch
    import torch.nn.parallel.distributed as ddp_mod
    from torch.nn.parallel import DistributedDataParallel as DDP
    from transformers import PreTrainedModel

    sc, model = ctx.scenario, ctx.model
    patches = contextlib.ExitStack()
    find_unused = not sc.grad_checkpointing if isinstance(model, PreTrainedModel) else True
    if _FIND_UNUSED is not None:
        find_unused = _FIND_UNUSED
    ctx.register(model)
    if ctx.fake:
        patches.enter_context(_patched(ddp_mod, "_verify_param_shape_across_processes", lambda *a, **k: None))
    # under fake tensors the unused-parameter search cannot run (the Reducer reads its used map as data)
    kwargs: dict[str, Any] = dict(bucket_cap_mb=sc.bucket_cap_mb, gradient_as_bucket_view=sc.gradient_as_bucket_view,
                                  find_unused_parameters=find_unused and not ctx.fake)
    if str(ctx.device).startswith("cuda"):
        kwargs["device_ids"] = [torch.device(ctx.device).index or 0]
    with ctx.labelled("ddp/buckets"):
        module = DDP(model, **kwargs)
        if find_unused and ctx.fake:  # what the search allocates, made here (see _used_maps)
            module._vramplan_used_maps = _used_maps(model)
    if ctx.fake_group:
        module.register_comm_hook(state=None, hook=_allreduce_hook)
    module.reducer = _Rebuild(module.reducer, ctx.fake, ctx.labelled)
    optimizer = ctx.make_optimizer(model) if ctx.make_optimizer else None
    return Wrapped(module=module, inner=model, optimizer=optimizer, patches=patches,
                   notes=(f"DDP: every rank holds the whole model and a {sc.bucket_cap_mb} MiB-bucketed copy of "
                          "the gradients (ddp/buckets); find_unused_parameters "
                          f"{find_unused} as the HF Trainer sets it",))


_FIND_UNUSED: bool | None = None


def _allreduce_hook(state: Any, bucket: Any) -> Any:
    """The default all-reduce hook's work (``allreduce_hook``: divide by the world size in place, then
    all-reduce the bucket buffer) with a future holding the buffer (the fake group's holds None)."""
    import torch
    import torch.distributed as dist

    buf = bucket.buffer()
    buf.div_(dist.get_world_size())
    dist.all_reduce(buf)
    fut: Any = torch.futures.Future()
    fut.set_result(buf)
    return fut


_allreduce_hook.__annotations__ = {}  # DDP checks annotations it can read; these are strings here


def _used_maps(model: Any) -> list[Any]:
    """The two int32 maps of one entry per trainable parameter that ``find_unused_parameters=True``
    makes the Reducer allocate (``torch/csrc/distributed/c10d/reducer.cpp``
    ``initialize_local_used_map``: ``local_used_map_`` and its device copy ``local_used_map_dev_``), as
    tensors of the same shape and dtype."""
    import torch

    n = sum(1 for p in model.parameters() if p.requires_grad)
    return [torch.zeros(n, dtype=torch.int32), torch.zeros(n, dtype=torch.int32)]


class _Rebuild:
    """The Reducer, with ``_rebuild_buckets`` (after the first step) allocating under ``ddp/buckets``;
    under fake tensors it is skipped (returns False: nothing rebuilt)."""

    def __init__(self, reducer: Any, fake: bool, labelled: Any) -> None:
        object.__setattr__(self, "_reducer", reducer)
        object.__setattr__(self, "_fake", fake)
        object.__setattr__(self, "_labelled", labelled)

    def _rebuild_buckets(self) -> bool:
        if self._fake:
            return False
        with self._labelled("ddp/buckets"):
            return self._reducer._rebuild_buckets()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reducer, name)


@contextlib.contextmanager
def _patched(obj: Any, name: str, value: Any) -> Any:
    saved = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, saved)

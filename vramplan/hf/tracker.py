"""Live-tensor tracker: the bytes PyTorch holds in tensor storages, as the CUDA caching allocator counts them.

A ``TorchDispatchMode`` sees every tensor an operator returns. Each new storage is recorded once (keyed
weakly on the storage object, so views and aliases are not double counted) with its size rounded up to
the caching allocator's 512-byte granularity, and a finaliser subtracts it when the storage dies. The
running total is what ``torch.cuda.memory_allocated`` would report for the same program; its maximum is
the allocated peak.

Works on real CPU tensors and on ``FakeTensorMode`` tensors alike (fake storages are real Python
objects with sizes), which is what lets the trace and the CPU profiler share one reader.

Each storage carries a *category* (``weights``, ``activations``, ...): the tracker's current ``label``
when it was allocated, or the one given to ``register``/``retag``. At every new peak the per-category
totals are snapshotted, so ``peak_by_category`` sums exactly to ``peak_bytes``.

Host memory is counted apart. A storage the offload hooks moved to host memory (``to_host``: the
copy ``save_on_cpu`` or an offload pack hook made, which on the CPU the trace runs on is a CPU tensor
like every other) carries a ``host/`` category: it leaves ``current_bytes`` (the device) and joins
``host_bytes``, with its own peak and per-category snapshot (``host_peak_bytes``,
``host_peak_by_category``). Pinned storages are rounded as PyTorch's pinned-memory allocator rounds
them (``pinned_block``).

Distributed runs (``vramplan.parallel``): an operator on a ``DTensor`` is left to DTensor
(``NotImplemented``), which runs it as operators on the local shards that come back through the mode,
so only the local storages are counted (the trick of torch's ``FSDPMemTracker``,
``torch/distributed/_tools/fsdp2_mem_tracker.py``). FSDP2 frees and re-allocates its unsharded
parameters with ``UntypedStorage.resize_(0)`` / ``resize_(n)`` (``_fsdp_param.py`` ``free_storage`` /
``alloc_storage``), which no dispatch mode sees: while a tracker is open that method is followed, and a
tracked storage's bytes follow its new size (``resize_label``, when set, names what a storage grown
from nothing holds). Neither path is taken by a single-process run.

Torch is imported lazily: importing this module costs nothing.
"""

from __future__ import annotations

import contextlib
import functools
import sys
import weakref
from typing import Any, Iterable, Iterator

#: CUDA caching allocator: every block is a multiple of 512 bytes (c10/cuda/CUDACachingAllocator.cpp,
#: ``kMinBlockSize``). Storages of zero bytes take no block.
ALLOCATOR_ROUND = 512


#: Category prefix of host memory (offloaded activations): never part of the device total.
HOST = "host"
#: Category of pinned host storages (rounded by ``pinned_block``).
HOST_PINNED = "host/pinned"


def pinned_block(nbytes: int) -> int:
    """Bytes PyTorch's pinned-memory allocator takes for a request of ``nbytes``: the next power of two
    (torch 2.13 ``ATen/core/CachingHostAllocator.h`` ``allocate``, L300-309: ``PowerOf2Ceil(size)`` below
    ``pinned_max_round_threshold``, unbounded by default). Freed blocks stay cached for reuse."""
    if nbytes <= 0:
        return 0
    return 1 << (int(nbytes) - 1).bit_length()


def round_up(nbytes: int, granule: int = ALLOCATOR_ROUND) -> int:
    """Bytes the caching allocator hands out for a request of ``nbytes``."""
    if nbytes <= 0:
        return 0
    return -(-nbytes // granule) * granule


class LiveTensorTracker:
    """Context manager tracking live storage bytes, the peak, and per-category bytes at the peak.

    Usage::

        with LiveTensorTracker() as tr:
            tr.register(model.parameters(), "weights")
            tr.label = "activations"
            loss = model(**batch).loss
        tr.peak_bytes, tr.peak_by_category
    """

    def __init__(self, label: str = "temporary", granule: int = ALLOCATOR_ROUND,
                 uncounted: tuple[str, ...] = ("managed",)) -> None:
        from torch.utils.weak import WeakIdKeyDictionary

        self.label = label
        """Category given to storages allocated from now on."""
        self.granule = granule
        self.uncounted = uncounted
        """Category prefixes kept out of ``current_bytes`` (e.g. CUDA managed memory of paged
        optimizers, which the caching allocator never sees); still listed in ``by_category``."""
        self._live = WeakIdKeyDictionary()  # storage -> [bytes, category]
        self.current_bytes = 0
        self.by_category: dict[str, int] = {}
        self.peak_bytes = 0
        self.peak_by_category: dict[str, int] = {}
        self.host_bytes = 0
        """Live host bytes (``host/`` categories)."""
        self.host_peak_bytes = 0
        self.host_peak_by_category: dict[str, int] = {}
        self._mode: Any = None
        self._paused = 0
        self.resize_label: str | None = None
        """Category of a storage that ``UntypedStorage.resize_`` grows from zero bytes (FSDP2's
        unsharded parameters); None keeps the current ``label``."""
        self.transient: Any = None
        """Optional ``f(func, args, kwargs) -> (category, bytes)`` for memory an operator allocates and
        frees inside itself (invisible at the op boundary), e.g. a CUDA kernel's scratch buffers. It
        is counted from before the op until its outputs exist, then released."""

    # ----------------------------------------------------------------------------- bookkeeping
    def _add(self, storage: Any, category: str) -> None:
        if storage in self._live:
            return
        nbytes = self._rounded(int(storage.nbytes()), category)
        entry = [nbytes, category]
        self._live[storage] = entry
        self._count(category, nbytes)
        weakref.finalize(storage, self._free, entry)

    def _resized(self, storage: Any) -> None:
        """``storage`` was resized in place (``UntypedStorage.resize_``): its bytes follow its new size."""
        entry = self._live.get(storage)
        nbytes = int(storage.nbytes())
        if entry is None:
            if nbytes:
                self._add(storage, self.resize_label or self.label)
            return
        category = self.resize_label if (self.resize_label and nbytes and not entry[0]) else entry[1]
        new = self._rounded(nbytes, category)
        if new != entry[0] or category != entry[1]:
            self._free(entry)
            entry[0], entry[1] = new, category
            self._count(category, new)

    def _rounded(self, nbytes: int, category: str) -> int:
        return pinned_block(nbytes) if category == HOST_PINNED else round_up(nbytes, self.granule)

    def _counted(self, category: str) -> bool:
        return category.split("/", 1)[0] not in self.uncounted and not _is_host(category)

    def _count(self, category: str, nbytes: int) -> None:
        self.by_category[category] = self.by_category.get(category, 0) + nbytes
        if _is_host(category):
            self.host_bytes += nbytes
            if self.host_bytes > self.host_peak_bytes:
                self._host_snapshot()
        elif self._counted(category):
            self.current_bytes += nbytes
            if self.current_bytes > self.peak_bytes:
                self._snapshot()

    def _free(self, entry: list) -> None:
        nbytes, category = entry
        self.by_category[category] -= nbytes
        if _is_host(category):
            self.host_bytes -= nbytes
        elif self._counted(category):
            self.current_bytes -= nbytes

    def _host_snapshot(self) -> None:
        self.host_peak_bytes = self.host_bytes
        self.host_peak_by_category = {k: v for k, v in self.by_category.items() if v and _is_host(k)}

    def _snapshot(self) -> None:
        self.peak_bytes = self.current_bytes
        self.peak_by_category = {k: v for k, v in self.by_category.items() if v and self._counted(k)}

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Count nothing the operators inside the block return: tensors that hold no memory of the
        program (DTensor's sharding propagation runs the op on fake tensors of the global shapes, once
        per op and shapes, then caches it; ``vramplan.parallel.fsdp_torch``)."""
        self._paused += 1
        try:
            yield
        finally:
            self._paused -= 1

    def track_output(self, out: Any) -> None:
        """Record every tensor storage in ``out`` (a tensor or a pytree of them)."""
        import torch
        from torch.utils._pytree import tree_leaves

        if self._paused:
            return

        for leaf in tree_leaves(out):
            for t in _plain(leaf):
                if t.layout == torch.strided:
                    self._add(t.untyped_storage(), self.label)

    def register(self, tensors: Iterable[Any] | Any, category: str) -> None:
        """Count already-existing tensors (parameters, quantization state) under ``category``.

        A storage already tracked keeps its first category; use ``retag`` to move it."""
        import torch

        if isinstance(tensors, torch.Tensor):
            tensors = [tensors]
        for leaf in tensors:
            for t in _plain(leaf):
                if t.layout == torch.strided:
                    self._add(t.untyped_storage(), category)

    def retag(self, tensors: Iterable[Any] | Any, category: str) -> None:
        """Move live tensors to ``category`` (e.g. a gradient once it lands in ``.grad``).

        Untracked tensors are registered. The peak snapshot is not rewritten."""
        import torch

        if isinstance(tensors, torch.Tensor):
            tensors = [tensors]
        for t in (p for leaf in tensors for p in _plain(leaf)):
            if t.layout != torch.strided:
                continue
            s = t.untyped_storage()
            entry = self._live.get(s)
            if entry is None:
                self._add(s, category)
                continue
            if entry[1] != category:
                self._free(entry)
                entry[0], entry[1] = self._rounded(int(s.nbytes()), category), category
                self._count(category, entry[0])

    @contextlib.contextmanager
    def allocating(self, category: str) -> Iterator[None]:
        """Give ``category`` to the storages allocated inside the block (e.g. ``host/pinned`` inside an
        offload pack hook, so its copy never counts as device memory), then the label before."""
        saved, self.label = self.label, category
        try:
            yield
        finally:
            self.label = saved

    def category_of(self, tensor: Any) -> str | None:
        """The category of ``tensor``'s storage, None when untracked."""
        entry = self._live.get(tensor.untyped_storage())
        return None if entry is None else entry[1]

    def to_host(self, tensors: Iterable[Any] | Any, category: str = HOST_PINNED) -> None:
        """Count ``tensors`` as host memory under ``category`` (a ``host/`` one): the copies an offload
        hook made. A tracked storage leaves the device total and is re-rounded as the host allocator
        rounds it (``retag``); an untracked one is registered."""
        if not _is_host(category):
            raise ValueError(f"to_host needs a {HOST}/ category, got {category!r}")
        self.retag(tensors, category)

    def reset_peak(self, host: bool = True) -> None:
        """Start a new peak measurement from the current live bytes (the host peak too when ``host``)."""
        self._snapshot()
        if host:
            self._host_snapshot()

    def live_by_category(self) -> dict[str, int]:
        return {k: v for k, v in self.by_category.items() if v}

    # ------------------------------------------------------------------------- context manager
    def __enter__(self) -> "LiveTensorTracker":
        from torch.utils._python_dispatch import TorchDispatchMode

        tracker = self

        class _Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
                dtensor = _dtensor_type()
                if dtensor is not None and any(issubclass(t, dtensor) for t in types):
                    return NotImplemented  # DTensor runs it on the local shards, which come back here
                kwargs = kwargs or {}
                extra = tracker.transient(func, args, kwargs) if tracker.transient else None
                if extra:
                    tracker._count(extra[0], extra[1])
                try:
                    out = func(*args, **kwargs)
                    tracker.track_output(out)
                finally:
                    if extra:
                        tracker.by_category[extra[0]] -= extra[1]
                        if tracker._counted(extra[0]):
                            tracker.current_bytes -= extra[1]
                return out

        self._mode = _Mode()
        self._mode.__enter__()
        _follow_resize(self, True)
        return self

    def __exit__(self, *exc: Any) -> None:
        mode, self._mode = self._mode, None
        if mode is not None:
            _follow_resize(self, False)
            mode.__exit__(*exc)


#: The open trackers that ``UntypedStorage.resize_`` reports to, and the original method.
_RESIZE_WATCHERS: list[LiveTensorTracker] = []
_RESIZE_ORIGINAL: list[Any] = []


def _follow_resize(tracker: LiveTensorTracker, on: bool) -> None:
    """Report ``torch.UntypedStorage.resize_`` calls to ``tracker`` while it is open: the method is
    wrapped while any tracker is open and restored when the last one closes."""
    import torch

    if on:
        _RESIZE_WATCHERS.append(tracker)
        if len(_RESIZE_WATCHERS) == 1:
            original = torch.UntypedStorage.resize_
            _RESIZE_ORIGINAL[:] = [original]

            def resize_(storage: Any, size: int) -> Any:
                out = original(storage, size)
                for t in list(_RESIZE_WATCHERS):
                    t._resized(storage)
                return out

            torch.UntypedStorage.resize_ = resize_  # type: ignore[method-assign]
        return
    if tracker in _RESIZE_WATCHERS:
        _RESIZE_WATCHERS.remove(tracker)
    if not _RESIZE_WATCHERS and _RESIZE_ORIGINAL:
        torch.UntypedStorage.resize_ = _RESIZE_ORIGINAL.pop()  # type: ignore[method-assign]


def _dtensor_type() -> Any:
    """``torch.distributed.tensor.DTensor`` once something has imported it (never imported here, so
    a single-process run pays nothing)."""
    mod = sys.modules.get("torch.distributed.tensor")
    return getattr(mod, "DTensor", None) if mod is not None else None


def _is_host(category: str) -> bool:
    return category.split("/", 1)[0] == HOST


def _plain(t: Any) -> list[Any]:
    """The tensors holding ``t``'s memory: ``t`` itself, or for a wrapper subclass (torchao's
    ``NF4Tensor``, a ``DTensor``) its inner tensors, recursively. A wrapper's own storage is a
    placeholder whose ``nbytes()`` is the logical size (the bf16 size of an NF4 weight) though it
    holds nothing; counting it would add memory that does not exist. A tensor on the ``meta`` device
    holds nothing either (DeepSpeed ZeRO-2 keeps meta copies of its parameters as layout records,
    ``zero/stage_1_and_2.py`` L482-488): none (a fake tensor reports the device it stands for)."""
    import torch

    if not isinstance(t, torch.Tensor) or t.device.type == "meta":
        return []
    if not _is_wrapper(t):
        return [t]
    names, _ = t.__tensor_flatten__()
    return [p for n in names for p in _plain(getattr(t, n))]


@functools.lru_cache(maxsize=1)
def _wrapper_check() -> Any:
    from torch.utils._python_dispatch import is_traceable_wrapper_subclass

    return is_traceable_wrapper_subclass


def _is_wrapper(t: Any) -> bool:
    """A traceable wrapper subclass (``__tensor_flatten__``; the check imported once)."""
    return bool(_wrapper_check()(t))

"""Run real QLoRA training steps and measure them: the ``profile`` engine.

The model is built by ``vramplan.hf.build`` (the code the trace engine uses), on real tensors: a
checkpoint is loaded through ``from_pretrained(..., quantization_config=BitsAndBytesConfig(...))``,
then ``vramplan.hf.build.prepare`` (recipe, LoRA, checkpointing: the trace's own preparation) and
the optimizer are applied. For ``random-init`` the real architecture is first built with random
weights and saved as safetensors to a temporary directory, so the quantization path is the one a
user's checkpoint takes.

Protocol (see docs/profiles.md):

1. prepare the checkpoint (random-init: outside the measurement);
2. start the reader; load → ``phases.load`` = allocated after load;
3. ``build.prepare`` (recipe + LoRA + checkpointing) → ``phases.adapters``; build optimizer and batch;
4. warm-up step (cuBLAS workspace, optimizer state, autotuning): its peak is ``first_step_peak_bytes``;
5. ``steps - 1`` steady-state steps: reset the peak before each; after each phase read and reset it
   (``phases.forward`` / ``backward`` / ``optimizer``); the step peak is their max; time each step.

An out-of-memory error in any phase is recorded, not raised.
"""

from __future__ import annotations

import gc
import json
import statistics
import tempfile
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from vramplan.arch import Arch
from vramplan.breakdown import Breakdown, fmt_bytes
from vramplan.device import Device
from vramplan.errors import VramplanError
from vramplan.profile.readers import MemoryReader, make_reader, paged_state_bytes
from vramplan.profile.store import SCHEMA, Profile, now_utc
from vramplan.scenario import Attn, Dtype, Quant, Scenario

#: How close to the device's memory an analytic estimate may come before we refuse to load
#: (without --force): the estimate is a point value and the device also hosts other processes.
FIT_MARGIN = 1.0


class ProfileRunError(VramplanError):
    """A run that cannot start (weights without a config, a model too large for the device...)."""


@dataclass
class RunOptions:
    """How to run, beyond the scenario."""

    device: str | None = None
    """``cpu``, ``cuda`` or ``cuda:N``; None = cuda if available."""
    steps: int = 3
    """Training steps including the warm-up step (≥ 1; ≥ 2 for a steady-state measurement)."""
    weights: str | None = None
    """Local checkpoint directory (config.json + *.safetensors); None = random-init."""
    seed: int = 0
    force: bool = False
    """Skip the fits-the-device check."""
    predict: tuple[str, ...] = ("analytic", "trace")
    """Engines whose predictions are stored with the profile."""
    loader: str = "auto"
    """random-init: ``pretrained`` (save random safetensors, then from_pretrained), ``materialize``
    (the trace's meta build with real random weights, quantized layer by layer; also used for block
    sizes other than 64), or ``auto``: pretrained when the unquantized random model fits in half the
    available host memory, else materialize."""


#: ``train_step``'s phase that ended -> the phase that starts.
_NEXT_PHASE = {"forward": "backward", "backward": "optimizer", "optimizer": "forward"}


@dataclass
class _State:
    """What ``measure`` has read so far (an OOM keeps the figures of the phases that finished)."""

    reader: MemoryReader
    phase: str = "load"
    process: list[int] = field(default_factory=list)
    phases: dict[str, int | None] = field(default_factory=lambda: dict.fromkeys(
        ("load", "adapters", "forward", "backward", "optimizer", "steady_step")))
    phase_peaks: dict[str, list[int]] = field(default_factory=lambda: {"forward": [], "backward": [], "optimizer": []})
    steady: list[Any] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    first_peak: int | None = None
    managed: int = 0

    def sample(self) -> None:
        v = self.reader.sample_process()
        if v is not None:
            self.process.append(v)

    def on_phase(self, name: str) -> None:
        """``train_step``'s callback: read and reset the peak of the phase that ended (not in warm-up)."""
        if self.phase == "warmup":
            return
        peak = self.reader.peak()
        self.phase_peaks[name].append(peak.allocated)
        self.steady.append(peak)
        self.reader.reset_peak()
        self.phase = _NEXT_PHASE[name]

    def advance(self, name: str) -> None:
        self.phase = _NEXT_PHASE[name]


# ------------------------------------------------------------------------------- weights
def weights_config(path: str | Path) -> dict[str, Any]:
    """The config.json of a local checkpoint directory, checking that safetensors weights exist."""
    from vramplan.arch.lookup import load_config_file

    p = Path(path).expanduser()
    if not p.is_dir():
        raise ProfileRunError(f"--weights {p}: not a directory (give a checkpoint directory with config.json)")
    if not (p / "config.json").is_file():
        raise ProfileRunError(f"--weights {p}: no config.json in that directory")
    if not any(p.glob("*.safetensors")):
        hint = " (only pickle .bin files, which vramplan does not load)" if any(p.glob("*.bin")) else ""
        raise ProfileRunError(f"--weights {p}: no *.safetensors weights{hint}")
    for f in sorted(p.glob("*.safetensors")):
        check_safetensors_header(f)
    return load_config_file(p)


def check_safetensors_header(path: Path) -> None:
    """Refuse a file that is not safetensors before anything loads it. The format
    (huggingface/safetensors, "Format"): an 8-byte little-endian header length n, then n bytes of
    UTF-8 JSON mapping tensor names to dtype, shape and data offsets within the file."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if size < 8 or n <= 0 or n > size - 8 or n > 100 * 2**20:
                raise ValueError(f"header length {n} does not fit a {size}-byte file")
            header = json.loads(f.read(n).decode("utf-8"))
        if not isinstance(header, dict):
            raise ValueError("header is not a JSON object")
        end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
        if 8 + n + end > size:
            raise ValueError(f"tensor data runs past the end of the file ({8 + n + end} > {size} bytes)")
    except OSError as e:
        raise ProfileRunError(f"--weights: cannot read {path}: {e.strerror or e}") from None
    except (ValueError, KeyError, TypeError, IndexError, OverflowError, UnicodeDecodeError, RecursionError) as e:
        raise ProfileRunError(f"--weights: {path} is not a valid safetensors file ({e})") from None


def _torch_dtype(dtype: Dtype) -> Any:
    import torch

    return {Dtype.BF16: torch.bfloat16, Dtype.FP16: torch.float16, Dtype.FP32: torch.float32}[dtype]


def save_random_checkpoint(arch: Arch, scenario: Scenario, folder: str | Path, seed: int = 0) -> Path:
    """Build ``arch`` with random weights in the compute dtype and save it as safetensors."""
    import torch
    from transformers import AutoModelForCausalLM

    from vramplan.hf.build import hf_config

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(hf_config(arch), dtype=_torch_dtype(scenario.dtype))
    model.save_pretrained(str(folder))
    del model
    gc.collect()
    return Path(folder)


def attn_for(scenario: Scenario, device: str) -> str:
    """``attn_implementation`` for a real run: flash-attention-2 itself on CUDA; on CPU the trace's
    stand-in (cast q/k/v, then SDPA; ``interventions.flash2_on_sdpa``, which ``measure`` enters),
    since the kernel does not run there."""
    from vramplan.hf.build import attn_implementation

    if scenario.attn is Attn.FLASH2 and device.startswith("cuda"):
        return "flash_attention_2"
    return attn_implementation(scenario)


def load_pretrained(path: str | Path, arch: Arch, scenario: Scenario, device: str) -> Any:
    """``from_pretrained`` with the scenario's BitsAndBytesConfig, straight onto ``device``.

    transformers always quantizes with bitsandbytes' default block size (64): other block sizes
    go through ``load_materialized``."""
    from transformers import AutoModelForCausalLM

    from vramplan.hf.build import bnb_config, hf_config

    kwargs: dict[str, Any] = dict(dtype=_torch_dtype(scenario.dtype), device_map={"": device},
                                  use_safetensors=True, config=hf_config(arch),
                                  attn_implementation=attn_for(scenario, device))
    if scenario.quant is not Quant.NONE:
        kwargs["quantization_config"] = bnb_config(scenario)
    return AutoModelForCausalLM.from_pretrained(str(path), **kwargs)


def load_materialized(arch: Arch, scenario: Scenario, device: str, seed: int = 0) -> Any:
    """The trace's own build on real tensors: the meta model as from_pretrained lays it out, random
    weights quantized by ``bitsandbytes.functional.quantize_4bit`` at ``scenario.blocksize``."""
    from vramplan.hf import build

    model = build.meta_model(arch, scenario)
    build.materialize(model, scenario, device, seed=seed)
    if scenario.attn is Attn.FLASH2 and device.startswith("cuda"):
        model.config._attn_implementation = "flash_attention_2"
    return model


# ------------------------------------------------------------------------------ preflight
def _device(device_kind: str, gpu_name: str | None) -> Device:
    """The ``vramplan.device.Device`` of a reader's device kind and GPU name."""
    return Device.cpu() if device_kind == "cpu" else Device.parse(gpu_name)


def prediction_calibration(device_kind: str, gpu_name: str | None) -> Any:
    """The runtime constants predictions for this device are made with
    (``vramplan.engine.runtime_calibration``): on CUDA the shipped calibration for that GPU; on CPU
    the same with the CUDA-only terms (context, cuBLAS workspace, allocator reserve) set to zero,
    since a CPU run has none of them."""
    from dataclasses import replace

    from vramplan.engine import runtime_calibration

    dev = _device(device_kind, gpu_name)
    cal = runtime_calibration(None, dev)
    if dev.is_cpu:
        return replace(cal, fitted_on=f"{cal.fitted_on}; CUDA-only runtime terms zeroed for a CPU run")
    return cal


def predict(arch: Arch, scenario: Scenario, engines: tuple[str, ...], device_kind: str,
            gpu_name: str | None = None) -> tuple[dict[str, Any], list[str]]:
    """Predictions to store with the run, made for this device (a CPU profile runs the CPU program:
    both engines price it on ``Device.cpu()``); an engine that fails is stored as None with a note."""
    from vramplan.engine import engine as engine_named

    out: dict[str, Any] = {"analytic": None, "trace": None}
    notes: list[str] = []
    dev = _device(device_kind, gpu_name)
    cal = prediction_calibration(device_kind, gpu_name)
    for name in engines:
        try:
            b: Breakdown = engine_named(name)(arch, scenario, device=dev, calibration=cal)
        except ImportError as e:
            notes.append(f"{name}: not available ({e})")
            continue
        except VramplanError as e:
            notes.append(f"{name}: {e}")
            continue
        out[name] = b.to_dict()
    return out, notes


def weights_lower_bound(arch: Arch, scenario: Scenario) -> int:
    """Bytes of the frozen weights alone (4-bit: half a byte per quantized element; everything else
    in the load dtype): a floor for any run, used when no analytic estimate is at hand."""
    if scenario.quantized_4bit:
        return arch.quantized_params // 2 + arch.unquantized_params * scenario.dtype.nbytes
    if scenario.quant is Quant.INT8:
        return arch.quantized_params + arch.unquantized_params * scenario.dtype.nbytes
    return arch.total_params * scenario.dtype.nbytes


def check_fits(model: str, arch: Arch, scenario: Scenario, analytic: dict[str, Any] | None,
               device: dict[str, Any]) -> None:
    """Refuse before loading when the analytic estimate exceeds the device (CUDA: the estimate's
    process total vs device memory; CPU: its allocated peak vs available host memory). Without an
    analytic estimate the weights alone are checked."""
    if analytic is not None:
        key = "total_bytes" if device["kind"] == "cuda" else "allocated_peak_bytes"
        need, source = int(analytic[key]), "analytic estimate"
    else:
        need, source = weights_lower_bound(arch, scenario), "weights alone"
    if device["kind"] == "cuda":
        have, what = device.get("total_memory_bytes"), "device memory"
    else:
        have = device.get("available_memory_bytes") or device.get("total_memory_bytes")
        what = "available host memory"
    if have and need > have * FIT_MARGIN:
        raise ProfileRunError(
            f"{model} at seq {scenario.seq}, batch {scenario.batch}, rank {scenario.rank} needs about "
            f"{fmt_bytes(need)} ({source}) but {device['name']} has {fmt_bytes(have)} of {what}; "
            "pass --force to try anyway")


# ----------------------------------------------------------------------------------- run
def _is_oom(e: BaseException) -> bool:
    if isinstance(e, MemoryError):
        return True
    try:
        import torch
    except ImportError:  # pragma: no cover
        return False
    oom = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError
    return isinstance(e, oom)


def _versions() -> dict[str, Any]:
    import platform
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, Any] = {"python": platform.python_version()}
    # ``kernels``: when installed, bitsandbytes' CPU backend may use a fused 4-bit GEMM
    for pkg in ("torch", "transformers", "peft", "bitsandbytes", "accelerate", "kernels", "flash-attn",
                "vramplan"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


def _free_device(device: str) -> None:
    gc.collect()
    if device.startswith("cuda"):
        import torch

        torch.cuda.empty_cache()


def measure(arch: Arch, scenario: Scenario, load: Callable[[], Any], reader: MemoryReader, steps: int,
            device: str) -> dict[str, Any]:
    """Load, adapt and train inside ``reader``; return the ``measured`` dict (OOM recorded)."""
    from vramplan.hf import interventions

    st = _State(reader)
    oom: dict[str, Any] | None = None
    reader.start()
    try:
        # the CPU run (and the meta build of the materialize loader) use the flash2 stand-in
        with interventions.flash2_on_sdpa(scenario.attn is Attn.FLASH2):
            _load_and_train(st, arch, scenario, load, steps, device)
    except BaseException as e:  # noqa: BLE001 - OOM is a result; everything else propagates
        if not _is_oom(e):
            raise
        oom = {"phase": st.phase, "allocated_bytes": _safe_current(reader), "peak_bytes": _safe_peak(reader),
               "message": (str(e).strip().splitlines() or [type(e).__name__])[0][:500]}
    finally:
        reader.stop()
        _free_device(device)
    return _measured(st, scenario, oom)


def _load_and_train(st: _State, arch: Arch, scenario: Scenario, load: Callable[[], Any], steps: int,
                    device: str) -> None:
    """Protocol steps 2-5 of the module docstring, read into ``st``."""
    from vramplan.hf import build

    reader = st.reader
    model = load()
    register_model(reader, model)
    st.phases["load"] = reader.current()
    st.sample()
    st.phase = "adapters"
    model = build.prepare(model, arch, scenario)
    register_model(reader, model)
    st.phases["adapters"] = reader.current()
    st.sample()
    step_kw: dict[str, Any] = {}
    if scenario.distributed:  # this rank's wrapper (inside the torchrun process group: profile_one)
        wrapped = _wrap_rank(reader, model, scenario, device)
        model, optimizer = wrapped.module, wrapped.optimizer
        step_kw = dict(backward=wrapped.backward, step=wrapped.step)
    else:
        optimizer = build.make_optimizer(model, scenario)
    batch = build.synthetic_batch(arch, scenario, device)

    st.phase = "warmup"
    carry: dict[str, Any] = {}  # the loop's ``outputs`` binding (Scenario.hold_logits)
    reader.reset_peak()
    build.train_step(model, optimizer, batch, scenario, on_phase=st.on_phase, carry=carry, **step_kw)
    st.first_peak = reader.peak().allocated
    st.managed = paged_state_bytes(optimizer.state.values())
    st.sample()
    for _ in range(max(0, steps - 1)):
        st.phase = "forward"
        reader.reset_peak()
        t0 = time.perf_counter()
        build.train_step(model, optimizer, batch, scenario, on_phase=st.on_phase, carry=carry, **step_kw)
        reader.sync()
        st.times.append(time.perf_counter() - t0)
        st.sample()
    if reader.intrusive and steps > 1:
        # The CPU tracker runs Python on every op: time the same number of steady steps again
        # with it stopped, so step time and tokens/s are the model's, not the tracker's.
        reader.stop()
        st.times = []
        for _ in range(steps - 1):
            st.phase = "forward"
            t0 = time.perf_counter()
            build.train_step(model, optimizer, batch, scenario, on_phase=st.advance, carry=carry, **step_kw)
            st.times.append(time.perf_counter() - t0)


def _wrap_rank(reader: MemoryReader, model: Any, scenario: Scenario, device: str) -> Any:
    """The strategy's wrapper of this rank in the real process group (``vramplan.parallel.torch_wrap``),
    its buffers counted by the reader where it can tell them (the CPU tracker)."""
    from contextlib import nullcontext

    from vramplan.hf import build
    from vramplan.parallel.torch_wrap import WrapContext, wrap

    ctx = WrapContext(model=model, scenario=scenario, fake=False, device=device, fake_group=False,
                      register=lambda m: register_model(reader, m),
                      labelled=getattr(reader, "labelled", lambda category: nullcontext()),
                      retag=getattr(reader, "retag", lambda tensors, category: None),
                      uncounted=getattr(reader, "paused", nullcontext),
                      retag_model=lambda m: register_model(reader, m),
                      make_optimizer=lambda m: build.make_optimizer(m, scenario))
    return wrap(ctx)


def _measured(st: _State, scenario: Scenario, oom: dict[str, Any] | None) -> dict[str, Any]:
    """The ``measured`` dict of a run read into ``st``."""
    phases = st.phases
    if oom is not None:  # no complete step: keep the phases that finished, no step figures
        phases.update({k: max(v) if v else None for k, v in st.phase_peaks.items()})
        alloc = reserved = active = None
    elif st.steady:
        phases.update({k: max(v) if v else None for k, v in st.phase_peaks.items()})
        alloc = max(p.allocated for p in st.steady)
        reserved = max(p.reserved for p in st.steady)
        active = max(p.active for p in st.steady)
        phases["steady_step"] = alloc
    elif st.first_peak is not None:  # steps == 1: only the warm-up step ran
        alloc = reserved = active = st.first_peak
        phases["steady_step"] = None
    else:
        alloc = reserved = active = None
    step_s = statistics.median(st.times) if st.times else None
    return {
        "allocated_peak_bytes": alloc,
        "reserved_peak_bytes": reserved,
        "active_peak_bytes": active,
        "process_peak_bytes": max(st.process) if st.process else None,
        "managed_bytes": st.managed,
        "first_step_peak_bytes": st.first_peak,
        "phases": phases,
        "step_seconds": step_s,
        "step_seconds_all": st.times,
        "tokens_per_second": scenario.tokens / step_s if step_s else None,
        "oom": oom,
    }


def _safe_current(reader: MemoryReader) -> int | None:
    try:
        return reader.current()
    except Exception:  # noqa: BLE001 - a reader that cannot answer after an OOM leaves the figure empty
        return None


def _safe_peak(reader: MemoryReader) -> int | None:
    try:
        return reader.peak().allocated
    except Exception:  # noqa: BLE001
        return None


def register_model(reader: MemoryReader, model: Any) -> None:
    """Count model tensors created outside the tracker's view (e.g. by loader threads)."""
    register = getattr(reader, "register_model", None)
    if register is not None:
        register(model)


def check_options(arch: Arch, scenario: Scenario, opts: RunOptions) -> None:
    """Reject option combinations before anything is loaded."""
    if opts.steps < 1:
        raise ProfileRunError(f"--steps must be at least 1, got {opts.steps}")
    if opts.loader not in LOADERS:
        raise ProfileRunError(f"unknown loader '{opts.loader}' (choose from: {', '.join(LOADERS)})")
    if opts.weights and scenario.blocksize != 64 and scenario.quantized_4bit:
        raise ProfileRunError("--weights loads through from_pretrained, which quantizes with "
                              f"block size 64; --blocksize {scenario.blocksize} needs --random-init")


LOADERS = ("auto", "pretrained", "materialize")


def _check_offload(scenario: Scenario, kind: str) -> None:
    """The runner's own step runs transformers' ``offload=True`` (``--offload checkpoints``) on CUDA
    only: its ``save_on_cpu(pin_memory=True)`` cannot pin without an accelerator; the frameworks' hooks
    (unsloth, activations) run through their own trainers."""
    off = scenario.offload.value
    if off == "none":
        return
    if off != "checkpoints":
        raise ProfileRunError(f"--offload {off} runs inside the framework's own trainer: profile it with "
                              "--config (or price it with vramplan estimate)")
    if kind != "cuda":
        raise ProfileRunError("--offload checkpoints pins host memory (save_on_cpu(pin_memory=True)), which needs "
                              "a CUDA device; on CPU the trace counts it (vramplan estimate --method trace)")


def random_checkpoint_bytes(arch: Arch, scenario: Scenario) -> int:
    """Host memory (and disk) a random-init checkpoint takes: every parameter in the load dtype."""
    return arch.total_params * scenario.dtype.nbytes


def uses_checkpoint(arch: Arch, scenario: Scenario, opts: RunOptions) -> bool:
    """Whether a random-init run goes through a saved safetensors checkpoint and from_pretrained."""
    if opts.weights or opts.loader == "materialize":
        return False
    if scenario.quantized_4bit and scenario.blocksize != 64:
        return False  # from_pretrained cannot quantize at another block size
    if opts.loader == "pretrained":
        return True
    from vramplan.profile.readers import host_available_bytes

    avail = host_available_bytes()
    return avail is None or random_checkpoint_bytes(arch, scenario) <= avail // 2


def _loader(arch: Arch, scenario: Scenario, opts: RunOptions, device: str,
            checkpoint: str | Path | None) -> tuple[Callable[[], Any], str]:
    if opts.weights:
        return (lambda: load_pretrained(opts.weights, arch, scenario, device)), "from_pretrained"
    if checkpoint is not None and uses_checkpoint(arch, scenario, opts):
        return (lambda: load_pretrained(checkpoint, arch, scenario, device)), "from_pretrained"
    return (lambda: load_materialized(arch, scenario, device, opts.seed)), "materialize"


def preflight(model_name: str, arch: Arch, scenarios: list[Scenario], opts: RunOptions) -> dict[str, Any]:
    """Every check that can fail before loading anything, for every point of a sweep: options,
    the device, and (unless ``force``) the analytic estimate against the device's memory.
    Returns the device info."""
    from vramplan.profile.readers import default_device, device_info_for

    device = opts.device or default_device()
    info = device_info_for(device)
    for sc in scenarios:
        check_options(arch, sc, opts)
        _check_offload(sc, info["kind"])
        if sc.attn is Attn.FLASH2 and info["kind"] == "cuda":
            import importlib.util

            if importlib.util.find_spec("flash_attn") is None:
                raise ProfileRunError("--attn flash2 on CUDA needs the flash-attn package (pip install flash-attn)")
        if not opts.force:
            pred, _ = predict(arch, sc, ("analytic",), info["kind"], info["name"])
            check_fits(model_name, arch, sc, pred["analytic"], info)
    return info


def profile_one(model_name: str, arch: Arch, scenario: Scenario, opts: RunOptions,
                checkpoint: str | Path | None = None) -> Profile:
    """Predict, run and return the (unsaved) Profile. ``checkpoint``: a random-init safetensors
    directory already written (sweeps reuse one); None writes a fresh one when needed.
    Call ``preflight`` first: this does not check the fit."""
    from vramplan.profile.readers import default_device

    check_options(arch, scenario, opts)
    device = opts.device or default_device()
    reader = make_reader(device)
    device_info = reader.device_info()
    predictions, notes = predict(arch, scenario, opts.predict, device_info["kind"], device_info["name"])
    need_ckpt = checkpoint is None and uses_checkpoint(arch, scenario, opts)
    with (tempfile.TemporaryDirectory(prefix="vramplan-random-") if need_ckpt else nullcontext(None)) as tmp:
        if tmp is not None:
            checkpoint = save_random_checkpoint(arch, scenario, tmp, opts.seed)
        load, how = _loader(arch, scenario, opts, _torch_device(reader), checkpoint)
        group: Any = nullcontext()
        if scenario.distributed:  # every rank is a process of torchrun (vramplan.profile.ranks)
            from vramplan.parallel.torch_wrap import process_group

            group = process_group(scenario, fake=False, device=_torch_device(reader))
        with group:
            measured = measure(arch, scenario, load, reader, opts.steps, _torch_device(reader))
    device_info.pop("available_memory_bytes", None)
    run: dict[str, Any] = {
        "steps": opts.steps, "warmup_steps": 1, "weights": opts.weights or "random-init", "loader": how,
        "seed": opts.seed, "prediction_notes": notes,
        "prediction_calibration": prediction_calibration(device_info["kind"], device_info["name"]).fitted_on,
    }
    if scenario.distributed:
        run["parallel"] = {"strategy": scenario.strategy.value, "world_size": scenario.world_size,
                           "rank": scenario.process_rank,
                           "backend": "nccl" if device_info["kind"] == "cuda" else "gloo",
                           "launcher": "torchrun"}
    if device_info["kind"] == "cuda":
        run["process_source"] = getattr(reader, "process_source", None)
    if device_info["kind"] == "cpu":
        import os

        import torch

        device_info["torch_threads"] = torch.get_num_threads()
        run["timing"] = "steady steps re-run with the tracker stopped"
        if hasattr(os, "getloadavg"):
            run["load_average_1m"] = round(os.getloadavg()[0], 2)  # timings are only as quiet as the host
    return Profile(
        schema=SCHEMA, model=model_name, arch_config=dict(arch.config), scenario=scenario,
        device=device_info, versions=_versions(), timestamp=now_utc(), measured=measured,
        predictions=predictions, run=run,
    )


def _torch_device(reader: MemoryReader) -> str:
    return f"cuda:{reader.index}" if reader.kind == "cuda" else "cpu"  # type: ignore[attr-defined]


def sweep(model_name: str, arch: Arch, scenarios: list[Scenario], opts: RunOptions) -> Iterator[Profile]:
    """Profile each scenario in turn (call ``preflight`` first); OOM points are results and the
    sweep goes on. A random-init checkpoint is written once per dtype and reused across the grid."""
    cache: dict[Dtype, tempfile.TemporaryDirectory] = {}
    try:
        for sc in scenarios:
            ckpt: str | None = None
            if uses_checkpoint(arch, sc, opts):
                if sc.dtype not in cache:
                    cache[sc.dtype] = tempfile.TemporaryDirectory(prefix="vramplan-random-")
                    save_random_checkpoint(arch, sc, cache[sc.dtype].name, opts.seed)
                ckpt = cache[sc.dtype].name
            yield profile_one(model_name, arch, sc, opts, checkpoint=ckpt)
    finally:
        for t in cache.values():
            t.cleanup()

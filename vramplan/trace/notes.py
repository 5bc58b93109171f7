"""What a trace's breakdown says about how it was made: its notes, and the framework versions."""

from __future__ import annotations

from vramplan.arch.spec import Arch
from vramplan.device import Device
from vramplan.recipes import spec
from vramplan.scenario import Attn, Loss, Optim, Scenario
from vramplan.trace.extrapolate import Figures


def trace_notes(arch: Arch, scenario: Scenario, fig: Figures, device: Device) -> list[str]:
    """The notes of a trace of ``scenario`` on ``arch`` for ``device`` whose figures are ``fig``."""
    notes = ["fake-tensor trace of the real transformers + peft + bitsandbytes step on CPU (autocast uses "
             "the CPU op lists); allocations rounded to 512 B like the CUDA caching allocator"]
    if device.semantics == "cuda":
        notes.append("CUDA semantics: dropout saves a bool mask (fused native_dropout) and peft skips its "
                     "CPU-only fp32 cast of LoRA inputs under autocast (see vramplan.hf.interventions)")
    else:
        notes.append("CPU semantics: the CPU program as it runs (dropout masks in the input dtype, peft's "
                     "fp32 cast of LoRA inputs under CPU autocast)")
    notes += _depth_notes(arch, fig)
    if scenario.attn is Attn.FLASH2:
        notes.append("flash2 traced as sdpa plus flash-attention-2's own casts of fp32 q/k/v to the compute "
                     "dtype (flash-attn cannot run on CPU)")
    if scenario.packing.value != "none":
        inputs = {"padding-free": "one row of the batch's samples with restarting position ids",
                  "packed": "rows of two samples each with per-sample position ids",
                  "packed-mask": "rows of two samples each, with LLaMA-Factory's 4D mask"}[scenario.packing.value]
        notes.append(f"{scenario.packing.value} batch traced on {inputs}; transformers told the rows are packed "
                     "(fake tensors cannot read the position ids)"
                     + ("; flash2's varlen kernel traced as sdpa over the whole row (the same saved state)"
                        if scenario.attn is Attn.FLASH2 else ""))
    if scenario.offload.value != "none":
        code = {"checkpoints": "transformers' own offload=True (save_on_cpu around each checkpoint)",
                "activations": "TRL 1.16's own OffloadActivations (its CUDA streams run as torch.cpu streams)"}
        notes.append(f"offload {scenario.offload.value}: {code.get(scenario.offload.value, '')}; the copies its pack "
                     "hook makes are counted as host memory (PyTorch's power-of-two pinned blocks), the rest as "
                     "device memory" + (", and a tensor brought back is a fresh device copy"
                                        if device.semantics == "cuda" else ""))
    if scenario.optimizer.paged:
        notes.append("paged optimizer: state tensors >= 1e5 elements are counted as CUDA managed memory, "
                     "outside the allocated peak")
    if scenario.optimizer in (Optim.ADAMW,):
        notes.append("torch AdamW traced as the fused kernel (HF Trainer default adamw_torch_fused)")
    if arch.is_moe:
        notes.append("MoE experts are fused 3-D parameters: bitsandbytes leaves them unquantized, the recipe's "
                     "casts apply to them (hf-peft/trl: fp32), and peft maps all-linear onto them and the router")
        if spec(scenario.recipe).group_bytes("experts", scenario.quant.value != "none", scenario.dtype.nbytes) == 4:
            notes.append("fp32 experts: torch grouped_mm's fake-tensor dtype check accepts bf16 only; traced "
                         "through transformers' fallback op with grouped_mm's saving rule (same allocations); on "
                         "CUDA transformers' grouped expert matmul runs peft's fp32 experts (H200 profiles)")
    if scenario.loss in (Loss.LIGER, Loss.CCE, Loss.UNSLOTH):
        notes.append(f"analytic-only loss: {scenario.loss.value}'s kernels are Triton; the trace runs a stand-in that "
                     "allocates what its Python driver allocates on CUDA (vramplan.hf.fused_losses), so the loss "
                     "term is the analytic engine's, the rest of the step is traced")
    if scenario.lora_kernels.value == "axolotl":
        notes.append("axolotl 0.19's fused LoRA autograd functions run on the fake tensors (groups: "
                     f"{', '.join(scenario.kernel_groups)}; a group not fully targeted stays on peft's layers): "
                     "its Triton SwiGLU/GeGLU through axolotl's registered fake kernels, its CUDA NF4 "
                     "dequantization as the same two allocations (vramplan.hf.interventions item 22)")
    if fig.refused:
        notes.append("short traces did not grow by equal increments, so the full model was traced")
    return notes


def _depth_notes(arch: Arch, fig: Figures) -> list[str]:
    if fig.period is not None:
        p = fig.period
        return [f"traced {', '.join(map(str, fig.traced))} decoder layers; the last three grow by equal "
                f"increments, so extrapolated exactly to {arch.num_layers} (repeating block of {p} "
                f"layer{'s' if p > 1 else ''})"]
    if fig.traced and fig.traced[-1] != arch.num_layers:
        return [f"truncated model: only the first {fig.traced[0]} of {arch.num_layers} decoder layers"]
    return []


def versions() -> dict[str, str]:
    """The versions of the frameworks the trace ran."""
    out = {}
    for mod in ("torch", "transformers", "peft", "bitsandbytes"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception:  # pragma: no cover - versions are informational
            pass
    return out

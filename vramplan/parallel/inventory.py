"""The model's parameters as tensors, for the sharding strategies: shape along dim 0, dtype, group.

FSDP2 shards every parameter on dim 0 (``ceil(dim0 / N)`` rows per rank, padded) and ZeRO-3 splits every
parameter's flat ``numel`` in N (padded); both need each tensor's shape, not only the byte totals the
single-GPU engine keeps. ``inventory(arch, scenario, st)`` lists them, one ``Tensor`` kind per breakdown
row of ``StaticTerms.comps`` it belongs to; a row whose tensors are not derived here (the vision tower,
a family's model-level parameters) becomes one flat tensor of its bytes, so the inventory always sums
to the single-GPU rows (``reconcile``). No torch.

Shapes (torch / bitsandbytes / peft conventions):
- ``nn.Linear.weight``: (out, in); its bias (out,);
- bitsandbytes 4-bit packed weight: ``((n + 1) // 2, 1)`` uint8 (``functional.py::quantize_4bit``), or
  ``(ceil(bytes / s), 1)`` in a wider ``bnb_4bit_quant_storage`` of s bytes;
- LLM.int8 ``Int8Params``: (out, in) int8;
- embedding / lm_head: (V, H); norms: (H,) (q/k norms: (head_dim,));
- peft LoRA A: (r, in), B: (out, r) (``tuners/lora/layer.py::update_layer``); DoRA magnitude (out,);
  fused-expert LoRA factors are kept flat.
"""

from __future__ import annotations

from dataclasses import dataclass

from vramplan.analytic import adapters as ad
from vramplan.arch.spec import Arch, Linear
from vramplan.breakdown import Component
from vramplan.scenario import Quant, Scenario

#: Rows that no strategy shards: buffers (FSDP2 and ZeRO shard parameters only) and quantization state
#: (bitsandbytes keeps ``QuantState`` as a module attribute, not a parameter: every rank holds all of it).
REPLICATED_PREFIXES = ("quant_state/", "temporary/", "weights/buffers", "weights/expert_bias", "weights/rope_cache",
                       "weights/vision_buffers")


@dataclass(frozen=True)
class Tensor:
    """One parameter kind: ``count`` tensors of ``dim0`` × ``inner`` elements of ``nbytes`` bytes."""

    row: str
    """The ``StaticTerms.comps`` row it is part of (``weights/nf4``, ``adapter/lora``...)."""
    dim0: int
    """Size of dim 0 (what FSDP2 shards)."""
    inner: int
    """Elements per dim-0 row (1 for a vector or a flat tensor)."""
    nbytes: int
    """Bytes per element."""
    count: int
    """Instances in the model."""
    layer: bool
    """In a decoder layer (its own FSDP2 group), else in the root group (embeddings, lm_head, final norm)."""
    trainable: bool
    """Has a gradient and optimizer state."""
    floating: bool = True
    """A floating-point tensor: FSDP2 shards it (accelerate ignores a frozen non-floating one) and DeepSpeed
    casts it to the mixed-precision dtype; uint8 packed 4-bit and int8 storage are not floating."""

    @property
    def numel(self) -> int:
        return self.dim0 * self.inner

    @property
    def total(self) -> int:
        """Bytes of all instances, unsharded."""
        return self.count * self.numel * self.nbytes


def shardable(row: str) -> bool:
    """Whether a breakdown row holds parameters a sharding strategy splits (``REPLICATED_PREFIXES``)."""
    return row.startswith(("weights/", "adapter/")) and not row.startswith(REPLICATED_PREFIXES)


def _linear_tensors(lin: Linear, s: Scenario, base_w: int, layer: bool) -> list[Tensor]:
    q = s.quant
    out: list[Tensor] = []
    if s.quantized_4bit and lin.quantized:
        sb = {"uint8": 1, "bf16": 2, "fp16": 2, "fp32": 4}[s.quant_storage.value]
        packed = (lin.weight_params + 1) // 2
        # a floating storage (bnb_4bit_quant_storage bf16/fp16/fp32) is a floating parameter to FSDP2
        out.append(Tensor("weights/" + q.value, -(-packed // sb), 1, sb, lin.count, layer, False, sb != 1))
    elif q is Quant.INT8 and lin.quantized:
        out.append(Tensor("weights/int8", lin.out_features, lin.in_features, 1, lin.count, layer, False, False))
    else:
        row = "adapter/full_weights" if s.full else "weights/linears"
        out.append(Tensor(row, lin.out_features, lin.in_features, base_w, lin.count, layer, s.full))
    return out


def inventory(arch: Arch, s: Scenario, comps: tuple[Component, ...], base_w: int, resid0: int, norm_w: int,
              bias_w: int) -> tuple[Tensor, ...]:
    """Every parameter of the model as ``Tensor`` kinds, reconciled with the single-GPU rows ``comps``
    (``reconcile``). ``base_w``, ``resid0``, ``norm_w``, ``bias_w``: bytes per element of the linear weights,
    embeddings/lm_head, norms and biases (``activations.Dtypes``)."""
    H, V, L = arch.hidden_size, arch.vocab_size, arch.num_layers
    pre = "adapter/" if s.full else "weights/"
    out: list[Tensor] = []
    for lin in arch.quantizable_linears():
        out += _linear_tensors(lin, s, base_w, lin.group != "model")
        if lin.bias:
            out.append(Tensor(pre + "biases", lin.out_features, 1, bias_w, lin.count, lin.group != "model", s.full))
    if arch.embed_params == V * H:
        out.append(Tensor(pre + "embeddings", V, H, resid0, 1, False, s.full))
    if arch.lm_head_params:
        out.append(Tensor(pre + "lm_head", V, H, resid0, 1, False, s.full))
    n_norm = arch.norm_params - H
    if n_norm % H == 0:
        out.append(Tensor(pre + "norms", H, 1, norm_w, n_norm // H, True, s.full))
        out.append(Tensor(pre + "norms", H, 1, norm_w, 1, False, s.full))
    if not s.full:
        out += _lora_tensors(arch, s)
    return reconcile(tuple(out), comps, base_w)


def _lora_tensors(arch: Arch, s: Scenario) -> list[Tensor]:
    """peft's adapter tensors (A (r, in), B (out, r) per target; LoRA-FA's frozen A; DoRA magnitudes;
    fused-expert factors flat) and ``modules_to_save`` copies (V, H)."""
    r, pb = s.rank, s.adapter_dtype.nbytes
    out: list[Tensor] = []
    targets = ad.target_linears(arch, s.targets, s.rank)
    for lin in targets:
        layer = lin.group not in ("lm_head", "model")
        trains = not lin.no_grad
        out.append(Tensor("weights/lora_A_frozen" if s.lora_fa else "adapter/lora", r, lin.in_features, pb, lin.count,
                          layer, trains and not s.lora_fa))
        out.append(Tensor("adapter/lora", lin.out_features, r, pb, lin.count, layer, trains))
        if s.dora:
            out.append(Tensor("adapter/dora_magnitude", lin.out_features, 1, pb, lin.count, layer, trains))
    for n, c in ad.expert_lora_tensors(arch, s.targets, s.rank):
        out.append(Tensor("adapter/lora", n, 1, pb, c, True, True))
    return out


def reconcile(tensors: tuple[Tensor, ...], comps: tuple[Component, ...], w: int) -> tuple[Tensor, ...]:
    """Keep the derived tensors of each shardable row whose bytes they match exactly; a row they do not
    match (or do not cover) becomes one flat tensor of its bytes (a vision tower, a family's model-level
    parameters, fused experts), in the decoder layers (the root group for a vision tower or a
    ``modules_to_save`` copy), trainable when it is an ``adapter/`` row. So the inventory
    always sums to the single-GPU engine's rows. A flat floating row is counted in elements of ``w``
    bytes when its bytes divide by ``w``."""
    by_row: dict[str, list[Tensor]] = {}
    for t in tensors:
        by_row.setdefault(t.row, []).append(t)
    out: list[Tensor] = []
    for c in comps:
        if not shardable(c.name) or not c.bytes:
            continue
        mine = by_row.get(c.name, [])
        if mine and sum(t.total for t in mine) == c.bytes:
            out += mine
            continue
        trains = c.category == "adapter"
        frozen_4bit = c.name in ("weights/nf4", "weights/fp4", "weights/int8")
        wb = w if (not frozen_4bit and c.bytes % w == 0) else 1
        out.append(Tensor(c.name, c.bytes // wb, 1, wb, 1, not ("modules_to_save" in c.name or "vision" in c.name), trains,
                          not frozen_4bit))
    return tuple(out)

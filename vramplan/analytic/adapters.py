"""LoRA adapters: which linears peft adapts, and the bytes of A and B.

Symbols: r = rank, (i, o) = a target linear's in/out features, c = its instance count.
Source: peft 0.21.2 ``tuners/lora/layer.py::LoraLayer.update_layer`` (A: r × i, B: o × r, no bias)
and ``tuners/tuners_utils.py`` (``all-linear`` = every ``nn.Linear`` except the output layer).
peft keeps adapter weights in fp32 (``autocast_adapter_dtype=True`` upcasts bf16/fp16 adapters) unless
the scenario keeps them in the compute dtype (``Scenario.adapter_dtype``).
"""

from __future__ import annotations

from vramplan.arch.spec import Arch, Linear
from vramplan.errors import VramplanError

def target_linears(arch: Arch, targets: tuple[str, ...], rank: int) -> tuple[Linear, ...]:
    """The linear kinds peft wraps with LoRA, validated.

    ``all-linear`` -> every linear but lm_head (``lm_head`` is adapted only when named). Names match a linear's leaf name (``q_proj`` matches
    ``q_proj`` and ``shared_expert.q_proj``-style names end to end), as peft's suffix match does.
    Errors (``VramplanError``): a name that matches no linear of this architecture. Any positive rank
    is priced: peft 0.21 builds A (r × i) and B (o × r) whatever r is (``LoraLayer.update_layer``
    checks only r > 0); ``rank_notes`` says where a rank exceeds a target's smaller dimension.
    """
    expert_names = arch.family.expert_lora_targets if arch.is_moe else {}
    # peft 0.21.2 ``utils/transformers_weight_conversion.py::_convert_peft_config_moe`` moves every target
    # whose leaf name is a v4 expert name (``gate_proj``, ``up_proj``, ``down_proj``... ending the name)
    # to ``target_parameters`` and drops it from ``target_modules``: a linear of that name (a shared
    # expert's, a dense MLP's) is then not adapted at all (Qwen3-Next's shared expert)
    lins = tuple(lin for lin in arch.quantizable_linears() if lin.name.split(".")[-1] not in expert_names)
    if targets == ("all-linear",):
        return lins
    chosen_list: list[Linear] = []
    head = arch.linears()[-1]
    for t in targets:
        hit = [lin for lin in lins if lin.name == t or lin.name.endswith("." + t)]
        if t == "lm_head":  # peft adapts the output layer only when it is named
            hit = [head]
        if not hit and t in expert_names:
            continue  # adapts a fused expert / router parameter (see expert_lora_tensors)
        if not hit:
            names = ", ".join(dict.fromkeys(lin.name.split(".")[-1] for lin in lins))
            raise VramplanError(f"unknown target module '{t}' for {arch.name} (linears: {names})")
        chosen_list.extend(lin for lin in hit if lin not in chosen_list)
    return tuple(chosen_list)


def rank_notes(arch: Arch, targets: tuple[Linear, ...], rank: int) -> tuple[str, ...]:
    """A note when the rank exceeds a target's smaller dimension: peft trains it, but the update
    B·A cannot have a rank above min(in, out), so the extra rank buys parameters, not capacity.
    Linears with a dimension of 1 (Qwen2-MoE's ``shared_expert_gate``) are left out: any rank is
    unusual there and ``all-linear`` reaches them by design."""
    over = [lin for lin in targets if 1 < min(lin.in_features, lin.out_features) < rank]
    if not over:
        return ()
    names = ", ".join(f"{lin.name} ({min(lin.in_features, lin.out_features)})" for lin in over)
    return (f"rank {rank} exceeds the smaller dimension of {names} in {arch.name}: peft trains it as "
            "given (priced so), but the update's rank cannot exceed that dimension",)


def expert_parts(arch: Arch, targets: tuple[str, ...]) -> frozenset[str]:
    """Which of router / gate_up / down peft wraps with ``ParamWrapper`` LoRA for these targets.

    peft 0.21 remaps the v4 expert/router names onto transformers 5's fused parameters
    (``utils/transformers_weight_conversion.py``), as the family records (``Family.expert_lora_targets``)."""
    table = arch.family.expert_lora_targets
    if not table or not arch.is_moe:
        return frozenset()
    if targets == ("all-linear",):
        return frozenset(table.values())
    parts = {table[t] for t in targets if t in table}
    fused = [t for t, part in table.items() if part == "gate_up"]
    named = [t for t in fused if t in targets]
    if named and len(named) < len(fused):
        raise VramplanError(f"peft cannot adapt {named[0]} without {', '.join(set(fused) - set(named))} on "
                            f"{arch.name}: they are fused into gate_up_proj in transformers 5")
    return frozenset(parts)


def expert_lora_tensors(arch: Arch, targets: tuple[str, ...], rank: int) -> list[tuple[int, int]]:
    """LoRA tensors peft 0.21 adds to MoE routers and fused experts, as (elements, instances).

    peft remaps the v4 expert and router names (all of them under ``all-linear``) onto transformers 5's
    router parameter and fused 3-D expert parameters, which it wraps in ``ParamWrapper``
    (``tuners/lora/layer.py``): one rank-r factor pair per expert, stacked. Per MoE layer:
    1. router (E × H): A r × H, B E × r;
    2. ``gate_up_proj`` (E, 2M, H), rank doubled to 2r (gate and up fused, ``rank_pattern``):
       A 2r·E × H, B 2M × 2r·E;
    3. ``down_proj`` (E, H, M): A r·E × M, B H × r·E.
    Verified against peft's trainable parameter count in tests/theirs/test_analytic_theirs.py.
    """
    parts = expert_parts(arch, targets)
    nm, E, H, M = len(arch.moe_layers), arch.num_experts, arch.hidden_size, arch.moe_intermediate_size
    r = rank
    out: list[tuple[int, int]] = []
    if "router" in parts:
        out += [(r * H, nm), (E * r, nm)]
    if "gate_up" in parts:
        out += [(2 * r * E * H, nm), (2 * M * 2 * r * E, nm)]
    if "down" in parts:
        out += [(r * E * M, nm), (H * r * E, nm)]
    return out


def lora_tensor_sizes(targets: tuple[Linear, ...], rank: int) -> list[tuple[int, int]]:
    """(elements, instances) of each adapter tensor kind: A = r·i and B = o·r per target."""
    out: list[tuple[int, int]] = []
    for lin in targets:
        out.append((rank * lin.in_features, lin.count))
        out.append((rank * lin.out_features, lin.count))
    return out


# ------------------------------------------------------------------------------ variants
def dora_magnitude_sizes(targets: tuple[Linear, ...]) -> list[tuple[int, int]]:
    """(elements, instances) of DoRA's magnitude vectors: one per target, of its out_features o.

    peft 0.21.2 ``tuners/lora/dora.py::DoraLinearLayer.update_layer``: ``self.weight =
    nn.Parameter(weight_norm)`` with ``weight_norm = torch.linalg.norm(W + scaling·B·A, dim=1)``, one
    value per output row; ``lora_magnitude_vector`` joins ``adapter_layer_names`` (``variants.py``
    ``DoraLinearVariant.init``), so it is trainable and cast to the adapter dtype like A and B."""
    return [(lin.out_features, lin.count) for lin in targets]


def lora_fa_trainable_sizes(targets: tuple[Linear, ...], rank: int) -> list[tuple[int, int]]:
    """(elements, instances) of the LoRA tensors LoRA-FA trains: B only (o·r per target).

    peft 0.21.2 ``optimizers/lorafa.py::create_lorafa_optimizer``: ``if "lora_A" in name:
    param.requires_grad_(False)``; ``LoraFAOptimizer.step`` keeps ``exp_avg_B`` / ``exp_avg_sq_B``
    (``zeros_like(B)``) per (A, B) pair and no state for A."""
    return [(rank * lin.out_features, lin.count) for lin in targets]


def lora_fa_step_temp_bytes(targets: tuple[Linear, ...], rank: int, pbytes: int, c: int) -> int:
    """The LoRA-FA step's largest per-pair temporary (bytes): peft 0.21.2 ``LoraFAOptimizer.step``
    updates one (A, B) pair at a time, allocating for it:
    1. ``A @ A.T`` (r × r), ``torch.eye(r)``, their sum, ``pinv`` of it (r × r each, adapter dtype);
    2. ``grad_B_orin @ AA_T_inv`` and ``(1/s²) · that`` under bf16 autocast (o × r, c bytes each),
       ``.to(B.grad.dtype)`` (o × r, adapter bytes);
    3. ``exp_avg_sq_B.sqrt()`` -> ``denom_B`` (o × r, adapter bytes).
    The largest B (largest o) decides; freed before the next pair."""
    if not targets:
        return 0
    o = max(lin.out_features for lin in targets)
    return 4 * rank * rank * pbytes + o * rank * (2 * c + 2 * pbytes)


def modules_to_save_params(arch: Arch, modules: tuple[str, ...]) -> dict[str, int]:
    """Elements of each trainable copy peft's ``ModulesToSaveWrapper`` makes (``embed_tokens``: V·H,
    ``lm_head``: V·H). peft 0.21.2 ``utils/other.py::ModulesToSaveWrapper.update``: the original
    module stays (frozen), ``copy.deepcopy(self.original_module)`` is the one the forward uses, its
    parameters ``requires_grad_(True)``; the copy keeps the original's dtype (after the recipe's
    upcast). Tied embeddings change nothing here: the copy of the tied lm_head (or embedding) is a
    new tensor, so the shared original stays frozen and the copy trains on its own (peft's
    ``ensure_weight_tying`` is off by default)."""
    if not modules:
        return {}
    V, H = arch.vocab_size, arch.hidden_size
    return {m: V * H for m in modules}

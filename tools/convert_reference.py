"""Regenerate ``vramplan/data/reference.csv`` from ``../shared/reference/published_measurements.csv``.

Usage: ``python tools/convert_reference.py [SOURCE_CSV] [OUT_CSV]`` (with vramplan importable: the scenario
columns come from ``vramplan.scenario.Scenario``, the framework bundles from ``vramplan.recipes.PRESETS``).

Each published row becomes one reference row: the configuration read into a vramplan Scenario,
the measured bytes, what the figure measures, the GPU, and a scope decision with its reason. The
decisions are written out below, row by row (``DECISIONS``), so that a reviewer can check each one
against the source's own notes. Rows whose framework behaves differently from what vramplan prices
(the Hugging Face stack: transformers + peft + bitsandbytes, one GPU) are kept, marked ``out`` with
the reason; where a Scenario can still approximate them, it is stored so ``vramplan validate`` can
show how far off the approximation is, but they never enter the summary figures.

Scopes:
  in       measured peak of a configuration vramplan expresses exactly; enters error statistics.
  verdict  a run that fit a known GPU but whose figure is not comparable (unknown statistic or a
           capacity claim); enters only the fit / no-fit verdict agreement.
  out      not comparable; the reason says why.
"""

from __future__ import annotations

import csv
import re
import sys
from pathlib import Path

from vramplan.recipes import preset
from vramplan.reference import OPTIONAL_SCENARIO_COLS, SCENARIO_COLS as REQUIRED_SCENARIO_COLS
from vramplan.scenario import Scenario

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT.parent / "shared" / "reference" / "published_measurements.csv"
OUT = ROOT / "vramplan" / "data" / "reference.csv"

GiB = 1024**3

#: GPU name as published -> (canonical name, total device memory in bytes, source of that figure).
GPUS = {
    "A100-SXM4-40GB": ("A100 40GB", 40 * GiB, "NVIDIA A100 datasheet: 40 GB HBM2 (40,960 MiB)"),
    "1x A10G 24GB": ("A10G", 24 * GiB, "NVIDIA A10G (AWS g5): 24 GB GDDR6"),
    "1x RTX 4090": ("RTX 4090", 24 * GiB, "NVIDIA GeForce RTX 4090 spec: 24 GB GDDR6X"),
    "1x RTX A6000": ("RTX A6000", 48 * GiB, "NVIDIA RTX A6000 datasheet: 48 GB GDDR6"),
    "A100": ("A100 80GB", 80 * GiB, "torchtune README: A100 (assumed 80 GB)"),
    "A100 80GB": ("A100 80GB", 80 * GiB, "NVIDIA A100 datasheet: 80 GB HBM2e"),
    "A100-SXM4-80G": ("A100 80GB", 80 * GiB, "NVIDIA A100 datasheet: 80 GB HBM2e"),
    "2x RTX 3090": ("RTX 3090", 24 * GiB, "NVIDIA GeForce RTX 3090 spec: 24 GB GDDR6X"),
    "2x RTX 4090": ("RTX 4090", 24 * GiB, "NVIDIA GeForce RTX 4090 spec: 24 GB GDDR6X"),
    "2x RTX 3090 / 2x RTX 4090": ("RTX 3090", 24 * GiB, "RTX 3090 and RTX 4090 both 24 GB"),
    "single 48GB GPU": ("", 48 * GiB, "QLoRA paper: 'a single 48GB GPU'"),
    "2x 24GB GPUs": ("", 24 * GiB, "PEFT docs: 24 GB GPUs"),
}

#: Scenario columns, in CSV order (``vramplan.reference``). Empty scenario = not expressible at all.
SCENARIO_COLS = REQUIRED_SCENARIO_COLS + OPTIONAL_SCENARIO_COLS
COLUMNS = ("id", "source_row", "model", "registry_model", "framework", "gpu", "gpu_memory_bytes",
           "num_gpus", "measurement", "measured_bytes", "measured_gib", "reported_value", "unit_basis",
           "confidence", "scope", "reason", "caveats") + SCENARIO_COLS + ("source", "quote", "notes")

QV = "q_proj,v_proj"
ALL7 = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"

# ------------------------------------------------------------------------ shared reasons
LITGPT_LOSS = ("litgpt computes lm_head in chunks of 128 tokens with a chunked cross-entropy; vramplan prices "
               "the HF loss (full logits upcast to fp32): needs a 'litgpt' recipe")
LITGPT_QUANT = ("litgpt quantizes every linear incl. lm_head (vramplan: linears in decoder layers only) and ran "
                "bitsandbytes<0.43.2, whose MatMul4Bit keeps each 4-bit layer's input alive")
NO_MODEL = "model not in the vramplan registry ({})"
FSDP_SHARD = ("FSDP FULL_SHARD over 2 GPUs: the per-GPU figure holds half the weights plus all-gather buffers; "
              "vramplan prices one unsharded GPU")
TT_COMPILE = "torchtune with torch.compile and chunked cross-entropy (CEWithChunkedOutputLoss)"


def _preset(name: str, quant: str) -> dict:
    """The fields of preset ``name`` for a bf16 run with base weights ``quant``."""
    return preset(name).resolve("bf16", Scenario(quant=quant).quantized_4bit)


def _litgpt23(seq: int, quant: str, dq: bool, batch: int = 1) -> dict:
    return dict(quant=quant, double_quant=dq, rank=8, targets=QV, lora_dropout=0.05, grad_checkpointing=False,
                attn="sdpa", optimizer="adamw" if quant == "none" else "paged_adamw", seq=seq, batch=batch,
                **_preset("litgpt-2023", quant))


def _litgpt24(quant: str, rank: int, batch: int, targets: str = QV, full: bool = False) -> dict:
    lora = {} if full else dict(rank=rank, targets=targets, lora_dropout=0.05)  # full: no LoRA fields
    return dict(quant=quant, double_quant=False, **lora, full=full, grad_checkpointing=False, attn="sdpa",
                optimizer="adamw" if quant == "none" else "paged_adamw", recipe="plain", autocast=False,
                seq=512, batch=batch)  # 2024: bitsandbytes >= 0.43.2


def _fsdp(quant: str, batch: int, seq: int = 2048) -> dict:
    """AnswerDotAI fsdp_qlora train.py (Mar 2024): pure bf16 (LoRA weights bf16: peft casts adapters to
    the bf16 quant_storage / weight dtype; AdamW state follows), labels passed to a transformers 4.38
    model (fp32 logits in the output + shifted copy), ``output`` deleted after the optimizer step,
    bitsandbytes 0.43.0 (< 0.43.2: 4-bit layer inputs saved)."""
    return dict(quant=quant, double_quant=True, rank=64, targets="all-linear", lora_dropout=0.1,
                grad_checkpointing=True, attn="sdpa", optimizer="adamw", seq=seq, batch=batch,
                **_preset("fsdp-qlora-2024", quant))


def _tt(quant: str, targets: str, rank: int, batch: int, seq: int, ckpt: bool = True) -> dict:
    """torchtune 2024 single-device LoRA recipe: model built in bf16 (adapters bf16,
    ``validate_expected_param_dtype``), ``TransformerDecoder`` returns ``self.output(h).float()``, the
    recipe rebinds ``logits`` to the shifted contiguous copy and keeps it through backward and the
    next forward (never deleted). Its Llama modules keep one fp32 RoPE table for every position up to
    the builder's max_seq_len (``RotaryPositionalEmbeddings``/``Llama3ScaledRoPE``: ``rope_cache`` shared)."""
    return dict(quant=quant, double_quant=True, rank=rank, targets=targets, lora_dropout=0.05,
                grad_checkpointing=ckpt, attn="sdpa", optimizer="adamw", seq=seq, batch=batch, rope_cache="shared",
                **_preset("torchtune-2024", quant))


# ------------------------------------------------------------------ per-row decisions
# key: 1-based data row of published_measurements.csv. Values: registry model, measurement kind,
# scope, reason, caveats, scenario (dict, or None when the configuration cannot be expressed).
L23 = "litgpt @8641822 (Oct 2023)"
L24 = "litgpt config_hub (2024)"
DECISIONS: dict[int, dict] = {
    1: dict(reg="microsoft/phi-1_5", m="allocated", scope="out", why=NO_MODEL.format("phi-1.5") + "; " + LITGPT_LOSS,
            sc=_litgpt23(1044, "none", False)),
    2: dict(reg="microsoft/phi-1_5", m="allocated", scope="out",
            why=NO_MODEL.format("phi-1.5") + "; " + LITGPT_QUANT, sc=_litgpt23(1044, "nf4", False)),
    3: dict(reg="microsoft/phi-1_5", m="allocated", scope="out",
            why=NO_MODEL.format("phi-1.5") + "; " + LITGPT_QUANT, sc=_litgpt23(1044, "nf4", True)),
    4: dict(reg="stabilityai/stablelm-base-alpha-3b", m="allocated", scope="out",
            why=NO_MODEL.format("StableLM-Alpha-3B") + "; " + LITGPT_LOSS, sc=_litgpt23(1034, "none", False)),
    5: dict(reg="stabilityai/stablelm-base-alpha-3b", m="allocated", scope="out",
            why=NO_MODEL.format("StableLM-Alpha-3B") + "; " + LITGPT_QUANT, sc=_litgpt23(1034, "nf4", False)),
    6: dict(reg="stabilityai/stablelm-base-alpha-3b", m="allocated", scope="out",
            why=NO_MODEL.format("StableLM-Alpha-3B") + "; " + LITGPT_QUANT, sc=_litgpt23(1034, "nf4", True)),
    7: dict(reg="Llama-2-7b-hf", m="allocated", scope="out", why=LITGPT_LOSS, sc=_litgpt23(1304, "none", False)),
    8: dict(reg="Llama-2-7b-hf", m="allocated", scope="out", why=LITGPT_QUANT + "; " + LITGPT_LOSS,
            sc=_litgpt23(1304, "nf4", False)),
    9: dict(reg="Llama-2-7b-hf", m="allocated", scope="out", why=LITGPT_QUANT + "; " + LITGPT_LOSS,
            sc=_litgpt23(1304, "nf4", True)),
    10: dict(reg="Llama-2-7b-hf", m="allocated", scope="out", why=LITGPT_LOSS,
             sc=_litgpt23(1304, "none", False, batch=2)),
    11: dict(reg="Llama-2-13b-hf", m="allocated", scope="out", why=LITGPT_LOSS,
             sc=_litgpt23(1304, "none", False)),
    12: dict(reg="Llama-2-13b-hf", m="allocated", scope="out", why=LITGPT_QUANT + "; " + LITGPT_LOSS,
             sc=_litgpt23(1304, "nf4", False),
             cav="source table row quoted for the 7B model; value 23.14 GB is the 13B cell"),
    13: dict(reg="Llama-2-13b-hf", m="allocated", scope="out", why=LITGPT_QUANT + "; " + LITGPT_LOSS,
             sc=_litgpt23(1304, "nf4", True),
             cav="source table row quoted for the 7B model; value 22.55 GB is the 13B cell"),
    14: dict(reg="Llama-2-7b-hf", m="allocated", scope="out", why=LITGPT_LOSS, sc=_litgpt24("none", 32, 2),
             cav="seq 512 is the truncation limit; peak over the whole run incl. validation"),
    15: dict(reg="Llama-2-7b-hf", m="allocated", scope="out", why=LITGPT_QUANT + "; " + LITGPT_LOSS,
             sc=_litgpt24("nf4", 32, 2)),
    16: dict(reg="Meta-Llama-3-8B", m="allocated", scope="out", why=LITGPT_LOSS, sc=_litgpt24("none", 32, 1)),
    17: dict(reg="Meta-Llama-3-8B", m="allocated", scope="out", why=LITGPT_QUANT + "; " + LITGPT_LOSS,
             sc=_litgpt24("nf4", 32, 2)),
    18: dict(reg="Mistral-7B-v0.1", m="allocated", scope="out", why=LITGPT_LOSS, sc=_litgpt24("none", 32, 2)),
    19: dict(reg="Mistral-7B-v0.1", m="allocated", scope="out", why=LITGPT_QUANT + "; " + LITGPT_LOSS,
             sc=_litgpt24("nf4", 32, 2)),
    20: dict(reg="Llama-3.2-1B", m="allocated", scope="out", why=LITGPT_LOSS, sc=_litgpt24("none", 32, 1)),
    21: dict(reg="Llama-3.2-1B", m="allocated", scope="out", why=LITGPT_QUANT + "; " + LITGPT_LOSS,
             sc=_litgpt24("nf4", 32, 2)),
    22: dict(reg="Llama-3.2-1B", m="allocated", scope="out",
             why="suspect row: bf16 weights + grads + optimizer state alone exceed the reported 8.70 GB (source "
                 "notes); " + LITGPT_LOSS, sc=_litgpt24("none", 8, 4, full=True)),
    23: dict(reg="gemma-2-9b", m="allocated", scope="out", why=LITGPT_QUANT + "; " + LITGPT_LOSS,
             sc=_litgpt24("nf4", 16, 1, targets=ALL7 + ",lm_head")),
    # torchtune, April 2024 tutorials: no compile, plain nn.CrossEntropyLoss on fp32 logits, NF4 on
    # exactly the LoRA-targeted linears. Same memory-relevant behaviour as the plain HF recipe.
    24: dict(reg="Llama-2-7b-hf", m="reserved", scope="in", sc=_tt("none", QV, 8, 2, 512),
             cav="seq 512 = truncation limit of alpaca_cleaned (unpacked, padded per batch); "
                 "pure bf16 (LoRA params and AdamW state bf16); GPU unknown"),
    25: dict(reg="Llama-2-7b-hf", m="reserved", scope="in", sc=_tt("none", ALL7 + ",lm_head", 64, 2, 512),
             cav="statistic assumed the same as the tutorial table (max_memory_reserved); seq 512 = truncation "
                 "limit; GPU unknown"),
    26: dict(reg="Llama-2-7b-hf", m="reserved", scope="out", sc=_tt("nf4", ALL7, 8, 2, 512),
             why="the figure is the model-load reserve, not the step: the same table gives 9.13 GB reserved "
                 "at model init (bf16 weights quantized to NF4 on the GPU; the caching allocator keeps the "
                 "freed blocks) against 9.29 GB in training",
             cav="torchao NF4 (block 64, scaler block 256) on all attention+MLP linears, i.e. the same set "
                 "bitsandbytes all-linear quantizes; seq 512 = truncation limit; GPU unknown"),
    27: dict(reg="Llama-2-7b-hf", m="unknown", scope="verdict", sc=_tt("nf4", ALL7, 8, 4, 2048),
             why="statistic not stated (torchtune logged active, allocated and reserved); torch.compile on",
             cav="packing not stated: seq 2048 assumed full"),
    28: dict(reg="Llama-2-7b-hf", m="unknown", scope="verdict", sc=_tt("none", QV, 8, 4, 2048),
             why="statistic not stated (torchtune logged active, allocated and reserved)",
             cav="packing not stated: seq 2048 assumed full"),
    29: dict(reg="Llama-3.1-8B", m="unknown", scope="out", sc=_tt("nf4", ALL7, 8, 2, 2048),
             why="loss kernel differs: " + TT_COMPILE + " (vramplan prices full fp32 logits); statistic not stated"),
    30: dict(reg="Llama-3.1-8B", m="unknown", scope="out", sc=_tt("none", QV, 8, 2, 2048),
             why="loss kernel differs: " + TT_COMPILE + " (vramplan prices full fp32 logits); statistic not stated"),
    31: dict(reg="Llama-3.1-8B", m="unknown", scope="out", sc=_tt("none", QV, 8, 2, 2048, ckpt=False),
             why="activation checkpointing state unknown (14 GiB above the same recipe on a 4090); "
                 "statistic not stated; " + TT_COMPILE),
    32: dict(reg="Llama-3.1-8B", m="unknown", scope="out", sc=None,
             why="optimizer_in_bwd with PagedAdamW8bit (optimizer step fused into backward) is not expressible"),
    33: dict(reg="Llama-3.2-3B", m="active", scope="out", sc=None,
             why="full fine-tune with bf16 AdamW state (vramplan: fp32 state); " + TT_COMPILE),
    34: dict(reg="Llama-3.2-3B", m="active", scope="out", sc=None,
             why="full fine-tune with bf16 AdamW state (vramplan: fp32 state); " + TT_COMPILE),
    35: dict(reg="Llama-3.2-3B", m="active", scope="out",
             sc=_tt("none", "q_proj,v_proj,o_proj,gate_proj,up_proj,down_proj", 64, 2, 4096),
             why="activation offloading to CPU; " + TT_COMPILE),
    36: dict(reg="Llama-3.2-3B", m="active", scope="out",
             sc=_tt("nf4", "q_proj,v_proj,o_proj,gate_proj,up_proj,down_proj", 64, 2, 4096),
             why="activation offloading to CPU; " + TT_COMPILE + "; k_proj left in bf16"),
    37: dict(reg="bigscience/T0_3B", m="unknown", scope="out", sc=None,
             why="encoder-decoder (T5) architecture, not in the registry; statistic and unit not stated"),
    38: dict(reg="bigscience/T0_3B", m="unknown", scope="out", sc=None,
             why="encoder-decoder (T5) architecture, not in the registry; statistic and unit not stated"),
    39: dict(reg="bigscience/mt0-xxl", m="unknown", scope="out", sc=None,
             why="encoder-decoder (mT5) architecture, not in the registry; statistic and unit not stated"),
    40: dict(reg="bigscience/bloomz-7b1", m="unknown", scope="out", sc=None,
             why="BLOOM architecture not in the registry; fp32 training; statistic and unit not stated"),
    41: dict(reg="Llama-2-7b-hf", m="reserved", scope="out", sc=_fsdp("nf4", 1, 512), why=FSDP_SHARD),
    42: dict(reg="Llama-2-7b-hf", m="reserved", scope="out", sc=_fsdp("nf4", 1, 2048), why=FSDP_SHARD),
    43: dict(reg="Llama-2-7b-hf", m="allocated", scope="out", sc=_fsdp("none", 1, 512), why=FSDP_SHARD),
    44: dict(reg="Llama-2-7b-hf", m="allocated", scope="out", sc=_fsdp("none", 1, 2048), why=FSDP_SHARD),
    # FSDP NO_SHARD ("ddp" column True): every GPU holds the whole model, as one GPU would.
    45: dict(reg="Llama-2-7b-hf", m="reserved", scope="in", sc=_fsdp("nf4", 8),
             cav="FSDP NO_SHARD (full replica per GPU); flat-parameter and gradient all-reduce buffers not "
                 "modelled; pure bf16 (no autocast), quant_storage bf16; lora_dropout 0.1 = train.py default"),
    46: dict(reg="Llama-2-7b-hf", m="reserved", scope="in", sc=_fsdp("none", 4),
             cav="FSDP NO_SHARD (full replica per GPU); flat-parameter and gradient all-reduce buffers not "
                 "modelled; pure bf16 (no autocast); lora_dropout 0.1 = train.py default"),
    47: dict(reg="Llama-2-7b-hf", m="reserved", scope="out", sc=_fsdp("nf4", 10), why=FSDP_SHARD),
    48: dict(reg="Yi-34B", m="reserved", scope="out", sc=_fsdp("nf4", 2), why=FSDP_SHARD),
    49: dict(reg="Llama-2-70b-hf", m="reserved", scope="out", sc=_fsdp("nf4", 2),
             why=FSDP_SHARD + "; parameters offloaded to CPU"),
    50: dict(reg="mistralai/Mistral-7B-v0.2", m="reserved", scope="out", sc=None,
             why=FSDP_SHARD + "; parameters offloaded to CPU; Mistral-7B-v0.2 base not in the registry"),
    51: dict(reg="Qwen/Qwen-7B", m="unknown", scope="out", sc=None,
             why=NO_MODEL.format("Qwen (v1) 7B, model_type qwen") + "; unit 'G' and statistic not stated"),
    52: dict(reg="Qwen/Qwen-7B", m="unknown", scope="out", sc=None,
             why=NO_MODEL.format("Qwen (v1) 7B, model_type qwen") + "; unit 'G' and statistic not stated"),
    53: dict(reg="Qwen/Qwen-7B", m="unknown", scope="out", sc=None,
             why=NO_MODEL.format("Qwen (v1) 7B, model_type qwen") + "; unit 'G' and statistic not stated"),
    54: dict(reg="Qwen/Qwen-7B-Chat-Int4", m="unknown", scope="out", sc=None,
             why="GPTQ int4 base weights (not bitsandbytes); " + NO_MODEL.format("Qwen (v1)")),
    55: dict(reg="Qwen/Qwen-1_8B", m="unknown", scope="out", sc=None,
             why=NO_MODEL.format("Qwen (v1) 1.8B, model_type qwen") + "; unit 'G' and statistic not stated"),
    56: dict(reg="Qwen/Qwen-72B-Chat-Int4", m="unknown", scope="out", sc=None,
             why="GPTQ int4 base weights (not bitsandbytes); " + NO_MODEL.format("Qwen (v1)")),
    57: dict(reg="Llama-2-70b-hf", m="process", scope="out", sc=None,
             why=FSDP_SHARD + "; parameters offloaded to CPU; unit and tool not stated"),
    58: dict(reg="Llama-2-70b-hf", m="process", scope="out", sc=None, why=FSDP_SHARD + "; unit and tool not stated"),
    59: dict(reg="huggyllama/llama-65b", m="capacity", scope="verdict",
             sc=dict(quant="nf4", double_quant=True, rank=64, targets="all-linear", lora_dropout=0.05,
                     grad_checkpointing=True, attn="eager", optimizer="paged_adamw", recipe="hf-peft",
                     autocast=True, seq=528, batch=1),
             why="capacity claim (fits a 48 GB GPU), not a measured peak",
             cav="artidoro/qlora: lora_dropout 0.05 (65B script), seq <= 16+512; LLaMA-1 65B not in the registry"),
    60: dict(reg="THUDM/glm-4-9b-chat", m="process", scope="out", sc=None,
             why=NO_MODEL.format("GLM-4-9B") + "; sequence lengths unknown (custom data, cutoff 10240)"),
    61: dict(reg="THUDM/glm-4-9b-chat", m="process", scope="out", sc=None,
             why=NO_MODEL.format("GLM-4-9B") + "; sequence lengths unknown (custom data, cutoff 10240)"),
}

#: The value of a field a decision leaves out: the Scenario's default.
DEFAULTS = Scenario().to_dict()


def _bytes(row: dict) -> tuple[int, str]:
    """Measured bytes and the unit basis, from the published value (exact where the unit is known)."""
    rep = row["reported_value"]
    num = float(re.search(r"[0-9]+(?:\.[0-9]+)?", rep).group(0))
    if "1e9 bytes" in rep or (row["framework"].startswith("torchtune") and re.search(r"\bGB\b", rep)
                              and "GiB" not in rep):
        return round(num * 1e9), "GB=1e9"
    if "GiB" in rep:
        return round(num * GiB), "GiB"
    return round(float(row["measured_peak_gib"]) * GiB), "ambiguous (copied as GiB, +/-7%)"


def _fmt(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, list):
        return ",".join(v)
    return str(v)


def convert(source: Path = SOURCE) -> list[dict[str, str]]:
    with open(source, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if len(rows) != len(DECISIONS):
        raise SystemExit(f"{source}: {len(rows)} rows, but {len(DECISIONS)} decisions are written down")
    out = []
    for n, row in enumerate(rows, start=1):
        d = DECISIONS[n]
        measured, basis = _bytes(row)
        gpu, gpu_bytes, _ = GPUS.get(row["gpu"], ("", None, ""))
        rec = dict(id=f"pm-{n:02d}", source_row=str(n), model=row["model"], registry_model=d["reg"],
                   framework=row["framework"], gpu=gpu, gpu_memory_bytes="" if gpu_bytes is None else str(gpu_bytes),
                   num_gpus=row["num_gpus"], measurement=d["m"], measured_bytes=str(measured),
                   measured_gib=row["measured_peak_gib"], reported_value=row["reported_value"], unit_basis=basis,
                   confidence=row["confidence"], scope=d["scope"], reason=d.get("why", ""),
                   caveats=d.get("cav", ""), source=row["source"], quote=row["notes"].split(". ")[0][:300],
                   notes=row["notes"])
        sc = d["sc"]
        for col in SCENARIO_COLS:
            rec[col] = "" if sc is None else _fmt(sc.get(col, DEFAULTS[col]))
        if d["scope"] == "in" and sc is None:
            raise SystemExit(f"row {n}: in scope but no scenario")
        if d["scope"] != "in" and not rec["reason"]:
            raise SystemExit(f"row {n}: scope {d['scope']} needs a reason")
        out.append(rec)
    return out


def main(argv: list[str]) -> None:
    source = Path(argv[1]) if len(argv) > 1 else SOURCE
    target = Path(argv[2]) if len(argv) > 2 else OUT
    rows = convert(source)
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target, "w", newline="", encoding="utf-8") as f:
        f.write("# vramplan reference measurements, converted by tools/convert_reference.py from "
                "shared/reference/published_measurements.csv (61 published runs). Each row cites its source.\n")
        w = csv.DictWriter(f, fieldnames=COLUMNS, lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    counts = {s: sum(r["scope"] == s for r in rows) for s in ("in", "verdict", "out")}
    print(f"wrote {target}: {len(rows)} rows ({counts})")


if __name__ == "__main__":
    main(sys.argv)

#!/usr/bin/env bash
# The CUDA profile sweep behind profiles/cuda/ (see docs/profiles.md, "CUDA profiles").
#
# Runs `vramplan profile --device cuda` over a fixed list of points, most important first, each
# bounded by a timeout, and stops starting new points once DEADLINE seconds have passed. Profiles go
# to profiles/cuda/; the log and a tarball of the profiles go to $OUT (default ./out).
#
# Packages: the machine's own torch; transformers, peft and bitsandbytes at the versions the trace
# is developed with when wheels are found in .devcarry/ (an offline GPU box), else whatever is
# installed. The profiles record the versions they ran with. To prepare .devcarry/ on a machine with
# the package index (it is git-ignored via .git/info/exclude):
#   pip download --no-deps -d .devcarry/wheels transformers==5.24.0 peft==0.21.2
#   pip download --no-deps -d .devcarry/wheels regex --python-version 3.12 --only-binary=:all: #       --platform manylinux_2_17_x86_64       # transformers needs a recent regex
#   pip download --no-deps -d /tmp/bnb bitsandbytes==0.50.2 --only-binary=:all: --platform manylinux_2_24_x86_64
#   unzip -q /tmp/bnb/*.whl -d .devcarry/bnb   # then delete the libbitsandbytes_*.so the GPU's CUDA does not need
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-out}
DEADLINE=${DEADLINE:-420}
mkdir -p "$OUT" profiles/cuda
LOG="$OUT/log.txt"
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
PY=${PY:-python3}
start=$(date +%s)

if [ -d .devcarry/wheels ]; then
    $PY -m pip install -q --no-deps --no-index .devcarry/wheels/*.whl >>"$LOG" 2>&1 || echo "wheel install failed" | tee -a "$LOG"
fi
if [ -d .devcarry/bnb/bitsandbytes ]; then
    export PYTHONPATH="$PWD/.devcarry/bnb${PYTHONPATH:+:$PYTHONPATH}"
fi
$PY -m pip install -q --no-deps --no-build-isolation -e . >>"$LOG" 2>&1 || export PYTHONPATH="$PWD:${PYTHONPATH:-}"

{
    echo "=== environment"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
    $PY - <<'EOF'
import importlib.metadata as md, torch
for p in ("torch", "transformers", "peft", "bitsandbytes", "accelerate", "nvidia-ml-py", "vramplan"):
    try:
        print(p, md.version(p))
    except md.PackageNotFoundError:
        print(p, None)
print("cuda", torch.version.cuda, torch.cuda.is_available(), torch.cuda.get_device_name(0))
import bitsandbytes as bnb, bitsandbytes.functional as F
w = torch.randn(256, 256, device="cuda", dtype=torch.bfloat16)
q, s = F.quantize_4bit(w, quant_type="nf4", compress_statistics=True)
print("bnb nf4 roundtrip max err", (F.dequantize_4bit(q, s) - w).abs().max().item())
EOF
} >>"$LOG" 2>&1

run() {  # run TIMEOUT ARGS...: one profile command, unless the deadline has passed
    local t=$1; shift
    local now=$(( $(date +%s) - start ))
    if [ $now -ge "$DEADLINE" ]; then echo "=== SKIPPED (deadline, ${now}s): $*" >>"$LOG"; return; fi
    echo "=== [${now}s] $*" >>"$LOG"
    timeout "$t" $PY -m vramplan profile --device cuda --no-trace -o profiles/cuda "$@" >>"$LOG" 2>&1 \
        || echo "=== FAILED rc=$? : $*" >>"$LOG"
}

M="--loader materialize"
# smoke: the whole CUDA path on a tiny model
run 60  -m vramplan-debug --seq 128,512 --batch 2 $M
if grep -q "=== FAILED" "$LOG"; then  # the CUDA path itself is broken: every point would fail the same way
    echo "=== smoke failed: stopping" >>"$LOG"; tar czf "$OUT/cuda_profiles.tgz" profiles/cuda; exit 1
fi
# the README's headline configuration, and longer contexts
run 120 -m Qwen3-14B --rank 8 --seq 2048,4096 $M
run 120 -m Llama-3.1-8B --rank 16 --seq 2048,8192 $M
run 60  -m Llama-3.1-8B --rank 16 --seq 2048 --batch 4 $M
# activations dominating: no checkpointing on a small model; logits dominating: 152k vocabulary
run 60  -m Llama-3.2-1B --seq 1024,4096 --no-grad-checkpointing $M
run 60  -m Qwen3-0.6B --seq 4096 --batch 4 $M
# optimizers (rank 64 makes their state visible), recipes, autocast
run 60  -m Llama-3.1-8B --rank 64 --seq 2048 --optimizer adamw8bit $M
run 60  -m Llama-3.1-8B --rank 64 --seq 2048 --optimizer paged_adamw8bit $M
run 60  -m Llama-3.1-8B --rank 16 --seq 2048 --recipe trl $M
run 60  -m Llama-3.1-8B --rank 16 --seq 2048 --recipe plain --no-autocast $M
# the published reference configurations (vramplan/data/reference.csv pm-45, pm-46, pm-24, pm-25)
run 90  -m Llama-2-7b-hf --rank 64 --seq 2048 --batch 8 --lora-dropout 0.1 --recipe plain --no-autocast \
        --adapter-dtype bf16 --loss legacy --hold-logits step --bnb-keeps-input $M
run 90  -m Llama-2-7b-hf --quant none --rank 64 --seq 2048 --batch 4 --lora-dropout 0.1 --recipe plain \
        --no-autocast --adapter-dtype bf16 --loss legacy --hold-logits step $M
run 60  -m Llama-2-7b-hf --quant none --rank 8 --seq 512 --batch 2 --targets q_proj,v_proj --recipe plain \
        --no-autocast --adapter-dtype bf16 --loss legacy --hold-logits loop $M
# the loader a user's checkpoint takes (save random safetensors, from_pretrained with BitsAndBytesConfig)
run 90  -m Qwen3-1.7B --seq 2048 --loader pretrained
run 60  -m Qwen3-1.7B --seq 2048 $M
run 120 -m Qwen3-14B --rank 8 --seq 8192 $M
# MoE: fused fp32 experts (transformers 5), peft adapting experts and router
run 150 -m Qwen1.5-MoE-A2.7B --seq 1024 --lora-dropout 0 $M

echo "=== done in $(( $(date +%s) - start ))s" >>"$LOG"
ls -la profiles/cuda >>"$LOG" 2>&1
tar czf "$OUT/cuda_profiles.tgz" profiles/cuda

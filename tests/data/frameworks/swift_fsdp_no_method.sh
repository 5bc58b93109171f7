#!/bin/sh
# the repo's own fsdp_qlora example passes --quant_bits 4 without --quant_method
NPROC_PER_NODE=2 swift sft --model Qwen/Qwen3-14B --tuner_type lora --quant_bits 4 \
  --lora_rank 16 --max_length 1024 --fsdp fsdp2

#!/bin/bash
# QLoRA of Qwen3-14B with ms-swift
CUDA_VISIBLE_DEVICES=0 \
swift sft \
    --model Qwen/Qwen3-14B \
    --train_type lora \
    --dataset 'AI-ModelScope/alpaca-gpt4-data-zh#500' \
    --torch_dtype bfloat16 \
    --quant_method bnb \
    --quant_bits 4 \
    --bnb_4bit_quant_type nf4 \
    --bnb_4bit_use_double_quant true \
    --lora_rank 8 \
    --lora_alpha 32 \
    --target_modules all-linear \
    --per_device_train_batch_size 1 \
    --max_length 2048 \
    --gradient_checkpointing true \
    --learning_rate 1e-4 \
    --output_dir output

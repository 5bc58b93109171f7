#!/usr/bin/env bash
set -e
trl sft \
  --model_name_or_path Qwen/Qwen3-14B \
  --dataset_name trl-lib/Capybara \
  --load_in_4bit \
  --use_peft \
  --per_device_train_batch_size 2 \
  --output_dir out

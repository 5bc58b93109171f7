"""HF Trainer + peft: ``transformers.Trainer`` over ``from_pretrained`` + peft's
``prepare_model_for_kbit_training`` (quantized bases) + ``get_peft_model``: the plain script the hf
table describes."""

from __future__ import annotations

from typing import Any

from vramplan.hf.build import bnb_config, lora_config, torch_dtype
from vramplan.profile.frameworks.common import random_ids, training_args


def run(job: Any) -> None:
    import torch
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

    sc = job.scenario
    q = bnb_config(sc)
    model = AutoModelForCausalLM.from_pretrained(str(job.ckpt), dtype=torch_dtype(sc), quantization_config=q)
    if not sc.full:
        from peft import get_peft_model, prepare_model_for_kbit_training

        if q is not None:
            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=sc.grad_checkpointing)
        model = get_peft_model(model, lora_config(sc))
    rows = random_ids(job.arch.vocab_size, sc, sc.batch * job.steps)

    class Rows(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(rows)

        def __getitem__(self, i: int) -> dict[str, Any]:
            t = torch.tensor(rows[i])
            return {"input_ids": t, "labels": t.clone()}

    job.train(Trainer(model=model, args=TrainingArguments(**training_args(sc, str(job.work), job.steps)),
                      train_dataset=Rows()))

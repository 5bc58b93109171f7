"""TRL: ``trl.SFTTrainer`` with ``SFTConfig`` from the scenario (the model given by path with
``model_init_kwargs``, so TRL loads it; ``peft_config`` from the scenario), a pre-tokenized dataset."""

from __future__ import annotations

from typing import Any

from vramplan.hf.build import bnb_config, lora_config, torch_dtype
from vramplan.profile.frameworks.common import random_ids, training_args, word_tokenizer


def run(job: Any) -> None:
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    sc = job.scenario
    init: dict[str, Any] = dict(dtype=torch_dtype(sc))
    if bnb_config(sc) is not None:
        init["quantization_config"] = bnb_config(sc)
    args = SFTConfig(**training_args(sc, str(job.work), job.steps), max_length=sc.seq, model_init_kwargs=init)
    data = Dataset.from_dict({"input_ids": random_ids(job.arch.vocab_size, sc, sc.batch * job.steps)})
    job.train(SFTTrainer(model=str(job.ckpt), args=args, train_dataset=data, processing_class=word_tokenizer(),
                         peft_config=None if sc.full else lora_config(sc)))

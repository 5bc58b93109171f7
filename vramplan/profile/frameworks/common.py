"""What the HF-Trainer-based runners share: the TrainingArguments a scenario implies, synthetic ids."""

from __future__ import annotations

from typing import Any

from vramplan.scenario import Scenario


def optim_name(scenario: Scenario) -> str:
    from vramplan.frameworks.base import HF_OPTIM_NAME

    return HF_OPTIM_NAME[scenario.optimizer.value]


def training_args(scenario: Scenario, out: str, steps: int) -> dict[str, Any]:
    """HF ``TrainingArguments`` for a scenario (the runners that build from the scenario: trl, hf)."""
    mixed = scenario.autocast and scenario.dtype.value != "fp32"
    return dict(output_dir=out, per_device_train_batch_size=scenario.batch, max_steps=steps, report_to=[],
                use_cpu=True, save_strategy="no", logging_strategy="no", bf16=mixed and scenario.dtype.value == "bf16",
                fp16=mixed and scenario.dtype.value == "fp16", gradient_checkpointing=scenario.grad_checkpointing,
                gradient_checkpointing_kwargs={"use_reentrant": scenario.reentrant}
                if scenario.grad_checkpointing else None,
                optim=optim_name(scenario), learning_rate=1e-4, weight_decay=0.0, max_grad_norm=1.0,
                dataloader_num_workers=0, disable_tqdm=True, seed=0)


def random_ids(vocab_size: int, scenario: Scenario, n: int) -> list[list[int]]:
    import torch

    g = torch.Generator().manual_seed(0)
    return torch.randint(3, vocab_size, (n, scenario.seq), generator=g).tolist()


def word_tokenizer() -> Any:
    """A three-token word-level tokenizer built in code (no hub): the trainers want one for padding and EOS."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(vocab={"<pad>": 0, "<eos>": 1, "<unk>": 2}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")

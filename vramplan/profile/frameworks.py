"""``vramplan profile --config``: a few real steps of the framework's *own* trainer, measured.

Where ``vramplan.profile.runner`` measures vramplan's build of the HF + peft step, this module hands
the run to the framework: its model loading (``from_pretrained`` of a random-init checkpoint of the
real architecture, quantized by bitsandbytes as the framework configures it), its preparation and its
training loop, fed synthetic token ids of the configured shape. The reader (``vramplan.profile.
readers``) watches the whole run; a ``TrainerCallback`` reads the peak of each step, the first being
the warm-up. The profile names the framework and its version (``run.framework``), so ``validate``
compares each framework's prediction with its own measurement.

Runners (one per framework whose trainer installs next to torch here; ``UNAVAILABLE`` says why the
others are not run):

- ``trl``: ``trl.SFTTrainer`` with ``SFTConfig`` (the model given by path with ``model_init_kwargs``,
  so TRL loads it; ``peft_config`` from the scenario), a pre-tokenized dataset.
- ``hf``: ``transformers.Trainer`` over ``from_pretrained`` + peft's ``prepare_model_for_kbit_training``
  (quantized bases) + ``get_peft_model``: the plain script the hf table describes.
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
import time
from typing import Any, Callable

from vramplan.hf.build import bnb_config, lora_config, torch_dtype
from vramplan.profile.runner import ProfileRunError, RunOptions, predict, prediction_calibration, register_model, \
    save_random_checkpoint
from vramplan.profile.store import PHASES, SCHEMA, Profile, now_utc
from vramplan.scenario import Scenario

#: Frameworks whose trainer is not run by ``profile --config`` here, and why.
UNAVAILABLE = {
    "unsloth": "Unsloth's kernels need a GPU (on CPU it falls back to plain transformers + peft, which is not "
               "the program it runs on a GPU)",
    "ms-swift": "ms-swift 4.6 pins transformers/peft/trl versions other than the ones vramplan is tested with "
                "(pip's resolver would replace them); its trainer is not run here",
    "axolotl": "axolotl 0.19 pins its own torch/transformers stack (pip's resolver would replace torch 2.13); "
               "its trainer is not run here",
    "llamafactory": "llamafactory 0.9.5 pins torch 2.14 / transformers 5.6 / peft 0.18 / trl 0.24 (pip's resolver "
                    "would replace them); its trainer is not run here",
    "torchtune": "torchtune's recipe needs its tokenizer and checkpoint files on disk (no synthetic path); its loss "
                 "and builders are checked by the trace and tests/theirs instead",
}


def _optim_name(scenario: Scenario) -> str:
    from vramplan.frameworks.base import HF_OPTIM_NAME

    return HF_OPTIM_NAME[scenario.optimizer.value]


def _common_args(scenario: Scenario, out: str, steps: int) -> dict[str, Any]:
    mixed = scenario.autocast and scenario.dtype.value != "fp32"
    return dict(output_dir=out, per_device_train_batch_size=scenario.batch, max_steps=steps, report_to=[],
                use_cpu=True, save_strategy="no", logging_strategy="no", bf16=mixed and scenario.dtype.value == "bf16",
                fp16=mixed and scenario.dtype.value == "fp16", gradient_checkpointing=scenario.grad_checkpointing,
                gradient_checkpointing_kwargs={"use_reentrant": scenario.reentrant}
                if scenario.grad_checkpointing else None,
                optim=_optim_name(scenario), learning_rate=1e-4, weight_decay=0.0, max_grad_norm=1.0,
                dataloader_num_workers=0, disable_tqdm=True, seed=0)


def _ids(arch: Any, scenario: Scenario, n: int) -> list[list[int]]:
    import torch

    g = torch.Generator().manual_seed(0)
    return torch.randint(3, arch.vocab_size, (n, scenario.seq), generator=g).tolist()


def word_tokenizer() -> Any:
    """A word-level tokenizer built in code (no hub): the trainers want one for padding and EOS."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(vocab={"<pad>": 0, "<eos>": 1, "<unk>": 2}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")


def _trl_trainer(arch: Any, scenario: Scenario, ckpt: str, out: str, steps: int, callback: Any) -> Any:
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    init: dict[str, Any] = dict(dtype=torch_dtype(scenario))
    if bnb_config(scenario) is not None:
        init["quantization_config"] = bnb_config(scenario)
    args = SFTConfig(**_common_args(scenario, out, steps), max_length=scenario.seq, model_init_kwargs=init)
    data = Dataset.from_dict({"input_ids": _ids(arch, scenario, scenario.batch * steps)})
    return SFTTrainer(model=ckpt, args=args, train_dataset=data, processing_class=word_tokenizer(),
                      peft_config=None if scenario.full else lora_config(scenario), callbacks=[callback])


def _hf_trainer(arch: Any, scenario: Scenario, ckpt: str, out: str, steps: int, callback: Any) -> Any:
    import torch
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

    q = bnb_config(scenario)
    model = AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch_dtype(scenario), quantization_config=q)
    if not scenario.full:
        from peft import get_peft_model, prepare_model_for_kbit_training

        if q is not None:
            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=scenario.grad_checkpointing)
        model = get_peft_model(model, lora_config(scenario))
    rows = _ids(arch, scenario, scenario.batch * steps)

    class Rows(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(rows)

        def __getitem__(self, i: int) -> dict[str, Any]:
            t = torch.tensor(rows[i])
            return {"input_ids": t, "labels": t.clone()}

    return Trainer(model=model, args=TrainingArguments(**_common_args(scenario, out, steps)), train_dataset=Rows(),
                   callbacks=[callback])


#: Framework -> the function building its trainer (``(arch, scenario, checkpoint, out, steps, callback)``).
RUNNERS: dict[str, Callable[..., Any]] = {"trl": _trl_trainer, "hf": _hf_trainer}


def profile_config(resolved: Any, model_name: str, arch: Any, scenario: Scenario, opts: RunOptions) -> Profile:
    """Run ``opts.steps`` steps of the framework's own trainer on CPU and return the (unsaved) Profile."""
    fw = resolved.framework
    if fw.name not in RUNNERS:
        raise ProfileRunError(f"profile --config does not run {fw.title}: {UNAVAILABLE.get(fw.name, 'no runner')}; "
                              f"`vramplan profile` with the flags of `vramplan estimate --config` measures "
                              f"vramplan's build of the same scenario")
    if opts.device not in (None, "cpu"):
        raise ProfileRunError("profile --config runs the framework's trainer on the CPU here (--device cpu)")
    if opts.steps < 2:
        raise ProfileRunError("profile --config needs --steps >= 2 (the first is the warm-up)")
    from vramplan.profile.readers import make_reader

    reader = make_reader("cpu")
    info = reader.device_info()
    predictions, notes = predict(arch, scenario, opts.predict, "cpu", info["name"])
    peaks: list[int] = []
    times: list[float] = []
    first: list[int] = []
    from transformers import TrainerCallback

    class Peaks(TrainerCallback):
        t0 = 0.0

        def on_step_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            reader.reset_peak()
            self.t0 = time.perf_counter()

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            (first if not first else peaks).append(reader.peak().allocated)
            times.append(time.perf_counter() - self.t0)

    with tempfile.TemporaryDirectory(prefix="vramplan-random-") as ckpt, \
            tempfile.TemporaryDirectory(prefix="vramplan-out-") as out:
        save_random_checkpoint(arch, scenario, ckpt, opts.seed)
        reader.start()
        try:  # the trainers print their metrics on stdout, which carries only vramplan's own output
            with contextlib.redirect_stdout(sys.stderr):
                trainer = RUNNERS[fw.name](arch, scenario, ckpt, out, opts.steps, Peaks())
                register_model(reader, trainer.model)
                t0 = time.perf_counter()
                trainer.train()
                wall = time.perf_counter() - t0
        finally:
            reader.stop()
    if not peaks:
        raise ProfileRunError(f"{fw.title}'s trainer ran no steady step")
    alloc = max(peaks)
    measured = {
        "allocated_peak_bytes": alloc, "reserved_peak_bytes": alloc, "active_peak_bytes": alloc,
        "process_peak_bytes": None, "managed_bytes": 0, "first_step_peak_bytes": first[0] if first else None,
        "phases": dict(dict.fromkeys(PHASES), steady_step=alloc), "step_seconds": None, "step_seconds_all": times[1:],
        "tokens_per_second": None, "oom": None, "train_seconds_traced": wall,
    }
    info.pop("available_memory_bytes", None)
    run = {"steps": opts.steps, "warmup_steps": 1, "weights": "random-init", "loader": "framework", "seed": opts.seed,
           "prediction_notes": notes, "framework": {"name": fw.name, "version": resolved.version,
                                                    "version_source": resolved.version_source,
                                                    "files": [str(p) for p in resolved.source.files]},
           "prediction_calibration": prediction_calibration("cpu", info["name"]).fitted_on,
           "timing": "step times are under the CPU tracker (not the model's speed)"}
    from vramplan.profile.runner import _versions

    versions = _versions()
    versions[fw.package or fw.name] = resolved.version
    return Profile(schema=SCHEMA, model=model_name, arch_config=dict(arch.config), scenario=scenario, device=info,
                   versions=versions, timestamp=now_utc(), measured=measured, predictions=predictions, run=run)


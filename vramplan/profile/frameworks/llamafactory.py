"""LLaMA-Factory: its SFT workflow (``llamafactory.train.sft.workflow.run_sft``, with the callbacks
``train.tuner._training_function`` gives it for ``stage: sft``: what ``llamafactory-cli train`` runs) on
the user's own YAML, parsed by LLaMA-Factory's own ``get_train_args``. (``run_exp`` itself is not
called: its module imports every stage, and the PPO stage imports trl names trl 1.x removed.)

Replaced: ``model_name_or_path`` (the random checkpoint), the dataset (an alpaca-format file of
one-turn rows whose encoding by LLaMA-Factory's own supervised processor and the config's template is
exactly ``seq`` tokens; LLaMA-Factory computes logits at every position, so the label share does not
move its memory), the output folder, ``max_steps``, ``gradient_accumulation_steps: 1``, saving,
evaluation, reporting and plotting off, ``use_cpu``.

LLaMA-Factory 0.9.5 declares transformers <= 5.6, peft <= 0.18.1 and trl <= 0.24; here it runs on
vramplan's stack (transformers 5.24, peft 0.21, trl 1.16) with three adapters, none of which moves a
byte: ``DISABLE_VERSION_CHECK=1`` (its own switch for the version check); a placeholder
``trl.AutoModelForCausalLMWithValueHead`` (trl 1.x removed it; LLaMA-Factory imports it for PPO value
heads only); a stub ``torchaudio`` module while its multimodal plugin imports (no wheel for torch 2.13;
used for audio data only). And one for transformers 5.24's checkpointing call: its layers hand the checkpoint function
``partial(<unbound forward>, self, ...)`` where LLaMA-Factory's wrapper
(``model/model_utils/checkpointing.py`` ``get_custom_gradient_checkpointing_func``) reads
``func.func.__self__`` of a bound method (the form transformers <= 5.6 passes); the adapter hands it
the bound form, so its own wrapper still decides what is checkpointed and how (reentrant by default).
"""

from __future__ import annotations

import contextlib
import functools
import importlib.machinery
import importlib.util
import json
import os
import sys
import types
from typing import Any, Callable, Iterator

from vramplan.profile.frameworks import fit, words
from vramplan.profile.runner import ProfileRunError


@contextlib.contextmanager
def adapters() -> Iterator[None]:
    """The import and checkpoint-call adapters above, undone on exit."""
    import trl

    saved_env = os.environ.get("DISABLE_VERSION_CHECK")
    os.environ["DISABLE_VERSION_CHECK"] = "1"
    placeholder = not hasattr(trl, "AutoModelForCausalLMWithValueHead")
    if placeholder:
        trl.AutoModelForCausalLMWithValueHead = type("AutoModelForCausalLMWithValueHead", (), {})
    if "torchaudio" not in sys.modules and importlib.util.find_spec("torchaudio") is None:
        stub = types.ModuleType("torchaudio")  # only while mm_plugin imports it
        stub.__spec__ = importlib.machinery.ModuleSpec("torchaudio", None)
        sys.modules["torchaudio"] = stub
        try:
            import llamafactory.data.mm_plugin  # noqa: F401
        finally:
            sys.modules.pop("torchaudio", None)
    from llamafactory.model.model_utils import checkpointing

    original = checkpointing.get_custom_gradient_checkpointing_func

    def bound_form(gc_func: Callable[..., Any]) -> Callable[..., Any]:
        lf = original(gc_func)

        @functools.wraps(lf)
        def call(func: Any, *args: Any, **kw: Any) -> Any:
            if isinstance(func, functools.partial) and not hasattr(func.func, "__self__") and func.args:
                func = functools.partial(types.MethodType(func.func, func.args[0]), *func.args[1:], **func.keywords)
            return lf(func, *args, **kw)

        return call

    checkpointing.get_custom_gradient_checkpointing_func = bound_form
    try:
        yield
    finally:
        checkpointing.get_custom_gradient_checkpointing_func = original
        if placeholder:
            del trl.AutoModelForCausalLMWithValueHead
        if saved_env is None:
            os.environ.pop("DISABLE_VERSION_CHECK", None)
        else:
            os.environ["DISABLE_VERSION_CHECK"] = saved_env


def encoder(args: dict[str, Any]) -> Callable[[int, int], tuple[int, int]]:
    """``(n_user, n_assistant) -> (tokens, labels)`` by LLaMA-Factory's own supervised processor."""
    from llamafactory.data import get_template_and_fix_tokenizer
    from llamafactory.data.processor import SupervisedDatasetProcessor
    from llamafactory.hparams import get_train_args
    from llamafactory.model import load_tokenizer

    model_args, data_args, _, _, _ = get_train_args(dict(args))
    tok = load_tokenizer(model_args)["tokenizer"]
    proc = SupervisedDatasetProcessor(template=get_template_and_fix_tokenizer(tok, data_args), tokenizer=tok,
                                      processor=None, data_args=data_args)

    def encode(n_u: int, n_a: int) -> tuple[int, int]:
        ids, labels = proc._encode_data_example(
            prompt=[{"role": "user", "content": words(n_u)}], response=[{"role": "assistant", "content": words(n_a, 7)}],
            system=None, tools=None, images=[], videos=[], audios=[])
        return len(ids), sum(1 for x in labels if x != -100)

    return encode


def run(job: Any) -> None:
    sc = job.scenario
    rows = job.work / "rows.json"
    (job.work / "dataset_info.json").write_text(json.dumps({"vramplan_rows": {"file_name": rows.name}}))
    args = dict(job.resolved.source.data)
    args.update(dict(job.changes()))
    args.update(model_name_or_path=str(job.ckpt), dataset="vramplan_rows", dataset_dir=str(job.work),
                eval_dataset=None, val_size=0.0, do_train=True, do_eval=False, output_dir=str(job.work / "out"),
                overwrite_output_dir=True, overwrite_cache=True, max_steps=job.steps, gradient_accumulation_steps=1,
                save_strategy="no", eval_strategy="no", report_to="none", logging_steps=10 ** 6, plot_loss=False,
                use_cpu=True, dataloader_num_workers=0, preprocessing_num_workers=None, streaming=False,
                tokenized_path=None, disable_tqdm=True, push_to_hub=False, hub_model_id=None, use_swanlab=False)
    with adapters():
        from llamafactory.hparams import get_train_args
        from llamafactory.train.callbacks import LogCallback, ReporterCallback
        from llamafactory.train.sft.workflow import run_sft

        n_u, n_a = fit(encoder(args), sc.seq, sc.seq // 2)
        rows.write_text(json.dumps([{"instruction": words(n_u, i), "input": "", "output": words(n_a, i + 7)}
                                    for i in range(sc.batch * job.steps)]))
        model_args, data_args, training_args, finetuning_args, generating_args = get_train_args(args)
        if finetuning_args.stage != "sft":
            raise ProfileRunError(f"LLaMA-Factory stage '{finetuning_args.stage}': profile --config runs sft")
        callbacks = [job.callback(attach=True), LogCallback(),
                     ReporterCallback(model_args, data_args, finetuning_args, generating_args)]
        run_sft(model_args, data_args, training_args, finetuning_args, generating_args, callbacks)

"""The HF Trainer's evaluation loop, traced after the last training step (``Scenario.eval_batch``).

What runs is transformers 5.24 ``Trainer.evaluation_loop`` / ``prediction_step`` (``trainer.py``
L2904-3111, L3193-3300) on one device, with the Trainer's own containers
(``trainer_pt_utils.EvalLoopContainer``, whose ``add`` concatenates on the device): ``model.eval()``,
each batch's loss forward under ``torch.no_grad()`` (``vramplan.hf.build.eval_forward``), the losses
repeated per sample, the logits reduced to argmax ids when ``eval_keep`` is ``ids`` (LLaMA-Factory's
``eval_logit_processor``: ``torch.argmax(logits, dim=-1)``) and kept with the labels unless it is
``none`` (``prediction_loss_only``). Nothing is moved to the CPU: ``eval_samples`` is what the device
holds at once.

Only the last two batches run: the predictions of the batches before them (the same bytes, one
tensor per container as ``torch.cat`` leaves them) are allocated directly, since every earlier batch
holds fewer bytes at each moment. The peak and the bytes per component at it are recorded as the
``evaluation`` phase of the last step; labels: ``activations/eval_inputs`` (the eval batch),
``activations/eval_layer`` (the decoder under no_grad), ``logits/eval_forward`` (from the lm_head on),
``logits/eval_predictions`` (what the loop keeps).
"""

from __future__ import annotations

import contextlib
from typing import Any

from vramplan.scenario import EvalKeep, Scenario

PHASE = "evaluation"


def trace_evaluation(tr: Any, model: Any, arch: Any, scenario: Scenario, fake: bool, seed: int) -> tuple[int, dict[str, int]]:
    """Run the evaluation loop under the tracker ``tr``; (peak bytes, bytes per component at it)."""
    import torch
    from transformers.trainer_pt_utils import EvalLoopContainer

    from vramplan.hf import build as B
    from vramplan.hf import interventions

    keep = scenario.eval_keep
    be, s = scenario.eval_batch, scenario.seq
    n = scenario.eval_samples if keep is not EvalKeep.NONE else be
    n_batches = max(1, -(-n // be))
    sizes = [be] * (n_batches - 1) + [n - be * (n_batches - 1)]
    first = max(0, n_batches - 2)
    tr.reset_peak()
    containers = {k: EvalLoopContainer(True, padding_index=-100) for k in ("losses", "preds", "labels")}
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    head = base.get_output_embeddings()
    was_training = model.training
    model.eval()
    handle = head.register_forward_pre_hook(lambda *_: setattr(tr, "label", "logits/eval_forward"))
    try:
        with interventions.no_cpu_repack(model):
            # ``logits``: the loop's binding of the previous batch's predictions, alive through the next
            # forward (``losses, logits, labels = self.prediction_step(...)`` rebinds it only after)
            logits = _prefill(tr, containers, arch, scenario, first * be, be) if first else None
            for b in sizes[first:]:
                tr.label = "activations/eval_inputs"
                batch = _eval_batch(arch, scenario, b, fake, seed)
                tr.label = "activations/eval_layer"
                if scenario.eval_new_tokens:
                    logits = generate(tr, model, batch["input_ids"], scenario)
                    loss = None
                else:
                    loss, logits = B.eval_forward(model, batch, scenario)
                tr.label = "logits/eval_predictions"
                if loss is not None:
                    containers["losses"].add(loss.repeat(be))
                if keep is not EvalKeep.NONE:
                    if keep is EvalKeep.IDS and not scenario.eval_new_tokens:
                        logits = torch.argmax(logits, dim=-1)
                    labels = batch["labels"].detach()
                    if containers["preds"].tensors is None:
                        tr.retag([logits, labels], "logits/eval_predictions")
                    containers["preds"].add(logits)
                    containers["labels"].add(labels)
                    del labels
                del loss
        peak = (tr.peak_bytes, dict(tr.peak_by_category))
    finally:
        handle.remove()
        model.train(was_training)
        containers.clear()
    return peak


def _prefill(tr: Any, containers: dict[str, Any], arch: Any, scenario: Scenario, n_prev: int, be: int) -> Any:
    """The predictions of the first ``n_prev`` samples, as the earlier batches' concatenations left them,
    and the loop's ``logits`` binding of the batch before: the container's own tensor after one batch, a
    batch of its own after more (None when nothing is kept)."""
    import torch

    from vramplan.hf.build import native_amp, torch_dtype

    tr.label = "logits/eval_predictions"
    k = scenario.kept_positions
    if not scenario.eval_new_tokens:  # a generating evaluation has no loss (the labels are not passed)
        containers["losses"].tensors = torch.empty(n_prev, dtype=torch.float32)
    if scenario.eval_keep is EvalKeep.NONE:
        return None
    if scenario.eval_new_tokens:  # the generated sequences, prompt + new tokens, int64
        shape: tuple[int, ...] = (scenario.seq + scenario.eval_new_tokens,)
        dtype = torch.long
    elif scenario.eval_keep is EvalKeep.IDS:
        shape = (k,)
        dtype = torch.long
    else:
        mixed = native_amp(scenario)
        dtype = torch.float32 if (mixed or scenario.loss.value == "legacy") else _head_dtype(arch, scenario)
        dtype = dtype if dtype is not None else torch_dtype(scenario)
        shape = (k, arch.vocab_size)
    containers["preds"].tensors = torch.empty(n_prev, *shape, dtype=dtype)
    containers["labels"].tensors = torch.empty(n_prev, scenario.seq, dtype=torch.long)
    if n_prev == be:
        return containers["preds"].tensors
    return torch.empty(be, *shape, dtype=dtype)


def generate(tr: Any, model: Any, input_ids: Any, scenario: Scenario) -> Any:
    """The generated sequences (b, seq + eval_new_tokens) of one eval batch, by transformers 5.24's greedy
    decoding loop driven step by step (``GenerationMixin.generate`` -> ``_sample``, ``generation/utils.py``
    L2584-3010, L3123-3339): fake tensors cannot run ``generate`` itself, whose stopping checks read tensor
    values (``(attention_mask == 1).all()``, ``unfinished_sequences.max() == 0``), so this loop takes the
    path they take for a batch without padding that never meets its EOS (interventions item 26).

    As generate does: the position ids from the all-ones mask (``_prepare_position_ids_for_generation``; the
    mask is then dropped), a ``DynamicCache(config=...)`` (``_prepare_cache_for_generation``),
    ``logits_to_keep=1``, each forward's inputs from ``prepare_inputs_for_generation`` and its kwargs from
    ``_update_model_kwargs_for_generation``, ``next_token_logits = outputs.logits[:, -1].to(copy=True,
    dtype=float32)`` bound until the next one, ``argmax``, ``input_ids = cat([input_ids, next])``, ``del
    outputs``. The model generating is the causal LM under peft's wrapper (``PeftModel.generate`` ->
    ``base_model.generate``), which accelerate's autocast does not wrap; a full fine-tuning model's own
    forward is the prepared one (autocast + ``convert_to_fp32``).

    Only the prefill, the first decode step and the last one run: before the last one every cache layer,
    the input ids and the position ids are replaced by tensors of the length the skipped steps leave them
    (each decode step holds less than the last)."""
    import torch
    from transformers.cache_utils import DynamicCache

    from vramplan.hf import build as B

    n = scenario.eval_new_tokens
    peft = hasattr(model, "get_base_model")
    lm = model.get_base_model() if peft else model
    ctx = (lambda: B.autocast_context(scenario, input_ids.device.type)) if not peft else contextlib.nullcontext
    convert = not peft and B.native_amp(scenario)
    kwargs: dict[str, Any] = {"attention_mask": torch.ones_like(input_ids)}
    kwargs["position_ids"] = lm._prepare_position_ids_for_generation(input_ids, kwargs)
    kwargs["attention_mask"] = None  # all ones: dropped (``generate`` step 4)
    kwargs["logits_to_keep"] = 1
    cache = DynamicCache(config=lm.config.get_text_config(decoder=True))
    kwargs["cache"] = cache
    kwargs["use_cache"] = True
    _label_cache(tr, cache)
    ids = input_ids
    next_token_logits = None
    with torch.no_grad():
        for step in sorted({0, 1, n - 1} & set(range(n))):  # the prefill, the first and the last decode step
            if step == n - 1 and step >= 2:
                ids, kwargs = _grow(tr, cache, ids, kwargs, scenario.seq + n - 1)
            tr.label = "activations/eval_layer"
            inputs = lm.prepare_inputs_for_generation(ids, next_sequence_length=1 if step else None,
                                                      is_first_iteration=not step, **kwargs)
            with ctx():
                outputs = lm(**inputs, return_dict=True)
            del inputs
            tr.label = "logits/eval_forward"
            if convert:
                from accelerate.utils import convert_to_fp32

                outputs = convert_to_fp32(outputs)
            kwargs = lm._update_model_kwargs_for_generation(outputs, kwargs)
            next_token_logits = outputs.logits[:, -1].to(copy=True, dtype=torch.float32)
            next_tokens = torch.argmax(next_token_logits, dim=-1)
            tr.label = "logits/eval_predictions"
            ids = torch.cat([ids, next_tokens[:, None]], dim=-1)
            del outputs, next_tokens
    del next_token_logits, kwargs, cache
    return ids


def _label_cache(tr: Any, cache: Any) -> None:
    """Count what each cache layer's ``update`` allocates (its ``torch.cat`` of the old and new keys and
    values) as ``activations/eval_kv_cache``: a wrapper on our cache's own layer objects."""
    for layer in cache.layers:
        def update(*args: Any, _orig: Any = layer.update, **kw: Any) -> Any:
            before = tr.label
            tr.label = "activations/eval_kv_cache"
            try:
                return _orig(*args, **kw)
            finally:
                tr.label = before
        layer.update = update


def _grow(tr: Any, cache: Any, ids: Any, kwargs: dict[str, Any], length: int) -> tuple[Any, dict[str, Any]]:
    """The state before the last decode step: every cache layer at ``length - 1`` positions, the input ids
    and position ids at ``length`` (what the skipped steps' concatenations leave; zeros, valid ids on real
    tensors)."""
    import torch

    tr.label = "activations/eval_kv_cache"
    for layer in cache.layers:
        b, h, _, d = layer.keys.shape
        layer.keys = torch.zeros(b, h, length - 1, d, dtype=layer.keys.dtype)
        layer.values = torch.zeros(b, h, length - 1, layer.values.shape[-1], dtype=layer.values.dtype)
    tr.label = "logits/eval_predictions"
    ids = torch.zeros(ids.shape[0], length, dtype=ids.dtype)
    pos = kwargs.get("position_ids")
    if pos is not None:
        kwargs["position_ids"] = torch.zeros(*pos.shape[:-1], length, dtype=pos.dtype)
    return ids, kwargs


def _head_dtype(arch: Any, scenario: Scenario) -> Any:
    """The lm_head output's dtype without mixed precision: the embedding group's (the recipe's)."""
    import torch

    from vramplan.analytic.terms import dtypes

    return torch.float32 if dtypes(arch, scenario).resid0 == 4 else None


def _eval_batch(arch: Any, scenario: Scenario, b: int, fake: bool, seed: int) -> dict[str, Any]:
    import torch

    from vramplan.hf.build import synthetic_batch

    if not fake:
        return synthetic_batch(arch, scenario.replace(batch=b), "cpu", seed=seed + 1)
    return {"input_ids": torch.zeros(b, scenario.seq, dtype=torch.long),
            "labels": torch.zeros(b, scenario.seq, dtype=torch.long)}

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
                loss, logits = B.eval_forward(model, batch, scenario)
                tr.label = "logits/eval_predictions"
                containers["losses"].add(loss.repeat(be))
                if keep is not EvalKeep.NONE:
                    if keep is EvalKeep.IDS:
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

    from vramplan.hf.build import torch_dtype

    tr.label = "logits/eval_predictions"
    k = scenario.kept_positions
    containers["losses"].tensors = torch.empty(n_prev, dtype=torch.float32)
    if scenario.eval_keep is EvalKeep.NONE:
        return None
    if scenario.eval_keep is EvalKeep.IDS:
        shape: tuple[int, ...] = (k,)
        dtype = torch.long
    else:
        mixed = scenario.autocast and scenario.dtype.value != "fp32"
        dtype = torch.float32 if (mixed or scenario.loss.value == "legacy") else _head_dtype(arch, scenario)
        dtype = dtype if dtype is not None else torch_dtype(scenario)
        shape = (k, arch.vocab_size)
    containers["preds"].tensors = torch.empty(n_prev, *shape, dtype=dtype)
    containers["labels"].tensors = torch.empty(n_prev, scenario.seq, dtype=torch.long)
    if n_prev == be:
        return containers["preds"].tensors
    return torch.empty(be, *shape, dtype=dtype)


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

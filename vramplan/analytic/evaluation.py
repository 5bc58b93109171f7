"""The evaluation loop run between training steps: its peak, priced beside the training step's.

Sources: transformers 5.24 ``trainer.py`` (``evaluate`` L2805-2902: ``prediction_loss_only=True``
when no ``compute_metrics``; ``evaluation_loop`` L2904-3111: ``model.eval()``, ``all_preds.add`` /
``all_labels.add`` every batch, ``to_cpu_and_numpy`` every ``eval_accumulation_steps``;
``prediction_step`` L3193-3300: the forward under ``torch.no_grad()``, returning ``(loss, None,
None)`` when ``prediction_loss_only``), ``trainer_pt_utils.py`` (``EvalLoopContainer`` L352-401,
``nested_concat`` -> ``torch_pad_and_concatenate``: ``torch.cat`` of the old and the new tensors),
accelerate 1.15 (``Accelerator.prepare_model`` L1824-1835 wraps the forward in
``convert_outputs_to_fp32`` under mixed precision; ``utils/operations.py::convert_to_fp32`` L889-910
upcasts every fp16/bf16 output, so the logits the loop keeps are fp32), transformers 5.24
``loss/loss_utils.py::ForCausalLMLoss`` L53-74 (``logits.float()``, the labels padded and shifted).

What is alive during an evaluation: the training state (weights, quantization state, adapters,
optimizer state; the gradients are None, ``zero_grad(set_to_none=True)`` ran before
``_maybe_log_save_evaluate``) and, per eval batch of b sequences of s tokens (T = b·s, Tk = b·k
logit rows, k the kept positions of ``Scenario.label_fraction``):

1. the batch on the device: input_ids + labels, int64: 16·T (the loop variable ``inputs``);
2. the forward, which under ``no_grad`` saves nothing: one decoder layer's working tensors
   (``layer_bytes``), then at the head the final hidden states (T·H·hb) with either autocast's copy
   of a wider lm_head weight (c·V·H, freed after the matmul) or, in the loss, the logits + their
   fp32 upcast + the log-softmax output (``logits.loss_forward_bytes``) and the padded and shifted
   labels (2 × 8·T) (``forward_bytes``);
3. the predictions kept so far (``Scenario.eval_keep``: P bytes per sample of predictions, L of
   labels), and from the second batch on their concatenation, the old, the new and the result
   alive at once (``concat_bytes``); through a forward the loop's ``logits`` variable still binds
   the previous batch's predictions, which have their own storage from the third batch on (the
   first batch's are the container's tensor itself).

Symbols: V vocabulary, H hidden, I intermediate, ld logits bytes, hb final hidden-state bytes,
c compute bytes. Bytes inside, ints.
"""

from __future__ import annotations

from typing import NamedTuple

from vramplan.analytic.logits import loss_forward_bytes

#: int64 token ids and labels.
ID_BYTES = 8
#: bitsandbytes 0.50.2 CUDA ``gemm_4bit`` dequantizes the whole weight for inputs of more rows
#: (``backends/cuda/ops.py``; ``vramplan.hf.interventions.CUDA_CUSTOM_MAX_M``).
DEQUANT_ROWS = 1536

_Row = tuple[str, str, int, str]


def kept_logits_bytes(ld: int, autocast: bool, legacy: bool) -> int:
    """Bytes per logit the loop keeps: 4 under mixed precision (accelerate's ``convert_to_fp32`` on the
    forward's outputs) or with the legacy loss (fp32 ``output.logits``), else the lm_head output's ld."""
    return 4 if (autocast or legacy) else ld


def kept_per_sample(keep: str, V: int, k: int, s: int, logit_bytes: int) -> tuple[int, int]:
    """(predictions, labels) bytes one eval sample leaves on the device.

    ``logits``: the (k, V) logits in ``logit_bytes``; ``ids``: the (k,) argmax ids (int64); both keep
    the sample's (s,) labels (int64; ``prediction_step`` returns the labels whenever it returns
    predictions). ``none``: nothing (the per-batch fp32 loss the loop keeps, 4·b bytes, is not priced).
    Batches are padded to the longest across batches (``torch_pad_and_concatenate``): s is that
    longest sequence."""
    if keep == "logits":
        return logit_bytes * V * k, ID_BYTES * s
    if keep == "ids":
        return ID_BYTES * k, ID_BYTES * s
    return 0, 0


def inputs_bytes(T: int) -> int:
    """The eval batch on the device: input_ids + labels, int64."""
    return 2 * ID_BYTES * T


def forward_bytes(T: int, Tk: int, T1: int, V: int, H: int, ld: int, hb: int, head_copy: int, legacy: bool) -> int:
    """The eval forward's busiest moment at the head (batch inputs excluded), the larger of:

    (a) the lm_head matmul: final hidden states T·H·hb + autocast's weight copy (``head_copy``) + the
        logits ld·V·Tk;
    (b) the loss: hidden states + logits + fp32 upcast + log-softmax (``loss_forward_bytes``, no
        soft-capping tanh: nothing is saved under no_grad) + the padded and the shifted labels 2·8·T.
    T1: the legacy loss's b·(s−1) shifted rows.
    """
    hidden = T * H * hb
    head = hidden + head_copy + ld * V * Tk
    loss = hidden + loss_forward_bytes(V, ld, False, Tk, T1, legacy) + 2 * ID_BYTES * T
    return max(head, loss)


def layer_bytes(T: int, H: int, I: int, resid: int, c: int, dequant: int) -> int:
    """One decoder layer's live tensors under no_grad at the MLP (approximate, the largest of a layer's
    moments for an MLP wider than the attention): the residual stream and the normalised input
    ((resid + resid)·H per token), and gate/up's activation, up's output and their product in the
    compute dtype (3·c·I per token); on CUDA with more than ``DEQUANT_ROWS`` rows, bitsandbytes'
    dequantized 4-bit weight (``dequant``)."""
    return T * (2 * resid * H + 3 * c * I) + (dequant if T > DEQUANT_ROWS else 0)


def concat_bytes(n_prev: int, b: int, P: int, L: int) -> int:
    """Kept predictions at the concatenation of batch b after ``n_prev`` samples (``nested_concat``):
    the predictions old + new + result (2·(n_prev + b)·P), the labels kept so far (n_prev·L; the new
    labels are the batch's, counted with the inputs), and, at the labels' concatenation, the other way
    round; the larger of the two moments."""
    n = n_prev + b
    preds = 2 * n * P + n_prev * L
    labels = n * P + (n_prev + n) * L
    return max(preds, labels)


# ------------------------------------------------------------------------------- generation
class GenTerms(NamedTuple):
    """Per-token coefficients of a generating evaluation (``Scenario.eval_new_tokens``), bytes.

    Sources: transformers 5.24 ``generation/utils.py`` (``generate`` L2584-3010: ``logits_to_keep=1``
    L2952-2956, the ``DynamicCache`` of ``_prepare_cache_for_generation`` L2241-2326; ``_sample``
    L3123-3339: ``next_token_logits = outputs.logits[:, -1].to(copy=True, dtype=torch.float32)``
    bound until the next step, ``input_ids = torch.cat(...)``, ``del outputs``), ``cache_utils.py``
    (``DynamicLayer.update`` L119-138: ``self.keys = torch.cat([self.keys, key_states], dim=-2)``, then
    the values: the old and the new copy of a layer's values coexist inside the call), peft 0.21.2
    ``PeftModelForCausalLM.generate`` (``self.base_model.generate``: the inner model's own forward, which
    accelerate's autocast wrapper on the prepared PeftModel does not reach)."""

    new_tokens: int
    """Tokens generated per sequence (n)."""
    layers: int
    """Decoder layers, each with a cache layer (L)."""
    kv_tok: int
    """One cache layer's K + V bytes per token: kv_heads·head_dim·(kb + vb)."""
    v_tok: int
    """One cache layer's V bytes per token: kv_heads·head_dim·vb."""
    layer_tok: int
    """The prefill's last decoder layer at its MLP, per token (``prefill_layer_bytes``)."""
    head_seq: int
    """A decode step's head per sequence: the previous step's fp32 next-token logits, this step's logits
    and their fp32 copy (``decode_head_bytes``)."""
    prev_seq: int
    """The previous step's fp32 next-token logits per sequence (4·V), alive through a decode forward."""
    state_seq: int = 0
    """Recurrent cache bytes per sequence of the layers that are not attention (Mamba-2: its conv and SSM
    states, ``analytic.mixers.STATES``), a fixed size whatever the positions; 0 when every layer is
    attention (``layers`` then counts every decoder layer)."""


def kv_cache_dtypes(proj: int, resid0: int, norm_w: int, qk_norm: bool) -> tuple[int, int]:
    """(K, V) element bytes of the cache: V is v_proj's output (``proj``); K is k_proj's output after
    the family's k_norm (``weight * x.to(input_dtype)``: promoted to the norm weight's dtype) and the
    rotary embedding (``k * cos + rotate_half(k) * sin`` with cos/sin in the dtype of the embeddings'
    output, ``LlamaRotaryEmbedding.forward``: ``cos.to(x.dtype)``)."""
    k = max(proj, norm_w) if qk_norm else proj
    return max(k, resid0), proj


def kv_cache_bytes(tokens: int, layers: int, kv_tok: int) -> int:
    """The DynamicCache of ``layers`` layers holding ``tokens`` (b × positions) each."""
    return tokens * layers * kv_tok


def prefill_layer_bytes(H: int, I: int, head_dim: int, resid0: int, resid: int, nout: int, a: int, lora: int,
                        lora_up: bool) -> int:
    """Per prompt token, the prefill's last decoder layer at its MLP under no_grad: the embeddings' output
    (``inputs_embeds``, bound in the model's forward to its end), the layer's input (bound by the model's
    loop), the attention's residual sum and the MLP's normed input ((resid0 + 2·resid + nout)·H), the
    rotary cos and sin (2·head_dim, the embeddings' dtype), and at up_proj: act(gate) and up's base output
    (2·a·I) with, when up_proj carries LoRA, lora_B's output and its ``* scaling`` (2·lora·I; peft 0.21.2
    ``lora/bnb.py`` ``Linear4bit.forward``) and peft's cast of the input to the adapter dtype when it
    differs (lora·H), else act(gate) · up (a·I); the position ids and the input ids' clone of
    ``prepare_inputs_for_generation`` (2 × 8)."""
    mlp = 2 * a * I + (2 * lora * I + (lora * H if lora != nout else 0) if lora_up else a * I)
    return (resid0 + 2 * resid + nout) * H + 2 * head_dim * resid0 + mlp + 2 * ID_BYTES


def decode_head_bytes(V: int, ld: int, convert: bool) -> int:
    """Per sequence, a decode step's head: the previous step's fp32 ``next_token_logits`` (4·V), the
    (b, 1, V) logits (``ld``; under accelerate's ``convert_to_fp32`` the fp32 copy replaces them) and
    ``.to(copy=True, dtype=float32)`` (4·V)."""
    return V * (8 + (4 if convert else ld))


def generation_peak(g: GenTerms, b: int, prompt: int) -> tuple[str, int, int, int]:
    """(moment, KV-cache bytes, layer bytes, head bytes) of the busiest moment of one batch's generation:

    - ``prefill``: every layer's cache of the b·P prompt tokens is complete when the last layer runs its
      MLP (``prefill_layer_bytes``); the logits are one position per sequence (``logits_to_keep=1``);
    - ``decode``: the last decode step (cache at m = P + n − 2 positions, growing to m + 1), inside the
      last layer's ``update``: every layer at m + 1 and that layer's old values (m), with the previous
      step's next-token logits and the input and position ids (2 × 8 per position);
    - ``decode head``: the same step at its head, every layer at m + 1 (``decode_head_bytes``)."""
    T = b * prompt
    states = b * g.state_seq
    best = ("prefill", kv_cache_bytes(T, g.layers, g.kv_tok) + states, T * g.layer_tok, 0)
    n = g.new_tokens
    if n >= 2:
        m = prompt + n - 2
        cache = kv_cache_bytes(b * (m + 1), g.layers, g.kv_tok) + states
        book = 2 * ID_BYTES * b * (m + 1)
        for cand in (("decode", cache + b * m * g.v_tok, 0, b * g.prev_seq + book),
                     ("decode head", cache, 0, b * g.head_seq + book)):
            if sum(cand[1:]) > sum(best[1:]):
                best = cand
    return best


def eval_loss_workspace(*, seq: int, k: int, batch: int, V: int, ld: int, legacy: bool, generates: bool) -> int:
    """The evaluation's loss workspace, for the caching allocator's reserve when the evaluation is the
    peak (``runtime.allocator_reserve_bytes``): the logits blocks of one eval batch's loss forward, the
    same family of b·s·V transients (logits, fp32 upcast, log-softmax: ``logits.loss_forward_bytes``,
    no soft-capping kept under no_grad) that the training step's loss leaves cached, here over the eval
    batch. A generating evaluation runs no loss forward: its logits are one position per sequence (0)."""
    if generates:
        return 0
    return loss_forward_bytes(V, ld, False, batch * k, batch * (seq - 1), legacy)


class EvalPeak(NamedTuple):
    """The evaluation's peak over the training state: its total and the rows summing to it."""

    total: int
    rows: tuple[_Row, ...]
    moment: str
    """``forward`` (the loss or the lm_head of an eval batch), ``layer`` or ``concatenation``."""


def eval_peak(*, seq: int, k: int, batch: int, samples: int, keep: str, V: int, H: int, I: int, ld: int,
              hb: int, head_copy: int, legacy: bool, resid: int, c: int, dequant: int,
              logit_bytes: int, gen: GenTerms | None = None, autocast_cache: int = 0) -> EvalPeak:
    """The largest moment of the evaluation loop: over the last two eval batches (earlier ones hold
    fewer predictions), the forward with the predictions kept before it, and the concatenation.

    Batches: ``samples`` kept samples in ceil(samples / batch) batches, the last one of the remainder
    (one batch of ``batch`` when nothing is kept). ``gen``: the evaluation generates
    (``generation_peak`` replaces the loss forward; the kept predictions are the generated sequences,
    seq + n int64 ids, and the labels). ``autocast_cache``: autocast's cached 16-bit copies of every
    layer's fp32 LoRA weights (``activations.autocast_cache_bytes``), filled by each forward (no_grad
    does not stop the cache) and cleared when it returns: alive at the loss forward's moments (not the
    concatenation). Generation's forwards hold none in the trace (``tests/engines/test_loss_forward_engines.py``)."""
    if gen is not None:
        P, L = (ID_BYTES * (seq + gen.new_tokens), ID_BYTES * seq) if keep == "ids" else (0, 0)
    else:
        P, L = kept_per_sample(keep, V, k, seq, logit_bytes)
    n_batches = max(1, -(-samples // batch)) if P or L else 1
    sizes = [batch] * (n_batches - 1) + [samples - batch * (n_batches - 1) if (P or L) else batch]
    best: EvalPeak | None = None
    for j in range(max(0, n_batches - 2), n_batches):
        b, n_prev = sizes[j], batch * j
        T, Tk = b * seq, b * k
        inp = inputs_bytes(T)
        # the loop's ``logits`` still binds the previous batch's predictions through this forward: their
        # own storage once a concatenation has copied them (batches from the third on)
        kept = n_prev * (P + L) + (batch * P if j >= 2 else 0)
        if gen is not None:
            moment, cache, lay, head = generation_peak(gen, b, seq)
            cands = [(moment, kept, head, lay + cache)]
            kv = cache
        else:
            fwd = forward_bytes(T, Tk, b * (seq - 1), V, H, ld, hb, head_copy, legacy)
            lay = layer_bytes(T, H, I, resid, c, dequant)
            cands = [("forward", kept, fwd, 0), ("layer", kept, 0, lay)]
            kv = 0
        if j and (P or L):
            cands.append(("concatenation", concat_bytes(n_prev, b, P, L), 0, 0))
        for moment, kb, fb, lb in cands:
            ac = autocast_cache if (gen is None and moment != "concatenation") else 0
            total = inp + kb + fb + lb + ac
            if best is None or total > best.total:
                cache = kv if moment not in ("forward", "layer", "concatenation") else 0
                rows = _rows(keep, inp, kb, fb, lb - cache, n_prev, b, moment, cache)
                if autocast_cache:
                    rows += (("activations/eval_autocast_cache", "activations", ac,
                              "autocast's cached 16-bit copies of every layer's fp32 LoRA weights, until the "
                              "forward returns"),)
                best = EvalPeak(total, rows, moment)
    assert best is not None
    return best


def _rows(keep: str, inp: int, kept: int, fwd: int, lay: int, n_prev: int, b: int, moment: str,
          cache: int = 0) -> tuple[_Row, ...]:
    what = {"logits": "logits + labels", "ids": "argmax ids + labels", "none": "nothing"}[keep]
    if moment in ("prefill", "decode", "decode head"):
        what = {"ids": "generated ids + labels", "none": "nothing"}[keep]
        kept_note = f"{what} of the {n_prev} eval samples kept on the device before this batch"
        return (("activations/eval_inputs", "activations", inp, "eval batch on the device (input_ids + labels, int64)"),
                ("activations/eval_layer", "activations", lay,
                 "generation's prefill: the last decoder layer under no_grad (+ rotary, position ids)"
                 if moment == "prefill" else "generation: a decode step's values copy inside DynamicLayer.update"),
                ("activations/eval_kv_cache", "activations", cache,
                 f"generation's DynamicCache (K + V of every layer) at its {moment}"),
                ("logits/eval_forward", "logits", fwd,
                 "generation's next-token logits (fp32 copies), input and position ids"),
                ("logits/eval_predictions", "logits", kept, kept_note))
    kept_note = (f"{what} of the {n_prev} eval samples kept on the device before this batch" if moment != "concatenation"
                 else f"{what} of {n_prev} + {b} samples concatenated (old, new and result alive)")
    return (("activations/eval_inputs", "activations", inp, "eval batch on the device (input_ids + labels, int64)"),
            ("activations/eval_layer", "activations", lay, "one decoder layer's tensors under no_grad"),
            ("logits/eval_forward", "logits", fwd,
             "eval forward's head: hidden states + logits + fp32 upcast + log-softmax (nothing saved, no_grad)"),
            ("logits/eval_predictions", "logits", kept, kept_note))

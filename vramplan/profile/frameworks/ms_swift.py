"""ms-swift: ``SwiftSft`` (what ``swift sft`` runs) on the user's own arguments, parsed by swift's parser.

Replaced: ``--model`` (the random checkpoint), ``--dataset`` (a jsonl of one-turn chats whose encoding
by swift's own template is exactly ``seq`` tokens, the assistant turn carrying the labels), the output,
the step count, saving/evaluation/reporting off, ``--use_cpu``. swift computes logits only at label
positions (``prepare_logits_to_keep`` in ``swift/trainers/mixin.py``: the label mask shifted by one,
plus the last position), so the rows carry ``kept_positions(seq, label_fraction) - 1`` labels and the
profile's ``label_fraction`` is what the rows really kept.
"""

from __future__ import annotations

import json
from typing import Any

from vramplan.profile.frameworks import fit, share, words
from vramplan.profile.runner import ProfileRunError


def argv(data: dict[str, Any], changes: list[tuple[str, Any]], fixed: dict[str, Any]) -> list[str]:
    """The swift command line: the user's arguments (older spellings under the names swift 4 reads, as
    vramplan's table reads them), then the shape/command-line changes, then ours."""
    from vramplan.frameworks.ms_swift import KEYS

    names = {a: k.name for k in KEYS for a in k.aliases}
    merged = {names.get(k.replace("-", "_"), k.replace("-", "_")): v for k, v in data.items()}
    merged.update(dict(changes))
    merged.update(fixed)
    out: list[str] = []
    for k, v in merged.items():
        if v is None:
            continue
        out.append(f"--{k}")
        if isinstance(v, (list, tuple)):
            out += [str(x) for x in v]
        elif isinstance(v, bool):
            out.append("true" if v else "false")
        elif isinstance(v, dict):
            out.append(json.dumps(v))
        else:
            out += [str(x) for x in str(v).split()] if k == "target_modules" else [str(v)]
    return out


def model_type(arch: Any, model_id: str) -> tuple[str, str]:
    """swift's ``model_type`` and template for the run: swift's own match of the config's model id when
    that id is this architecture (its registered model type and template); else, for another
    architecture (``--model``), the one candidate for the checkpoint's architecture class or the one
    named as config.json's ``model_type`` (a random checkpoint's path matches several, e.g. llama and
    yi), with the ChatML template (the data's wrapping, not its memory)."""
    from swift.model.model_meta import MODEL_MAPPING, get_matched_model_meta, get_matched_model_types
    from swift.template import TEMPLATE_MAPPING

    from vramplan.hf.build import hf_config

    meta = get_matched_model_meta(model_id) if model_id else None
    if meta is not None and arch.name in (model_id, model_id.split("/")[-1]):
        tpl = meta.template if meta.template in TEMPLATE_MAPPING else "chatml"
        return str(meta.model_type), str(tpl)
    candidates = get_matched_model_types(list(hf_config(arch).architectures or []))
    if len(candidates) == 1:
        return str(candidates[0]), "chatml"
    if arch.model_type in candidates or arch.model_type in MODEL_MAPPING:
        return str(arch.model_type), "chatml"
    raise ProfileRunError(f"ms-swift has no model_type for {arch.name} ({arch.model_type}; candidates: "
                          f"{', '.join(candidates) or 'none'}): give --model_type in the swift command")


def run(job: Any) -> None:
    import dataclasses

    from swift.pipelines.train.sft import SwiftSft

    from vramplan.scenario import kept_positions

    sc = job.scenario
    data = job.work / "train.jsonl"
    data.write_text("")
    fixed = dict(model=str(job.ckpt), dataset=[str(data)], val_dataset=None, split_dataset_ratio=0,
                 output_dir=str(job.work / "out"), max_steps=job.steps, save_strategy="no", eval_strategy="no",
                 report_to=["none"], logging_steps=10 ** 6, use_cpu=True, dataloader_num_workers=0,
                 dataset_num_proc=1, num_train_epochs=1, lazy_tokenize=False, streaming=False,
                 gradient_accumulation_steps=1, push_to_hub=False, hub_model_id=None)
    labelled = kept_positions(sc.seq, sc.label_fraction) - 1

    class Measured(SwiftSft):
        def train(self, trainer: Any) -> Any:
            return job.train(trainer)

    user = job.resolved.source.data
    if not user.get("model_type"):
        fixed["model_type"], tpl = model_type(job.arch, str(user.get("model") or ""))
        if not user.get("template"):
            fixed["template"] = tpl
    sft = Measured(argv(user, job.changes(), fixed))

    def rows(n_u: int, n_a: int, k: int) -> dict[str, Any]:
        return {"messages": [{"role": "user", "content": words(n_u, k)},
                             {"role": "assistant", "content": words(n_a, k + 7)}]}

    def encode(n_u: int, n_a: int) -> tuple[int, int]:
        enc = sft.template.encode(rows(n_u, n_a, 0))
        return len(enc["input_ids"]), sum(1 for x in enc["labels"] if x != -100)

    n_u, n_a = fit(encode, sc.seq, labelled)
    n_rows = sc.batch * job.steps
    data.write_text("".join(json.dumps(rows(n_u, n_a, i)) + "\n" for i in range(n_rows)))
    kept = encode(n_u, n_a)[1] + 1
    if sc.label_fraction < 1.0 or kept != sc.seq:
        job.scenario = dataclasses.replace(sc, label_fraction=share(kept, sc.seq))
        job.notes.append(f"ms-swift kept logits at {kept} of {sc.seq} positions (the synthetic rows' labels); "
                         f"predicted at that share")
    sft.main()

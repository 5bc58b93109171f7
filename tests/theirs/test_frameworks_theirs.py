"""Issue 13, ours vs theirs: each installable framework's own setup code against vramplan's table.

A tiny model (from a config written here, random weights, no hub) is prepared by the framework's own
code on CPU: TRL's ``SFTTrainer`` (its casting, peft wrapping, fused head and checkpointing, through
one real training step) and the HF ``Trainer`` over peft's ``prepare_model_for_kbit_training`` and
``get_peft_model`` (torchtune, which needs torchao <= 0.10 that peft refuses, is checked in
tests/frameworks/ through .ci/frameworks). vramplan reads the same
run from that framework's config and builds its model (``vramplan.hf.build``); the dtype of every
parameter group, which modules are 4-bit, which carry LoRA, the adapter dtype and the checkpointing
kind must agree. A framework that cannot be installed next to torch 2.13 here is skipped with the
reason (README: install extras).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
from frameworkhelp import groups, ours

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")
pytest.importorskip("bitsandbytes")

pytestmark = pytest.mark.torch

TINY = dict(model_type="qwen3", architectures=["Qwen3ForCausalLM"], hidden_size=64, intermediate_size=128,
            num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16, vocab_size=512,
            max_position_embeddings=256, tie_word_embeddings=False, rms_norm_eps=1e-6, rope_theta=10000.0,
            torch_dtype="bfloat16", hidden_act="silu")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """A saved tiny Qwen3 checkpoint (random bf16 weights) and its config.json."""
    from transformers import AutoConfig, AutoModelForCausalLM

    d = tmp_path_factory.mktemp("tiny-qwen3")
    cfg = AutoConfig.for_model(**{k: v for k, v in TINY.items() if k not in ("architectures", "torch_dtype")})
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16).save_pretrained(d)
    cfg_json = json.loads((d / "config.json").read_text())
    cfg_json.setdefault("torch_dtype", "bfloat16")
    (d / "config.json").write_text(json.dumps(cfg_json))
    return d


def _bnb(compute=None):
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=compute or torch.bfloat16, bnb_4bit_quant_storage=torch.uint8,
                              llm_int8_threshold=6.0, llm_int8_skip_modules=None,
                              llm_int8_enable_fp32_cpu_offload=False, llm_int8_has_fp16_weight=False)


def _gc_reentrant(model) -> bool | None:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    fn = getattr(base.model.layers[0], "_gradient_checkpointing_func", None)
    kw = getattr(fn, "keywords", None) or {}
    return kw.get("use_reentrant")


TRL_YAML = """model_name_or_path: MODEL
dtype: bfloat16
load_in_4bit: true
use_bnb_nested_quant: true
use_peft: true
lora_r: 8
lora_target_modules: all-linear
max_length: 64
per_device_train_batch_size: 1
"""


def test_trl_sft_trainer_agrees_with_the_trl_table(tmp_path, tiny_dir):
    """TRL (installed version) builds, casts, wraps and checkpoints the model as vramplan's TRL era says."""
    trl = pytest.importorskip("trl")
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    from vramplan.profile.frameworks.common import word_tokenizer

    sc, built = ours(tiny_dir, TRL_YAML, ".yaml", tmp_path)
    model = AutoModelForCausalLM.from_pretrained(tiny_dir, quantization_config=_bnb(), dtype=torch.bfloat16)
    args = SFTConfig(output_dir=str(tmp_path / "out"), max_length=64, per_device_train_batch_size=1, max_steps=1,
                     report_to=[], bf16=True, use_cpu=True, save_strategy="no", logging_strategy="no")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tr = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_dict({"text": ["a b c d " * 8] * 4}),
                        processing_class=word_tokenizer(),
                        peft_config=LoraConfig(r=8, target_modules="all-linear", lora_dropout=0.05,
                                               task_type="CAUSAL_LM"))
        tr.train()  # checkpointing is enabled inside train()
    theirs = tr.model
    assert groups(theirs) == groups(built), trl.__version__
    assert {"bf16": "bfloat16", "fp32": "float32"}[sc.adapter_dtype.value] == groups(theirs)["lora"][0]
    assert _gc_reentrant(theirs) is sc.reentrant is False
    fused = "fused_lm_head" in theirs.get_base_model().forward.__func__.__code__.co_varnames
    assert fused == (sc.loss.value == "chunked-head")


def test_hf_trainer_over_peft_agrees_with_the_hf_table(tmp_path, tiny_dir):
    """A plain script: peft's k-bit preparation, get_peft_model, then the HF Trainer's own
    checkpointing at train(); vramplan's hf reading (TrainingArguments + adapter_config, --quant nf4)."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

    from vramplan import frameworks as F
    from vramplan.arch import resolve
    from vramplan.hf import build as B
    from vramplan.scenario import Scenario

    targs = dict(output_dir=str(tmp_path / "o"), per_device_train_batch_size=1, gradient_checkpointing=True,
                 bf16=True, optim="adamw_torch", max_steps=1, report_to=[], use_cpu=True, save_strategy="no")
    adapter = dict(base_model_name_or_path=str(tiny_dir), peft_type="LORA", r=8, lora_dropout=0.0,
                   target_modules="all-linear", task_type="CAUSAL_LM")
    (tmp_path / "training_args.json").write_text(json.dumps(targs))
    (tmp_path / "adapter_config.json").write_text(json.dumps(adapter))
    arch = resolve(str(tiny_dir / "config.json"))
    res = F.resolve(F.load([str(tmp_path / "training_args.json"), str(tmp_path / "adapter_config.json")]), arch)
    sc = Scenario(**dict(res.fields, quant="nf4", seq=32))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        built = B.build_model(arch, sc)
        model = AutoModelForCausalLM.from_pretrained(tiny_dir, quantization_config=_bnb(), dtype=torch.bfloat16)
        model = prepare_model_for_kbit_training(model)
        model = get_peft_model(model, LoraConfig(r=8, target_modules="all-linear", lora_dropout=0.0,
                                                 task_type="CAUSAL_LM"))
        ids = torch.randint(0, 512, (1, 32))

        class One(torch.utils.data.Dataset):
            def __len__(self):
                return 1

            def __getitem__(self, i):
                return {"input_ids": ids[0], "labels": ids[0]}

        Trainer(model=model, args=TrainingArguments(**targs), train_dataset=One()).train()
    assert groups(model) == groups(built)
    assert groups(model)["norms"] == ["float32"] and sc.recipe.value == "hf-peft"
    assert _gc_reentrant(model) is sc.reentrant is False  # the Trainer's call replaces peft's reentrant GC


def test_peft_default_targets_match_peft():
    """vramplan's copy of peft's per-model default targets (frameworks.base.PEFT_DEFAULT_TARGETS)."""
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as M

    from vramplan.frameworks.base import PEFT_DEFAULT_TARGETS

    for mt, names in PEFT_DEFAULT_TARGETS.items():
        assert tuple(M[mt]) == names, mt


"""Issue 13, ours vs theirs for the frameworks that pin their own stack: ms-swift, axolotl, LLaMA-Factory,
and torchtune's builders (torchtune 0.6 imports torchao <= 0.10, which peft 0.21 refuses beside it).

They do not install next to vramplan's test stack (their pins would replace transformers / peft / trl),
so `.ci/frameworks` installs each with ``--no-deps`` into a second venv (torch 2.13.0, transformers
5.24.0, peft 0.21.2, bitsandbytes 0.50.2, trl 1.16.0) and runs this file there; in the main venv these
tests skip with that reason. Each test prepares a tiny random Qwen3 (a config and tokenizer written here,
no hub) with the framework's own loading and preparation code for a QLoRA run on CPU, runs one
forward/backward counting which torch checkpoint implementation executes, and holds vramplan's reading
of the same run (its config, through ``vramplan.frameworks``) and vramplan's own build of that scenario
(``vramplan.hf.build``) to it: the dtype of every parameter group, which modules are 4-bit, which carry
LoRA, the adapter dtype, the dropout and the checkpointing kind.
"""

from __future__ import annotations

import collections
import json
import os
import sys
import types
from pathlib import Path

import pytest
from frameworkhelp import groups, ours

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")
pytest.importorskip("bitsandbytes")

pytestmark = pytest.mark.torch
REASON = "installed only in the framework venv of .ci/frameworks (its pins would replace vramplan's test stack)"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MODELSCOPE_OFFLINE", "1")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """A saved tiny Qwen3 (random bf16 weights) with the word-level chat tokenizer the profile runners
    save beside their checkpoints (``vramplan.profile.frameworks.chat_tokenizer``)."""
    from transformers import AutoModelForCausalLM, Qwen3Config

    from vramplan.profile.frameworks import chat_tokenizer

    out = tmp_path_factory.mktemp("tiny_qwen3")
    tok = chat_tokenizer(512)
    tok.save_pretrained(out)
    cfg = Qwen3Config(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      head_dim=16, intermediate_size=128, vocab_size=512, max_position_embeddings=256,
                      tie_word_embeddings=False, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16).save_pretrained(out)
    c = json.loads((out / "config.json").read_text())
    c.setdefault("torch_dtype", "bfloat16")
    (out / "config.json").write_text(json.dumps(c))
    return out


def checkpoint_kinds(model) -> dict[str, int]:
    """One forward/backward; which torch checkpoint implementation ran (reentrant or not)."""
    import torch.utils.checkpoint as cp

    counts: collections.Counter = collections.Counter()
    cf, gen = cp.CheckpointFunction, cp._checkpoint_without_reentrant_generator

    class Counting(cf):  # type: ignore[misc, valid-type]
        @staticmethod
        def forward(ctx, *a, **k):
            counts["reentrant"] += 1
            return cf.forward(ctx, *a, **k)

    def counting_gen(*a, **k):
        counts["non-reentrant"] += 1
        return gen(*a, **k)

    cp.CheckpointFunction, cp._checkpoint_without_reentrant_generator = Counting, counting_gen
    try:
        model.train()
        x = torch.randint(6, 400, (1, 16))
        model(input_ids=x, labels=x).loss.backward()
    finally:
        cp.CheckpointFunction, cp._checkpoint_without_reentrant_generator = cf, gen
    return dict(counts)


def _expect(sc, theirs_model, ours_model, ran: dict[str, int]) -> None:
    assert groups(theirs_model) == groups(ours_model)
    assert groups(theirs_model)["lora"] == [{"fp32": "float32", "bf16": "bfloat16"}[sc.adapter_dtype.value]]
    assert ran == ({"reentrant": 2} if sc.reentrant else {"non-reentrant": 2}), ran


def test_ms_swift(tiny, tmp_path):
    pytest.importorskip("swift", reason=REASON)
    from swift.arguments import SftArguments
    from swift.pipelines.train.sft import SwiftSft
    from swift.trainers import TrainerFactory

    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"w{i} w{i + 1} a b"},
                                                     {"role": "assistant", "content": f"w{i + 2} c"}]}) + "\n"
                            for i in range(8)))
    args = SftArguments(model=str(tiny), model_type="qwen3", template="qwen3", tuner_type="lora", quant_method="bnb",
                        quant_bits=4, torch_dtype="bfloat16", dataset=[str(data)], split_dataset_ratio=0,
                        output_dir=str(tmp_path / "out"), max_steps=1, per_device_train_batch_size=1,
                        report_to=["none"], dataloader_num_workers=0, dataset_num_proc=1, save_strategy="no",
                        max_length=64, use_cpu=True)
    sft = SwiftSft(args)
    train, val = sft._prepare_dataset()
    model = sft.prepare_model(args, sft.model, template=sft.template, train_dataset=train)
    trainer = TrainerFactory.get_trainer_cls(args)(model=model, args=args.training_args, template=sft.template,
                                                   train_dataset=train, eval_dataset=val, **sft._get_trainer_kwargs())
    trainer._prepare_gradient_checkpointing(sft.template.get_base_model(trainer.accelerator.unwrap_model(
        trainer.model)))  # what trainer.train() does first
    sc, built = ours(tiny, "swift sft --model MODEL --tuner_type lora --quant_method bnb --quant_bits 4 "
                           "--torch_dtype bfloat16 --max_length 64\n", ".sh", tmp_path)
    assert (args.lora_rank, args.lora_dropout) == (sc.rank, sc.lora_dropout) == (8, 0.05)
    _expect(sc, trainer.model, built, checkpoint_kinds(trainer.model))


def test_axolotl(tiny, tmp_path):
    pytest.importorskip("axolotl", reason=REASON)
    from axolotl.loaders import ModelLoader, load_tokenizer
    from axolotl.utils.config import normalize_config, validate_config
    from axolotl.utils.dict import DictDefault

    data = tmp_path / "train.json"
    data.write_text(json.dumps([{"instruction": "w1 w2", "input": "", "output": "w3"}] * 4))
    yml = ("base_model: MODEL\nload_in_4bit: true\nadapter: qlora\nlora_r: 8\nlora_alpha: 16\nlora_target_linear: true\n"
           "bf16: true\ngradient_checkpointing: true\nsequence_len: 64\nmicro_batch_size: 1\n")
    cfg = validate_config(DictDefault(dict(
        base_model=str(tiny), load_in_4bit=True, adapter="qlora", lora_r=8, lora_alpha=16, lora_target_linear=True,
        bf16=True, gradient_checkpointing=True, sequence_len=64, micro_batch_size=1, gradient_accumulation_steps=1,
        num_epochs=1, learning_rate=1e-4, optimizer="adamw_torch", output_dir=str(tmp_path / "out"),
        datasets=[{"path": str(data), "type": "alpaca"}], device_map="cpu")))
    normalize_config(cfg)
    model, _ = ModelLoader(cfg, load_tokenizer(cfg)).load()
    sc, built = ours(tiny, yml, ".yml", tmp_path)
    assert (cfg.lora_dropout or 0.0) == sc.lora_dropout == 0.0
    _expect(sc, model, built, checkpoint_kinds(model))


def test_llamafactory(tiny, tmp_path):
    """LLaMA-Factory 0.9.5 supports transformers <= 5.6; with 5.24 its checkpoint wrapper expects a bound
    method and gets transformers' ``partial(forward, self)``. The test rebinds that one argument (the
    framework's own wrapper still decides the checkpoint kind) to see what it runs."""
    import importlib.util

    if importlib.util.find_spec("llamafactory") is None:
        pytest.skip(REASON)
    os.environ["DISABLE_VERSION_CHECK"] = "1"
    try:
        import trl

        if not hasattr(trl, "AutoModelForCausalLMWithValueHead"):  # trl >= 1 dropped it; LF imports it for PPO
            trl.AutoModelForCausalLMWithValueHead = type("AutoModelForCausalLMWithValueHead", (), {})
        if "torchaudio" not in sys.modules:  # no torchaudio wheel for torch 2.13; LF imports it for audio data
            if importlib.util.find_spec("torchaudio") is None:
                sys.modules["torchaudio"] = types.ModuleType("torchaudio")
        from llamafactory.hparams import get_train_args
        from llamafactory.model import load_model, load_tokenizer
    except ImportError:
        pytest.skip(REASON)
    import functools

    d = tmp_path / "data"
    d.mkdir()
    (d / "train.json").write_text(json.dumps([{"instruction": "w1 w2", "input": "", "output": "w3"}] * 4))
    (d / "dataset_info.json").write_text(json.dumps({"tiny": {"file_name": "train.json"}}))
    argd = dict(model_name_or_path=str(tiny), stage="sft", do_train=True, finetuning_type="lora", quantization_bit=4,
                template="qwen3", dataset="tiny", dataset_dir=str(d), cutoff_len=64, output_dir=str(tmp_path / "o"),
                overwrite_output_dir=True, per_device_train_batch_size=1, max_steps=1, bf16=True, use_cpu=True,
                report_to="none", save_strategy="no", dataloader_num_workers=0)
    model_args, _, _, finetuning_args, _ = get_train_args(argd)
    model = load_model(load_tokenizer(model_args)["tokenizer"], model_args, finetuning_args, is_trainable=True)

    def rebind(lf):
        def f(func, *a, **k):
            if isinstance(func, functools.partial) and not hasattr(func.func, "__self__") and func.args:
                func = functools.partial(types.MethodType(func.func, func.args[0]), *func.args[1:], **func.keywords)
            return lf(func, *a, **k)
        return f

    for m in model.modules():
        if hasattr(m, "_gradient_checkpointing_func"):
            m._gradient_checkpointing_func = rebind(m._gradient_checkpointing_func)
    yml = ("model_name_or_path: MODEL\nstage: sft\nfinetuning_type: lora\nquantization_bit: 4\ncutoff_len: 64\n"
           "per_device_train_batch_size: 1\nbf16: true\n")
    sc, built = ours(tiny, yml, ".yaml", tmp_path)
    assert finetuning_args.lora_dropout == sc.lora_dropout == 0.0 and finetuning_args.lora_rank == sc.rank
    _expect(sc, model, built, checkpoint_kinds(model))


TT_YAML = """model:
  _component_: torchtune.models.llama3_1.qlora_llama3_1_8b
  lora_attn_modules: ['q_proj', 'v_proj', 'output_proj']
  apply_lora_to_mlp: True
  lora_rank: 8
tokenizer:
  max_seq_len: 64
batch_size: 1
dtype: bf16
enable_activation_checkpointing: True
"""


def test_torchtune_builder_agrees_with_the_torchtune_table():
    """torchtune's own QLoRA component builder (tiny dims) and activation checkpointing: NF4 projections,
    bf16 LoRA, bf16 norms and embeddings, an unquantized bf16 output projection, non-reentrant wrappers;
    vramplan's reading of the config says the same."""
    pytest.importorskip("torchao", reason=REASON)
    pytest.importorskip("torchtune", reason=REASON)
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointImpl, CheckpointWrapper
    from torchao.dtypes.nf4tensor import NF4Tensor
    from torchtune.models.llama3_1._component_builders import lora_llama3_1
    from torchtune.modules import TransformerSelfAttentionLayer
    from torchtune.training import set_activation_checkpointing, set_default_dtype

    from vramplan import frameworks as F
    from vramplan.arch import resolve
    from vramplan.frameworks.base import Reader

    fw = F.framework("torchtune")
    import yaml

    data = yaml.safe_load(TT_YAML)
    era = fw.era("0.6.1")
    fields = dict(era.fixed)
    fields.update(fw.scenario(Reader(fw, era, data), era, resolve("Llama-3.1-8B"), []))
    with set_default_dtype(torch.bfloat16):
        model = lora_llama3_1(lora_attn_modules=["q_proj", "v_proj", "output_proj"], apply_lora_to_mlp=True,
                              vocab_size=512, num_layers=2, num_heads=4, num_kv_heads=4, embed_dim=128,
                              max_seq_len=64, intermediate_dim=256, lora_rank=8, lora_alpha=16,
                              quantize_base=True)
    set_activation_checkpointing(model, auto_wrap_policy={TransformerSelfAttentionLayer})  # the recipe's call
    lora = {p.dtype for n, p in model.named_parameters() if "lora_" in n}
    norms = {p.dtype for n, p in model.named_parameters() if "norm" in n}
    assert lora == {torch.bfloat16} and fields["adapter_dtype"] == "bf16"
    assert norms == {torch.bfloat16} and fields["recipe"] == "plain" and fields["autocast"] is False
    assert model.tok_embeddings.weight.dtype == torch.bfloat16
    assert not isinstance(model.output.weight, NF4Tensor) and model.output.weight.dtype == torch.bfloat16
    layer = model.layers[0]
    inner = layer._checkpoint_wrapped_module
    assert isinstance(inner.attn.q_proj.weight, NF4Tensor) and isinstance(inner.mlp.w1.weight, NF4Tensor)
    assert fields["quant"] == "nf4"
    assert isinstance(layer, CheckpointWrapper) and layer.checkpoint_impl is CheckpointImpl.NO_REENTRANT
    assert fields["reentrant"] is False and fields["grad_checkpointing"] is True
    assert set(fields["targets"]) == {"q_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}

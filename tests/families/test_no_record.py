"""A model_type with no family record: the trace prices it with transformers' own modeling code, the
analytic engine refuses it in one line naming the trace, and a remote-code config is refused by both."""

from __future__ import annotations

import json

import pytest

from clihelp import one_line_exit2
from vramplan.analytic import estimate
from vramplan.arch import Arch
from vramplan.arch.spec import ArchError
from vramplan.scenario import Scenario

#: Starcoder2 (transformers 5.24 ``models/starcoder2``): a type no record covers, shrunk.
STARCODER2 = {"model_type": "starcoder2", "hidden_size": 256, "intermediate_size": 1024, "num_attention_heads": 4,
              "num_key_value_heads": 2, "num_hidden_layers": 2, "vocab_size": 1024, "max_position_embeddings": 4096,
              "use_bias": True, "norm_epsilon": 1e-5}
#: A remote-code config (ChatGLM's shape: its modeling code ships with the checkpoint, ``auto_map``).
REMOTE = {"model_type": "chatglm", "auto_map": {"AutoModel": "modeling_chatglm.ChatGLMForConditionalGeneration"},
          "hidden_size": 4096, "num_layers": 40, "num_attention_heads": 32, "padded_vocab_size": 151552}


def test_analytic_names_the_trace():
    arch = Arch.from_config(STARCODER2, name="sc2")
    assert not arch.family.record
    with pytest.raises(ArchError, match=r"model_type 'starcoder2' is not priced by the analytic engine.*--method trace"):
        estimate(arch, Scenario())


def test_remote_code_is_refused_naming_it():
    with pytest.raises(ArchError, match=r"'chatglm' is a remote-code model.*trust_remote_code"):
        Arch.from_config(REMOTE)


def test_cli_one_line_exit_2(tmp_path, cli_run):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(REMOTE))
    assert "remote-code" in one_line_exit2(cli_run, "estimate", "-m", str(path))
    path.write_text(json.dumps(STARCODER2))
    assert "--method trace" in one_line_exit2(cli_run, "plan", "-m", str(path), "--gpu", "rtx4090")


@pytest.mark.torch
def test_trace_prices_a_type_with_no_record():
    """The trace runs transformers' Starcoder2 (biased linears, LayerNorm, a plain GELU MLP) and its weights
    are what that model holds: every parameter, the nn.Linear weights 4-bit, the rest bf16."""
    pytest.importorskip("transformers")
    pytest.importorskip("bitsandbytes")
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from vramplan.trace import trace

    arch = Arch.from_config(STARCODER2, name="sc2")
    bd = trace(arch, Scenario(seq=256), extrapolate=False)
    assert any("no family record" in n for n in bd.notes)
    cfg = {k: v for k, v in STARCODER2.items() if k != "model_type"}
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model("starcoder2", **cfg))
    linear = sum(m.weight.numel() for n, m in model.named_modules()
                 if isinstance(m, torch.nn.Linear) and not n.endswith("lm_head"))
    other = sum(p.numel() for p in model.parameters()) - linear
    c = {x.name: x.bytes for x in bd.components}
    assert c["weights/4bit"] == pytest.approx(linear // 2, abs=512 * 14)  # 7 linears × 2 layers, 512 B blocks
    assert c["weights/float"] >= 2 * other
    assert bd.allocated_peak_bytes > 0

"""Issue 14 feature 3: each framework's packing and padding-free keys read into ``Scenario.packing``
(and the attention and shape they run), as the framework's own code decides (research §1-§4, §6, §7;
sources cited in each reader)."""

from __future__ import annotations

from pathlib import Path

import pytest
from vramplan import frameworks as F
from vramplan.arch import resolve
from vramplan.frameworks.base import ConfigError
from vramplan.scenario import Scenario

DATA = Path(__file__).resolve().parents[1] / "data" / "frameworks"
QWEN = resolve("Qwen3-14B")


def _resolve(tmp_path: Path, name: str, text: str, fixture: str | None = None):
    cfg = tmp_path / name
    base = (DATA / fixture).read_text() if fixture else ""
    if name.endswith(".sh"):
        base = base.rstrip().replace("--output_dir output", text + " \\\n    --output_dir output")
        cfg.write_text(base + "\n")
    else:
        cfg.write_text(base + text)
    res = F.resolve(F.load([str(cfg)]), QWEN)
    Scenario(**res.fields)  # every resolution is a valid scenario
    return res


def _no_issue_14(res) -> None:
    assert not any("packing" in n and "issue 14" in n for n in res.notes), res.notes


def test_unpacked_by_default_everywhere():
    for fixture in ("swift_qlora.sh", "axolotl_qlora.yml", "llamafactory_qlora.yaml", "trl_qlora.yaml",
                    "unsloth.yaml", "torchtune_qlora.yaml"):
        res = F.resolve(F.load([str(DATA / fixture)]), QWEN)
        assert res.fields.get("packing", "none") == "none", fixture


# ------------------------------------------------------------------------------------ ms-swift
def test_swift_packing_needs_flash_attention(tmp_path):
    with pytest.raises(ConfigError, match="flash attention"):
        _resolve(tmp_path, "s.sh", "    --packing true", "swift_qlora.sh")
    with pytest.raises(ConfigError, match="padding_free"):
        _resolve(tmp_path, "s.sh", "    --padding_free true", "swift_qlora.sh")


def test_swift_packing_rows_of_packing_length(tmp_path):
    res = _resolve(tmp_path, "s.sh", "    --attn_impl flash_attn \\\n    --packing true \\\n    --packing_length 4096",
                   "swift_qlora.sh")
    assert (res.fields["packing"], res.fields["attn"], res.fields["seq"]) == ("packed", "flash2", 4096)
    _no_issue_14(res)
    free = _resolve(tmp_path, "s.sh", "    --attn_impl flash_attn \\\n    --padding_free true", "swift_qlora.sh")
    assert (free.fields["packing"], free.fields["seq"]) == ("padding-free", 2048)


# ------------------------------------------------------------------------------------------ TRL
def test_trl_bfd_packing_with_flash2_is_packed(tmp_path):
    res = _resolve(tmp_path, "t.yaml", "packing: true\nattn_implementation: flash_attention_2\n"
                   "per_device_train_batch_size: 4\n", "trl_qlora.yaml")
    assert (res.fields["packing"], res.fields["seq"], res.fields["batch"]) == ("packed", 2048, 4)
    _no_issue_14(res)


def test_trl_bfd_packing_with_sdpa_masks_the_whole_row(tmp_path):
    """TRL does not refuse it: the one padding-free row of 4 × 2048 tokens gets one 8192² mask."""
    res = _resolve(tmp_path, "t.yaml", "packing: true\nper_device_train_batch_size: 4\n", "trl_qlora.yaml")
    assert (res.fields["packing"], res.fields["attn"], res.fields["seq"], res.fields["batch"]) == \
        ("packed", "sdpa", 8192, 1)


def test_trl_padding_free_alone_is_refused_with_max_length(tmp_path):
    with pytest.raises(ConfigError, match="max_length"):
        _resolve(tmp_path, "t.yaml", "padding_free: true\nattn_implementation: flash_attention_2\n", "trl_qlora.yaml")


def test_trl_wrapped_packing_is_unpacked_rows(tmp_path):
    res = _resolve(tmp_path, "t.yaml", "packing: true\npacking_strategy: wrapped\n", "trl_qlora.yaml")
    assert res.fields.get("packing", "none") == "none"
    assert any("wrapped" in n for n in res.notes)


# -------------------------------------------------------------------------------------- axolotl
@pytest.mark.parametrize("extra,attn", [("", "flash2"), ("sdpa_varlen: false\n", "sdpa"),
                                        ("flash_attention: true\n", "flash2"), ("eager_attention: true\n", "eager")])
def test_axolotl_sample_packing(tmp_path, extra, attn):
    """sdpa + sample_packing: axolotl's auto sdpa_varlen (no mask) unless turned off, then the 4D mask."""
    res = _resolve(tmp_path, "a.yml", "sample_packing: true\n" + extra, "axolotl_qlora.yml")
    assert (res.fields["packing"], res.fields["attn"]) == ("packed", attn)
    _no_issue_14(res)


def test_axolotl_sliding_window_keeps_the_mask(tmp_path):
    cfg = tmp_path / "a.yml"
    cfg.write_text((DATA / "axolotl_qlora.yml").read_text() + "sample_packing: true\n")
    res = F.resolve(F.load([str(cfg)]), resolve("gemma-3-1b-pt"))
    assert res.fields["packing"] == "packed" and res.fields["attn"] == "sdpa"


# -------------------------------------------------------------------------------- LLaMA-Factory
def test_llamafactory_neat_packing(tmp_path):
    res = _resolve(tmp_path, "l.yaml", "neat_packing: true\n", "llamafactory_qlora.yaml")
    assert (res.fields["packing"], res.fields["attn"]) == ("packed-mask", "sdpa")
    _no_issue_14(res)
    eager = _resolve(tmp_path, "l.yaml", "neat_packing: true\nflash_attn: disabled\n", "llamafactory_qlora.yaml")
    assert eager.fields["packing"] == "packed-mask"
    fa2 = _resolve(tmp_path, "l.yaml", "neat_packing: true\nflash_attn: fa2\n", "llamafactory_qlora.yaml")
    assert (fa2.fields["packing"], fa2.fields["attn"]) == ("packed", "flash2")


def test_llamafactory_neat_packing_fa2_needs_batch_1(tmp_path):
    with pytest.raises(ConfigError, match="batch_size 1"):
        _resolve(tmp_path, "l.yaml", "neat_packing: true\nflash_attn: fa2\nper_device_train_batch_size: 2\n",
                 "llamafactory_qlora.yaml")


def test_llamafactory_plain_packing_is_full_unpacked_rows(tmp_path):
    res = _resolve(tmp_path, "l.yaml", "packing: true\n", "llamafactory_qlora.yaml")
    assert res.fields.get("packing", "none") == "none"
    assert any("attend across" in n for n in res.notes)
    _no_issue_14(res)


# ---------------------------------------------------------------------------- torchtune, Unsloth
def test_torchtune_packed_is_flex_attention(tmp_path):
    text = (DATA / "torchtune_qlora.yaml").read_text().replace("packed: False", "packed: True")
    res = _resolve(tmp_path, "tt.yaml", text)
    assert (res.fields["packing"], res.fields["attn"]) == ("packed", "flash2")
    _no_issue_14(res)


def test_unsloth_packing(tmp_path):
    text = (DATA / "unsloth.yaml").read_text().replace("packing: false", "packing: true")
    res = _resolve(tmp_path, "u.yaml", text)
    assert (res.fields["packing"], res.fields["attn"]) == ("packed", "flash2")
    auto = F.resolve(F.load([str(DATA / "unsloth.yaml")]), QWEN)
    assert any("padding-free" in n for n in auto.notes)

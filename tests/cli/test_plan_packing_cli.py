"""`vramplan plan --lengths` with a batch layout: the run is checked at the fullest micro-batch its
layout draws (``vramplan.lengths.longest_batch``), from flags or from a framework config."""

import json

LENGTHS = "length\n" + "\n".join(["300"] * 96 + ["900", "1200", "2000", "3000"]) + "\n"


def _plan(cli_run, tmp_path, *args):
    f = tmp_path / "lengths.csv"
    f.write_text(LENGTHS)
    code, out, err = cli_run("plan", "--model", "Qwen3-0.6B", "--gpu", "H100", "--lengths", str(f), "--json", *args)
    assert code in (0, 1), err
    return json.loads(out)


def test_unpacked_pads_to_the_longest(cli_run, tmp_path):
    d = _plan(cli_run, tmp_path, "-b", "4")
    assert (d["scenario"]["seq"], d["scenario"]["batch"]) == (3000, 4)


def test_packed_rows_are_full(cli_run, tmp_path):
    d = _plan(cli_run, tmp_path, "-b", "4", "--packing", "packed", "--seq", "4096")
    assert (d["scenario"]["seq"], d["scenario"]["batch"]) == (4096, 4)
    assert any("fullest micro-batch" in n for n in d["notes"])


def test_padding_free_holds_the_longest_examples(cli_run, tmp_path):
    # the 4 longest, 3000 + 2000 + 1200 + 900 = 7,100 tokens in one row: 4 × 1,775
    d = _plan(cli_run, tmp_path, "-b", "4", "--packing", "padding-free", "--attn", "flash2")
    assert (d["scenario"]["seq"], d["scenario"]["batch"], d["scenario"]["packing"]) == (1775, 4, "padding-free")


def test_axolotl_padding_to_sequence_len(cli_run, tmp_path):
    """axolotl ``pad_to_sequence_len: true`` pads every batch to sequence_len: the plan checks 2 × 2048
    whatever the lengths; unset, the batch of the longest example (3000). (With a config the JSON's
    ``scenario`` is the config's; the checked shape is ``lengths.longest``.)"""
    cfg = tmp_path / "ax.yml"
    base = ("base_model: Qwen/Qwen3-0.6B\nadapter: qlora\nload_in_4bit: true\nlora_r: 8\nlora_target_linear: true\n"
            "sequence_len: 2048\nmicro_batch_size: 2\n")
    cfg.write_text(base + "pad_to_sequence_len: true\n")
    d = _plan(cli_run, tmp_path, "--config", str(cfg))
    assert (d["lengths"]["longest"]["seq"], d["lengths"]["longest"]["batch"]) == (2048, 2)
    cfg.write_text(base)
    d = _plan(cli_run, tmp_path, "--config", str(cfg))
    assert (d["lengths"]["longest"]["seq"], d["lengths"]["longest"]["batch"]) == (3000, 2)
    cfg.write_text(base + "sample_packing: true\n")
    d = _plan(cli_run, tmp_path, "--config", str(cfg))
    assert d["lengths"]["longest"]["seq"] == 2048

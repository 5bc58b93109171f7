"""Token-length files: formats, percentiles, packing arithmetic, and clear errors."""

import json

import pytest

from vramplan.errors import VramplanError
from vramplan.lengths import LengthsError, from_values, load_lengths, packing


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_jsonl_forms(tmp_path):
    p = write(tmp_path, "a.jsonl", '3\n{"length": 5}\n{"num_tokens": 7.0}\n\n{"input_ids": [1, 2, 3, 4]}\n')
    assert load_lengths(p).values == (3, 5, 7, 4)


def test_jsonl_named_column(tmp_path):
    p = write(tmp_path, "a.jsonl", '{"a": 1, "n": 10}\n{"a": 2, "n": 20}\n')
    assert load_lengths(p, column="n").values == (10, 20)
    with pytest.raises(LengthsError, match="no column 'm'"):
        load_lengths(p, column="m")


def test_csv_with_header_and_headerless(tmp_path):
    assert load_lengths(write(tmp_path, "a.csv", "id,length\nx,12\ny,30\n")).values == (12, 30)
    assert load_lengths(write(tmp_path, "b.csv", "12\n30\n7\n")).values == (12, 30, 7)
    assert load_lengths(write(tmp_path, "c.tsv", "length\tid\n4\tq\n")).values == (4,)
    assert load_lengths(write(tmp_path, "d.txt", "5\n6\n")).values == (5, 6)
    assert load_lengths(write(tmp_path, "e.json", json.dumps([1, {"length": 2}]))).values == (1, 2)


def test_percentiles_nearest_rank():
    lens = from_values(range(1, 101))  # 1..100
    assert lens.percentile(99) == 99 and lens.percentile(100) == 100 and lens.percentile(50) == 50
    assert lens.percentile(0.5) == 1
    assert from_values([10, 1000]).percentile(99) == 1000  # two examples: p99 is the longer one
    assert lens.max == 100 and lens.total_tokens == 5050 and lens.fraction_above(90) == pytest.approx(0.10)
    with pytest.raises(LengthsError):
        lens.percentile(0)


def test_truncate():
    t = from_values([5, 50, 500]).truncate(100)
    assert t.values == (5, 50, 100) and t.truncated == 1 and t.truncated_to == 100


def test_packing_arithmetic():
    # 5 examples, seq 100, batch 2: tokens 10+90+100+100(cut from 150)+20 = 320
    lens = from_values([10, 90, 150, 100, 20])
    k = packing(lens, 100, 2)
    assert k.tokens == 320 and k.examples == 5
    assert k.padded_steps == 3                      # ceil(5 / 2)
    assert k.padded_waste == pytest.approx(1 - 320 / 500)
    # dynamic padding, file order: [10, 90] -> 2*90, [100, 100] -> 200, [20] -> 20  => 400 slots
    assert k.dynamic_waste == pytest.approx(1 - 320 / 400)
    assert k.packed_sequences == 4 and k.packed_steps == 2   # ceil(320/100), ceil(4/2)
    assert k.step_ratio == pytest.approx(2 / 3)


@pytest.mark.parametrize("name,text,match", [
    ("e.jsonl", "", "empty"),
    ("e.jsonl", "\n\n  \n", "empty"),
    ("n.jsonl", "5\n-3\n", "line 2: negative length -3"),
    ("n.csv", "length\n4\n-1\n", "line 3: negative length"),
    ("m.jsonl", "5\n{bad json\n", "line 2: not valid JSON"),
    ("m.jsonl", '5\n{"foo": 1}\n', "no length or text column"),
    ("f.jsonl", "5\n2.5\n", "not a whole number"),
    ("b.jsonl", "true\n", "expected a length"),
    ("t.jsonl", '{"text": "hello world"}\n', "pass --tokenizer"),
    ("h.csv", "a,b\n1,2\n", "no length or text column"),
    ("z.jsonl", "0\n0\n", "length 0"),
    ("o.json", '{"length": 3}', "JSON array"),
])
def test_bad_files(tmp_path, name, text, match):
    with pytest.raises(LengthsError, match=match) as e:
        load_lengths(write(tmp_path, name, text))
    assert isinstance(e.value, VramplanError) and "\n" not in str(e.value)


def test_missing_file(tmp_path):
    with pytest.raises(LengthsError, match="not found"):
        load_lengths(tmp_path / "nope.jsonl")


def test_hub_tokenizer_fails_clearly_offline(tmp_path, monkeypatch):
    pytest.importorskip("transformers")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    p = write(tmp_path, "t.jsonl", '{"text": "hello world"}\n')
    with pytest.raises(LengthsError, match="not a local directory and the hub is offline"):
        load_lengths(p, tokenizer="Qwen/Qwen3-8B")


@pytest.mark.slow
def test_local_tokenizer_dir_counts_tokens(tmp_path):
    pytest.importorskip("tokenizers")
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"[UNK]": 0, "hello": 1, "world": 2, "again": 3}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="[UNK]")
    fast.save_pretrained(tmp_path / "tok")
    p = write(tmp_path, "t.jsonl", '{"text": "hello world"}\n{"text": "hello world again again"}\n3\n')
    lens = load_lengths(p, tokenizer=str(tmp_path / "tok"))
    assert lens.values == (2, 4, 3)
    assert "via" in lens.source

"""Hostile, broken and edge inputs (issue 20): each cause has a test named after its number.

The corrupt files are generated here; every bad input must end in one ``error:`` line and exit 2
(``clihelp.one_line_exit2``), never a traceback, and nothing already stored may be lost.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from clihelp import one_line_exit2
from vramplan.arch import resolve
from vramplan.arch.spec import ArchError

TINY = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "vocab_size": 100}


def _config(tmp_path: Path, **over) -> Path:
    p = tmp_path / "config.json"
    p.write_text(json.dumps({**TINY, **over}), encoding="utf-8")
    return p


# 1. deeply nested JSON -------------------------------------------------------------------------
def test_01_deeply_nested_json_is_one_line(cli_run, tmp_path):
    p = tmp_path / "d.json"
    p.write_text("[" * 100_000 + "]" * 100_000)
    assert "nested too deeply" in one_line_exit2(cli_run, "estimate", "-m", str(p))
    c = tmp_path / "cal.json"
    c.write_text("[" * 100_000 + "]" * 100_000)
    assert "nested too deeply" in one_line_exit2(cli_run, "estimate", "-m", "vramplan-debug", "--calibration", str(c))


def test_01_deeply_nested_profile_is_skipped_and_named(tmp_path):
    from vramplan.profile.store import load_profiles

    (tmp_path / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    problems: list[str] = []
    assert load_profiles(tmp_path, problems=problems) == []
    assert len(problems) == 1 and "deep.json" in problems[0] and "nested too deeply" in problems[0]


# 2. invalid UTF-8 ----------------------------------------------------------------------------------
def test_02_invalid_utf8_config_and_calibration(cli_run, tmp_path):
    p = tmp_path / "b.json"
    p.write_bytes(b'{"x": "\xff"}')
    assert "not valid UTF-8" in one_line_exit2(cli_run, "estimate", "-m", str(p))
    assert "not valid UTF-8" in one_line_exit2(cli_run, "estimate", "-m", "vramplan-debug", "--calibration", str(p))


def test_02_invalid_utf8_hub_response(monkeypatch):
    import io

    import vramplan.arch.lookup as lookup

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(lookup.urllib.request, "urlopen", lambda *a, **k: io.BytesIO(b'{"model_type": "\xff"}'))
    with pytest.raises(ArchError, match="not valid UTF-8"):
        lookup.fetch_hub_config("someone/model")


# 3. unchecked config fields ----------------------------------------------------------------------
@pytest.mark.parametrize("field,value", [
    ("max_position_embeddings", float("inf")), ("max_position_embeddings", float("nan")),
    ("max_position_embeddings", [1]), ("model_type", ["llama"]), ("sliding_window", "4096"),
    ("mlp_only_layers", 3), ("sliding_window_pattern", "6"), ("partial_rotary_factor", "half"),
    ("rope_parameters", [1]), ("tie_word_embeddings", "yes"), ("hidden_size", 64.0), ("num_hidden_layers", True),
])
def test_03_bad_field_types_name_the_field(cli_run, tmp_path, field, value):
    base = dict(TINY, model_type="qwen3_moe", num_experts=4, num_experts_per_tok=2,
                moe_intermediate_size=32) if field == "mlp_only_layers" else dict(TINY)
    base["model_type"] = "gemma3_text" if field == "sliding_window_pattern" else base["model_type"]
    p = tmp_path / "config.json"
    p.write_text(json.dumps({**base, field: value}))  # json writes NaN/Infinity, as the hostile file had
    line = one_line_exit2(cli_run, "estimate", "-m", str(p))
    assert f"'{field}'" in line


# 4. absurd sizes -------------------------------------------------------------------------------------
@pytest.mark.parametrize("field", ["num_hidden_layers", "hidden_size", "vocab_size"])
def test_04_absurd_sizes_refused_up_front(cli_run, tmp_path, field):
    p = _config(tmp_path, **{field: 10**12})
    assert "beyond any real model" in one_line_exit2(cli_run, "estimate", "-m", str(p))


def test_04_absurd_moe_layers_refused(tmp_path):
    cfg = dict(TINY, model_type="qwen3_moe", num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
               num_hidden_layers=10**12)
    with pytest.raises(ArchError, match="num_hidden_layers"):
        resolve(str(_config(tmp_path, **cfg)))


# 5. a path the user cannot enter -------------------------------------------------------------------
def test_05_unreadable_path_is_one_line(cli_run, monkeypatch, tmp_path):
    """Tests run as root, where permissions do not bite: the OS error is injected where a
    non-root user gets it (``Path.exists`` on a path inside a directory without +x)."""
    real = Path.exists

    def exists(self, *a, **k):
        if self.name == "locked.json":
            raise PermissionError(13, "Permission denied")
        return real(self, *a, **k)

    monkeypatch.setattr(Path, "exists", exists)
    assert "Permission denied" in one_line_exit2(cli_run, "estimate", "-m", str(tmp_path / "locked.json"))


def test_05_unreadable_file_is_one_line(cli_run, tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root reads mode-000 files; the directory case above covers the error path")
    p = _config(tmp_path)
    p.chmod(0)
    assert "cannot read" in one_line_exit2(cli_run, "estimate", "-m", str(p))


# 6. a FIFO named config.json ---------------------------------------------------------------------
def test_06_fifo_is_refused_not_opened(cli_run, tmp_path):
    d = tmp_path / "model"
    d.mkdir()
    os.mkfifo(d / "config.json")
    assert "not a regular file" in one_line_exit2(cli_run, "estimate", "-m", str(d))
    assert "not a regular file" in one_line_exit2(cli_run, "estimate", "-m", str(d / "config.json"))


# 7. bad hub ids and endpoints ------------------------------------------------------------------
@pytest.mark.parametrize("model", ["foo/bar baz", "foo/bär", "foo/ba\tr", "-x/y"])
def test_07_bad_hub_ids_refused_before_any_request(cli_run, monkeypatch, model):
    import vramplan.arch.lookup as lookup

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(lookup.urllib.request, "urlopen", lambda *a, **k: pytest.fail("no request may be sent"))
    assert "not a valid hub id" in one_line_exit2(cli_run, "estimate", "-m", model)


@pytest.mark.parametrize("endpoint", ["notaurl", "ftp://x", "http://"])
def test_07_bad_endpoint_refused(cli_run, monkeypatch, endpoint):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    assert "HF_ENDPOINT" in one_line_exit2(cli_run, "estimate", "-m", "foo/bar")


@pytest.mark.parametrize("exc", ["refused", "disconnected", "badstatus", "value"])
def test_07_unreachable_or_broken_hub_is_one_line(cli_run, monkeypatch, exc):
    import http.client
    import urllib.error

    import vramplan.arch.lookup as lookup

    errors = {"refused": urllib.error.URLError(ConnectionRefusedError(111, "Connection refused")),
              "disconnected": http.client.RemoteDisconnected("closed"),
              "badstatus": http.client.BadStatusLine("x"), "value": ValueError("bad url")}

    def boom(*a, **k):
        raise errors[exc]

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(lookup.urllib.request, "urlopen", boom)
    assert "hub is unreachable" in one_line_exit2(cli_run, "estimate", "-m", "foo/bar")

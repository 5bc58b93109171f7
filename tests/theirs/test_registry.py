"""The offline registry: coverage, citations, look-ups, and ours-vs-theirs against transformers."""

import json
import re

import pytest

from vramplan.arch import ModelNotFound, find_entry, registry, resolve
from vramplan.arch.lookup import suggestions

REQUIRED = [
    "Llama-2-7b-hf", "Llama-2-13b-hf", "Llama-2-70b-hf", "Llama-3.1-8B", "Llama-3.1-70B",
    "Llama-3.2-1B", "Llama-3.2-3B", "Llama-3.3-70B-Instruct", "Mistral-7B-v0.1", "Mistral-7B-v0.3",
    "Mixtral-8x7B-v0.1", "Qwen2.5-0.5B", "Qwen2.5-1.5B", "Qwen2.5-3B", "Qwen2.5-7B", "Qwen2.5-14B",
    "Qwen2.5-32B", "Qwen2.5-72B", "Qwen3-0.6B", "Qwen3-1.7B", "Qwen3-4B", "Qwen3-8B", "Qwen3-14B",
    "Qwen3-32B", "Qwen3-30B-A3B", "gemma-2-2b", "gemma-2-9b", "gemma-2-27b", "gemma-3-1b-pt",
    "gemma-3-4b-pt", "gemma-3-12b-pt", "gemma-3-27b-pt", "Phi-3-mini-4k-instruct",
    "Phi-3.5-mini-instruct", "phi-4", "Yi-34B", "vramplan-debug",
]


def test_registry_size_and_coverage():
    names = {e.name for e in registry()}
    assert len(registry()) >= 40
    missing = [n for n in REQUIRED if n not in names]
    assert not missing


def test_every_entry_cites_its_config_and_builds():
    for e in registry():
        if e.name.startswith("vramplan-"):
            assert e.source.startswith("synthetic")
        else:
            assert re.fullmatch(rf"https://huggingface.co/{re.escape(e.hub_id)}/(blob|raw|resolve)/main/config.json",
                                e.source), e.source
        assert e.arch().total_params > 0


def test_names_unique_case_insensitive():
    keys = [e.name.lower() for e in registry()] + [e.hub_id.lower() for e in registry()]
    assert len(keys) == len(set(keys))


@pytest.mark.parametrize("name", ["Qwen3-14B", "qwen3-14b", "Qwen/Qwen3-14B", "QWEN/qwen3-14B"])
def test_lookup_forms(name):
    assert find_entry(name).name == "Qwen3-14B"


def test_unknown_name_suggests():
    with pytest.raises(ModelNotFound, match="Qwen3-14B"):
        resolve("Qwen3-14")
    assert "Llama-3.1-8B" in suggestions("llama-3.1-8")


def test_config_path_and_dir(tmp_path):
    cfg = dict(find_entry("Qwen3-0.6B").config)
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    assert resolve(str(tmp_path)).total_params == resolve("Qwen3-0.6B").total_params
    assert resolve(str(tmp_path / "config.json")).total_params == resolve("Qwen3-0.6B").total_params


def test_hub_id_offline_fails_clearly(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFound, match="offline"):
        resolve("someorg/some-model")


def test_hub_id_fetches_only_config(monkeypatch):
    """Online path, with urlopen replaced: only config.json is requested, and it is parsed as JSON."""
    import io
    import urllib.request

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    seen = []
    body = json.dumps(find_entry("Qwen3-0.6B").config).encode()

    class Resp(io.BytesIO):
        def __enter__(self):
            return self

        def __exit__(self, *a):
            return False

    def fake_urlopen(req, timeout=None):
        seen.append(req.full_url)
        return Resp(body)

    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
    a = resolve("someorg/tiny-qwen")
    assert a.total_params == resolve("Qwen3-0.6B").total_params
    assert seen == ["https://huggingface.co/someorg/tiny-qwen/resolve/main/config.json"]


def test_hub_unreachable(monkeypatch):
    import urllib.error
    import urllib.request

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)

    def refuse(req, timeout=None):
        raise urllib.error.URLError("no route")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    with pytest.raises(ModelNotFound, match="unreachable"):
        resolve("someorg/some-model")


def _hf_model_counts(cfg):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    cfg = dict(cfg)
    if "text_config" in cfg:  # the text model: its own model_type (Qwen3.5), gemma3_text where unnamed
        cfg = {"model_type": "gemma3_text", **cfg["text_config"]}
    model_type = cfg.pop("model_type")
    cfg.pop("architectures", None)
    config = transformers.AutoConfig.for_model(model_type, **cfg)
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(config)
    total = sum(p.numel() for p in model.parameters())
    linear = sum(m.weight.numel() for n, m in model.named_modules()
                 if isinstance(m, torch.nn.Linear) and not n.endswith("lm_head"))
    return total, linear


@pytest.mark.torch
@pytest.mark.parametrize("entry", registry(), ids=lambda e: e.name)
def test_ours_vs_transformers(entry):
    """Our count equals sum(numel) of the transformers model built on the meta device, and our
    quantizable count equals the nn.Linear weights bitsandbytes would replace."""
    total, linear = _hf_model_counts(entry.config)
    arch = entry.arch()
    assert arch.total_params == total
    assert arch.quantized_params == linear

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
    # issue 15: the sizes people fine-tune in 2026, one or more per new family
    "gpt-oss-20b", "gpt-oss-120b", "Qwen3-Next-80B-A3B-Instruct", "Qwen3.5-0.8B", "GLM-4.5-Air", "GLM-4.7-Flash",
    "GLM-5.1", "DeepSeek-V3", "Kimi-K2-Instruct", "MiniMax-M2.5", "gemma-3-4b-it", "gemma-3-12b-it", "gemma-3-27b-it",
    "gemma-4-31B-it", "gemma-4-E2B-it", "Qwen2.5-VL-7B-Instruct", "Qwen3-VL-8B-Instruct", "Qwen3-VL-30B-A3B-Instruct",
    "OLMo-2-1124-7B-Instruct", "granite-3.3-8b-instruct", "granite-3.1-3b-a800m-instruct",
    "Mistral-Small-3.1-24B-Instruct-2503", "Phi-4-mini-instruct", "NVIDIA-Nemotron-3-Nano-30B-A3B",
    "Seed-OSS-36B-Instruct", "c4ai-command-r7b-12-2024", "glm-4-9b-chat-hf",
]


def test_registry_size_and_coverage():
    names = {e.name for e in registry()}
    cited = [e for e in registry() if not e.source.startswith("synthetic")]
    assert len(cited) >= 100  # issue 15: at least 100 entries citing the config.json they came from
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


def _hf_model_counts(cfg, arch=None):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    if arch is not None and arch.vision is not None:  # the multimodal model: tower and decoder
        from vramplan.hf.build import hf_config

        with torch.device("meta"):
            model = transformers.AutoModelForImageTextToText.from_config(hf_config(arch))
        tower = tuple(f"{m}." for m in arch.vision.tower.modules)
        return (sum(p.numel() for p in model.parameters()),
                sum(m.weight.numel() for n, m in model.named_modules()
                    if isinstance(m, torch.nn.Linear) and not n.endswith("lm_head") and not n.startswith(tower)))
    cfg = dict(cfg)
    if "text_config" in cfg:
        from vramplan.arch.families import ALIASES
        text = cfg["text_config"]  # the decoder's own config (gemma3_text, gemma4_text)
        cfg = dict(text, model_type=text.get("model_type") or ALIASES.get(cfg["model_type"], "gemma3_text"))
    model_type = cfg.pop("model_type")
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    from vramplan.arch.families import ALIASES
    if model_type not in CONFIG_MAPPING:  # a remote-code type read as a family (Kimi-K2: deepseek_v3)
        model_type = ALIASES.get(model_type, model_type)
    cfg.pop("architectures", None)
    config = transformers.AutoConfig.for_model(model_type, **cfg)
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(config)
    total = sum(p.numel() for p in model.parameters())
    # from_pretrained leaves the modules a model keeps in fp32 out of the conversion (vramplan.hf.build.meta_model)
    keep = list(getattr(model, "_keep_in_fp32_modules", None) or [])
    linear = sum(m.weight.numel() for n, m in model.named_modules()
                 if type(m) is torch.nn.Linear and not n.endswith("lm_head")  # what bitsandbytes replaces
                 and not any(k in n for k in keep))
    return total, linear


@pytest.mark.torch
@pytest.mark.parametrize("entry", registry(), ids=lambda e: e.name)
def test_ours_vs_transformers(entry):
    """Our count equals sum(numel) of the transformers model built on the meta device, and our
    quantizable count equals the nn.Linear weights bitsandbytes would replace."""
    arch = entry.arch()
    total, linear = _hf_model_counts(entry.config, arch)
    assert arch.all_params == total
    assert arch.quantized_params == linear

"""Issue 13: both engines price every framework's default program, within 1 % of each other.

For each traceable framework (ms-swift, axolotl, LLaMA-Factory, TRL, HF + peft, torchtune) the scenario
is what vramplan reads from that framework's fixture config (tests/data/frameworks/), on three models
(real hidden sizes and vocabularies, two decoder layers, 1024 tokens): the trace runs the programs'
real code paths (peft's k-bit preparation + axolotl's cast-back, reentrant / non-reentrant
checkpointing, TRL's own fused LM head, torchtune's own chunked loss, logits at label positions) and
the analytic engine must land within 1 % of it, on the CUDA program and on the CPU one. axolotl's fused
LoRA kernels (on by default) run axolotl's own autograd functions, so where axolotl is not installed (the
main venv) its fixture is priced with them off (``lora_kernels none``), peft's layers; the framework venv of
``.ci/frameworks`` runs them.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")
pytest.importorskip("bitsandbytes")

pytestmark = [pytest.mark.torch, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data" / "frameworks"
from archhelp import grid_module  # noqa: E402

grid_mod = grid_module()

FIXTURES = {"ms-swift": ["swift_qlora.sh"], "axolotl": ["axolotl_qlora.yml"],
            "llamafactory": ["llamafactory_qlora.yaml"], "trl": ["trl_qlora.yaml"],
            "hf": ["training_args.json", "adapter_config.json"], "torchtune": ["torchtune_qlora.yaml"]}
NEEDS = {"trl": "trl", "torchtune": "torchtune"}
MODELS = ("Qwen3-14B", "Llama-3.1-8B", "Qwen2.5-7B")
TOL = 0.01


def _scenario(name: str, arch, **extra):
    from vramplan import frameworks as F
    from vramplan.scenario import Scenario

    loaded = F.load([str(DATA / f) for f in FIXTURES[name]])
    fields = dict(F.resolve(loaded, arch).fields, seq=1024)
    if name == "hf":
        fields["quant"] = "nf4"  # the QLoRA script (the files do not say)
    if fields.get("lora_kernels") == "axolotl" and importlib.util.find_spec("axolotl") is None:
        fields.pop("lora_kernels")
        fields.pop("kernel_groups", None)
    fields.update(extra)
    return Scenario(**fields)


ROWS = [(n, m, "cuda", {}) for n in FIXTURES for m in MODELS] + [(n, "Qwen3-14B", "cpu", {}) for n in FIXTURES] + [
    ("trl", "Qwen3-14B", "cuda", dict(label_fraction=0.5)),
    ("trl", "Llama-3.1-8B", "cuda", dict(batch=2)),
    ("ms-swift", "Qwen3-14B", "cuda", dict(label_fraction=0.4)),
    ("ms-swift", "Qwen2.5-7B", "cuda", dict(label_fraction=0.3, batch=2)),
    ("axolotl", "Qwen2.5-7B", "cuda", dict(batch=2, seq=2048)),
    ("torchtune", "Llama-3.1-8B", "cuda", dict(batch=2)),
    ("torchtune", "Qwen2.5-7B", "cuda", dict(rope_cache="per-layer")),  # its Qwen2 LoRA builders' tables
]


@pytest.mark.parametrize("name,model,device,extra", ROWS,
                         ids=[f"{n}-{m}-{d}" + ("-" + "-".join(f"{k}{v}" for k, v in e.items()) if e else "")
                              for n, m, d, e in ROWS])
def test_framework_default_within_1_percent(name, model, device, extra):
    if name in NEEDS and importlib.util.find_spec(NEEDS[name]) is None:
        pytest.skip(f"the {name} trace runs {name}'s own code: pip install 'vramplan[{NEEDS[name]}]'")
    from vramplan.analytic import estimate
    from vramplan.trace import trace

    arch = grid_mod.reduced_arch(model, 2)
    sc = _scenario(name, arch, **extra)
    theirs = trace(arch, sc, extrapolate=False, device=device)
    ours = estimate(arch, sc, device=device)
    err = ours.allocated_peak_bytes / theirs.allocated_peak_bytes - 1
    assert abs(err) < TOL, f"{err:+.3%} (ours {ours.peak_phase}, trace {theirs.peak_phase})"


def test_the_frameworks_differ_where_memory_is_decided():
    """The shared QLoRA run differs by framework only where its code differs: axolotl's cast-back gives
    the weights of the plain recipe (Qwen3 has no biases), TRL's fused head removes the b·s·V loss
    terms, reentrant checkpointing adds one b·s·H tensor per recomputed layer."""
    from vramplan.analytic import estimate
    from vramplan.arch import resolve

    arch = resolve("Qwen3-14B")
    w = {n: sum(c.bytes for c in estimate(arch, _scenario(n, arch, seq=2048)).components
                if c.category == "weights") for n in FIXTURES}
    assert w["axolotl"] == w["ms-swift"] == w["llamafactory"] == w["trl"] < w["hf"]
    loss = {n: estimate(arch, _scenario(n, arch, seq=2048)).get("logits/loss") for n in ("trl", "ms-swift")}
    assert loss["trl"] == 0 and loss["ms-swift"] > 3 * 2**30

"""Issue 14, feature 1, ours vs theirs: the fused losses' rules and switches against the frameworks' own code.

Runs in the framework venv (``.ci/frameworks``); each test skips where its package is not installed.
- unsloth_zoo: its own ``fused_linear_rows`` and ``_tiled_layout`` (the module loaded from its file: the
  package's ``__init__`` refuses a machine without a GPU) against ``vramplan.analytic.logits``' copies,
  for several shapes and free-memory budgets, and its constants.
- axolotl: the Liger and Cut Cross-Entropy plugin arguments' defaults and refusals the reader relies on.
- LLaMA-Factory: the model types its ``apply_liger_kernel`` knows (read from its source with ``ast``).
- TRL: 1.16's ``SFTTrainer`` forcing Liger's fused linear cross-entropy off.
"""

from __future__ import annotations

import ast
import importlib.util
import inspect
from pathlib import Path

import pytest

from vramplan.analytic import logits as lg

REASON = "installed only in the framework venv of .ci/frameworks"


def _find(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        pytest.skip(f"{name}: {REASON}")
    return Path(spec.origin).parent


@pytest.fixture(scope="module")
def fused_linear():
    pytest.importorskip("torch")
    path = _find("unsloth_zoo") / "fused_losses" / "fused_linear.py"
    spec = importlib.util.spec_from_file_location("vramplan_test_unsloth_fused_linear", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


SHAPES = [(4095, 5120, 151936), (1023, 4096, 128256), (8191, 4096, 32000), (300, 3584, 152064), (20000, 2048, 151936),
          (2, 896, 151936), (16383, 8192, 128256)]


@pytest.mark.parametrize("K,H,V", SHAPES)
@pytest.mark.parametrize("budget", [None, 2**29, 2**27])
def test_unsloth_chunk_rows_match(fused_linear, monkeypatch, K, H, V, budget):
    import torch

    if budget is not None:
        monkeypatch.setattr(fused_linear, "_budget_bytes", lambda device: budget)
    cpu = torch.device("cpu")
    ours_budget = lg.UNSLOTH_BUDGET if budget is None else budget
    assert fused_linear.fused_linear_rows(K, H, V, 4, cpu) == lg.unsloth_chunk_rows(K, H, V, 4, ours_budget)
    # the tiled layout on a card above 24.5 GiB (the CPU device answers _flash_min_rows 4096 the same way)
    assert fused_linear._tiled_layout(K, V, 0, 4, cpu) == lg.unsloth_tile_layout(K, V, ours_budget)
    assert fused_linear._tiled_vocab(V) == (-(-V // lg.UNSLOTH_SPLIT_COLS) > 2)


def test_unsloth_constants(fused_linear):
    assert int(fused_linear._CHUNK_GB * 2**30) == lg.UNSLOTH_BUDGET
    assert (fused_linear._MIN_LOGITS, fused_linear._MAX_ROWS) == (lg.UNSLOTH_MIN_LOGITS, lg.UNSLOTH_MAX_ROWS)
    assert fused_linear._SPLIT_COLS == lg.UNSLOTH_SPLIT_COLS and fused_linear._BWD_ROWS == lg.UNSLOTH_FLASH_ROWS
    assert fused_linear._BWD_TILE_BYTES == lg.UNSLOTH_TILE_BYTES


def test_axolotl_plugin_args():
    _find("axolotl")
    from axolotl.integrations.cut_cross_entropy.args import CutCrossEntropyArgs
    from axolotl.integrations.liger.args import LigerArgs

    from vramplan.frameworks import axolotl as ax

    for key in ("liger_fused_linear_cross_entropy", "liger_rms_norm", "liger_glu_activation", "liger_rope",
                "liger_cross_entropy"):
        assert LigerArgs.model_fields[key].default is None, key  # opt-in, as the reader assumes
        assert next(k for k in ax.KEYS if k.name == key).default is None
    assert CutCrossEntropyArgs.model_fields["cut_cross_entropy"].default is True
    assert next(k for k in ax.KEYS if k.name == "cut_cross_entropy").default is True
    with pytest.raises(ValueError, match="chunked cross entropy"):
        CutCrossEntropyArgs.model_validate({"bf16": True, "chunked_cross_entropy": True})
    with pytest.raises(ValueError, match="fp16/bf16"):
        CutCrossEntropyArgs.model_validate({"cut_cross_entropy": True})
    for dotted in (ax.LIGER_PLUGIN, ax.CCE_PLUGIN):
        module, _, cls = dotted.rpartition(".")
        assert hasattr(importlib.import_module(module), cls), dotted


def test_llamafactory_liger_model_types():
    root = _find("llamafactory")
    from vramplan.frameworks import llamafactory as lf

    tree = ast.parse((root / "model" / "model_utils" / "liger_kernel.py").read_text())
    seen: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare) and isinstance(node.left, ast.Name) and node.left.id == "model_type":
            for comp in node.comparators:
                if isinstance(comp, ast.Constant):
                    seen.add(comp.value)
                elif isinstance(comp, (ast.List, ast.Tuple)):
                    seen.update(e.value for e in comp.elts if isinstance(e, ast.Constant))
    assert seen == set(lf.LIGER_MODEL_TYPES)


def test_trl_forces_liger_flce_off():
    _find("trl")
    import trl

    from trl.trainer.sft_trainer import SFTTrainer

    if tuple(int(x) for x in trl.__version__.split(".")[:2]) < (1, 15):
        pytest.skip("TRL < 1.15 has no fused head")
    src = inspect.getsource(SFTTrainer.__init__)
    assert '"fused_linear_cross_entropy": False' in src and "use_liger_kernel" in src

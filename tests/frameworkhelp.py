"""Helpers shared by the ours-vs-theirs framework tests (tests/theirs and tests/frameworks; importable
because pytest puts tests/ on sys.path)."""

from __future__ import annotations

import collections
import warnings
from pathlib import Path
from typing import Any


def groups(model: Any) -> dict[str, object]:
    """Parameter group -> dtypes (embeddings, lm_head, norms, lora); the 4-bit and LoRA-carrying module names."""
    import bitsandbytes as bnb
    import torch

    dt: dict[str, set] = collections.defaultdict(set)
    four, lora = set(), set()
    for n, m in model.named_modules():
        parts = n.split(".")
        if isinstance(m, bnb.nn.Linear4bit):
            four.add(parts[-2] if parts[-1] == "base_layer" else parts[-1])
        if hasattr(m, "lora_A") and isinstance(m.lora_A, torch.nn.ModuleDict) and len(m.lora_A):
            lora.add(parts[-1])
    for n, p in model.named_parameters():
        g = ("lora" if "lora_" in n else "embeddings" if "embed_tokens" in n else "lm_head" if "lm_head" in n
             else "norms" if "norm" in n else None)
        if g:
            dt[g].add(str(p.dtype).replace("torch.", ""))
    out: dict[str, object] = {k: sorted(v) for k, v in dt.items()}
    out["4bit"], out["lora_modules"] = sorted(four), sorted(lora)
    return out


def ours(tiny: Path, config: str, suffix: str, tmp_path: Path) -> tuple[Any, Any]:
    """vramplan's scenario for ``config`` (``MODEL`` replaced by the tiny checkpoint) and its own build of
    that scenario (``vramplan.hf.build.build_model``, meta tensors)."""
    from vramplan import frameworks as F
    from vramplan.arch import resolve
    from vramplan.hf import build as B
    from vramplan.scenario import Scenario

    f = tmp_path / f"config{suffix}"
    f.write_text(config.replace("MODEL", str(tiny)))
    arch = resolve(str(tiny / "config.json"))
    sc = Scenario(**F.resolve(F.load([str(f)]), arch).fields)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return sc, B.build_model(arch, sc)

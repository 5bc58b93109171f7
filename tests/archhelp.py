"""Model shapes and the benchmark grid shared by the engine, fake-vs-real and exact tests (importable
because pytest puts tests/ on sys.path)."""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path
from types import ModuleType

from vramplan.arch import Arch, resolve

ROOT = Path(__file__).resolve().parents[1]


def small_llama() -> Arch:
    """The debug llama widened (H 256, 4 heads of 64 with 2 K/V heads, I 512, V 1024, 2 layers), so that
    its LoRA matrices reach bitsandbytes' 4096-element 8-bit threshold."""
    cfg = dict(resolve("vramplan-debug").config)
    cfg.update(hidden_size=256, intermediate_size=512, num_attention_heads=4, num_key_value_heads=2,
               vocab_size=1024, num_hidden_layers=2)
    return Arch.from_config(cfg, name="small-llama")


def small_gemma3() -> Arch:
    """Gemma 3 (two rotary modules, full and sliding-window layers) cut to one sliding and one full layer,
    H 256, 4 heads of 64 (1 K/V head), V 1024."""
    cfg = dict(resolve("gemma-3-1b-pt").config)
    cfg.update(vocab_size=1024, num_hidden_layers=2, layer_types=["sliding_attention", "full_attention"],
               intermediate_size=512, hidden_size=256, head_dim=64)
    return Arch.from_config(cfg, name="small-gemma3")


@functools.lru_cache(maxsize=1)
def grid_module() -> ModuleType:
    """``benchmarks/analytic_vs_trace.py`` (its ``reduced_arch``, ``grid``, ``key``), loaded once."""
    spec = importlib.util.spec_from_file_location("analytic_vs_trace", ROOT / "benchmarks" / "analytic_vs_trace.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module

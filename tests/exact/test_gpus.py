"""The GPU catalog: coverage, citations, reported figures, look-ups and usable memory."""

import json
import re

import pytest

from vramplan.calibration import Calibration, default_calibration
from vramplan.errors import VramplanError
from vramplan.device import lookup_key as _norm
from vramplan.gpus import DATA_FILE, GpuMemoryError, GpuNotFound, catalog, custom_gpu, find_gpu, resolve_gpu

MiB = 1024**2
GiB = 1024**3


def test_catalog_covers_the_issue_list():
    names = {g.name for g in catalog()}
    assert len(catalog()) >= 25
    for must in ["RTX 3060 12GB", "RTX 4090", "RTX 5090", "RTX A6000", "RTX 6000 Ada", "Tesla T4", "L4", "A10G",
                 "A100 40GB", "A100 80GB", "H100 80GB SXM", "H200", "MI300X"]:
        assert must in names, must
    kinds = {g.kind for g in catalog()}
    assert {"consumer", "workstation", "datacenter", "unified"} <= kinds
    assert sum(g.vendor == "apple" for g in catalog()) >= 3


def test_every_entry_cites_a_source_and_says_which_figure():
    for g in catalog():
        assert len(g.source) > 20, g.name
        assert g.figure in ("reported", "nominal"), g.name
        if g.figure == "reported":  # a reported figure must point at where it was read
            assert "nvidia-smi" in g.source or "NVML" in g.source or "torch" in g.source, g.name


@pytest.mark.parametrize("name,mib", [
    ("RTX 4090", 24564), ("H100 80GB SXM", 81559), ("A100 80GB", 81920), ("A100 40GB", 40960),
    ("Tesla T4", 15360), ("L4", 23034), ("A10G", 23028), ("RTX 3090", 24576), ("RTX 5090", 32607),
    ("H200", 143771), ("L40S", 46068),
])
def test_reported_figures(name, mib):
    g = next(g for g in catalog() if g.name == name)
    assert g.memory_bytes == mib * MiB and g.figure == "reported"


@pytest.mark.parametrize("query,name", [
    ("rtx4090", "RTX 4090"), ("RTX 4090", "RTX 4090"), ("geforce rtx 4090", "RTX 4090"),
    ("NVIDIA GeForce RTX 4090", "RTX 4090"), ("  Rtx-4090 ", "RTX 4090"), ("4090", "RTX 4090"),
    ("h100", "H100 80GB SXM"), ("NVIDIA H100 80GB HBM3", "H100 80GB SXM"), ("H100 PCIe", "H100 PCIe"),
    ("a100", "A100 40GB"), ("NVIDIA A100-SXM4-80GB", "A100 80GB"), ("a100 80gb", "A100 80GB"),
    ("Tesla T4", "Tesla T4"), ("t4", "Tesla T4"), ("NVIDIA A10G", "A10G"), ("a10", "A10"),
    ("NVIDIA RTX A6000", "RTX A6000"), ("rtx 6000 ada", "RTX 6000 Ada"), ("mi300x", "MI300X"),
    ("AMD Instinct MI300X", "MI300X"), ("m2 ultra 192gb", "Apple M-series 192GB"), ("rtx 3060", "RTX 3060 12GB"),
])
def test_find_gpu_spellings(query, name):
    assert find_gpu(query).name == name


def test_no_alias_points_at_two_cards():
    seen = {}
    for g in catalog():
        for key in (g.name, *g.aliases):
            k = _norm(key)
            assert seen.setdefault(k, g.name) == g.name, (key, seen[k], g.name)


def test_unknown_gpu_suggests_close_matches():
    with pytest.raises(GpuNotFound, match="RTX 4090"):
        find_gpu("rtx 4091")
    with pytest.raises(GpuNotFound) as e:
        find_gpu("h10")
    assert "H100" in str(e.value)
    with pytest.raises(GpuNotFound, match="vramplan gpus"):
        find_gpu("voodoo5")
    assert isinstance(GpuNotFound("x"), VramplanError)


def test_usable_is_memory_less_context_and_driver_reserve():
    cal = default_calibration()
    t4 = find_gpu("t4")
    assert t4.driver_reserved_bytes == 0
    assert t4.usable_bytes == 15360 * MiB - cal.for_device("Tesla T4").cuda_context_bytes
    h100 = find_gpu("h100")
    assert h100.usable_bytes == 81559 * MiB - 551 * MiB - cal.for_device(h100.name).cuda_context_bytes
    big = Calibration(cuda_context_bytes=1024 * MiB)
    assert t4.usable(big) == 15360 * MiB - 1024 * MiB


def test_unified_memory_uses_working_set_not_context():
    m = find_gpu("apple 16gb")
    assert m.unified and m.context_bytes() == 0
    assert m.usable_bytes == int(16 * GiB * 0.6667)
    assert find_gpu("m2 ultra").usable_bytes == int(192 * GiB * 0.75)


def test_custom_memory():
    cal = Calibration(cuda_context_bytes=512 * MiB)
    g = custom_gpu("24GiB", cal)
    assert g.memory_bytes == 24 * GiB and g.usable_bytes == 24 * GiB - 512 * MiB and g.kind == "custom"
    assert custom_gpu("24564MiB", cal).memory_bytes == 24564 * MiB
    assert custom_gpu("24", cal).memory_bytes == 24 * GiB  # a bare number is GiB


@pytest.mark.parametrize("bad", ["0", "-4GiB", "abc", "12 parsecs", "0GiB", "nan", "100MiB"])
def test_bad_memory(bad):
    with pytest.raises(GpuMemoryError):
        custom_gpu(bad, Calibration(cuda_context_bytes=512 * MiB))


def test_gpu_and_memory_together_or_neither():
    with pytest.raises(VramplanError, match="not both"):
        resolve_gpu("rtx 4090", "24GiB")
    with pytest.raises(VramplanError, match="--gpu"):
        resolve_gpu(None, None)


def test_catalog_is_data():
    """(Read lazily, never at import: tests/exact/test_import_boundaries.py.)"""
    raw = json.loads(DATA_FILE.read_text())
    assert len(raw["gpus"]) == len(catalog())
    assert all(re.fullmatch(r"[a-z0-9]*", _norm(g.name)) for g in catalog())

"""The reference dataset: converted faithfully from the published table, every row cited and scoped."""

import csv
import importlib.util
from pathlib import Path

import pytest

from vramplan.reference import MEASUREMENTS, ReferenceError, load_reference, parse_reference

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared" / "reference" / "published_measurements.csv"
GiB = 1024**3


@pytest.fixture(scope="module")
def rows():
    return load_reference()


def test_every_published_row_is_kept_and_cited(rows):
    assert len(rows) == 61
    assert len({r.id for r in rows}) == 61
    for r in rows:
        assert r.source.strip(), r.id
        assert r.reported_value.strip(), r.id
        assert r.measurement in MEASUREMENTS
        if r.scope != "in":
            assert r.reason.strip(), f"{r.id} is {r.scope} without a reason"


def test_units_exact_from_the_published_value(rows):
    by = {r.id: r for r in rows}
    # litgpt 'Memory used' = max_memory_allocated()/1e9: "21.30 GB" is 21.30e9 bytes, not GiB.
    assert by["pm-07"].measured_bytes == 21_300_000_000
    # torchtune April 2024 tutorial, still /1e9: "15.57 GB".
    assert by["pm-24"].measured_bytes == 15_570_000_000
    # fsdp_qlora prints GiB: "20.94 GiB".
    assert by["pm-45"].measured_bytes == round(20.94 * GiB)


@pytest.mark.skipif(not SHARED.is_file(), reason="shared reference table not present")
def test_bytes_agree_with_the_shared_gib_column(rows):
    with open(SHARED, newline="", encoding="utf-8") as f:
        published = list(csv.DictReader(f))
    for r, p in zip(rows, published):
        gib = float(p["measured_peak_gib"])
        assert r.measured_bytes / GiB == pytest.approx(gib, rel=2e-3), r.id


def test_in_scope_rows_are_priceable_and_comparable(rows):
    inscope = [r for r in rows if r.status == "in"]
    assert len(inscope) >= 4
    for r in inscope:
        assert r.scenario is not None and r.in_registry, r.id
        assert r.total_key is not None, f"{r.id}: {r.measurement} cannot be compared with a total"
        assert r.num_gpus == 1 or "NO_SHARD" in r.caveats, r.id


def test_framework_rows_are_out_with_their_reason(rows):
    litgpt = [r for r in rows if "lit" in r.framework.lower()]
    assert litgpt and all(r.status == "out" and "litgpt" in r.reason for r in litgpt)
    sharded = [r for r in rows if "FULL_SHARD" in r.reason]
    assert len(sharded) >= 8 and all(r.status == "out" for r in sharded)


def test_missing_registry_model_is_reported_not_fetched(rows):
    r = next(r for r in rows if r.id == "pm-59")  # LLaMA-1 65B capacity claim
    assert r.scope == "verdict" and r.status == "out"
    assert "not in the registry" in r.status_reason


@pytest.mark.skipif(not SHARED.is_file(), reason="shared reference table not present")
def test_conversion_script_regenerates_the_shipped_file(tmp_path):
    spec = importlib.util.spec_from_file_location("convert_reference", ROOT / "tools" / "convert_reference.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "reference.csv"
    mod.main(["convert", str(SHARED), str(out)])
    assert out.read_text() == (ROOT / "vramplan" / "data" / "reference.csv").read_text()


def test_scenario_columns_are_the_scenario_fields():
    from dataclasses import fields

    from vramplan.reference import OPTIONAL_SCENARIO_COLS, SCENARIO_COLS
    from vramplan.scenario import Scenario

    assert sorted(SCENARIO_COLS + OPTIONAL_SCENARIO_COLS) == sorted(f.name for f in fields(Scenario))
    shipped = (ROOT / "vramplan" / "data" / "reference.csv").read_text().splitlines()[1].split(",")
    # every required column, in order; an optional column added later may be absent from the shipped file
    # (its rows then take the field's default), never out of order
    cols = SCENARIO_COLS + OPTIONAL_SCENARIO_COLS
    assert set(SCENARIO_COLS) <= set(shipped)
    assert [c for c in shipped if c in cols] == [c for c in cols if c in shipped]


HEADER = ("id,model,registry_model,framework,gpu,gpu_memory_bytes,measurement,measured_bytes,reported_value,"
          "scope,reason,source,quant,double_quant,blocksize,dtype,rank,targets,lora_dropout,full,"
          "grad_checkpointing,attn,optimizer,recipe,autocast,seq,batch")
GOOD = ("x-1,m,Llama-2-7b-hf,hf,A10G,25769803776,reserved,1000,1 KB,in,,src,nf4,true,64,bf16,8,all-linear,"
        "0.05,false,true,sdpa,adamw,hf-peft,true,512,1")


def test_parse_ok():
    (r,) = parse_reference(HEADER + "\n" + GOOD)
    assert r.scenario.seq == 512 and r.total_key == "reserved_peak_bytes" and r.status == "in"


@pytest.mark.parametrize("bad, msg", [
    (GOOD.replace(",reserved,", ",peak,"), "unknown measurement"),
    (GOOD.replace(",in,,src,", ",out,,src,"), "needs a reason"),
    (GOOD.replace(",src,", ",,"), "cites no source"),
    (GOOD.replace(",512,1", ",0,1"), "bad scenario"),
    (GOOD.replace(",true,64,", ",maybe,64,"), "true/false"),
])
def test_parse_errors(bad, msg):
    with pytest.raises(ReferenceError, match=msg):
        parse_reference(HEADER + "\n" + bad)


def test_missing_column():
    with pytest.raises(ReferenceError, match="missing column"):
        parse_reference("id,model\nx,y\n")

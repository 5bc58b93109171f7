"""Profile files: schema validation, atomic never-overwriting writes, tolerant reads, estimate ÷ measured,
and the ``profiles list|show`` commands. No torch needed: the records are built by hand."""

import json

import pytest

from vramplan.arch.lookup import find_entry

from vramplan.profile.store import (SCHEMA, Profile, ProfileError, check_writable, file_name, load_profiles,
                                    read_profile, save_profile, select, validate)
from vramplan.scenario import Scenario

MiB = 1024**2


def _breakdown(engine: str, alloc: int, reserved: int | None = None, total: int | None = None) -> dict:
    """A stored prediction: one allocated component, plus runtime rows to reach reserved/total."""
    runtime = []
    if reserved is not None:
        runtime.append({"name": "runtime/allocator", "category": "allocator", "bytes": reserved - alloc, "note": ""})
    if total is not None:
        runtime.append({"name": "runtime/cuda_context", "category": "context",
                        "bytes": total - (reserved or alloc), "note": ""})
    reserved = reserved or alloc
    return {"engine": engine,
            "components": [{"name": "weights/nf4", "category": "weights", "bytes": alloc, "note": ""}],
            "runtime": runtime, "allocated_peak_bytes": alloc, "reserved_peak_bytes": reserved,
            "total_bytes": total or reserved, "notes": [], "extra": {}}


def record(**over) -> dict:
    """A valid CUDA profile dict; keyword arguments replace top-level fields."""
    d = {
        "schema": SCHEMA,
        "model": "vramplan-debug",
        "arch_config": dict(find_entry("vramplan-debug").config),
        "scenario": Scenario(seq=128, batch=2, rank=16).to_dict(),
        "device": {"kind": "cuda", "name": "NVIDIA H100 80GB HBM3", "total_memory_bytes": 80 * 1024 * MiB,
                   "driver": "550.54", "cuda": "12.4", "capability": "9.0"},
        "versions": {"torch": "2.13.0", "vramplan": "0.1.0"},
        "timestamp": "2026-11-25T03:00:00.000000Z",
        "run": {"steps": 3, "weights": "random-init"},
        "measured": {
            "allocated_peak_bytes": 100 * MiB, "reserved_peak_bytes": 120 * MiB,
            "active_peak_bytes": 100 * MiB, "process_peak_bytes": 600 * MiB, "managed_bytes": 0,
            "phases": {"load": 40 * MiB, "adapters": 45 * MiB, "forward": 90 * MiB, "backward": 100 * MiB,
                       "optimizer": 60 * MiB, "steady_step": 100 * MiB},
            "step_seconds": 0.5, "tokens_per_second": 512.0, "oom": None,
        },
        "predictions": {"analytic": _breakdown("analytic", 110 * MiB, 132 * MiB, 660 * MiB),
                        "trace": _breakdown("trace", 99 * MiB)},
    }
    d.update(over)
    return d


def test_ratio_and_error_by_hand():
    p = Profile.from_dict(record())
    # 110 MiB predicted / 100 MiB measured; 132/120; 660/600: all exactly +10 %.
    assert p.ratio("analytic") == pytest.approx(1.10)
    assert p.ratio("analytic", "reserved") == pytest.approx(1.10)
    assert p.ratio("analytic", "total") == pytest.approx(1.10)
    assert p.error("trace") == pytest.approx(-0.01)
    assert p.prediction("trace").allocated_peak_bytes == 99 * MiB
    with pytest.raises(ProfileError):
        p.ratio("analytic", "bogus")


def test_ratio_missing_figures_are_none():
    cpu = record(device={"kind": "cpu", "name": "Xeon", "total_memory_bytes": None})
    cpu["measured"]["process_peak_bytes"] = None
    cpu["predictions"]["trace"] = None
    p = Profile.from_dict(cpu)
    assert p.ratio("analytic", "total") is None          # no process total on CPU
    assert p.ratio("trace") is None                      # no trace made
    assert p.ratio("analytic") == pytest.approx(1.10)


def test_oom_record_validates_and_has_no_ratio():
    d = record()
    d["measured"].update(allocated_peak_bytes=None, reserved_peak_bytes=None, active_peak_bytes=None,
                         step_seconds=None, tokens_per_second=None,
                         oom={"phase": "backward", "allocated_bytes": 79 * 1024 * MiB,
                              "message": "CUDA out of memory. Tried to allocate 2.00 GiB"})
    d["measured"]["phases"].update(backward=None, optimizer=None, steady_step=None)
    p = Profile.from_dict(d)
    assert p.oom["phase"] == "backward" and p.ratio("analytic") is None


@pytest.mark.parametrize("mutate, words", [
    (lambda d: d.update(schema="vramplan.profile/99"), "unknown schema"),
    (lambda d: d.pop("device"), "missing field 'device'"),
    (lambda d: d["device"].update(kind="tpu"), "device.kind"),
    (lambda d: d["measured"].update(allocated_peak_bytes="100"), "measured.allocated_peak_bytes"),
    (lambda d: d["measured"].update(allocated_peak_bytes=True), "measured.allocated_peak_bytes"),
    (lambda d: d["measured"].update(managed_bytes=-1), "negative"),
    (lambda d: d["measured"]["phases"].pop("backward"), "measured.phases.backward"),
    (lambda d: d["measured"].update(allocated_peak_bytes=None), "no OOM"),
    (lambda d: d["measured"].update(oom={"phase": "lunch", "allocated_bytes": 1, "message": ""}), "oom.phase"),
    (lambda d: d["predictions"].update(trace={"components": [{"name": "x"}]}), "predictions.trace"),
    (lambda d: d["scenario"].update(seq=-1), "bad scenario"),
    (lambda d: d["scenario"].update(colour="blue"), "bad scenario"),
])
def test_validation_names_the_problem(mutate, words):
    d = record()
    mutate(d)
    with pytest.raises(ProfileError, match=words.replace("(", r"\(").replace(".", r"\.")):
        Profile.from_dict(d)


def test_roundtrip_and_file_name(tmp_path):
    p = Profile.from_dict(record())
    path = save_profile(p, tmp_path / "new" / "dir")
    assert path.name == "vramplan-debug_H100-80GB-HBM3_s128_b2_r16_20261125T030000.json"
    back = read_profile(path)
    assert back == p and back.path == path
    assert json.loads(path.read_text())["scenario"]["rank"] == 16


def test_never_overwrites_and_leaves_no_temp_files(tmp_path):
    p = Profile.from_dict(record())
    first = save_profile(p, tmp_path)
    before = first.read_bytes()
    d2 = record()
    d2["measured"]["step_seconds"] = 9.0
    second = save_profile(Profile.from_dict(d2), tmp_path)
    assert second != first and second.name.endswith("-2.json")
    assert first.read_bytes() == before
    assert json.loads(second.read_text())["measured"]["step_seconds"] == 9.0
    assert sorted(f.name for f in tmp_path.iterdir()) == sorted([first.name, second.name])


def test_invalid_profile_is_never_written(tmp_path):
    d = record()
    p = Profile.from_dict(d)
    bad = Profile(**{**p.__dict__, "measured": {**p.measured, "oom": {"phase": "lunch"}}})
    with pytest.raises(ProfileError):
        save_profile(bad, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_unwritable_directory(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ProfileError, match="not writable"):
        check_writable(blocker / "sub")


@pytest.fixture
def folder(tmp_path):
    """Two good profiles (one CPU), and five bad files that must be skipped."""
    save_profile(Profile.from_dict(record()), tmp_path)
    cpu = record(model="Qwen3-0.6B", timestamp="2026-11-24T01:00:00.000000Z",
                 device={"kind": "cpu", "name": "Intel Xeon", "total_memory_bytes": 1 << 34})
    save_profile(Profile.from_dict(cpu), tmp_path / "cpu")
    (tmp_path / "truncated.json").write_text(json.dumps(record())[:200])
    (tmp_path / "future.json").write_text(json.dumps(record(schema="vramplan.profile/2")))
    (tmp_path / "list.json").write_text("[1, 2]")
    (tmp_path / "binary.json").write_bytes(b"\xff\xfe\x00garbage")
    (tmp_path / "noscenario.json").write_text(json.dumps({k: v for k, v in record().items() if k != "scenario"}))
    (tmp_path / "notes.txt").write_text("not a profile")
    return tmp_path


def test_load_skips_and_reports_bad_files(folder, caplog):
    problems: list[str] = []
    found = load_profiles(folder, problems)
    assert [p.model for p in found] == ["Qwen3-0.6B", "vramplan-debug"]  # oldest first
    assert len(problems) == 5
    joined = "\n".join(problems)
    for name, why in (("truncated.json", "not valid JSON"), ("future.json", "unknown schema"),
                      ("list.json", "JSON object"), ("binary.json", "not valid UTF-8"),
                      ("noscenario.json", "missing field 'scenario'")):
        assert any(name in line and why in line for line in problems), (name, joined)
    assert "skipping profile" not in caplog.text     # collected, not logged
    assert len(load_profiles(folder)) == 2
    assert caplog.text.count("skipping profile") == 5  # without a list: logged
    assert select(found, device="h100")[0].model == "vramplan-debug"
    assert select(found, model="qwen")[0].device["kind"] == "cpu"


def test_load_missing_folder_is_an_error(tmp_path):
    with pytest.raises(ProfileError, match="no profile directory"):
        load_profiles(tmp_path / "nope")


def test_file_name_for_cpu():
    d = record(device={"kind": "cpu", "name": "Intel(R) Xeon(R)", "total_memory_bytes": None})
    assert file_name(Profile.from_dict(d)).startswith("vramplan-debug_cpu_s128_b2_r16_")


def test_validate_rejects_non_object():
    with pytest.raises(ProfileError):
        validate([])


# ----------------------------------------------------------------------------------- CLI
def test_cli_list_json_skips_corrupt(folder, cli_run):
    code, out, err = cli_run("profiles", "list", str(folder), "--json")
    assert code == 0, err
    rows = json.loads(out)
    assert [r["model"] for r in rows] == ["Qwen3-0.6B", "vramplan-debug"]
    assert rows[1]["analytic_error"] == pytest.approx(0.10) and rows[1]["trace_error"] == pytest.approx(-0.01)
    warnings = [ln for ln in err.splitlines() if ln.startswith("warning: skipped")]
    assert len(warnings) == 5 and "Traceback" not in err


def test_cli_list_table_and_filter(folder, cli_run):
    code, out, _ = cli_run("profiles", "list", str(folder), "--model", "debug")
    assert code == 0
    assert "+10.0 %" in out and "-1.0 %" in out and "Qwen3" not in out


def test_cli_show(folder, cli_run):
    path = next(folder.glob("vramplan-debug_*.json"))
    code, out, _ = cli_run("profiles", "show", str(path))
    assert code == 0 and "1.100" in out and "0.990" in out and "100.00 MiB" in out
    code, out, _ = cli_run("profiles", "show", str(path), "--json")
    assert code == 0 and json.loads(out)["measured"]["allocated_peak_bytes"] == 100 * MiB


def test_cli_show_bad_file_is_one_line(folder, cli_run):
    for target in (str(folder / "truncated.json"), str(folder / "missing.json")):
        code, out, err = cli_run("profiles", "show", target)
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err


def test_cli_list_missing_folder(tmp_path, cli_run):
    code, _, err = cli_run("profiles", "list", str(tmp_path / "none"))
    assert code == 2 and "no profile directory" in err

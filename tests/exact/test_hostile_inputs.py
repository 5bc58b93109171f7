"""Hostile, broken and edge inputs (issue 20): each cause has a test named after its number.

The corrupt files are generated here; every bad input must end in one ``error:`` line and exit 2
(``clihelp.one_line_exit2``), never a traceback, and nothing already stored may be lost.
"""

from __future__ import annotations

import json
import os
import random
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


# 19. monotonicity: checkpointing can cost more than it saves at a few tokens --------------------
@pytest.mark.torch
def test_19_checkpointing_above_no_checkpointing_at_two_tokens_is_real():
    """With checkpointing, peft's ``enable_input_require_grads`` makes the embedding output need a
    gradient, so layer 0 saves its norm inputs and every layer's input is kept as a checkpoint; at
    two tokens that outweighs what recomputation frees. The real program (the trace) shows it, and
    the analytic engine agrees in sign (docs/methodology.md, "Checkpointing at a few tokens")."""
    from vramplan.analytic import estimate
    from vramplan.calibration import Calibration
    from vramplan.scenario import Scenario
    from vramplan.trace import trace

    cal = Calibration(cublas_workspace_bytes=0, allocator_reserve_fraction=0.0, cuda_context_bytes=0)
    a = resolve("vramplan-debug")
    on, off = (Scenario(seq=2, recipe="plain", grad_checkpointing=gc) for gc in (True, False))
    assert trace(a, on, calibration=cal).allocated_peak_bytes > trace(a, off, calibration=cal).allocated_peak_bytes
    assert estimate(a, on, calibration=cal).allocated_peak_bytes > estimate(a, off, calibration=cal).allocated_peak_bytes
    long_on, long_off = (Scenario(seq=16, recipe="plain", grad_checkpointing=gc) for gc in (True, False))
    assert trace(a, long_on, calibration=cal).allocated_peak_bytes < trace(a, long_off, calibration=cal).allocated_peak_bytes


# 19. monotonicity: the rank search where an optimizer changes a tensor's state layout --------
def _gallop(p, base, cap):
    """The planner's search before issue 20: gallop from the current rank, then bisect, assuming the
    need grows with the rank everywhere."""
    def ok(k):
        return p.fits(base.replace(rank=k))

    k = min(max(base.rank, 1), cap)
    good, bad = (k, None) if ok(k) else (None, k)
    while bad is None:
        if good == cap:
            return cap
        nxt = min(good * 2, cap)
        good, bad = (nxt, None) if ok(nxt) else (good, nxt)
    while good is None:
        if bad == 1:
            return None
        nxt = max(bad // 2, 1)
        good, bad = (nxt, bad) if ok(nxt) else (None, nxt)
    while bad - good > 1:
        mid = (good + bad) // 2
        good, bad = (mid, bad) if ok(mid) else (good, mid)
    return good


def test_19_largest_rank_is_exact_across_8bit_state_thresholds():
    """bitsandbytes' 8-bit AdamW keeps tensors under 4096 elements in 32 bits. On a model of hidden
    96 and MLP width 200, gate/up's lora_A (96·r) and down's lora_A (200·r) cross 4096 at r = 43 and
    r = 21, where the need *drops*. For every budget the planner returns the brute-force largest
    fitting rank; the monotone search it replaced misses some of them."""
    from vramplan.arch.spec import Arch
    from vramplan.gpus import find_gpu
    from vramplan.plan import Planner, rank_breakpoints, rank_cap
    from vramplan.scenario import Scenario

    a = Arch.from_config(dict(TINY, hidden_size=96, intermediate_size=200, num_key_value_heads=2), name="tiny")
    s = Scenario(optimizer="adamw8bit", seq=64, rank=8)
    assert rank_breakpoints(a, s)[:2] == (21, 43)
    p = Planner(a, find_gpu("rtx4090"))
    cap = rank_cap(a, s)
    need = {r: p.check(s.replace(rank=r)).need_bytes for r in range(1, cap + 1)}
    assert need[21] < need[20] and need[43] < need[42]
    missed = 0
    for budget in sorted(set(need.values()) | {v - 1 for v in need.values()}):
        p.budget, p._cache = budget, {}
        brute = max((r for r in range(1, cap + 1) if need[r] <= budget), default=None)
        assert p.largest(s, "rank", cap) == brute, budget
        missed += _gallop(p, s, cap) != brute
    assert missed  # the test can tell a monotone search from the piecewise one


# 17. a seq step larger than any seq ------------------------------------------------------------
def test_17_huge_seq_step_is_an_error_not_fits_and_none(cli_run):
    line = one_line_exit2(cli_run, "plan", "-m", "Qwen3-0.6B", "--gpu", "h100", "--seq-step", "1000000000")
    assert "seq step 1,000,000,000 exceeds" in line


def test_17_step_above_the_boundary_says_so():
    from vramplan.plan import plan
    from vramplan.scenario import Scenario

    p = plan("Qwen3-8B", "rtx4090", Scenario(seq=1024), seq_step=4_000_000)
    assert p.fits and p.max_seq is None
    assert any("no multiple of the seq step 4,000,000 fits; the run's own seq 1,024 does" in n for n in p.notes)


# 8. writing to stdout --------------------------------------------------------------------------
def _vramplan(*args: str, env: dict | None = None, stdout=None):
    import subprocess
    import sys

    code = "import sys; from vramplan.cli import main; main(sys.argv[1:])"
    return subprocess.run([sys.executable, "-c", code, *args], stdout=stdout or subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, timeout=120, env={**os.environ, **(env or {})})


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="no /dev/full on this system")
def test_08_full_stdout_is_one_line_exit2():
    with open("/dev/full", "w") as full:
        r = _vramplan("models", "--json", stdout=full)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "Exception ignored" not in r.stderr
    assert r.stderr.strip().splitlines() == ["error: cannot write the output: No space left on device"]


def test_08_ascii_terminal_gets_the_table():
    r = _vramplan("estimate", "-m", "vramplan-debug", env={"PYTHONIOENCODING": "ascii"})
    assert r.returncode == 0, r.stderr
    assert "allocated peak" in r.stdout and "Traceback" not in r.stderr


# 12. a crash never reads as "does not fit" ----------------------------------------------------
def test_12_internal_error_has_its_own_exit_code(cli_run, monkeypatch):
    import vramplan.plan

    def broken(*a, **k):
        raise TypeError("boom")

    monkeypatch.setattr(vramplan.plan, "plan", broken)
    code, out, err = cli_run("plan", "-m", "Qwen3-8B", "--gpu", "rtx4090")
    assert code == 3 and code != 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: internal error (TypeError: boom)"), err
    code, out, err = cli_run("plan", "-m", "Qwen3-8B", "--gpu", "rtx4090", "--json")
    assert code == 3 and json.loads(out) == {"error": lines[0][len("error: "):], "exit_code": 3}


# --json on error -------------------------------------------------------------------------------
@pytest.mark.parametrize("args", [("estimate", "-m", "nope", "--json"), ("plan", "-m", "Qwen3-8B", "--gpu", "nogpu", "--json"),
                                  ("estimate", "-m", "Qwen3-8B", "--rank", "0", "--json"), ("models", "--json", "--bogus")])
def test_json_errors_are_json_on_stdout(cli_run, args):
    code, out, err = cli_run(*args)
    assert code == 2
    d = json.loads(out)
    assert d["exit_code"] == 2 and err.strip() == f"error: {d['error']}"


# 13. calibrate never loses a stored file ----------------------------------------------------------
def _calibrate(cli_run, out: Path, *extra: str):
    return cli_run("calibrate", "profiles/cuda", "-o", str(out), *extra)


ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def in_repo(monkeypatch):
    monkeypatch.chdir(ROOT)


def test_13_existing_calibration_needs_force(cli_run, tmp_path, in_repo):
    out = tmp_path / "calibration.json"
    out.write_text("{}")
    line = one_line_exit2(cli_run, "calibrate", "--no-reference", "profiles/cpu", "-o", str(out))
    assert "exists; pass --force" in line and out.read_text() == "{}"
    code, _, err = _calibrate(cli_run, out, "--force")
    assert code == 0, err
    assert json.loads(out.read_text())["schema"].startswith("vramplan.calibration")


def test_13_a_profile_is_never_overwritten(cli_run, tmp_path, in_repo):
    src = next((ROOT / "profiles" / "cpu").glob("*.json"))
    target = tmp_path / src.name
    target.write_bytes(src.read_bytes())
    for extra in ((), ("--force",)):
        line = one_line_exit2(cli_run, "calibrate", "--no-reference", "profiles/cpu", "-o", str(target), *extra)
        assert "holds a stored profile" in line
    assert target.read_bytes() == src.read_bytes()


def test_13_full_disk_keeps_the_old_file(cli_run, tmp_path, in_repo, monkeypatch):
    import vramplan.fileio

    out = tmp_path / "calibration.json"
    out.write_text('{"old": true}')

    def no_space(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(vramplan.fileio.os, "fsync", no_space)
    line = one_line_exit2(cli_run, "calibrate", "profiles/cuda", "-o", str(out), "--force")
    assert "No space left on device" in line
    assert out.read_text() == '{"old": true}' and sorted(p.name for p in tmp_path.iterdir()) == ["calibration.json"]


def test_13_and_umask_new_files_follow_the_umask(cli_run, tmp_path, in_repo):
    old = os.umask(0o022)
    try:
        code, _, err = _calibrate(cli_run, tmp_path / "c.json")
        assert code == 0, err
        assert (tmp_path / "c.json").stat().st_mode & 0o777 == 0o644
        from vramplan.profile.store import read_profile, save_profile

        prof = read_profile(next((ROOT / "profiles" / "cpu").glob("*.json")))
        saved = save_profile(prof, tmp_path / "profiles")
        assert saved.stat().st_mode & 0o777 == 0o644
    finally:
        os.umask(old)


# 11. profile schema holes ------------------------------------------------------------------------
def _stored(tmp_path: Path, **measured_over) -> dict:
    src = next((ROOT / "profiles" / "cpu").glob("vramplan-debug_*.json"))
    d = json.loads(src.read_text())
    d["measured"].update(measured_over)
    return d


def test_11_bad_arch_config_is_skipped_and_named(cli_run, tmp_path):
    d = _stored(tmp_path)
    d["arch_config"] = {"model_type": "llama", "hidden_size": "wide"}
    (tmp_path / "bad.json").write_text(json.dumps(d))
    good = _stored(tmp_path)
    (tmp_path / "good.json").write_text(json.dumps(good))
    code, out, err = cli_run("validate", "--profiles", str(tmp_path), "--no-reference", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert any("bad.json" in w and "arch_config" in w for w in report["problems"])
    assert [r["id"] for r in report["rows"] if r["origin"] == "profile"]  # the good one is still validated


def test_11_nan_step_seconds_fails_the_schema(tmp_path):
    from vramplan.profile.store import ProfileError, validate

    with pytest.raises(ProfileError, match="step_seconds"):
        validate(_stored(tmp_path, step_seconds=float("nan")))


# 18. LoRA flags with --full ----------------------------------------------------------------------
@pytest.mark.parametrize("flag", [("--rank", "16"), ("--targets", "q_proj"), ("--lora-dropout", "0.1"),
                                  ("--adapter-dtype", "bf16")])
def test_18_lora_flags_with_full_are_rejected(cli_run, flag):
    line = one_line_exit2(cli_run, "estimate", "-m", "Qwen3-0.6B", "--quant", "none", "--full", *flag)
    assert "applies to LoRA adapters" in line


def test_02_invalid_utf8_reference_csv(cli_run, tmp_path):
    p = tmp_path / "ref.csv"
    p.write_bytes(b"id,model\npm-1,\xff\n")
    line = one_line_exit2(cli_run, "plot", "validation", "--data", str(p), "-o", str(tmp_path / "v.png"))
    assert "not valid UTF-8" in line


def test_01_nested_file_in_profiles_dir_leaves_commands_working(cli_run, tmp_path):
    src = next((ROOT / "profiles" / "cpu").glob("vramplan-debug_*.json"))
    (tmp_path / "ok.json").write_bytes(src.read_bytes())
    (tmp_path / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    code, out, err = cli_run("profiles", "list", str(tmp_path))
    assert code == 0 and "deep.json" in err and "Traceback" not in err
    code, out, err = cli_run("validate", "--profiles", str(tmp_path), "--no-reference", "--json")
    assert code == 0 and any("deep.json" in w for w in json.loads(out)["problems"])


# 14. signals during profile -----------------------------------------------------------------------
def _profile_sweep(tmp_path: Path):
    import subprocess
    import sys

    out, tmp = tmp_path / "out", tmp_path / "tmp"
    tmp.mkdir()
    code = "import sys; from vramplan.cli import main; main(sys.argv[1:])"
    seqs = ",".join(str(s) for s in range(32, 32 * 40, 32))  # 39 points: minutes, never finished here
    proc = subprocess.Popen([sys.executable, "-c", code, "profile", "-m", "vramplan-debug", "--device", "cpu",
                             "--seq", seqs, "--no-trace", "--steps", "2", "-o", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "TMPDIR": str(tmp), "PYTHONUNBUFFERED": "1"})
    return proc, out, tmp


def _wait_for_profiles(proc, out: Path, n: int, timeout: float = 240.0) -> None:
    import time

    t0 = time.monotonic()
    while len(list(out.glob("*.json"))) < n:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() - t0 < timeout, "no profile written in time"
        time.sleep(0.05)


@pytest.mark.torch
@pytest.mark.slow
@pytest.mark.parametrize("sig,code", [("SIGINT", 130), ("SIGTERM", 143)])
def test_14_signal_stops_the_sweep_keeps_profiles_and_temporaries_go(tmp_path, sig, code):
    import signal

    from vramplan.profile.store import load_profiles

    proc, out, tmp = _profile_sweep(tmp_path)
    _wait_for_profiles(proc, out, 2)
    proc.send_signal(getattr(signal, sig))
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == code, stderr
    assert "Traceback" not in stderr and f"error: interrupted ({sig})" in stderr
    problems: list[str] = []
    kept = load_profiles(out, problems=problems)
    assert len(kept) >= 2 and not problems  # every stored profile is whole
    assert len(kept) < 39  # the sweep stopped
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no half-written file
    assert not [p.name for p in tmp.iterdir() if p.name.startswith("vramplan-random-")]  # no leaked checkpoint


@pytest.mark.torch
def test_14_slow_sweep_is_announced(cli_run, tmp_path, monkeypatch):
    """``profile --seq 99999`` on the tiny model runs minutes on a CPU: the expected time is said
    before the run (here the run itself is stopped right after the warning)."""
    import vramplan.cli.profile as cli_profile
    from vramplan.profile.timing import expected_seconds

    def stop(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_profile, "_run", stop)
    code, out, err = cli_run("profile", "-m", "vramplan-debug", "--device", "cpu", "--seq", "99999",
                             "--no-trace", "-o", str(tmp_path))
    assert code == 130
    assert "warning: this sweep will take about" in err and "min" in err
    arch = resolve("vramplan-debug")
    from types import SimpleNamespace

    from vramplan.scenario import Scenario

    assert expected_seconds(arch, Scenario(seq=99999), SimpleNamespace(steps=3), {"kind": "cpu"}) > 300
    assert expected_seconds(arch, Scenario(seq=128), SimpleNamespace(steps=3), {"kind": "cpu"}) < 10


# 9. configs transformers rejects -----------------------------------------------------------------
@pytest.mark.torch
@pytest.mark.parametrize("over,field", [({"hidden_act": "nope"}, "hidden_act"),
                                        ({"rope_scaling": {"rope_type": "bogus"}}, "rope_scaling.rope_type"),
                                        ({"hidden_size": 66}, "hidden_size")])
def test_09_trace_reports_transformers_refusal_naming_the_field(cli_run, tmp_path, over, field):
    p = _config(tmp_path, **over)
    line = one_line_exit2(cli_run, "estimate", "-m", str(p), "--method", "trace")
    assert "transformers rejects" in line and f"field '{field}'" in line


# 10. corrupt safetensors ----------------------------------------------------------------------------
@pytest.mark.parametrize("blob", [b"\x00" * 3, random.Random(10).randbytes(64), (8).to_bytes(8, "little") + b'{"a":1}',
                                  (40).to_bytes(8, "little") + b'{"w":{"dtype":"F32","data_offsets":[0,99]}}'])
def test_10_corrupt_safetensors_is_refused_up_front(cli_run, tmp_path, blob):
    from vramplan.arch.lookup import find_entry

    w = tmp_path / "ckpt"
    w.mkdir()
    (w / "config.json").write_text(json.dumps(find_entry("vramplan-debug").config))
    (w / "model.safetensors").write_bytes(blob)
    line = one_line_exit2(cli_run, "profile", "-m", "vramplan-debug", "--weights", str(w), "--device", "cpu",
                          "--seq", "64", "--no-trace", "-o", str(tmp_path / "out"))
    assert "not a valid safetensors file" in line


@pytest.mark.torch
def test_10_a_real_safetensors_file_passes_the_check(tmp_path):
    import torch
    from safetensors.torch import save_file

    from vramplan.profile.runner import check_safetensors_header

    save_file({"w": torch.zeros(3, 5), "b": torch.ones(7, dtype=torch.bfloat16)}, str(tmp_path / "m.safetensors"))
    check_safetensors_header(tmp_path / "m.safetensors")


# 16. the rank rule: what peft trains is priced ----------------------------------------------------
def test_16_rank_above_a_dimension_matches_the_stored_real_run(cli_run):
    """``profiles/cpu`` holds a real CPU run of vramplan-debug at rank 64 (k_proj/v_proj are 64 -> 32);
    it used to be refused. Now it is priced, with a note, and close to what was measured."""
    from vramplan.profile.store import read_profile

    code, out, err = cli_run("estimate", "-m", "vramplan-debug", "--rank", "64", "--json")
    assert code == 0, err
    assert any("rank 64 exceeds the smaller dimension of k_proj (32), v_proj (32)" in n for n in json.loads(out)["notes"])
    prof = read_profile(next((ROOT / "profiles" / "cpu").glob("vramplan-debug_cpu_s128_b2_r64_*.json")))
    measured = prof.measured["allocated_peak_bytes"]
    b = vramplan_estimate(prof)
    assert abs(b.allocated_peak_bytes / measured - 1) < 0.05


def vramplan_estimate(prof):
    import vramplan
    from vramplan.arch.spec import Arch

    return vramplan.estimate(Arch.from_config(prof.arch_config, name=prof.model), prof.scenario, device="cpu")


def test_16_plan_on_a_one_wide_target(cli_run):
    code, out, err = cli_run("plan", "-m", "Qwen1.5-MoE-A2.7B", "--gpu", "h100", "--targets", "shared_expert_gate",
                             "--rank", "1", "--json")
    assert code in (0, 1) and "error" not in json.loads(out), err


def test_14_a_swallowed_signal_still_stops_the_sweep():
    """A library that catches the interrupt on its way up cannot make the sweep run on."""
    import signal

    from vramplan.cli.profile import Stopped, stoppable

    with pytest.raises(Stopped) as info, stoppable() as stop:
        try:
            os.kill(os.getpid(), signal.SIGINT)
        except BaseException:  # noqa: BLE001 - the swallowing library
            pass
        stop()
    assert info.value.exit_code == 130
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored


# found in review ----------------------------------------------------------------------------------
@pytest.mark.parametrize("over", [{"upper": 5}, {"scenario_targets": [["q_proj"]]}, {"scenario_autocast": "false"},
                                  {"step_seconds_all": [float("nan")]}, {"first_step_peak_bytes": "big"}])
def test_review_bad_profile_fields_are_skipped_and_named(cli_run, tmp_path, over):
    d = _stored(tmp_path)
    key, value = next(iter(over.items()))
    if key == "upper":
        d["predictions"]["analytic"]["upper"] = value
    elif key.startswith("scenario_"):
        d["scenario"][key[len("scenario_"):]] = value
    else:
        d["measured"][key] = value
    (tmp_path / "bad.json").write_text(json.dumps(d))  # NaN is written as the bare constant
    (tmp_path / "good.json").write_text(json.dumps(_stored(tmp_path)))
    for args in (("profiles", "list", str(tmp_path)), ("profiles", "show", str(tmp_path / "bad.json"), "--json")):
        code, out, err = cli_run(*args)
        assert code in (0, 2) and "Traceback" not in err and "internal error" not in err, (args, err)
    code, out, err = cli_run("validate", "--profiles", str(tmp_path), "--no-reference", "--json")
    assert code == 0 and any("bad.json" in w for w in json.loads(out)["problems"]), err


def test_review_short_reference_row_is_read(cli_run, tmp_path):
    lines = (ROOT / "vramplan" / "data" / "reference.csv").read_text().splitlines()
    header, row = lines[1], lines[2]
    p = tmp_path / "short.csv"
    p.write_text(lines[0] + "\n" + header + "\n" + ",".join(row.split(",")[:12]) + "\n")
    code, out, err = cli_run("plot", "validation", "--data", str(p), "-o", str(tmp_path / "v.png"))
    assert code in (0, 2) and "internal error" not in err and "Traceback" not in err, err


def test_review_closed_streams_keep_the_exit_code():
    import subprocess
    import sys

    code = "import sys; from vramplan.cli import main; main(sys.argv[1:])"
    r = subprocess.run([sys.executable, "-c", code, "plan", "-m", "nonexist", "--gpu", "h100"],
                       stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, timeout=60, close_fds=True,
                       preexec_fn=lambda: os.close(2))
    assert r.returncode == 2
    r = subprocess.run([sys.executable, "-c", code, "gpus"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                       timeout=60, preexec_fn=lambda: os.close(1))
    assert r.returncode == 0 and b"Traceback" not in r.stderr


def test_review_preset_with_full_drops_lora_fields(cli_run):
    code, out, err = cli_run("estimate", "-m", "Qwen3-0.6B", "--preset", "torchtune-2024", "--full",
                             "--quant", "none", "--json")
    assert code == 0, err
    assert json.loads(out)["config"]["loss"] == "legacy"


def test_review_broken_pipe_is_not_the_no_fit_code():
    import subprocess
    import sys

    code = "import sys; from vramplan.cli import main; main(sys.argv[1:])"
    p = subprocess.Popen([sys.executable, "-c", code, "models", "--json"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    p.stdout.read(10)
    p.stdout.close()
    p.wait(timeout=60)
    assert p.returncode in (0, 141) and b"Traceback" not in p.stderr.read()


@pytest.mark.torch
def test_review_cpu_trace_counts_no_cuda_dequant():
    """On the CPU device the trace is the CPU program: no CUDA in-kernel dequantization above 1536 rows."""
    from vramplan.scenario import Scenario
    from vramplan.trace import trace

    a = resolve("vramplan-debug")
    cpu = trace(a, Scenario(seq=2048, lora_dropout=0.0), device="cpu")
    cuda = trace(a, Scenario(seq=2048, lora_dropout=0.0))
    assert not cpu.get("temporary/fused_dequant")
    assert cuda.extra["first_step_by_component"].get("temporary/fused_dequant", 0) >= 0

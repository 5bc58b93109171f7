"""``vramplan profile --gpus 2 --strategy ddp|fsdp``: the command runs itself under torchrun (gloo), each
rank measures with the CPU tracker and stores its own profile (strategy, world size and rank recorded),
the profiles load, and ``validate`` prices each with its own rank."""

import json

import pytest

pytest.importorskip("torch")
pytest.importorskip("bitsandbytes")

from vramplan.profile.store import ProfileError, load_profiles, validate  # noqa: E402

pytestmark = pytest.mark.torch


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_rank_profile_writes_one_profile_per_rank(tmp_path, cli_run, strategy):
    code, out, err = cli_run("profile", "-m", "vramplan-debug", "--device", "cpu", "--gpus", "2", "--strategy",
                             strategy, "--seq", "64", "--batch", "2", "--steps", "2", "-o", str(tmp_path), "--json")
    assert code == 0, err
    recs = json.loads(out)
    problems: list[str] = []
    stored = load_profiles(tmp_path, problems=problems)
    assert not problems and len(stored) == len(recs) == 2
    assert sorted(p.scenario.process_rank for p in stored) == [0, 1]
    for p in stored:
        assert p.scenario.strategy.value == strategy and p.scenario.world_size == 2
        assert p.run["parallel"] == {"strategy": strategy, "world_size": 2, "rank": p.scenario.process_rank,
                                     "backend": "gloo", "launcher": "torchrun"}
        assert f"_{strategy}-w2r{p.scenario.process_rank}_" in p.path.name
        # the rank's measured peak and the trace's prediction for that rank: the same program, read by
        # the same tracker (the loader differs: random weights through the materialize or pretrained path)
        assert p.predictions["trace"] is not None, p.run["prediction_notes"]
        assert p.measured["oom"] is None
        assert abs(p.error("trace")) <= 0.02, p.error("trace")
    # validate prices every rank with its own scenario (trace engine here; the analytic engine says in
    # one line that it does not price the strategy yet, and the row is out, never priced as one GPU)
    from vramplan.trace import trace
    from vramplan.validate import profile_points, validate_points

    rows = validate_points(profile_points(stored), estimator=trace)
    assert [r.status for r in rows] == ["in", "in"] and all(abs(r.error) <= 0.02 for r in rows)
    rows = validate_points(profile_points(stored))
    assert [r.status for r in rows] == ["out", "out"] and all("not priced" in r.reason for r in rows)


def test_parallel_record_must_agree_with_the_scenario():
    from pathlib import Path

    [path] = [p for p in sorted(Path(__file__).parents[2].joinpath("profiles", "cpu").glob("*ddp-w2r1*.json"))][:1]
    d = json.loads(path.read_text())
    validate(d)
    d["run"]["parallel"]["rank"] = 0
    with pytest.raises(ProfileError, match="disagrees with the scenario"):
        validate(d)
    d["run"]["parallel"]["rank"] = 2
    with pytest.raises(ProfileError, match="is not a rank"):
        validate(d)
    del d["run"]["parallel"]  # older profiles have none: still valid
    d["scenario"] = {k: v for k, v in d["scenario"].items() if k not in ("gpus", "strategy", "process_rank")}
    validate(d)

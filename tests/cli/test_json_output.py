"""``--json`` keeps standard output one JSON document, whatever the libraries print on the way."""

import json


def test_library_prints_go_to_stderr_under_json(cli_run, monkeypatch):
    """DeepSpeed's import prints its accelerator notice to stdout (its logger's stream handler); under
    ``--json`` that line must land on stderr, not break the JSON."""
    import vramplan.analytic as analytic

    real = analytic.estimate

    def noisy(*a, **kw):
        print("[WARNING] [real_accelerator.py] Setting accelerator to CPU.")
        return real(*a, **kw)

    monkeypatch.setattr(analytic, "estimate", noisy)
    code, out, err = cli_run("estimate", "--model", "Qwen3-0.6B", "--json")
    assert code == 0, err
    assert json.loads(out)["allocated_peak_bytes"] > 0
    assert "Setting accelerator to CPU" in err and "Setting accelerator" not in out


def test_without_json_stdout_is_untouched(cli_run, monkeypatch):
    import vramplan.analytic as analytic

    real = analytic.estimate

    def noisy(*a, **kw):
        print("library line")
        return real(*a, **kw)

    monkeypatch.setattr(analytic, "estimate", noisy)
    code, out, _ = cli_run("estimate", "--model", "Qwen3-0.6B")
    assert code == 0 and "library line" in out

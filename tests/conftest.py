"""Shared test setup: never touch the network, and keep matplotlib headless."""

import contextlib
import os

import pytest
from hypothesis import HealthCheck, settings

#: Fuzz budgets: "ci" (the default) keeps every property to a few seconds and reproducible; "deep"
#: is for a hunt on a quiet machine (HYPOTHESIS_PROFILE=deep pytest tests/...fuzz...).
settings.register_profile("ci", max_examples=300, deadline=None, derandomize=True, database=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("deep", max_examples=20_000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

os.environ.setdefault("MPLBACKEND", "Agg")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"


@contextlib.contextmanager
def _columns(width: str):
    saved = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = width
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = saved


@pytest.fixture
def cli_run():
    """Run the real console entry point in-process; returns (exit_code, stdout, stderr)."""
    import io
    import sys
    from contextlib import redirect_stderr, redirect_stdout

    from vramplan.cli import main

    def run(*args: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        code = 0
        # rich sizes its tables to COLUMNS when the output is not a terminal (else 80): a fixed width, so the
        # tables read the same under plain pytest and its xdist workers
        with redirect_stdout(out), redirect_stderr(err), _columns("160"):
            try:
                main(list(args))
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        return code, out.getvalue(), err.getvalue()

    saved = sys.argv
    try:
        yield run
    finally:
        sys.argv = saved

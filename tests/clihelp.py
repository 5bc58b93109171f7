"""Assertions shared by the CLI tests (importable because pytest puts tests/ on sys.path)."""


def one_line_exit2(cli_run, *args: str) -> str:
    """Run the CLI; assert the bad-input contract (exit 2, one 'error:' line, no traceback); return it."""
    code, out, err = cli_run(*args)
    assert code == 2, (code, out, err)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err + out
    return lines[0]

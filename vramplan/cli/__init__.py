"""The ``vramplan`` command: a thin click layer over the library.

Each command lives in the module of its name and is imported only when invoked, so ``vramplan estimate``
never pays for (or imports) torch. Every user error becomes one line on stderr and exit code 2.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import sys

import click

from vramplan.errors import VramplanError

#: Table width when output is piped rather than shown on a terminal.
WIDE_COLUMNS = 140

#: command name -> (module, attribute, one-line help). Modules load lazily.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "estimate": ("vramplan.cli.estimate", "estimate", "Memory budget of one fine-tuning step."),
    "models": ("vramplan.cli.models", "models", "List the offline model registry."),
    "plan": ("vramplan.cli.plan", "plan", "What fits a GPU: largest seq, batch and rank."),
    "gpus": ("vramplan.cli.gpus", "gpus", "List the GPU catalog."),
    "profile": ("vramplan.cli.profile", "profile", "Run real QLoRA steps and store a profile."),
    "profiles": ("vramplan.cli.profiles", "profiles", "Browse stored profiles."),
    "calibrate": ("vramplan.cli.calibrate", "calibrate", "Fit runtime constants from profiles."),
    "validate": ("vramplan.cli.validate", "validate", "Predicted vs measured, with error %."),
    "plot": ("vramplan.cli.plot", "plot", "Charts: breakdown, seq sweep, predicted vs measured."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module, attr, _ = COMMANDS[name]
        return getattr(importlib.import_module(module), attr)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, help_) for name, (_, _, help_) in COMMANDS.items()]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="vramplan")
def cli() -> None:
    """Will this QLoRA run fit? Exact GPU-memory budgets for LoRA/QLoRA fine-tuning."""


#: Exit codes: a script can tell every outcome apart (``plan``: 0 fits, 1 does not fit).
EXIT_OK, EXIT_NO_FIT, EXIT_BAD_INPUT, EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_BROKEN_PIPE = 0, 1, 2, 3, 130, 141
#: click < 8.2 has no NoArgsIsHelpError: an exception class nothing raises stands in for it there.
_NO_ARGS_IS_HELP = getattr(click.exceptions, "NoArgsIsHelpError", type("_NeverRaised", (Exception,), {}))


def fail(message: str, code: int = EXIT_BAD_INPUT, as_json: bool = False) -> "NoReturn":  # type: ignore[name-defined]  # noqa: F821
    """One line on stderr and exit ``code``; with ``--json`` also ``{"error", "exit_code"}`` on stdout."""
    line = " ".join(str(message).split())
    if as_json:
        _write(sys.stdout, json.dumps({"error": line, "exit_code": code}) + "\n")
    _write(sys.stderr, f"error: {line}\n")
    sys.exit(code)


def _write(stream: "TextIO", text: str) -> None:  # type: ignore[name-defined]  # noqa: F821
    """Write and flush; a stream that cannot take it (a full disk, a closed pipe, a closed descriptor:
    ``None``) is let go quietly."""
    if stream is None:
        return
    try:
        stream.write(text)
        stream.flush()
    except (OSError, ValueError):
        _silence(stream)


def _silence(stream: "TextIO") -> None:  # type: ignore[name-defined]  # noqa: F821
    """Point a broken standard stream at /dev/null, so the interpreter's last flush raises nothing."""
    if stream is None:
        return
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), stream.fileno())
    except (OSError, ValueError):
        pass


def _tolerant_encoding() -> None:
    """Characters the terminal's encoding lacks (``PYTHONIOENCODING=ascii``: '·', '×', '≈') are
    replaced instead of raising UnicodeEncodeError midway through a table."""
    for stream in (sys.stdout, sys.stderr):
        if stream is not None and hasattr(stream, "reconfigure") and (stream.encoding or "").lower().replace("-", "") != "utf8":
            try:
                stream.reconfigure(errors="replace")
            except (OSError, ValueError):
                pass


def _interrupted(e: KeyboardInterrupt, as_json: bool) -> "NoReturn":  # type: ignore[name-defined]  # noqa: F821
    """Ctrl-C (exit 130), or a signal a long command turned into one (``cli/profile.py``: 128 + signal)."""
    fail(f"interrupted ({e})" if str(e) else "interrupted", getattr(e, "exit_code", EXIT_INTERRUPTED), as_json)


def main(argv: list[str] | None = None) -> None:
    """Console entry point, never a traceback: exit 0 (1 where ``plan`` does not fit), 2 for a user
    error, 3 for a bug in vramplan (set ``VRAMPLAN_DEBUG=1`` for its traceback), 130 when
    interrupted. With ``--json``, an error is also one JSON object on stdout."""
    args = list(sys.argv[1:] if argv is None else argv)
    as_json = "--json" in args
    if not (sys.stdout is not None and sys.stdout.isatty()) and "COLUMNS" not in os.environ:
        # rich wraps tables at 80 columns when piped; logs and CI read better unwrapped.
        os.environ["COLUMNS"] = str(WIDE_COLUMNS)
    _tolerant_encoding()
    from vramplan.cli.common import JSON_OUT

    real_stdout = sys.stdout
    try:
        # --json: stdout carries the JSON document only; what libraries print goes to stderr
        with contextlib.redirect_stdout(sys.stderr) if as_json else contextlib.nullcontext():
            JSON_OUT.append(real_stdout)
            try:
                rv = cli.main(args=args, prog_name="vramplan", standalone_mode=False)
            finally:
                JSON_OUT.pop()
        if sys.stdout is not None:  # None: the descriptor was closed (``>&-``); nothing to flush
            sys.stdout.flush()
    except VramplanError as e:
        fail(str(e), as_json=as_json)
    except click.exceptions.Abort as e:  # click turns a KeyboardInterrupt (or EOF at a prompt) into Abort
        cause = e.__context__
        if isinstance(cause, KeyboardInterrupt):
            _interrupted(cause, as_json)
        fail("aborted", EXIT_INTERRUPTED, as_json)
    except _NO_ARGS_IS_HELP as e:  # bare `vramplan`: the help, not an error (click >= 8.2)
        click.echo(e.format_message())
        sys.exit(0)
    except click.ClickException as e:  # usage errors: one line, exit 2
        fail(e.format_message(), as_json=as_json)
    except KeyboardInterrupt as e:
        _interrupted(e, as_json)
    except BrokenPipeError:  # the reader went away (``| head``): as a shell's SIGPIPE death
        _silence(sys.stdout)
        sys.exit(EXIT_BROKEN_PIPE)
    except OSError as e:  # stdout itself failed (``> /dev/full``): say so on stderr
        _silence(sys.stdout)
        fail(f"cannot write the output: {e.strerror or e}")
    except Exception as e:  # noqa: BLE001 - a bug: one line, its own exit code, never "does not fit"
        if os.environ.get("VRAMPLAN_DEBUG"):
            raise
        fail(f"internal error ({type(e).__name__}: {e}); this is a bug in vramplan, rerun with "
             "VRAMPLAN_DEBUG=1 for the traceback", EXIT_INTERNAL, as_json)
    sys.exit(rv if isinstance(rv, int) else 0)

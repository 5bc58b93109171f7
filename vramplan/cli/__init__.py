"""The ``vramplan`` command: a thin click layer over the library.

Each command lives in its own module and is imported only when invoked, so ``vramplan estimate``
never pays for (or imports) torch. Every user error becomes one line on stderr and exit code 2.
"""

from __future__ import annotations

import importlib
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
    "gpus": ("vramplan.cli.plan", "gpus", "List the GPU catalog."),
    "profile": ("vramplan.cli.profile", "profile", "Run real QLoRA steps and store a profile."),
    "profiles": ("vramplan.cli.profile", "profiles", "Browse stored profiles."),
    "calibrate": ("vramplan.cli.calibrate", "calibrate", "Fit runtime constants from profiles."),
    "validate": ("vramplan.cli.calibrate", "validate", "Predicted vs measured, with error %."),
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


def fail(message: str) -> "NoReturn":  # type: ignore[name-defined]  # noqa: F821
    """One line on stderr, exit 2."""
    click.echo(f"error: {message}", err=True)
    sys.exit(2)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: exit 0/1 from commands, 2 for any user error, never a traceback."""
    if not sys.stdout.isatty() and "COLUMNS" not in os.environ:
        # rich wraps tables at 80 columns when piped; logs and CI read better unwrapped.
        os.environ["COLUMNS"] = str(WIDE_COLUMNS)
    try:
        rv = cli.main(args=argv, prog_name="vramplan", standalone_mode=False)
    except VramplanError as e:
        fail(str(e))
    except click.exceptions.Abort:
        fail("aborted")
    except click.exceptions.NoArgsIsHelpError as e:  # bare `vramplan`: the help, not an error
        click.echo(e.format_message())
        sys.exit(0)
    except click.ClickException as e:  # usage errors: one line, exit 2
        fail(e.format_message().replace("\n", " "))
    except KeyboardInterrupt:
        fail("interrupted")
    except BrokenPipeError:
        sys.exit(1)
    sys.exit(rv if isinstance(rv, int) else 0)

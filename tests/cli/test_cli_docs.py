"""docs/cli.md documents every command, argument and flag the CLI really has (read from click itself),
so the reference cannot silently fall behind the code."""

from __future__ import annotations

import re
from pathlib import Path

import click
import pytest

from vramplan.cli import COMMANDS, cli

DOC = Path(__file__).resolve().parents[2] / "docs" / "cli.md"


def _commands() -> list[tuple[str, click.Command]]:
    ctx = click.Context(cli, info_name="vramplan")
    out: list[tuple[str, click.Command]] = []

    def walk(path: str, cmd: click.Command) -> None:
        out.append((path, cmd))
        if isinstance(cmd, click.Group):
            sub = click.Context(cmd, info_name=path, parent=ctx)
            for name in cmd.list_commands(sub):
                walk(f"{path} {name}", cmd.get_command(sub, name))

    for name in COMMANDS:
        walk(f"vramplan {name}", cli.get_command(ctx, name))
    return out


@pytest.fixture(scope="module")
def doc() -> str:
    return DOC.read_text(encoding="utf-8")


def _section(doc: str, path: str) -> str:
    """The text under the heading for ``path``, up to the next heading of the same or a higher level."""
    m = re.search(rf"^(#+) `?{re.escape(path)}`?\s*$", doc, re.M)
    assert m, f"no heading for {path}"
    level = len(m.group(1))
    rest = doc[m.end():]
    nxt = re.search(rf"^#{{1,{level}}} ", rest, re.M)
    return rest[:nxt.start()] if nxt else rest


def _mentions(text: str, opt: str) -> bool:
    return re.search(rf"`{re.escape(opt)}[` ]|/ `{re.escape(opt)}`", text) is not None


@pytest.mark.parametrize("path,cmd", _commands(), ids=lambda v: v if isinstance(v, str) else "")
def test_command_documented(doc, path, cmd):
    from dataclasses import fields

    from vramplan.scenario import Scenario

    section = _section(doc, path)
    shared = {"scenario": _section(doc, "Scenario flags"), "gpu": _section(doc, "GPU flags")}
    takes_scenario = any(p.name == "quant" for p in cmd.params)
    scenario_names = ({f.name for f in fields(Scenario)} | {"model", "preset"}) if takes_scenario else set()
    for p in cmd.params:
        if p.name == "help":
            continue
        if isinstance(p, click.Argument):
            assert p.human_readable_name in section, f"{path}: argument {p.human_readable_name} undocumented"
            continue
        # scenario flags live in the shared table (which the section must point to); the rest in the section
        where = shared["scenario"] if p.name in scenario_names else section
        if p.name in scenario_names:
            assert "Scenario flags" in section, f"{path} takes scenario flags but does not point to them"
        for opt in list(p.opts) + list(p.secondary_opts):
            if opt.startswith("--"):
                assert _mentions(where, opt), f"{path}: {opt} undocumented"
    # and at least one example invoking it
    assert re.search(rf"^\s*{re.escape(path)}\b", section, re.M) or any(
        re.search(rf"^\s*{re.escape(path)} ", _section(doc, f"{path} {sub}"), re.M)
        for sub in getattr(cmd, "commands", {})), f"no example of {path}"

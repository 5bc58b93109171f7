"""What was understood from a framework config: the framework and version, every key read with its
value, the defaults that filled the rest, the keys ignored, the command-line overrides and the notes."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table


def _value(v: Any) -> str:
    from rich.markup import escape

    if isinstance(v, (list, tuple)):
        return escape(", ".join(str(x) for x in v))
    return escape(str(v))


def render_config(resolved: Any, scenario: Any, command_line: dict[str, Any], console: Console) -> None:
    fw = resolved.framework
    t = Table(title=f"{fw.title} {resolved.version} ({resolved.version_source}) · "
                    f"{', '.join(str(p) for p in resolved.source.files) or 'command after --'}",
              title_justify="left")
    t.add_column("key")
    t.add_column("value")
    t.add_column("from")
    for k, v in resolved.used.items():
        t.add_row(k, _value(v), "config")
    for k, v in resolved.defaults.items():
        t.add_row(k, _value(v), f"{fw.title} default")
    for k, v in command_line.items():
        t.add_row(f"--{k.replace('_', '-')}", _value(v), "command line (wins)")
    console.print(t)
    if resolved.ignored:
        console.print(f"ignored (no memory effect vramplan prices): {_value(resolved.ignored)}")
    s = scenario
    console.print("priced as: " + " · ".join(f"{k}={_value(v)}" for k, v in s.to_dict().items()))
    for n in resolved.notes:
        console.print(f"note: {_value(n)}")

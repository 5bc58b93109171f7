"""The one exception family the CLI turns into a one-line error and exit code 2."""

import json
import os
from pathlib import Path


class VramplanError(ValueError):
    """Bad input or an impossible request, with a message fit to show a user as one line."""


def read_json_file(path: "str | os.PathLike[str]", what: str, error: type[VramplanError]) -> object:
    """Parse a JSON file; an unreadable or malformed file raises ``error`` with a one-line message."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise error(f"cannot read {what} {p}: {e.strerror}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise error(f"malformed {what} {p}: not valid JSON ({e.msg} at line {e.lineno})") from None

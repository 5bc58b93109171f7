"""The one exception family the CLI turns into a one-line error and exit code 2."""

import json
import os
import stat
from pathlib import Path


class VramplanError(ValueError):
    """Bad input or an impossible request, with a message fit to show a user as one line."""


def read_json_file(path: "str | os.PathLike[str]", what: str, error: type[VramplanError]) -> object:
    """Parse a JSON file; an unreadable, non-regular, non-UTF-8, too deeply nested or malformed file
    raises ``error`` with a one-line message (never a traceback; a FIFO is refused, not opened)."""
    p = Path(path)
    return parse_json(read_text_file(p, what, error), f"{what} {p}", error)


def read_text_file(path: "str | os.PathLike[str]", what: str, error: type[VramplanError]) -> str:
    """A regular file's UTF-8 text; anything else (a FIFO or device, unreadable, not UTF-8) raises
    ``error`` with a one-line message, before a FIFO could block the read."""
    p = Path(path)
    try:
        if not stat.S_ISREG(p.stat().st_mode):
            raise error(f"cannot read {what} {p}: not a regular file")
        return p.read_bytes().decode("utf-8")
    except OSError as e:
        raise error(f"cannot read {what} {p}: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise error(f"malformed {what} {p}: not valid UTF-8 (byte {e.start})") from None


def parse_json(text: str, what: str, error: type[VramplanError]) -> object:
    """``json.loads`` with every way it can fail turned into ``error`` (one line naming ``what``)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise error(f"malformed {what}: not valid JSON ({e.msg} at line {e.lineno})") from None
    except RecursionError:
        raise error(f"malformed {what}: nested too deeply to be a config") from None

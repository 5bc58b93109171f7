"""Resolve ``--model``: registry name or alias → local config.json / model dir → hub id (online only).

Lazy and cached; nothing is read at import. Never ``trust_remote_code``: only config.json is read,
as JSON, and no code from a model repository is executed.
"""

from __future__ import annotations

import copy
import difflib
import http.client
import json
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from vramplan.arch.spec import Arch, ArchError
from vramplan.errors import parse_json, read_json_file


class ModelNotFound(ArchError):
    """No registry entry, file or reachable hub repository matches the name."""


@dataclass(frozen=True)
class RegistryEntry:
    """One model of the offline registry."""

    name: str
    hub_id: str
    family: str
    source: str
    """URL of the config.json the numbers came from."""
    config: dict[str, Any]
    aliases: tuple[str, ...] = ()
    note: str = ""
    """Where a value of ``config`` did not come from ``source``, and where it came from instead."""

    def arch(self) -> Arch:
        # a copy: the registry is cached for the process, and an Arch's config (or a caller's edit of
        # it) must never reach the stored entry
        return Arch.from_config(copy.deepcopy(self.config), name=self.name)


def _norm(name: str) -> str:
    return name.strip().lower()


@lru_cache(maxsize=1)
def registry() -> tuple[RegistryEntry, ...]:
    """All registry entries, loaded from ``vramplan/arch/registry/*.json``."""
    entries: list[RegistryEntry] = []
    folder = resources.files("vramplan.arch") / "registry"
    for item in sorted(folder.iterdir(), key=lambda p: p.name):
        if not item.name.endswith(".json"):
            continue
        data = json.loads(item.read_text(encoding="utf-8"))
        for m in data["models"]:
            entries.append(RegistryEntry(
                name=m["name"], hub_id=m["hub_id"], family=data["family"], source=m["source"],
                config=m["config"], aliases=tuple(m.get("aliases", ())), note=m.get("note", ""),
            ))
    return tuple(entries)


@lru_cache(maxsize=1)
def _index() -> dict[str, RegistryEntry]:
    idx: dict[str, RegistryEntry] = {}
    for e in registry():
        for key in (e.name, e.hub_id, *e.aliases):
            idx.setdefault(_norm(key), e)
    return idx


def find_entry(name: str) -> RegistryEntry | None:
    """Registry entry by short name, hub id or alias (case-insensitive)."""
    return _index().get(_norm(name))


def suggestions(name: str, n: int = 3) -> list[str]:
    """Close registry names for an unknown one (matched on names, aliases and hub-id tails)."""
    keys: dict[str, str] = {}
    for e in registry():
        for key in (e.name, e.hub_id.split("/")[-1], *e.aliases):
            keys.setdefault(_norm(key), e.name)
    hits = difflib.get_close_matches(_norm(name).split("/")[-1], list(keys), n=2 * n, cutoff=0.5)
    return list(dict.fromkeys(keys[h] for h in hits))[:n]


def load_config_file(path: Path) -> dict[str, Any]:
    """Read a config.json (or the one inside a model directory) as a dict."""
    if path.is_dir():
        path = path / "config.json"
        if not path.exists():
            raise ModelNotFound(f"no config.json in directory {path.parent}")
    data = read_json_file(path, "config.json", ArchError)
    if not isinstance(data, dict):
        raise ArchError(f"malformed config.json {path}: expected a JSON object")
    return data


#: A hub repository id as the hub accepts it: owner/name of letters, digits, '-', '_' and '.'.
HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}")


def _looks_like_hub_id(name: str) -> bool:
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not name.startswith((".", "/", "~"))


def _offline() -> bool:
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes")
               for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "VRAMPLAN_OFFLINE"))


def fetch_hub_config(hub_id: str, revision: str = "main", timeout: float = 10.0) -> dict[str, Any]:
    """Download only ``config.json`` of a hub repository (no code, no weights)."""
    if _offline():
        raise ModelNotFound(f"'{hub_id}' is not in the offline registry and HF_HUB_OFFLINE is set")
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    if not re.fullmatch(r"https?://[^\s/]+(/[^\s]*)?", endpoint):
        raise ModelNotFound(f"HF_ENDPOINT '{endpoint}' is not an http(s) URL")
    url = f"{endpoint}/{urllib.parse.quote(hub_id, safe='/')}/resolve/{revision}/config.json"
    headers = {"User-Agent": "vramplan"}
    token = os.environ.get("HF_TOKEN")
    if token:
        headers["Authorization"] = f"Bearer {token}"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout) as r:
            raw = r.read()
    except urllib.error.HTTPError as e:
        if e.code in (401, 403):
            raise ModelNotFound(f"hub repository '{hub_id}' is gated or private (HTTP {e.code}); "
                                "set HF_TOKEN or pass a local config.json") from None
        raise ModelNotFound(f"hub repository '{hub_id}' has no config.json (HTTP {e.code})") from None
    except (urllib.error.URLError, TimeoutError, OSError, ValueError, http.client.HTTPException) as e:
        reason = getattr(e, "reason", e)
        raise ModelNotFound(f"'{hub_id}' is not in the offline registry and the hub is unreachable "
                            f"({reason}); pass a local config.json instead") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ArchError(f"hub config.json of '{hub_id}' is not valid UTF-8") from None
    data = parse_json(text, f"hub config.json of '{hub_id}'", ArchError)
    if not isinstance(data, dict):
        raise ArchError(f"hub config.json of '{hub_id}' is not a JSON object")
    return data


def resolve(model: str) -> Arch:
    """``--model`` value → Arch, by the lookup chain above."""
    model = str(model).strip()
    if not model:
        raise ModelNotFound("no model given")
    entry = find_entry(model)
    if entry is not None:
        return entry.arch()
    path = Path(model).expanduser()
    try:
        exists = path.exists()
    except OSError as e:  # e.g. a path inside a directory the user cannot enter
        raise ModelNotFound(f"cannot read {model}: {e.strerror or e}") from None
    except ValueError:  # an embedded NUL byte
        raise ModelNotFound(f"not a valid path or model name: {model!r}") from None
    if exists or model.endswith(".json"):
        if not exists:
            raise ModelNotFound(f"config file not found: {model}")
        return Arch.from_config(load_config_file(path), name=str(path))
    if _looks_like_hub_id(model):
        if not HUB_ID.fullmatch(model):
            raise ModelNotFound(f"'{model}' is not a valid hub id (owner/name of letters, digits, '-', '_', '.')")
        return Arch.from_config(fetch_hub_config(model), name=model)
    hint = suggestions(model)
    more = f"; did you mean {', '.join(hint)}?" if hint else "; see `vramplan models`"
    raise ModelNotFound(f"unknown model '{model}'{more}")

"""Writing a plan's changes back in a framework's own words: the keys and values it spells
(``framework_changes``, ``describe_change``) and the patched text of the user's config file or launch
script (``patched_text``: YAML edited line by line so comments and layout survive, JSON re-dumped, a
shell script's command line rewritten in place; nothing is executed)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from vramplan.frameworks import FRAMEWORKS, Resolved, Source, _read_text, set_dotted
from vramplan.frameworks.base import ConfigError, Framework


def framework_changes(fw: Framework, changes: dict[str, Any]) -> list[tuple[str | None, str, Any]]:
    """Scenario changes -> (framework key or None, the field, the value as the framework writes it)."""
    out = []
    for fieldname, value in changes.items():
        key = fw.plan_keys.get(fieldname)
        val = fw.spell(fieldname, value) if (fw.spell and key) else value
        out.append((key, fieldname, val))
        if key and fieldname in fw.companions:
            other, v = fw.companions[fieldname]
            out.append((other, fieldname, v))
    return out


def describe_change(fw: Framework, key: str | None, fieldname: str, value: Any) -> str:
    """One change in the framework's words: ``sequence_len: 3072`` / ``--max_length 3072``."""
    if key is None:
        return f"{fieldname}={value} (no {fw.title} key: a vramplan scenario change)"
    if fw.style == "cli":
        v = " ".join(str(x) for x in value) if isinstance(value, (list, tuple)) else _cli_value(value)
        return f"--{key} {v}"
    return f"{key}: {_yaml_value(value)}"


def _cli_value(v: Any) -> str:
    return ("true" if v else "false") if isinstance(v, bool) else str(v)


def _yaml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(str(x) for x in v) + "]"
    return str(v)


def patched_text(resolved: Resolved, changes: list[tuple[str | None, str, Any]]
                 ) -> tuple[Path, str, list[tuple[str | None, str, Any]]]:
    """(the file to patch, its patched text, the changes written): the config file for YAML/JSON
    frameworks, the script holding the launch command for CLI ones (and for a value the script sets on
    the command line). Changes without a framework key are not written."""
    src, fw = resolved.source, resolved.framework
    keyed = [c for c in changes if c[0] is not None]
    if fw.name == "hf":
        return _patch_hf(src, keyed)
    on_line = [c for c in keyed if c[0] in src.overrides]
    if on_line and src.script is None:
        raise ConfigError(f"the change sets {', '.join(str(c[0]) for c in on_line)}, given in the command after --: "
                          "change it there (--write patches files)")
    if src.script is not None and (fw.style == "cli" or src.yaml_file is None or on_line):
        text = _read_text(src.script)
        return src.script, _patch_cli(text, src, [(c[0], c[2]) for c in keyed]), keyed
    if src.yaml_file is None:
        raise ConfigError("--write needs a config file or a script (a command after -- has nothing to patch)")
    text = _read_text(src.yaml_file)
    if src.yaml_file.suffix.lower() == ".json":
        data = json.loads(text)
        for k, _, v in keyed:
            set_dotted(data, str(k), v)
        return src.yaml_file, json.dumps(data, indent=2) + "\n", keyed
    return src.yaml_file, patch_yaml(text, [(str(c[0]), c[2]) for c in keyed]), keyed


def _patch_hf(src: Source, keyed: list[tuple[str | None, str, Any]]) -> tuple[Path, str, list[Any]]:
    """HF: the TrainingArguments JSON; a change of an adapter_config key is not written (the adapter is
    made by the script, the file only records it)."""
    if src.yaml_file is None:
        raise ConfigError("--write needs the TrainingArguments JSON among the --config files")
    data = json.loads(_read_text(src.yaml_file))
    written = []
    for c in keyed:
        section, _, name = str(c[0]).partition(".")
        if section == "training_args":
            data[name] = c[2]
            written.append(c)
    return src.yaml_file, json.dumps(data, indent=2) + "\n", written


_COMMENT = re.compile(r"""\s+#(?=(?:[^"']|"[^"]*"|'[^']*')*$)""")
"""A YAML comment: `` #`` outside quotes."""


def patch_yaml(text: str, changes: list[tuple[str, Any]]) -> str:
    """``text`` with each (dotted key, value) set: the key's value rewritten in place (its block too, when
    it was a block list or mapping; comments and layout around it kept), or the key added at the end of
    its section (a new section at the end of the document). A flow mapping on the way (``a: {b: 1}``) is
    refused rather than rewritten."""
    lines = text.splitlines()
    end_doc = next((i for i, ln in enumerate(lines) if ln.strip() == "..."), len(lines))
    for key, value in changes:
        parts = key.split(".")
        start, end, indent = 0, end_doc, 0
        depth, found = 0, None
        for depth, part in enumerate(parts):
            pat = re.compile(rf"^(\s*){re.escape(part)}\s*:(.*)$")
            found = next(((i, m) for i in range(start, end) if (m := pat.match(lines[i])) and len(m.group(1)) == indent),
                         None)
            if found is None:
                break
            i, m = found
            rest = _COMMENT.split(m.group(2), 1)[0].strip()
            if depth < len(parts) - 1:
                if rest:
                    raise ConfigError(f"cannot write {key}: '{part}' is not a block mapping ({rest[:40]})")
                start, end = i + 1, _block_end(lines, i, indent, end)
                indent = _child_indent(lines, start, end, indent)
        if found is not None:
            i, m = found
            comment = _COMMENT.search(m.group(2))
            tail = "  #" + m.group(2)[comment.end():] if comment else ""
            stop = _block_end(lines, i, indent, end, items=True)
            lines[i:stop] = [f"{' ' * indent}{parts[-1]}: {_yaml_value(value)}{tail}"]
            end_doc -= stop - i - 1
        else:
            new = [f"{' ' * (indent + 2 * d)}{p}:" for d, p in enumerate(parts[depth:-1])]
            new.append(f"{' ' * (indent + 2 * (len(parts) - 1 - depth))}{parts[-1]}: {_yaml_value(value)}")
            at = end if depth else end_doc
            lines[at:at] = new
            end_doc += len(new)
    return "\n".join(lines) + "\n"


def _block_end(lines: list[str], i: int, indent: int, end: int, items: bool = False) -> int:
    """The line after the block of key line ``i``: the first content line at ``indent`` or less (with
    ``items``, a ``- `` list item at ``indent`` still belongs to the block, as YAML allows)."""
    for j in range(i + 1, end):
        s = lines[j]
        if not s.strip() or s.lstrip().startswith("#"):
            continue
        ind = len(s) - len(s.lstrip())
        if ind < indent or (ind == indent and not (items and s.lstrip().startswith("- "))):
            return j
    return end


def _child_indent(lines: list[str], start: int, end: int, indent: int) -> int:
    for j in range(start, end):
        s = lines[j]
        if s.strip() and not s.lstrip().startswith("#"):
            return len(s) - len(s.lstrip())
    return indent + 2


def _patch_cli(text: str, src: Source, keyed: list[tuple[Any, Any]]) -> str:
    """The script with each key set where the command sets it: ``--key value(s)`` / ``--key=value``
    rewritten (a value may follow a line continuation; the next ``--flag`` is never taken), or a
    ``key=value`` override (torchtune, LLaMA-Factory) rewritten; else ``--key value`` (``key=value``
    for those two) added right after the launcher words. Comment lines are never touched."""
    fw = FRAMEWORKS[src.framework or ""]
    masked = "\n".join(" " * len(ln) if ln.lstrip().startswith("#") else ln for ln in text.split("\n"))
    sep = r"(?:[ \t]*\\\r?\n[ \t]*|[ \t]+)"
    assign = fw.name in ("torchtune", "llamafactory")
    for key, value in keyed:
        val = " ".join(str(x) for x in value) if isinstance(value, (list, tuple)) else _cli_value(value)
        patterns = [(re.compile(rf"(--{re.escape(f)})(=[^\s\\]+|(?:{sep}(?![-&|;#\\])[^\s\\]+)*)"), f"--{f} {val}")
                    for f in dict.fromkeys((key, key.replace("_", "-")))]
        patterns.insert(0, (re.compile(rf"(?<![\w.-]){re.escape(key)}=[^\s\\]+"), f"{key}={val}"))
        for pat, repl in patterns:
            m = pat.search(masked)
            if m:
                text = text[:m.start()] + repl + text[m.end():]
                masked = masked[:m.start()] + repl + masked[m.end():]
                break
        else:
            words = next((w for w in fw.launchers if re.search(_words(w), masked)), None)
            if words is None:
                raise ConfigError(f"cannot place {key} in {src.script}: its launch command was not found")
            m = re.search(_words(words), masked)
            add = f" {key}={val}" if assign else f" --{key} {val}"
            if fw.name == "torchtune":  # after the recipe name
                m2 = re.compile(_words(words) + r"[ \t]+\S+").search(masked)
                m = m2 or m
            text = text[:m.end()] + add + text[m.end():]
            masked = masked[:m.end()] + add + masked[m.end():]
    return text


def _words(words: tuple[str, ...]) -> str:
    return r"(?<![\w/.-])" + r"[ \t]+".join(re.escape(x) for x in words) + r"(?![\w.-])"

"""Token-length distributions of a dataset, for planning against the longest examples.

``load_lengths(path)`` reads one length per example from

- **JSONL** (``.jsonl`` / ``.ndjson``): each line a bare integer, or an object with a length field
  (``length``, ``num_tokens``, ``n_tokens``, ``token_count``, ``len``), or a list of token ids
  (``input_ids``), or a text field (``text``, or ``--column``) counted with ``--tokenizer``;
- **JSON** (``.json``): an array of such values;
- **CSV / TSV**: a column of the same names (or a single headerless column of integers);
- anything else: one integer per line.

Counting text needs ``transformers`` and a tokenizer. Tokenizers come from the Hugging Face hub, so
offline only a local tokenizer directory works; anything else fails with a message saying so.

``packing(...)`` compares padded batches with sequences packed to a fixed length: padded batches waste
tokens on padding, packed sequences are all full, so every packed step costs the memory of a full seq.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from vramplan.errors import VramplanError

#: Fields read as a length, in order of preference.
LENGTH_KEYS: tuple[str, ...] = ("length", "num_tokens", "n_tokens", "token_count", "tokens", "len",
                                "input_ids")
#: Fields read as text (tokenized with --tokenizer).
TEXT_KEYS: tuple[str, ...] = ("text", "content", "prompt")


class LengthsError(VramplanError):
    """A lengths file that is missing, empty, malformed or holds negative lengths."""


@dataclass(frozen=True)
class Lengths:
    """Token counts of a dataset's examples, in file order."""

    values: tuple[int, ...]
    source: str = ""
    """Where they came from (file, column, tokenizer)."""
    truncated_to: int | None = None
    """Set when longer examples were cut to this many tokens (``--seq`` with ``--lengths``)."""
    truncated: int = 0
    """How many examples were cut."""

    def __post_init__(self) -> None:
        if not self.values:
            raise LengthsError(f"no examples in {self.source or 'lengths'}")
        if max(self.values) <= 0:
            raise LengthsError(f"every example in {self.source or 'lengths'} has length 0")

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def total_tokens(self) -> int:
        return sum(self.values)

    @property
    def max(self) -> int:
        return max(self.values)

    @property
    def mean(self) -> float:
        return self.total_tokens / self.n

    def percentile(self, q: float) -> int:
        """Nearest-rank percentile: the smallest length with at least ``q`` % of examples at or below it."""
        if not 0 < q <= 100:
            raise LengthsError(f"percentile must be in (0, 100], got {q}")
        ordered = sorted(self.values)
        rank = max(1, math.ceil(q / 100 * len(ordered)))
        return ordered[rank - 1]

    def fraction_above(self, seq: int) -> float:
        """Share of examples longer than ``seq`` tokens."""
        return sum(1 for v in self.values if v > seq) / self.n

    def truncate(self, seq: int) -> "Lengths":
        """Examples cut to ``seq`` tokens, as ``max_seq_length`` / ``max_length`` truncation does."""
        cut = sum(1 for v in self.values if v > seq)
        return Lengths(tuple(min(v, seq) for v in self.values), source=self.source, truncated_to=seq,
                       truncated=cut)

    def summary(self) -> dict[str, Any]:
        return dict(source=self.source, n=self.n, total_tokens=self.total_tokens, mean=round(self.mean, 2),
                    p50=self.percentile(50), p90=self.percentile(90), p99=self.percentile(99),
                    max=self.max, truncated_to=self.truncated_to, truncated=self.truncated)


@dataclass(frozen=True)
class Packing:
    """Padded batches against packed sequences, at one sequence length and micro-batch."""

    seq: int
    """Length every example is padded/truncated to, and every packed sequence is filled to."""
    batch: int
    examples: int
    tokens: int
    """Real tokens after truncation to ``seq``."""
    padded_steps: int
    """Micro-batches of ``batch`` examples each: ceil(examples / batch)."""
    padded_waste: float
    """Share of the tokens of batches padded to ``seq`` that are padding."""
    dynamic_waste: float
    """Share that is padding when each batch pads to its longest example (file order)."""
    packed_sequences: int
    """ceil(tokens / seq): the fewest full sequences that hold every token."""
    packed_steps: int
    """ceil(packed_sequences / batch)."""

    @property
    def step_ratio(self) -> float:
        """Packed steps per padded step (< 1: packing needs fewer steps)."""
        return self.packed_steps / self.padded_steps

    def to_dict(self) -> dict[str, Any]:
        return dict(seq=self.seq, batch=self.batch, examples=self.examples, tokens=self.tokens,
                    padded_steps=self.padded_steps, padded_waste=round(self.padded_waste, 4),
                    dynamic_waste=round(self.dynamic_waste, 4), packed_sequences=self.packed_sequences,
                    packed_steps=self.packed_steps, step_ratio=round(self.step_ratio, 4))


def packing(lengths: Lengths, seq: int, batch: int) -> Packing:
    """Padding waste and step counts with and without packing to ``seq`` tokens.

    Memory: a packed step is always ``batch × seq`` tokens, so its peak is the estimate at ``seq``;
    a padded run reaches the same peak at the batch holding the longest example.
    """
    if seq <= 0 or batch <= 0:
        raise LengthsError("packing needs a positive seq and batch")
    vals = [min(v, seq) for v in lengths.values]
    n, tokens = len(vals), sum(vals)
    padded_steps = math.ceil(n / batch)
    dynamic = sum(max(vals[i:i + batch]) * len(vals[i:i + batch]) for i in range(0, n, batch))
    packed = math.ceil(tokens / seq)
    return Packing(seq=seq, batch=batch, examples=n, tokens=tokens, padded_steps=padded_steps,
                   padded_waste=1 - tokens / (n * seq), dynamic_waste=1 - tokens / dynamic if dynamic else 0.0,
                   packed_sequences=packed, packed_steps=math.ceil(packed / batch))


def longest_batch(lengths: Lengths, layout: str, seq: int, batch: int, *, pad_to_seq: bool = False) -> tuple[int, int]:
    """(seq, batch) of the micro-batch that holds the most tokens, by batch layout
    (``Scenario.packing``'s values), where a run's peak strikes:

    - ``none``: every row pads to the batch's longest example (transformers
      ``DataCollatorForSeq2Seq`` / ``DataCollatorWithPadding`` ``padding=True``, TRL, ms-swift,
      torchtune ``padded_collate_sft``), so the batch that draws the longest example is
      ``batch`` × its length; ``pad_to_seq`` (a collator padding to ``max_length``) makes it
      ``batch`` × ``seq`` whatever the data.
    - ``padding-free``: the one row holds its examples' real lengths; the fullest draws the ``batch``
      longest examples, T = their sum, priced as ``batch`` rows of ceil(T / batch) (the layout's one
      row of batch·seq tokens; at most batch − 1 tokens over T).
    - ``packed`` / ``packed-mask``: every row is filled to ``seq`` (axolotl multipack bins, TRL bfd,
      torchtune ``PackedDataset``): ``batch`` × ``seq`` whatever the lengths.
    Lengths are taken as given (``Lengths.truncate`` first for a run that truncates)."""
    if seq <= 0 or batch <= 0:
        raise LengthsError("longest_batch needs a positive seq and batch")
    if layout in ("packed", "packed-mask"):
        return seq, batch
    if layout == "padding-free":
        longest = sorted(lengths.values)[-batch:]
        return max(1, -(-sum(longest) // batch)), batch
    if layout != "none":
        raise LengthsError(f"unknown batch layout {layout!r}")
    return (seq if pad_to_seq else lengths.max), batch


# ------------------------------------------------------------------------------------------ loading
def _as_length(value: Any, where: str) -> int | None:
    """An int length from a JSON/CSV cell; None when the cell is text (needs a tokenizer)."""
    if isinstance(value, bool):
        raise LengthsError(f"{where}: expected a token count, got {value!r}")
    if isinstance(value, int):
        n = value
    elif isinstance(value, float):
        if not value.is_integer():
            raise LengthsError(f"{where}: length {value!r} is not a whole number")
        n = int(value)
    elif isinstance(value, list):
        return len(value)
    elif isinstance(value, str):
        s = value.strip()
        try:
            n = int(s)
        except ValueError:
            try:
                f = float(s)
            except ValueError:
                return None
            if not f.is_integer():
                raise LengthsError(f"{where}: length {value!r} is not a whole number") from None
            n = int(f)
    else:
        raise LengthsError(f"{where}: expected a token count, got {type(value).__name__}")
    if n < 0:
        raise LengthsError(f"{where}: negative length {n}")
    return n


def _pick(record: dict[str, Any], column: str | None, where: str) -> tuple[str, Any]:
    if column is not None:
        if column not in record:
            raise LengthsError(f"{where}: no column '{column}' (have: {', '.join(map(str, record))})")
        return column, record[column]
    for key in LENGTH_KEYS + TEXT_KEYS:
        if key in record:
            return key, record[key]
    raise LengthsError(f"{where}: no length or text column (looked for {', '.join(LENGTH_KEYS + TEXT_KEYS)}; "
                       "name one with --column)")


class _Collector:
    """Gathers lengths, and texts to tokenize in one batch at the end."""

    def __init__(self, tokenizer: str | None) -> None:
        self.tokenizer = tokenizer
        self.values: list[int | None] = []
        self.texts: dict[int, str] = {}

    def add(self, value: Any, where: str) -> None:
        n = _as_length(value, where)
        if n is None:
            if self.tokenizer is None:
                raise LengthsError(f"{where}: '{str(value)[:30]}' is text, not a token count; pass --tokenizer "
                                   "(a local tokenizer directory) to count its tokens")
            self.texts[len(self.values)] = str(value)
        self.values.append(n)

    def finish(self) -> list[int]:
        if self.texts:
            counts = count_tokens(list(self.texts.values()), self.tokenizer)  # type: ignore[arg-type]
            for i, c in zip(self.texts, counts):
                self.values[i] = c
        return [int(v) for v in self.values]  # type: ignore[arg-type]


def _read_jsonl(text: str, name: str, column: str | None, out: _Collector) -> None:
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{name} line {lineno}"
        try:
            item = json.loads(line)
        except json.JSONDecodeError as e:
            raise LengthsError(f"{where}: not valid JSON ({e.msg})") from None
        _add_item(item, column, where, out)


def _add_item(item: Any, column: str | None, where: str, out: _Collector) -> None:
    if isinstance(item, dict):
        _, value = _pick(item, column, where)
        out.add(value, where)
    elif isinstance(item, (int, float, str, list)) and not isinstance(item, bool):
        out.add(item, where)
    else:
        raise LengthsError(f"{where}: expected a length or an object, got {json.dumps(item)[:40]}")


def _read_csv(text: str, name: str, column: str | None, out: _Collector, delimiter: str) -> None:
    rows = list(csv.reader(io.StringIO(text), delimiter=delimiter))
    rows = [r for r in rows if any(c.strip() for c in r)]
    if not rows:
        return
    header = [c.strip() for c in rows[0]]
    headerless = all(_is_int(c) for c in header)
    if headerless:
        if len(header) != 1 and column is None:
            raise LengthsError(f"{name}: {len(header)} columns and no header; add a header naming the length "
                               "column")
        idx, body, first = 0, rows, 1
    else:
        key = column
        if key is None:
            key = next((k for k in LENGTH_KEYS + TEXT_KEYS if k in header), None)
            if key is None:
                raise LengthsError(f"{name}: no length or text column in header ({', '.join(header)}); name one "
                                   "with --column")
        if key not in header:
            raise LengthsError(f"{name}: no column '{key}' (have: {', '.join(header)})")
        idx, body, first = header.index(key), rows[1:], 2
    for lineno, row in enumerate(body, first):
        where = f"{name} line {lineno}"
        if idx >= len(row):
            raise LengthsError(f"{where}: missing column {idx + 1}")
        cell = row[idx]
        if cell.strip() == "":
            raise LengthsError(f"{where}: empty length")
        out.add(cell, where)


def _is_int(s: str) -> bool:
    try:
        int(s.strip())
    except ValueError:
        return False
    return True


def load_lengths(path: str | os.PathLike[str], column: str | None = None,
                 tokenizer: str | None = None) -> Lengths:
    """Token lengths from a file (formats in the module docstring). Raises ``LengthsError``."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise LengthsError(f"lengths file not found: {p}") from None
    except IsADirectoryError:
        raise LengthsError(f"lengths file is a directory: {p}") from None
    except UnicodeDecodeError:
        raise LengthsError(f"lengths file {p} is not UTF-8 text") from None
    except OSError as e:
        raise LengthsError(f"cannot read lengths file {p}: {e.strerror}") from None
    if not text.strip():
        raise LengthsError(f"lengths file {p} is empty")
    out = _Collector(tokenizer)
    suffix = p.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        _read_jsonl(text, p.name, column, out)
    elif suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise LengthsError(f"{p.name}: not valid JSON ({e.msg} at line {e.lineno})") from None
        if not isinstance(data, list):
            raise LengthsError(f"{p.name}: expected a JSON array of lengths or records")
        for i, item in enumerate(data):
            _add_item(item, column, f"{p.name} item {i}", out)
    elif suffix in (".csv", ".tsv"):
        _read_csv(text, p.name, column, out, "\t" if suffix == ".tsv" else ",")
    else:
        _read_csv(text, p.name, column, out, ",")
    values = out.finish()
    where = p.name + (f" [{column}]" if column else "") + (f" via {tokenizer}" if out.texts else "")
    if not values:
        raise LengthsError(f"lengths file {p} holds no examples")
    return Lengths(tuple(values), source=where)


def from_values(values: Iterable[int], source: str = "values") -> Lengths:
    """Lengths from Python ints (validated as a file would be)."""
    checked = []
    for i, v in enumerate(values):
        n = _as_length(v, f"{source}[{i}]")
        if n is None:
            raise LengthsError(f"{source}[{i}]: expected a token count, got {v!r}")
        checked.append(n)
    return Lengths(tuple(checked), source=source)


# ---------------------------------------------------------------------------------------- tokenizer
def _offline() -> bool:
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes")
               for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "VRAMPLAN_OFFLINE"))


def count_tokens(texts: Sequence[str], tokenizer: str) -> list[int]:
    """Tokens per text with a Hugging Face tokenizer (special tokens included, as training adds them).

    ``tokenizer`` is a local directory (works offline) or a hub id (needs the network).
    """
    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise LengthsError("counting tokens needs transformers (pip install 'vramplan[torch]'); or give a "
                           "file of lengths") from None
    local = Path(tokenizer).expanduser()
    if not local.is_dir() and _offline():
        raise LengthsError(f"tokenizer '{tokenizer}' is not a local directory and the hub is offline "
                           "(HF_HUB_OFFLINE); pass a local tokenizer directory or a file of lengths")
    try:
        tok = AutoTokenizer.from_pretrained(str(local) if local.is_dir() else tokenizer,
                                            local_files_only=local.is_dir() or _offline())
    except Exception as e:  # noqa: BLE001 - any loader failure becomes one line
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise LengthsError(f"cannot load tokenizer '{tokenizer}': {msg[:200]}") from None
    enc = tok(list(texts), add_special_tokens=True)["input_ids"]
    return [len(ids) for ids in enc]

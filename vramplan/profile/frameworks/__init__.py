"""``vramplan profile --config``: a few real steps of the framework's *own* trainer, measured.

Where ``vramplan.profile.runner`` measures vramplan's build of the HF + peft step, this package hands
the run to the framework: its own argument parsing of the user's config (with the model, data and
output replaced, below), its model loading (``from_pretrained`` of a random-init checkpoint of the real
architecture, quantized as the framework configures it), its preparation and its training loop, fed
synthetic data of the configured shape. The reader (``vramplan.profile.readers``) watches the whole run;
a per-step hook reads the peak of each step, the first being the warm-up. The profile names the
framework and its version (``run.framework``), so ``validate`` compares each framework's prediction
with its own measurement.

The TRL and HF runners build the trainer from the scenario (their configs are the scenario's own
fields); the others run the framework's own parser on the user's config. What a runner replaces in
the user's config, and nothing else (plus hub pushes off, and the hub, trackers and telemetry
offline for the run: ``OFFLINE``): the model (the random checkpoint of
the resolved architecture, with a word-level chat tokenizer beside it), the dataset (synthetic rows of
exactly ``seq`` tokens, the label share of ``label_fraction`` where the framework's loss keeps only
label positions), the output folder, the step count, logging/saving/reporting off, and the CPU.

Adding a framework's runner (the framework axis, see docs/design.md):
1. a module here with ``run(job: Job) -> None`` that drives the framework's own entry point and calls
   ``job.train(trainer)`` (HF-Trainer-based frameworks) or ``job.step_begin()``/``job.step_end()``
   around each optimizer step (own loops);
2. its name in ``RUNNERS`` below (and out of ``UNAVAILABLE``);
3. a row in ``tests/frameworks/test_framework_trainers.py``, run in the framework venv by ``.ci/frameworks``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import importlib.util
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from vramplan.errors import VramplanError
from vramplan.profile.runner import ProfileRunError, RunOptions, predict, prediction_calibration, register_model, \
    save_random_checkpoint
from vramplan.profile.store import PHASES, SCHEMA, Profile, now_utc
from vramplan.scenario import Scenario

#: Frameworks whose trainer is not run by ``profile --config``, and why.
UNAVAILABLE = {
    "unsloth": "Unsloth's kernels need a GPU (on CPU it falls back to plain transformers + peft, which is not "
               "the program it runs on a GPU)",
}

#: Framework -> the module (in this package) whose ``run(job)`` drives its trainer.
RUNNERS: dict[str, str] = {"trl": "trl", "hf": "hf", "ms-swift": "ms_swift", "llamafactory": "llamafactory",
                           "axolotl": "axolotl", "torchtune": "torchtune"}

#: Framework -> the modules its trainer needs (where they are not just the framework's name): torchtune's
#: package imports torchao, which the main venv leaves out (peft 0.21 refuses torchao 0.10 beside it).
IMPORTS = {"ms-swift": ("swift",), "hf": ("transformers",), "torchtune": ("torchtune", "torchao")}


def installed(name: str) -> bool:
    """Whether framework ``name``'s trainer can be imported here."""
    return all(importlib.util.find_spec(m) is not None for m in IMPORTS.get(name, (name,)))

#: Where each framework's package is installed for these runs (its pins would replace vramplan's stack).
INSTALL = {"ms-swift": ".ci/frameworks (a second venv, --no-deps)", "llamafactory": ".ci/frameworks",
           "axolotl": ".ci/frameworks", "torchtune": ".ci/frameworks (with torchao 0.10, which peft 0.21 refuses "
                                                     "in the main venv)"}


@dataclass
class Job:
    """One ``profile --config`` run: what a runner reads, and the hooks it calls."""

    arch: Any
    scenario: Scenario
    resolved: Any
    """``vramplan.frameworks.Resolved``: ``resolved.source.data`` holds the user's config as read."""
    ckpt: Path
    """The random-init checkpoint of ``arch`` (safetensors + config.json + a word-level chat tokenizer)."""
    work: Path
    """An empty folder for the synthetic dataset and the run's output."""
    steps: int
    reader: Any
    peaks: list[int] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    wall: float = 0.0
    _t0: float = 0.0
    _started: float = 0.0

    def changes(self) -> list[tuple[str, Any]]:
        """The scenario's shape (``seq``, ``batch``) and every field the command line changed, as the
        framework's keys and spellings (the table's ``plan_keys``, as ``plan --write`` writes them).
        A change the framework has no key for cannot be told to its trainer: refused."""
        from vramplan.frameworks import framework_changes

        fw = self.resolved.framework
        read = Scenario(**self.resolved.fields)
        diff = {f: getattr(self.scenario, f) for f in (x.name for x in dataclasses.fields(Scenario))
                if getattr(self.scenario, f) != getattr(read, f) or f in ("seq", "batch")}
        diff.pop("label_fraction", None)  # a property of the data, which the runner writes
        out = []
        for key, name, value in framework_changes(fw, {k: getattr(v, "value", v) for k, v in diff.items()}):
            if key is None:
                raise ProfileRunError(f"{name} differs from the {fw.title} config and {fw.title} has no key for "
                                      f"it: its trainer cannot run that scenario (change the config instead)")
            out.append((key, value))
        return out

    def attach(self, model: Any) -> None:
        """Count the model's tensors (loaded by threads the tracker may not see)."""
        register_model(self.reader, model)

    def step_begin(self) -> None:
        self.reader.reset_peak()
        self._t0 = time.perf_counter()

    def step_end(self) -> None:
        self.peaks.append(self.reader.peak().allocated)
        self.times.append(time.perf_counter() - self._t0)

    def callback(self, attach: bool = False) -> Any:
        """A ``TrainerCallback`` calling ``step_begin``/``step_end`` around each optimizer step (and, with
        ``attach``, ``attach`` on the model and timing the run, for a trainer the framework builds and runs
        itself)."""
        from transformers import TrainerCallback

        job = self

        class Peaks(TrainerCallback):
            def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kw: Any) -> None:
                if attach:
                    job.attach(model)
                    job._started = time.perf_counter()

            def on_train_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
                if attach:
                    job.wall = time.perf_counter() - job._started

            def on_step_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
                job.step_begin()

            def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
                job.step_end()

        return Peaks()

    def train(self, trainer: Any, *args: Any, **kw: Any) -> Any:
        """Run an HF ``Trainer`` (or a subclass) with the step hook attached."""
        self.attach(trainer.model)
        trainer.add_callback(self.callback())
        t0 = time.perf_counter()
        try:
            return trainer.train(*args, **kw)
        finally:
            self.wall = time.perf_counter() - t0


def runner(name: str) -> Callable[[Job], None]:
    mod = importlib.import_module(f"{__name__}.{RUNNERS[name]}")
    return mod.run  # type: ignore[no-any-return]


def chat_tokenizer(vocab_size: int) -> Any:
    """A word-level tokenizer built in code (no hub) with a ChatML template: the special tokens the
    Qwen and Llama-3 chat templates write, ``<unk>``, and the words ``w0``, ``w1``... (one token each,
    all below ``vocab_size``). Synthetic rows are these words; the frameworks' own templates wrap them."""
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>", "<|begin_of_text|>",
                "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<unk>"]
    words = ["user", "assistant", "system"] + [f"w{i}" for i in range(min(vocab_size, 1024) - len(specials) - 3)]
    vocab = {t: i for i, t in enumerate(specials + words)}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                  unk_token="<unk>", bos_token=None)
    tok.chat_template = ("{% for m in messages %}{{'<|im_start|>' + m['role'] + '\n' + m['content'] + "
                         "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
                         "{{'<|im_start|>assistant\n'}}{% endif %}")
    return tok


def words(n: int, start: int = 0) -> str:
    """``n`` one-token words."""
    return " ".join(f"w{(start + i) % 500}" for i in range(n))


def fit(encode: Callable[[int, int], tuple[int, int]], seq: int, labelled: int) -> tuple[int, int]:
    """User and assistant word counts whose encoding (by the framework's own template, ``encode(n_user,
    n_assistant) -> (tokens, label tokens)``) is exactly ``seq`` tokens with ``labelled`` of them labels,
    or the nearest label count the template allows (all of them when the prompt is labelled too, e.g.
    LLaMA-Factory's ``train_on_prompt``). Raises when ``seq`` is shorter than the template's frame."""
    t1, l1 = encode(1, 1)
    t2, l2 = encode(2, 3)
    if t2 - t1 != 3:
        raise ProfileRunError("the framework's template does not encode one synthetic word as one token "
                              f"(two more words gave {t2 - t1 - 1} more tokens)")
    frame = t1 - 2
    prompt_labelled = (l2 - l1) == 3  # each prompt word is a label too: the label count is not ours to set
    n_a = max(1, seq - frame - 1) if prompt_labelled else max(1, labelled - (l1 - 1))
    n_u = seq - frame - n_a
    if n_u < 1:
        n_a = max(1, seq - frame - 1)
        n_u = 1
    if n_u + n_a + frame != seq:
        raise ProfileRunError(f"--seq {seq} is shorter than the framework's chat frame ({frame + 2} tokens)")
    got = encode(n_u, n_a)
    if got[0] != seq:
        raise ProfileRunError(f"synthetic row is {got[0]} tokens, not {seq}")
    return n_u, n_a


def share(kept: int, seq: int) -> float:
    """The ``label_fraction`` whose ``kept_positions`` is exactly ``kept`` (``kept / seq`` can round up)."""
    from vramplan.scenario import kept_positions

    f = kept / seq
    while kept_positions(seq, f) > kept:
        f = math.nextafter(f, 0.0)
    return f


#: Set while a framework runs: the run reads only the random checkpoint and synthetic rows here, so no
#: hub, experiment tracker or telemetry is reached whatever the user's config says.
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "MODELSCOPE_OFFLINE": "1",
           "WANDB_MODE": "disabled", "AXOLOTL_DO_NOT_TRACK": "1", "SWANLAB_MODE": "disabled"}


@contextlib.contextmanager
def offline() -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in OFFLINE}
    os.environ.update(OFFLINE)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def profile_config(resolved: Any, model_name: str, arch: Any, scenario: Scenario, opts: RunOptions) -> Profile:
    """Run ``opts.steps`` steps of the framework's own trainer on CPU and return the (unsaved) Profile."""
    fw = resolved.framework
    if fw.name not in RUNNERS:
        raise ProfileRunError(f"profile --config does not run {fw.title}: {UNAVAILABLE.get(fw.name, 'no runner')}; "
                              f"`vramplan profile` with the flags of `vramplan estimate --config` measures "
                              f"vramplan's build of the same scenario")
    if not installed(fw.name):
        raise ProfileRunError(f"profile --config runs {fw.title}'s own trainer, which is not installed here "
                              f"(installed as in {INSTALL.get(fw.name, 'its extra')})")
    if opts.device not in (None, "cpu"):
        raise ProfileRunError("profile --config runs the framework's trainer on the CPU here (--device cpu)")
    if opts.steps < 2:
        raise ProfileRunError("profile --config needs --steps >= 2 (the first is the warm-up)")
    from vramplan.profile.readers import make_reader

    reader = make_reader("cpu")
    info = reader.device_info()
    with tempfile.TemporaryDirectory(prefix="vramplan-random-") as ckpt, \
            tempfile.TemporaryDirectory(prefix="vramplan-run-") as work:
        save_random_checkpoint(arch, scenario, ckpt, opts.seed)
        chat_tokenizer(arch.vocab_size).save_pretrained(ckpt)
        job = Job(arch, scenario, resolved, Path(ckpt), Path(work), opts.steps, reader)
        reader.start()
        try:  # the trainers print their metrics on stdout, which carries only vramplan's own output
            with contextlib.redirect_stdout(sys.stderr):
                try:
                    with offline():
                        runner(fw.name)(job)
                except (VramplanError, KeyboardInterrupt, MemoryError):
                    raise
                except SystemExit as e:  # a framework's argument parser refusing the config
                    raise ProfileRunError(f"{fw.title} {resolved.version}'s argument parser refused the config "
                                          f"(exit {e.code}; its message is above)") from None
                except Exception as e:  # the framework's own code refusing the run: its words, one line
                    msg = " ".join(str(e).split())[:400]
                    raise ProfileRunError(f"{fw.title} {resolved.version}'s own code stopped the run: "
                                          f"{type(e).__name__}: {msg}") from e
        finally:
            reader.stop()
    if len(job.peaks) < 2:
        raise ProfileRunError(f"{fw.title}'s trainer ran {len(job.peaks)} step(s); a steady step needs two")
    scenario = job.scenario  # a runner may record what its data really was (label share)
    predictions, notes = predict(arch, scenario, opts.predict, "cpu", info["name"])
    first, peaks = job.peaks[0], job.peaks[1:]
    alloc = max(peaks)
    measured = {
        "allocated_peak_bytes": alloc, "reserved_peak_bytes": alloc, "active_peak_bytes": alloc,
        "process_peak_bytes": None, "managed_bytes": 0, "first_step_peak_bytes": first,
        "phases": dict(dict.fromkeys(PHASES), steady_step=alloc), "step_seconds": None,
        "step_seconds_all": job.times[1:], "tokens_per_second": None, "oom": None, "train_seconds_traced": job.wall,
    }
    info.pop("available_memory_bytes", None)
    run = {"steps": opts.steps, "warmup_steps": 1, "weights": "random-init", "loader": "framework", "seed": opts.seed,
           "prediction_notes": notes + job.notes,
           "framework": {"name": fw.name, "version": resolved.version, "version_source": resolved.version_source,
                         "files": [str(p) for p in resolved.source.files]},
           "prediction_calibration": prediction_calibration("cpu", info["name"]).fitted_on,
           "timing": "step times are under the CPU tracker (not the model's speed)"}
    from vramplan.profile.runner import _versions

    versions = _versions()
    versions[fw.package or fw.name] = resolved.version
    return Profile(schema=SCHEMA, model=model_name, arch_config=dict(arch.config), scenario=scenario, device=info,
                   versions=versions, timestamp=now_utc(), measured=measured, predictions=predictions, run=run)

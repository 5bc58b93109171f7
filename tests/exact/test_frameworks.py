"""Issue 13: framework configs read into the scenario each framework really runs (no torch, no network).

Each fixture under tests/data/frameworks/ is a real-format config written here (SOURCES.md there);
its expected resolution is written out below from the framework's code as read in
../shared/research/frameworks.md (section per framework). The exact parts are golden numbers derived by
hand from the formulas' sources (the chunked losses, reentrant checkpointing, label positions).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from vramplan import frameworks as F
from vramplan.arch import resolve
from vramplan.frameworks.base import ConfigError
from vramplan.scenario import Scenario

DATA = Path(__file__).resolve().parents[1] / "data" / "frameworks"
QWEN = resolve("Qwen3-14B")


def _resolved(*paths: str, framework: str | None = None, version: str | None = None, argv=None):
    loaded = F.load([str(DATA / p) for p in paths], argv, framework, version)
    return loaded, F.resolve(loaded, resolve(loaded.model) if loaded.model else QWEN)


def _scenario(res) -> Scenario:
    return Scenario(**res.fields)


#: The shared QLoRA run (Qwen3-14B, nf4 + double quant, bf16, r=8 on every linear, 1×2048, GC) as each
#: framework prices it: fixture -> (framework, expected scenario fields).
SHARED = {
    "swift_qlora.sh": ("ms-swift", dict(offload="none", quant="nf4", double_quant=True, rank=8, targets=("all-linear",),
                                        lora_dropout=0.05, recipe="plain", adapter_dtype="fp32", loss="hf",
                                        reentrant=True, seq=2048, batch=1, autocast=True)),
    "swift_args.json": ("ms-swift", dict(quant="nf4", double_quant=True, rank=8, lora_dropout=0.05, recipe="plain",
                                         reentrant=True, seq=2048, batch=1)),
    "axolotl_qlora.yml": ("axolotl", dict(offload="none", quant="nf4", double_quant=True, rank=8, targets=("all-linear",),
                                          lora_dropout=0.05, recipe="axolotl", adapter_dtype="fp32", loss="hf",
                                          reentrant=True, seq=2048, batch=1)),
    "llamafactory_qlora.yaml": ("llamafactory", dict(offload="none", quant="nf4", double_quant=True, rank=8, targets=("all-linear",),
                                                     lora_dropout=0.0, recipe="plain", adapter_dtype="fp32",
                                                     loss="hf", reentrant=True, seq=2048, batch=1)),
    "trl_qlora.yaml": ("trl", dict(offload="none", quant="nf4", double_quant=True, rank=8, targets=("all-linear",), lora_dropout=0.05,
                                   recipe="plain", adapter_dtype="bf16", loss="chunked-head", reentrant=False,
                                   seq=2048, batch=1, dtype="bf16")),
    "unsloth.yaml": ("unsloth", dict(quant="nf4", double_quant=True, rank=8, lora_dropout=0.0, recipe="plain",
                                     adapter_dtype="fp32", loss="unsloth", reentrant=True, seq=2048, batch=1,
                                     optimizer="adamw8bit", offload="unsloth",
                                     targets=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                              "down_proj"))),
}


@pytest.mark.parametrize("fixture", sorted(SHARED))
def test_shared_run_resolves_as_the_framework_runs_it(fixture):
    name, expected = SHARED[fixture]
    loaded, res = _resolved(fixture, version=F.framework(name).latest)
    assert res.framework.name == name
    s = _scenario(res)
    got = s.to_dict()
    for k, v in expected.items():
        want = list(v) if isinstance(v, tuple) else v
        assert got[k] == want, (fixture, k)
    assert s.grad_checkpointing and not s.full
    assert resolve(loaded.model).name == "Qwen3-14B"


def test_used_defaults_and_ignored_are_recorded():
    _, res = _resolved("axolotl_qlora.yml", version="0.19.0")
    assert res.used["sequence_len"] == 2048 and res.used["lora_target_linear"] is True
    assert res.defaults["optimizer" if "optimizer" not in res.used else "lora_target_modules"] is None or True
    assert "lora_target_modules" in res.defaults and res.defaults["lora_target_modules"] is None
    assert {"learning_rate", "num_epochs", "datasets", "lora_alpha"} <= set(res.ignored)
    assert not set(res.ignored) & set(res.used)
    # axolotl 0.19 turns its fused LoRA kernels on for lora/qlora by default: the reader says so
    assert any("fused LoRA kernels" in n for n in res.notes)


def test_hf_pair_and_quant_from_the_command_line(cli):
    loaded, res = _resolved("training_args.json", "adapter_config.json")
    assert res.framework.name == "hf" and loaded.model == "Qwen/Qwen3-14B"
    s = _scenario(res)
    assert (s.quant.value, s.recipe.value, s.reentrant, s.batch, s.rank) == ("none", "hf-peft", False, 1, 8)
    r = cli("estimate", "--config", str(DATA / "training_args.json"), "--config",
             str(DATA / "adapter_config.json"), "--quant", "nf4", "--json")
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["scenario"]["quant"] == "nf4" and d["config"]["command_line"] == {"quant": "nf4"}
    # the HF+peft program is vramplan's own default scenario: the same number
    from vramplan import estimate

    assert d["allocated_peak_bytes"] == estimate(QWEN, Scenario(lora_dropout=0.05)).allocated_peak_bytes


def test_swift_quant_bits_without_method_is_unquantized_with_a_note():
    _, res = _resolved("swift_fsdp_no_method.sh")
    s = _scenario(res)
    assert s.quant.value == "none" and s.rank == 16 and s.seq == 1024
    assert any("--quant_method" in n for n in res.notes)
    # NPROC_PER_NODE=2 and ms-swift's shipped fsdp2.json (fsdp_version 2, reshard_after_forward true,
    # activation_checkpointing true): FSDP2 over 2 processes, non-reentrant layer checkpointing
    assert (s.gpus, s.nodes, s.strategy.value, s.reshard_after_forward) == (2, 1, "fsdp", True)
    assert s.grad_checkpointing and s.reentrant is False


def test_swift_default_length_is_the_models_maximum():
    loaded = F.load([], ["swift", "sft", "--model", "Qwen/Qwen3-14B"])
    res = F.resolve(loaded, QWEN)
    assert res.fields["seq"] == QWEN.config["max_position_embeddings"]
    assert res.fields["quant"] == "none" and res.fields["lora_dropout"] == 0.05 and res.fields["reentrant"] is True
    assert res.defaults["max_length"] is None


@pytest.mark.parametrize("version,expected", [
    ("0.25.1", dict(recipe="trl", adapter_dtype="fp32", loss="hf", reentrant=True)),
    ("0.26.0", dict(recipe="plain", adapter_dtype="bf16", loss="hf", reentrant=False)),
    ("1.14.0", dict(recipe="plain", adapter_dtype="bf16", loss="hf", reentrant=False)),
    ("1.15.0", dict(recipe="plain", adapter_dtype="bf16", loss="chunked-head", reentrant=False)),
])
def test_trl_versions_change_the_program(version, expected):
    _, res = _resolved("trl_qlora.yaml", version=version)
    got = _scenario(res).to_dict()
    assert {k: got[k] for k in expected} == expected
    assert res.version == version


def test_trl_cli_defaults():
    """`trl sft --load_in_4bit --use_peft`: ModelConfig's float32 and no nested quant, lora r 16 on peft's
    default (q,v), max_length 1024, the batch the script gives."""
    _, res = _resolved("trl_cli.sh", version="1.16.0")
    s = _scenario(res)
    assert (s.dtype.value, s.double_quant, s.rank, s.targets, s.seq, s.batch) == (
        "fp32", False, 16, ("q_proj", "v_proj"), 1024, 2)
    assert s.autocast is False and any("float32" in n for n in res.notes)


def test_torchtune_eras_and_model_override():
    _, res = _resolved("torchtune_qlora.yaml", version="0.6.1")
    s = _scenario(res)
    assert (s.loss.value, s.hold_logits.value, s.adapter_dtype.value, s.autocast, s.reentrant) == (
        "chunked-ce", "none", "bf16", False, False)
    assert s.targets == ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    loaded, old = _resolved("torchtune_qlora.yaml", version="0.2.1")
    assert (old.fields["loss"], old.fields["hold_logits"]) == ("legacy", "loop")
    assert loaded.model == "Llama-3.1-8B"


def test_version_source():
    loaded = F.load([str(DATA / "axolotl_qlora.yml")])
    assert (loaded.version, loaded.version_source) == ("0.19.0", "newest release vramplan's table knows")
    loaded = F.load([str(DATA / "axolotl_qlora.yml")], version="0.19.0")
    assert loaded.version_source == "--framework-version"


# ----------------------------------------------------------------------------------- the CLI
class _Result:
    def __init__(self, code: int, out: str, err: str) -> None:
        self.exit_code, self.output, self.stdout, self.stderr = code, out + err, out, err


@pytest.fixture
def cli(cli_run):
    """The real console entry point in-process (tests/conftest.py's ``cli_run``), as one result object."""
    return lambda *args: _Result(*cli_run(*args))


def test_seed_example_from_its_own_command_line(cli):
    """The ms-swift QLoRA of Qwen3-14B, priced from the `swift sft` command after `--`, equals the same
    run from the script and from vramplan flags describing what ms-swift runs."""
    cmd = ["swift", "sft", "--model", "Qwen/Qwen3-14B", "--train_type", "lora", "--torch_dtype", "bfloat16",
           "--quant_method", "bnb", "--quant_bits", "4", "--bnb_4bit_quant_type", "nf4",
           "--bnb_4bit_use_double_quant", "true", "--lora_rank", "8", "--target_modules", "all-linear",
           "--per_device_train_batch_size", "1", "--max_length", "2048", "--gradient_checkpointing", "true"]
    a = cli("estimate", "--json", "--", *cmd)
    b = cli("estimate", "--json", "--config", str(DATA / "swift_qlora.sh"))
    c = cli("estimate", "--json", "--model", "Qwen3-14B", "--recipe", "plain", "--reentrant")
    assert a.exit_code == b.exit_code == c.exit_code == 0, a.output + b.output + c.output
    da, db, dc = (json.loads(x.stdout) for x in (a, b, c))
    assert da["allocated_peak_bytes"] == db["allocated_peak_bytes"] == dc["allocated_peak_bytes"]
    assert da["config"]["framework"] == "ms-swift" and da["scenario"]["reentrant"] is True


def test_explicit_flags_win_and_are_reported(cli):
    r = cli("estimate", "--json", "--config", str(DATA / "axolotl_qlora.yml"), "--seq", "1024", "--rank", "16")
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert (d["scenario"]["seq"], d["scenario"]["rank"]) == (1024, 16)
    assert d["config"]["command_line"] == {"seq": 1024, "rank": 16}
    assert d["config"]["used"]["sequence_len"] == 2048


def test_table_output_shows_what_was_understood(cli):
    r = cli("estimate", "--config", str(DATA / "llamafactory_qlora.yaml"))
    assert r.exit_code == 0, r.output
    assert "LLaMA-Factory 0.9.5" in r.output and "cutoff_len" in r.output and "LLaMA-Factory default" in r.output
    assert "ignored" in r.output and "learning_rate" in r.output


def test_unsloth_cannot_be_traced(cli):
    r = cli("estimate", "--config", str(DATA / "unsloth.yaml"), "--method", "trace")
    assert r.exit_code == 2 and "need a GPU" in r.output


@pytest.mark.parametrize("fixture,key", [("axolotl_qlora.yml", "sequence_len:"), ("swift_qlora.sh", "--max_length "),
                                         ("llamafactory_qlora.yaml", "cutoff_len:")])
def test_plan_names_framework_keys_and_writes_a_patched_copy(cli, tmp_path, fixture, key):
    src = tmp_path / fixture
    shutil.copy(DATA / fixture, src)
    before = src.read_text()
    out = tmp_path / ("fit" + src.suffix)
    r = cli("plan", "--json", "--config", str(src), "--memory", "15GiB", "--write", str(out))
    assert r.exit_code == 1, r.output
    d = json.loads(r.stdout)
    assert src.read_text() == before  # the original is never modified
    written = d["written"]
    assert written["changes"], written
    assert any(k in " ".join(s["framework_changes"]) for s in d["suggestions"] for k in (key,))
    # the patched copy reads back to the planned change, and fits
    r2 = cli("plan", "--json", "--config", str(out), "--memory", "15GiB")
    pick = next(s for s in d["suggestions"] if s["key"] == written["suggestion"])
    d2 = json.loads(r2.stdout)
    for field, value in pick["changes"].items():
        assert d2["scenario"][field] == value
    if fixture.startswith("axolotl") and "seq" in pick["changes"]:  # a length its collator does not pad further
        assert pick["changes"]["seq"] % 64 == 0
    assert r2.exit_code == 0, r2.output
    assert d2["need_bytes"] == pick["need_bytes"]


def test_patch_yaml_keeps_comments_and_adds_missing_keys():
    text = "a: 1  # keep\nsection:\n  inner: 2\n  other: x\nlast: 3\n"
    out = F.patch_yaml(text, [("a", 5), ("section.inner", 7), ("section.new", True), ("fresh", [1, 2])])
    assert out == "a: 5  # keep\nsection:\n  inner: 7\n  other: x\n  new: true\nlast: 3\nfresh: [1, 2]\n"


def test_write_refuses_to_overwrite_the_config(cli, tmp_path):
    src = tmp_path / "c.yml"
    shutil.copy(DATA / "axolotl_qlora.yml", src)
    r = cli("plan", "--config", str(src), "--gpu", "rtx4090", "--seq", "8192", "--write", str(src))
    assert r.exit_code == 2 and "overwrite" in r.output


# ----------------------------------------------------------------------------------- bad input
BAD = [
    (["--framework", "nemo", "--config", "X/axolotl_qlora.yml"], "unknown framework 'nemo'"),
    (["--config", "X/none.yaml"], "config file not found"),
    (["--config", "@bad.yaml"], "malformed YAML"),
    (["--config", "@nomodel.yaml"], "names no model"),
    (["--config", "@impossible.yaml"], "lora_r: must be at least 1"),
    (["--config", "@script.sh"], "no launch command found"),
    (["--config", "@list.yaml"], "expected a mapping"),
    (["--config", "@ambiguous.yaml"], "cannot tell which framework"),
    (["--config", "@badopt.yaml"], "is not priced"),
    (["--", "swift", "sft", "--model", "Qwen3-14B", "--quant_method", "gptq"], "quant_method 'gptq' is not priced"),
    (["--", "ls", "-l"], "not a recognised launch command"),
    (["--config", "X/axolotl_qlora.yml", "--framework-version", "banana"], "unreadable framework version"),
]
FILES = {
    "bad.yaml": "base_model: [unclosed\n",
    "nomodel.yaml": "adapter: qlora\nload_in_4bit: true\nlora_r: 8\nsequence_len: 1024\nmicro_batch_size: 1\n",
    "impossible.yaml": "base_model: Qwen3-14B\nadapter: lora\nlora_r: 0\nsequence_len: 1024\n",
    "script.sh": "#!/bin/sh\necho training\npython train.py --lr 1e-4\n",
    "list.yaml": "- a\n- b\n",
    "ambiguous.yaml": "foo: 1\n",
    "badopt.yaml": "base_model: Qwen3-14B\nadapter: lora\nlora_r: 8\noptimizer: adafactor\n",
}


@pytest.mark.parametrize("args,message", BAD, ids=[m for _, m in BAD])
def test_bad_input_is_one_line_and_exit_2(cli, tmp_path, args, message):
    for name, text in FILES.items():
        (tmp_path / name).write_text(text)
    args = [a.replace("X/", str(DATA) + "/").replace("@", str(tmp_path) + "/") for a in args]
    r = cli("estimate", *args)
    assert r.exit_code == 2, r.output
    assert message in r.stderr, r.output
    assert len([ln for ln in r.stderr.splitlines() if ln.strip()]) == 1, r.stderr
    assert "Traceback" not in r.output


def test_shell_scripts_are_parsed_never_run(tmp_path):
    marker = tmp_path / "ran"
    script = tmp_path / "train.sh"
    script.write_text(f"touch {marker}\nswift sft --model Qwen3-14B --lora_rank 4 --max_length 512 && touch {marker}\n")
    loaded = F.load([str(script)])
    assert loaded.framework.name == "ms-swift" and not marker.exists()
    assert F.resolve(loaded, QWEN).fields["rank"] == 4


def test_every_framework_has_a_table():
    assert set(F.FRAMEWORKS) == {"ms-swift", "axolotl", "llamafactory", "trl", "hf", "torchtune", "unsloth"}
    for fw in F.FRAMEWORKS.values():
        assert fw.eras and fw.keys and fw.plan_keys
        names = {k.name for k in fw.keys}
        assert set(fw.plan_keys.values()) <= names | {"lora_target_linear"}, fw.name
        with pytest.raises(ConfigError):
            F.framework(fw.name + "x")


# ------------------------------------------------------------------ exact terms of the new semantics
def test_chunked_ce_terms_golden():
    """torchtune's chunked loss, Qwen3-14B (V = 151,936), 1×2048, bf16 logits, 8 chunks of 256 rows:
    forward 2·V·T (logits) + 4·V·T (every chunk's saved log-softmax) + 4·V·256 (one chunk's upcast);
    backward 4·V·T + 2 × 4·V·256."""
    from vramplan.analytic.terms import static_terms

    st = static_terms(QWEN, Scenario(loss="chunked-ce", recipe="plain", autocast=False, adapter_dtype="bf16"))
    V, T = 151_936, 2048
    back, fwd, held = st.loss_terms(1, 2048)
    assert fwd == 2 * V * T + 4 * V * T + 4 * V * 256 == 2_022_572_032
    assert back == 4 * V * T + 8 * V * 256 == 1_555_824_640
    assert held == 0


def test_label_fraction_golden():
    """Logits at ceil(0.25·2048) = 512 positions: the transformers loss terms over 512 tokens."""
    from vramplan.analytic.terms import static_terms

    st = static_terms(QWEN, Scenario(recipe="plain", label_fraction=0.25))
    back, fwd, _ = st.loss_terms(1, 2048)
    V = 151_936
    assert back == 12 * V * 512 and fwd == (2 + 4 + 4) * V * 512


def test_reentrant_holds_one_more_residual_tensor():
    """Reentrant checkpointing: each layer recomputed in backward also holds its output, b·s·H in the
    residual dtype (bf16 under the plain recipe: 2·2048·5120 B)."""
    from vramplan.analytic import estimate

    base = dict(recipe="plain", seq=2048)
    pa = estimate(QWEN, Scenario(**base)).extra["phases"]
    pb = estimate(QWEN, Scenario(**base, reentrant=True)).extra["phases"]
    assert pb["last layer backward"] - pa["last layer backward"] == 2 * 2048 * 5120
    assert pb["loss backward"] == pa["loss backward"]


def test_fused_head_terms_golden():
    """TRL's fused head on CUDA, 2047 scored positions, H = 5120, bf16 everywhere: forward = the
    4096 × 32768 tile buffer at 2047 rows (2·2047·32768) + the scored hidden copy (2·2047·5120) + 7 fp32
    statistics and the int64 targets (36·2047); backward = tile + hidden + fp32 gradient + its bf16 cast
    (8·2047·5120) + 4 fp32 vectors."""
    from vramplan.analytic import logits as lg

    N, H = 2047, 5120
    fwd, bwd = lg.fused_head_bytes(N, H, 2, 2, 0, True)
    assert fwd == 2 * N * 32768 + 2 * N * H + 36 * N
    assert bwd == 2 * N * 32768 + 8 * N * H + 16 * N


def test_axolotl_recipe_casts_back_norms_embeddings_lm_head():
    from vramplan.analytic import estimate

    comps = {c.name: c.bytes for c in estimate(QWEN, Scenario(recipe="axolotl")).components}
    hf = {c.name: c.bytes for c in estimate(QWEN, Scenario()).components}
    for group in ("embeddings", "lm_head", "norms"):
        assert comps[f"weights/{group}"] * 2 == hf[f"weights/{group}"]  # 2 B/param against peft's fp32


# ------------------------------------------------------------------ scripts, overrides and patches
def test_patching_a_script_keeps_every_other_flag(tmp_path):
    """A value after a line continuation is rewritten; the flags after it (and comment lines) stay."""
    script = tmp_path / "train.sh"
    script.write_text("# swift sft --max_length 1\n" + (DATA / "swift_qlora.sh").read_text())
    loaded = F.load([str(script)])
    res = F.resolve(loaded, QWEN)
    path, text, written = F.patched_text(res, F.framework_changes(res.framework, {"seq": 1024, "rank": 4}))
    assert path == script and [c[0] for c in written] == ["max_length", "lora_rank"]
    assert text.splitlines()[0] == "# swift sft --max_length 1"
    script.write_text(text)
    again = F.resolve(F.load([str(script)]), QWEN)
    assert (again.fields["seq"], again.fields["rank"]) == (1024, 4)
    before = {k: v for k, v in res.used.items() if k not in ("max_length", "lora_rank")}
    assert {k: again.used[k] for k in before} == before  # nothing else lost


def test_a_hash_inside_a_word_is_not_a_comment():
    loaded = F.load([], ["swift", "sft", "--model", "Qwen3-14B", "--dataset", "AI/alpaca#500", "--max_length", "512"])
    assert F.resolve(loaded, QWEN).fields["seq"] == 512


def test_script_hash_inside_a_word(tmp_path):
    s = tmp_path / "t.sh"
    s.write_text("swift sft --model Qwen3-14B --dataset 'AI/alpaca#500' --max_length 512 --quant_method bnb "
                 "--quant_bits 4  # don't\n")
    res = F.resolve(F.load([str(s)]), QWEN)
    assert (res.fields["seq"], res.fields["quant"]) == (512, "nf4")


def test_key_value_overrides_after_a_config(tmp_path):
    cfg = tmp_path / "tt.yaml"
    cfg.write_text((DATA / "torchtune_qlora.yaml").read_text())
    script = tmp_path / "run.sh"
    script.write_text(f"tune run lora_finetune_single_device --config {cfg} batch_size=4 tokenizer.max_seq_len=1024\n")
    res = F.resolve(F.load([str(script)]), QWEN)
    assert (res.fields["batch"], res.fields["seq"]) == (4, 1024)
    _, text, _ = F.patched_text(res, F.framework_changes(res.framework, {"batch": 1, "seq": 512}))
    assert "batch_size=1" in text and "tokenizer.max_seq_len=512" in text and "batch_size=4" not in text


@pytest.mark.parametrize("argv,framework", [
    (["accelerate", "launch", "--num_processes", "1", "-m", "axolotl.cli.train", "X/axolotl_qlora.yml"], "axolotl"),
    (["CUDA_VISIBLE_DEVICES=0", "nohup", "swift", "sft", "--model", "Qwen3-14B"], "ms-swift"),
])
def test_launchers_behind_wrappers(argv, framework):
    argv = [a.replace("X/", str(DATA) + "/") for a in argv]
    assert F.load([], argv).framework.name == framework


def test_a_launcher_word_inside_another_command_is_not_a_launch(tmp_path):
    s = tmp_path / "t.sh"
    s.write_text("echo swift sft done\n")
    with pytest.raises(ConfigError, match="no launch command"):
        F.load([str(s)])


def test_patch_yaml_replaces_blocks_and_refuses_flow_mappings():
    text = "lora_target_modules:\n- q_proj\n- v_proj\nmicro_batch_size: 2\n...\n"
    out = F.patch_yaml(text, [("lora_target_modules", ["q_proj"]), ("sequence_len", 512)])
    import yaml

    assert yaml.safe_load(out.split("...")[0]) == {"lora_target_modules": ["q_proj"], "micro_batch_size": 2,
                                                   "sequence_len": 512}
    with pytest.raises(ConfigError, match="not a block mapping"):
        F.patch_yaml("training: {batch_size: 2}\n", [("training.batch_size", 1)])
    assert F.patch_yaml('x: "a #b"  # c\n', [("x", 1)]) == "x: 1  # c\n"


def test_reentrant_is_the_frameworks_kind_even_when_gc_is_turned_on_later(cli, tmp_path):
    cfg = tmp_path / "a.yml"
    cfg.write_text((DATA / "axolotl_qlora.yml").read_text().replace("gradient_checkpointing: true",
                                                                    "gradient_checkpointing: false"))
    r = cli("estimate", "--json", "--config", str(cfg), "--grad-checkpointing")
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)["scenario"]
    assert d["grad_checkpointing"] is True and d["reentrant"] is True


@pytest.mark.parametrize("text,message", [
    ("model_name_or_path: Qwen3-14B\nuse_peft: true\nattn_implementation: [sdpa]\n", "attn_implementation"),
    ("model: Qwen3-14B\ntraining: 5\n", "'training' must be a mapping"),
    ("model:\n  _component_: torchtune.models.llama3_1.qlora_llama3_1_8b\n  lora_attn_modules: [q_proj]\n"
     "optimizer: 5\n", "'optimizer' must be a mapping"),
])
def test_wrong_shapes_are_one_line(cli, tmp_path, text, message):
    f = tmp_path / "c.yaml"
    f.write_text(text)
    r = cli("estimate", "--config", str(f))
    assert r.exit_code == 2 and message in r.stderr, r.output


def test_axolotl_bf16_full_and_trl_json_kwargs():
    loaded = F.load([], ["trl", "sft", "--model_name_or_path", "Qwen3-14B", "--dtype", "bfloat16",
                         "--gradient_checkpointing_kwargs", '{"use_reentrant": true}'])
    assert F.resolve(loaded, QWEN).fields["reentrant"] is True
    import yaml

    data = yaml.safe_load((DATA / "axolotl_qlora.yml").read_text())
    data["bf16"] = "full"
    from vramplan.frameworks.base import Reader

    fw = F.framework("axolotl")
    assert fw.scenario(Reader(fw, fw.eras[0], data), fw.eras[0], QWEN, [])["dtype"] == "bf16"


def test_unsloth_studio_model_defaults_file(tmp_path):
    """A Studio model-defaults YAML has no model key: its file name (<org>_<model>.yaml) names the model;
    its own keys (optim adamw_8bit, batch 1, r 8) are read as the CLI schema reads them."""
    loaded, res = _resolved("unsloth_Qwen3-14B.yaml")
    assert (res.framework.name, loaded.model) == ("unsloth", "Qwen3-14B")
    sc = _scenario(res)
    assert (sc.optimizer.value, sc.rank, sc.batch, sc.seq, sc.reentrant) == ("adamw8bit", 8, 1, 2048, True)
    assert any("Studio file name" in n for n in res.notes)
    other = tmp_path / "default.yaml"  # Studio's fallback defaults: no model anywhere
    shutil.copy(DATA / "unsloth_Qwen3-14B.yaml", other)
    assert F.load([str(other)]).model is None
    assert F.unsloth.studio_model("tiiuae_Falcon-H1-0.5B-Instruct.yaml") == "tiiuae/Falcon-H1-0.5B-Instruct"


def test_framework_eras_are_presets(cli):
    """--preset NAME of a framework era is that era's program, read from the framework table (not a
    second list): torchtune-0.2 is the retired torchtune-2024 bundle, trl-0.26 keeps bf16 adapters on
    4-bit bases only, and each era preset equals what --config of that framework resolves to."""
    from vramplan.recipes import preset

    tt = preset("torchtune-0.2")
    assert preset("torchtune-2024") is tt
    assert tt.resolve("bf16", True) == dict(recipe="plain", autocast=False, loss="legacy", hold_logits="loop",
                                            reentrant=False, adapter_dtype="bf16")
    trl = preset("trl-0.26")
    assert trl.resolve("bf16", True)["adapter_dtype"] == "bf16" and "adapter_dtype" not in trl.resolve("bf16", False)
    assert preset("trl-1.15").fields["loss"] == "chunked-head" and preset("ms-swift-4.0").fields["reentrant"] is True
    for fixture, name in (("swift_qlora.sh", "ms-swift-4.0"), ("llamafactory_qlora.yaml", "llamafactory-0.9"),
                          ("trl_qlora.yaml", "trl-1.15")):
        _, res = _resolved(fixture)
        for k, v in preset(name).resolve("bf16", True).items():
            assert _scenario(res).to_dict()[k] == v, (fixture, k)
    r = cli("estimate", "-m", "Qwen3-0.6B", "--preset", "trl-0.20", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["scenario"]["recipe"] == "trl"
    r = cli("estimate", "-m", "Qwen3-0.6B", "--preset", "trl-9")
    assert r.exit_code == 2 and "trl-1.15" in r.output and "torchtune-0.3" in r.output


@pytest.mark.parametrize("extra,seq", [("", 1024), ("pad_to_multiple_of: 8\n", 1000), ("pad_to_sequence_len: false\n", 1000),
                                       ("pad_to_sequence_len: true\npad_to_multiple_of: 48\n", 1008)])
def test_axolotl_pads_rows_to_a_multiple(tmp_path, extra, seq):
    """axolotl's collator pads a batch to a multiple of pad_to_multiple_of (64 by default) unless
    pad_to_sequence_len is false: sequence_len 1000 runs at 1024 positions (ceil(1000/64)·64), at 1000
    with a multiple of 8, at 1008 with 48 (21 · 48)."""
    cfg = tmp_path / "ax.yml"
    cfg.write_text("base_model: Qwen/Qwen3-14B\nadapter: qlora\nload_in_4bit: true\nlora_r: 8\n"
                   "lora_target_linear: true\nsequence_len: 1000\n" + extra)
    loaded = F.load([str(cfg)])
    res = F.resolve(loaded, QWEN)
    assert res.fields["seq"] == seq
    assert any("pads each batch" in n for n in res.notes) == (seq != 1000)


@pytest.mark.parametrize("component,kind,expected", [
    ("torchtune.models.llama3_1.qlora_llama3_1_8b", "qlora", "shared"),
    ("torchtune.models.qwen2_5.lora_qwen2_5_7b_base", "lora", "per-layer"),
    ("torchtune.models.qwen2_5.qwen2_5_7b_base", "full", "wide"),
    ("torchtune.models.phi3.lora_phi3_mini", "lora", "per-layer"),
    ("torchtune.models.gemma2.lora_gemma2_2b", "lora", "shared")])
def test_torchtune_rope_cache_layout_by_builder(component, kind, expected):
    from vramplan.frameworks.torchtune import rope_cache

    assert rope_cache(component, kind) == (expected, None)


def test_torchtune_rope_cache_bytes_golden():
    """torchtune 0.6.1's tables, fp32: Llama3ScaledRoPE for Llama-3.1-8B (head_dim 128, 131,072 positions)
    stack([cos, sin]) of 64 angles: 4 · 128 · 131,072 = 67,108,864 B once; lora_qwen2_5_7b_base builds a
    [131,072, 256] cos|sin table in each of its 28 layers: 28 · 8 · 128 · 131,072 = 3,758,096,384 B."""
    from vramplan.analytic import estimate
    from vramplan.analytic.weights import rope_cache_bytes

    assert rope_cache_bytes("shared", 128, 131072, 32) == 67_108_864
    assert rope_cache_bytes("per-layer", 128, 131072, 28) == 3_758_096_384
    assert rope_cache_bytes("wide", 128, 131072, 28) == 134_217_728
    assert rope_cache_bytes("none", 128, 131072, 28) == 0
    base = estimate(resolve("Qwen2.5-7B"), Scenario(rope_cache="none"))
    with_table = estimate(resolve("Qwen2.5-7B"), Scenario(rope_cache="per-layer"))
    assert with_table.get("weights/rope_cache") == 3_758_096_384
    assert with_table.allocated_peak_bytes - base.allocated_peak_bytes == 3_758_096_384
    _, res = _resolved("torchtune_qlora.yaml")
    assert res.fields["rope_cache"] == "shared"


def test_axolotl_pads_a_command_line_seq_too(cli):
    """--seq over an axolotl config is its sequence_len, padded as its collator pads it (1000 -> 1024)."""
    r = cli("estimate", "--config", str(DATA / "axolotl_qlora.yml"), "--seq", "1000", "--json")
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["scenario"]["seq"] == 1024 and any("--seq 1000 runs at 1024" in n for n in d["config"]["notes"])


def test_fit_synthetic_rows_to_the_template():
    """fit solves the template's frame from two encodings: labels on the answer only (5-token frame, one
    label for the end token) or on every token (LLaMA-Factory's train_on_prompt: the label count is the
    template's, not ours), and refuses a template that does not keep one word one token."""
    from vramplan.profile.frameworks import fit
    from vramplan.profile.runner import ProfileRunError

    answer_only = lambda u, a: (u + a + 5, a + 1)  # noqa: E731
    assert fit(answer_only, 128, 64) == (60, 63)
    every = lambda u, a: (u + a + 5, u + a + 5)  # noqa: E731
    assert fit(every, 128, 64) == (1, 122)
    with pytest.raises(ProfileRunError, match="one synthetic word as one token"):
        fit(lambda u, a: (2 * u + a, a), 128, 64)
    with pytest.raises(ProfileRunError, match="shorter than the framework's chat frame"):
        fit(answer_only, 6, 3)


def test_profile_runs_offline_and_restores_the_environment(monkeypatch):
    import os

    from vramplan.profile.frameworks import OFFLINE, offline

    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with offline():
        assert all(os.environ[k] == v for k, v in OFFLINE.items())
    assert os.environ["WANDB_MODE"] == "online" and "HF_HUB_OFFLINE" not in os.environ


# ------------------------------------------------------------------ issue 14: the fused losses' keys
def _patched(tmp_path, fixture: str, extra: dict, name: str | None = None):
    """``fixture`` with ``extra`` keys set (YAML or JSON), resolved."""
    import json

    import yaml

    src = DATA / fixture
    out = tmp_path / (name or fixture)
    if src.suffix == ".json":
        data = json.loads(src.read_text())
        data.update(extra)
        out.write_text(json.dumps(data))
    else:
        data = yaml.safe_load(src.read_text())
        data.update(extra)
        out.write_text(yaml.safe_dump(data))
    return out


def _resolve_files(*paths, version=None, arch=None):
    loaded = F.load([str(p) for p in paths], None, None, version)
    return F.resolve(loaded, arch or QWEN)


def _no_issue14_liger(notes) -> bool:
    return not any("Liger" in n and "issue 14" in n for n in notes)


def test_hf_use_liger_kernel_prices_liger_flce(tmp_path):
    args = _patched(tmp_path, "training_args.json", {"use_liger_kernel": True})
    res = _resolve_files(args, DATA / "adapter_config.json")
    assert res.fields["loss"] == "liger" and _no_issue14_liger(res.notes)
    assert any("rope, rms_norm, swiglu" in n for n in res.notes)
    # the layer kernels on by default in apply_liger_kernel_to_llama: each its own field
    assert all(res.fields[f] is True for f in ("liger_rope", "liger_rms_norm", "liger_swiglu"))
    assert not any("upper bound" in n and "Liger" in n for n in res.notes)
    part = _patched(tmp_path, "training_args.json", {"use_liger_kernel": True, "liger_kernel_config": {
        "swiglu": False}}, "part.json")
    res = _resolve_files(part, DATA / "adapter_config.json")
    assert res.fields["liger_rms_norm"] and res.fields["liger_rope"] and "liger_swiglu" not in res.fields
    # liger_kernel_config switches FLCE off: transformers' loss stays, Liger's CE on the full logits is noted
    off = _patched(tmp_path, "training_args.json", {"use_liger_kernel": True, "liger_kernel_config": {
        "fused_linear_cross_entropy": False, "cross_entropy": True}}, "off.json")
    res = _resolve_files(off, DATA / "adapter_config.json")
    assert res.fields.get("loss", "hf") == "hf" and any("cross_entropy" in n for n in res.notes)
    # a model_type liger-kernel 0.8.5 has no apply function for: nothing applied
    moe = resolve("Qwen1.5-MoE-A2.7B")
    res = _resolve_files(args, DATA / "adapter_config.json", arch=moe)
    assert res.fields.get("loss", "hf") == "hf" and any("no kernels for model_type qwen2_moe" in n for n in res.notes)


def test_llamafactory_enable_liger_kernel(tmp_path):
    res = _resolve_files(_patched(tmp_path, "llamafactory_qlora.yaml", {"enable_liger_kernel": True}))
    assert res.fields["loss"] == "liger" and _no_issue14_liger(res.notes)
    assert res.fields["liger_rms_norm"] and res.fields["liger_swiglu"] and res.fields["liger_rope"]
    assert _resolve_files(DATA / "llamafactory_qlora.yaml").fields["loss"] == "hf"


def test_ms_swift_use_liger_kernel():
    loaded = F.load([], ["swift", "sft", "--model", "Qwen/Qwen3-14B", "--use_liger_kernel", "true"])
    res = F.resolve(loaded, QWEN)
    assert res.fields["loss"] == "liger" and _no_issue14_liger(res.notes)
    # ms-swift's logits_to_keep still applies: --label-fraction keeps only label rows in Liger's loss
    assert Scenario(**dict(res.fields, label_fraction=0.4)).kept_positions < res.fields.get("seq", 2048)


def test_axolotl_liger_and_cce_plugins(tmp_path):
    liger = _patched(tmp_path, "axolotl_qlora.yml", {"plugins": ["axolotl.integrations.liger.LigerPlugin"],
                                                      "liger_fused_linear_cross_entropy": True,
                                                      "liger_rms_norm": True}, "liger.yml")
    res = _resolve_files(liger)
    assert res.fields["loss"] == "liger" and any("rms_norm kernels" in n for n in res.notes)
    # axolotl switches each kernel by its own key: only liger_rms_norm is on
    assert res.fields["liger_rms_norm"] and "liger_swiglu" not in res.fields and "liger_rope" not in res.fields
    # the plugin alone switches nothing on: every liger_* key defaults to None
    bare = _patched(tmp_path, "axolotl_qlora.yml", {"plugins": ["axolotl.integrations.liger.LigerPlugin"]}, "b.yml")
    assert _resolve_files(bare).fields["loss"] == "hf"
    cce = _patched(tmp_path, "axolotl_qlora.yml",
                   {"plugins": ["axolotl.integrations.cut_cross_entropy.CutCrossEntropyPlugin"]}, "cce.yml")
    res = _resolve_files(cce)
    assert res.fields["loss"] == "cce" and not any("issue 14" in n and "plugin" in n for n in res.notes)
    Scenario(**res.fields)  # axolotl casts lm_head back to bf16: a valid CCE scenario
    both = _patched(tmp_path, "axolotl_qlora.yml", {
        "plugins": ["axolotl.integrations.cut_cross_entropy.CutCrossEntropyPlugin"],
        "chunked_cross_entropy": True}, "both.yml")
    with pytest.raises(F.ConfigError, match="chunked_cross_entropy"):
        _resolve_files(both)
    other = _patched(tmp_path, "axolotl_qlora.yml", {"plugins": ["axolotl.integrations.spectrum.SpectrumPlugin"]},
                     "o.yml")
    assert any("SpectrumPlugin: not priced" in n for n in _resolve_files(other).notes)


def test_trl_liger_keeps_its_fused_head(tmp_path):
    cfg = _patched(tmp_path, "trl_qlora.yaml", {"use_liger_kernel": True})
    res = _resolve_files(cfg, version="1.16.0")
    assert res.fields["loss"] == "chunked-head" and any("rope, rms_norm, swiglu" in n for n in res.notes)
    assert _resolve_files(cfg, version="0.26.0").fields["loss"] == "liger"  # the HF Trainer applies FLCE there
    bad = _patched(tmp_path, "trl_qlora.yaml", {"use_liger_kernel": True, "liger_kernel_config": {
        "fused_linear_cross_entropy": True}}, "bad.yaml")
    with pytest.raises(F.ConfigError, match="refused by TRL >= 1.15"):
        _resolve_files(bad, version="1.16.0")


def test_unsloth_prices_its_own_fused_ce():
    _, res = _resolved("unsloth.yaml")
    assert res.fields["loss"] == "unsloth" and any("2 GiB" in n for n in res.notes)


# ------------------------------------------------------------------ fused LoRA kernels
def _axolotl(extra: dict, arch=None):
    from vramplan.frameworks.base import Reader

    data = {**dict(base_model="Qwen/Qwen3-14B", adapter="qlora", load_in_4bit=True, lora_r=8,
                   lora_target_linear=True, bf16=True), **extra}
    fw = F.framework("axolotl")
    notes: list[str] = []
    out = fw.scenario(Reader(fw, fw.eras[0], data), fw.eras[0], arch or QWEN, notes)
    return out, notes


@pytest.mark.parametrize("extra,expected", [
    ({}, ("axolotl", ("qkv", "o", "mlp"))),                           # auto-on for lora/qlora
    ({"lora_mlp_kernel": True}, ("axolotl", ("mlp",))),               # one key set: the unset ones stay off
    ({"lora_embedding_kernel": False}, (None, None)),                 # any kernel key set stops the auto rule
    ({"lora_o_kernel": False, "lora_qkv_kernel": True, "lora_mlp_kernel": True}, ("axolotl", ("qkv", "mlp"))),
    ({"trust_remote_code": True}, (None, None)),
])
def test_axolotl_fused_lora_kernel_rule(extra, expected):
    """axolotl 0.19 ``check_auto_enable_lora_kernels`` (utils/schemas/config.py:L1974-2070)."""
    out, notes = _axolotl(extra)
    assert (out.get("lora_kernels"), out.get("kernel_groups")) == expected
    assert not any("issue 14" in n and "kernel" in n for n in notes)
    if expected[0]:
        Scenario(**{k: v for k, v in out.items() if k in Scenario.__dataclass_fields__})


def test_axolotl_8bit_lora_gets_no_kernels():
    out, _ = _axolotl(dict(adapter="lora", load_in_4bit=False, load_in_8bit=True))
    assert out["quant"] == "int8" and "lora_kernels" not in out


@pytest.mark.parametrize("dropout,expected", [(0.0, "unsloth"), (0.05, None)])
def test_unsloth_fuses_only_without_dropout(dropout, expected):
    from vramplan.frameworks.base import Reader

    fw = F.framework("unsloth")
    data = {"training": {"training_type": "lora", "load_in_4bit": True, "max_seq_length": 2048, "batch_size": 2},
            "lora": {"lora_r": 16, "lora_dropout": dropout}}
    notes: list[str] = []
    out = fw.scenario(Reader(fw, fw.eras[0], data), fw.eras[0], QWEN, notes)
    assert out.get("lora_kernels") == expected
    assert any("runs peft's LoRA forward" in n for n in notes) == (expected is None)


def _edited(tmp_path, fixture: str, edits: dict, *extra: str):
    """``fixture`` with top-level (or dotted) keys replaced, written under its own name in tmp_path."""
    import yaml

    src = DATA / fixture
    data = json.loads(src.read_text()) if src.suffix == ".json" else yaml.safe_load(src.read_text())
    for key, value in edits.items():
        node, *path = key.split(".")
        cur = data
        for part in [node, *path][:-1]:
            cur = cur.setdefault(part, {})
        cur[[node, *path][-1]] = value
    out = tmp_path / fixture
    out.write_text(json.dumps(data) if src.suffix == ".json" else yaml.safe_dump(data))
    for e in extra:
        shutil.copy(DATA / e, tmp_path / e)
    loaded = F.load([str(out)] + [str(tmp_path / e) for e in extra], None, None, None)
    return F.resolve(loaded, resolve(loaded.model) if loaded.model else QWEN)


#: (fixture, edits, companion files, expected offload, expected checkpointing)
OFFLOAD_KEYS = {
    "hf-offload": ("training_args.json", {"gradient_checkpointing": True,
                                          "gradient_checkpointing_kwargs": {"offload": True}},
                   ("adapter_config.json",), "checkpoints", True),
    "hf-no-offload": ("training_args.json", {"gradient_checkpointing": True}, ("adapter_config.json",), "none", True),
    "trl": ("trl_qlora.yaml", {"activation_offloading": True}, (), "activations", True),
    "axolotl-true": ("axolotl_qlora.yml", {"activation_offloading": True}, (), "activations", True),
    "axolotl-gc-offload": ("axolotl_qlora.yml", {"gradient_checkpointing": "offload"}, (), "activations", True),
    "axolotl-legacy": ("axolotl_qlora.yml", {"activation_offloading": "legacy", "gradient_checkpointing": True}, (),
                       "checkpoints", True),
    "torchtune": ("torchtune_qlora.yaml", {"enable_activation_offloading": True}, (), "activations", True),
    "llamafactory": ("llamafactory_qlora.yaml", {"use_unsloth_gc": True}, (), "checkpoints", True),
    "unsloth-short": ("unsloth.yaml", {"training.max_seq_length": 256}, (), "none", True),
    "unsloth-true": ("unsloth.yaml", {"training.gradient_checkpointing": True}, (), "none", True),
}


@pytest.mark.parametrize("case", sorted(OFFLOAD_KEYS))
def test_offload_config_keys(tmp_path, case):
    fixture, edits, extra, offload, gc = OFFLOAD_KEYS[case]
    res = _edited(tmp_path, fixture, edits, *extra)
    s = _scenario(res)
    assert (s.offload.value, s.grad_checkpointing) == (offload, gc), (case, res.notes)
    assert not any("offload" in n and "not yet priced" in n for n in res.notes), res.notes


def test_offload_host_golden_qwen3_14b():
    """Qwen3-14B QLoRA (hf-peft: fp32 residual stream), 1 × 4096, offloaded checkpoints:
    each layer input T·H·4 = 4096 · 5120 · 4 = 83,886,080 B -> pinned block 2^27 = 134,217,728 B;
    40 layers -> 5,368,709,120 B (5 GiB) of pinned host memory. Unsloth at the same shape stores bf16
    (41,943,040 B -> 2^26 = 67,108,864 B per slot, 40 slots) + the 200 × 256 KiB start-up pool
    (52,428,800 B): 2,736,783,360 B."""
    from vramplan.analytic import estimate

    a = estimate(QWEN, Scenario(seq=4096, offload="checkpoints"))
    assert a.host_bytes == 5_368_709_120
    assert [c.name for c in a.host] == ["host/pinned"]
    u = estimate(QWEN, Scenario(seq=4096, offload="unsloth", reentrant=True))
    assert u.host_bytes == 2_736_783_360
    assert estimate(QWEN, Scenario(seq=4096)).host_bytes == 0

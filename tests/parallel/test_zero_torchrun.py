"""DeepSpeed ZeRO under a real ``torchrun --nproc_per_node 2`` on gloo (real tensors, real collectives,
every rank its own process, ``tests/parallel/_torchrun_rank.py``) against the fake-tensor trace of each
rank in torch's fake process group: every step's peak to the byte, and every phase's peak and bytes per
component to the byte except, now and then, one allocator block (512 B) in a phase off the peak: gloo's
collectives complete asynchronously, so a small buffer's lifetime depends on timing (seen in the optimizer
step, on either rank, in some runs and not others), and in ZeRO-2 full fine-tuning one weight's gradient
(32 KiB, seen once in CI in the layers' backward of rank 1: ``_in_flight_gradient``) can outlive its reduce
on gloo's worker thread; the fake group completes every collective at once."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("bitsandbytes")
pytest.importorskip("deepspeed")

from vramplan.arch import resolve  # noqa: E402
from vramplan.hf import interventions  # noqa: E402
from vramplan.scenario import Scenario  # noqa: E402
from vramplan.trace.run import trace_run  # noqa: E402

pytestmark = pytest.mark.torch

HERE = Path(__file__).resolve().parent
WORLD = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(tmp_path, fields: dict, world: int) -> list:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE.parents[1]), os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={world}",
           f"--master_port={_free_port()}", str(HERE / "_torchrun_rank.py"), str(tmp_path), json.dumps(fields)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in range(world)]


def _fake(fields: dict, world: int, rank: int) -> list:
    with interventions.quiet_frameworks():
        run = trace_run(resolve("vramplan-debug"), Scenario(**fields, gpus=world, process_rank=rank), steps=2,
                        fake=True, device="cpu")
    return json.loads(json.dumps([s.phases for s in run.steps]))


def _in_flight_gradient(fields: dict) -> int:
    """The most an off-peak phase may read above the fake trace on gloo: 512 B (one allocator block),
    or under full fine-tuning one gradient of the largest weight matrix in fp32 (hidden x intermediate x
    4 B = 64 x 128 x 4 = 32,768 B on vramplan-debug), which a real rank may still hold while gloo
    completes its reduce asynchronously."""
    arch = resolve("vramplan-debug")
    return arch.hidden_size * arch.intermediate_size * 4 if fields.get("full") else 512


def _peaks(phases: list) -> list:
    return [max(p[0] for p in step.values()) for step in phases]


def test_uneven_world_3_step_peaks_on_every_rank(tmp_path):
    """ZeRO-3 QLoRA over 3 ranks (partitions padded unevenly): every rank's step peaks, to the byte. Off
    the peak rank 2's optimizer step differs by a few KiB on gloo. Real tensors in the fake group are no
    reference here: their collectives leave uninitialized data, which DeepSpeed's overflow check reads
    (the fake trace stands the check in for: ``zero_torch`` item 1)."""
    fields = dict(seq=64, batch=2, strategy="zero3", quant="nf4")
    real = _torchrun(tmp_path, fields, 3)
    for rank in range(3):
        assert _peaks(_fake(fields, 3, rank)) == _peaks(real[rank]), rank


@pytest.mark.parametrize("fields", [dict(strategy="zero3", quant="none"), dict(strategy="zero2", quant="none",
                                                                                 full=True)],
                         ids=["zero3-lora", "zero2-full"])
def test_each_torchrun_rank_equals_its_fake_trace(tmp_path, fields):
    fields = dict(seq=64, batch=2, **fields)
    runs = _torchrun(tmp_path, fields, WORLD)
    allowed = _in_flight_gradient(fields)
    for rank in range(WORLD):
        real, fake = runs[rank], _fake(fields, WORLD, rank)
        for got, want in zip(fake, real):
            assert max(p[0] for p in got.values()) == max(p[0] for p in want.values()), rank
            assert got.keys() == want.keys()
            for phase in got:
                if got[phase] != want[phase]:
                    assert abs(want[phase][0] - got[phase][0]) <= allowed, (rank, phase, got[phase], want[phase])

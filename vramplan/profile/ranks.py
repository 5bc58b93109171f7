"""Multi-process profiles: ``vramplan profile --gpus N --strategy ddp|fsdp`` runs every point under torchrun.

The command (``launch``) writes what to run to a JSON job file and starts
``python -m torch.distributed.run --standalone --nproc_per_node N -m vramplan.profile.ranks JOB``
(gloo on CPU, nccl on CUDA: ``vramplan.parallel.torch_wrap.process_group``). Each rank (``main``) reads
the job, takes its rank from torchrun's environment (``RANK``; device ``cuda:LOCAL_RANK`` on CUDA),
profiles the point with the runner (``profile_one``: the trace's prediction for this very rank, then the
measured steps in the real process group), saves one profile, and appends its path to the job's
manifest. The command reads the manifest back: one profile per rank, each recording its strategy,
world size and rank (``scenario`` and ``run.parallel``).

One node only: a multi-node run (``--nodes`` > 1) is refused in one line.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from vramplan.errors import VramplanError
from vramplan.scenario import Scenario


class RanksError(VramplanError):
    """A multi-process profile that cannot start or whose ranks failed."""


#: Seconds a torchrun launch may take per point before it is stopped.
TIMEOUT_S = 1800


def launch(model: str, arch_config: dict[str, Any] | None, scenario: Scenario, opts: Any,
           folder: str | Path) -> list[Path]:
    """Run ``scenario`` on ``scenario.world_size`` local processes; the profiles written, rank order."""
    if scenario.nodes > 1:
        raise RanksError(f"profile runs on one node: --nodes {scenario.nodes} needs a launcher per node")
    if opts.weights:
        raise RanksError("a multi-process profile runs random-init weights (no --weights yet)")
    with tempfile.TemporaryDirectory(prefix="vramplan-ranks-") as tmp:
        job = Path(tmp) / "job.json"
        manifest = Path(tmp) / "manifest.txt"
        job.write_text(json.dumps({
            "model": model, "arch_config": arch_config, "scenario": scenario.to_dict(),
            "opts": dataclasses.asdict(opts), "folder": str(folder), "manifest": str(manifest)}))
        root = str(Path(__file__).resolve().parents[2])
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
        env.setdefault("OMP_NUM_THREADS", "1")
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={scenario.world_size}", "-m", "vramplan.profile.ranks", str(job)]
        try:
            done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise RanksError(f"torchrun did not finish within {TIMEOUT_S} s") from None
        paths = [Path(line) for line in manifest.read_text().splitlines()] if manifest.exists() else []
        if done.returncode != 0 or len(paths) != scenario.world_size:
            tail = [ln for ln in (done.stderr or "").strip().splitlines() if ln.strip()][-1:] or ["no output"]
            raise RanksError(f"torchrun exited {done.returncode} with {len(paths)} of {scenario.world_size} "
                             f"profiles written: {tail[0][:300]}")
    return sorted(paths, key=lambda p: _rank_of(p))


def _rank_of(path: Path) -> int:
    from vramplan.profile.store import read_profile

    return read_profile(path).scenario.process_rank


def main(job_path: str) -> None:
    """One rank of a launched job (under torchrun)."""
    import logging
    import warnings

    from vramplan.arch import Arch, resolve
    from vramplan.profile.runner import RunOptions, profile_one
    from vramplan.profile.store import save_profile

    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    warnings.simplefilter("ignore")
    job = json.loads(Path(job_path).read_text())
    rank = int(os.environ["RANK"])
    scenario = Scenario.from_dict(job["scenario"]).replace(process_rank=rank)
    opts = RunOptions(**{k: tuple(v) if k == "predict" else v for k, v in job["opts"].items()})
    if opts.device and opts.device.startswith("cuda"):
        opts = dataclasses.replace(opts, device=f"cuda:{int(os.environ.get('LOCAL_RANK', rank))}")
    arch = Arch.from_config(job["arch_config"], name=job["model"]) if job["arch_config"] else resolve(job["model"])
    from vramplan.hf import interventions

    with interventions.quiet_frameworks():
        prof = profile_one(job["model"], arch, scenario, opts)
    path = save_profile(prof, job["folder"])
    with open(job["manifest"], "a", encoding="utf-8") as f:
        f.write(f"{path}\n")


if __name__ == "__main__":
    main(sys.argv[1])

"""Run under ``torchrun``: this rank's training steps on real tensors in the real (gloo) process group,
through the trace's own code (``trace_run(fake=False, group="torchrun")``), written as JSON to
``<out>/rank<RANK>.json``. Used by test_torchrun.py; argv: out folder, scenario fields as JSON."""

import json
import os
import sys
import warnings
from pathlib import Path

warnings.simplefilter("ignore")


def main() -> None:
    from vramplan.arch import resolve
    from vramplan.hf import interventions
    from vramplan.scenario import Scenario
    from vramplan.trace.run import trace_run

    out, fields = Path(sys.argv[1]), json.loads(sys.argv[2])
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    sc = Scenario(**fields, gpus=world, process_rank=rank)
    with interventions.quiet_frameworks():
        run = trace_run(resolve("vramplan-debug"), sc, steps=2, fake=False, device="cpu", group="torchrun")
    (out / f"rank{rank}.json").write_text(json.dumps([s.phases for s in run.steps]))


if __name__ == "__main__":
    main()

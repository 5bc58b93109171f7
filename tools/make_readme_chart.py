"""Regenerate the README's breakdown chart: ``python tools/make_readme_chart.py``.

It is exactly this command line (also in docs/cli.md), so the image shows what users get:

    vramplan plot breakdown -m Qwen3-14B -r 8 -s 2048 --gpu rtx4090 -o docs/img/qwen3-14b-breakdown.png
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ARGS = ["plot", "breakdown", "-m", "Qwen3-14B", "-r", "8", "-s", "2048", "--gpu", "rtx4090",
        "-o", str(ROOT / "docs" / "img" / "qwen3-14b-breakdown.png")]

if __name__ == "__main__":
    from vramplan.cli import main

    main(ARGS + sys.argv[1:])

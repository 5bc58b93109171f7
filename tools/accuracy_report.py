"""Print the figures of docs/accuracy.md as Markdown: summary before / after calibration, per-row tables.

Usage: ``python tools/accuracy_report.py [CALIBRATION_JSON]`` (default: the shipped calibration).
"before" is the built-in priors of ``Calibration``; "after" the given (or shipped) file.
"""

from __future__ import annotations

import sys

from vramplan.calibration import Calibration, default_calibration
from vramplan.report.text import pair, pct
from vramplan.validate import Row, Summary, validate

GiB = 1024**3


def _summary_line(name: str, s: Summary) -> str:
    med = "—" if s.median_abs_error is None else f"{s.median_abs_error * 100:.1f} %"
    return (f"| {name} | {s.rows} | {med} | {pair(s.worst_under)} | {pair(s.worst_over)} | "
            f"{s.verdict_agree}/{s.verdict_rows} / {s.verdict_agree_conservative}/{s.verdict_rows} |")


def _gib(b: int | None) -> str:
    return "—" if b is None else f"{b / GiB:.2f} GiB"


def _row(r: Row) -> str:
    return (f"| {r.id} | {r.model} | {r.device} | {r.measurement} | {r.status} | {_gib(r.measured_bytes)} | "
            f"{_gib(r.predicted_bytes if r.predicted_bytes is not None else r.predicted_total_bytes)} | "
            f"{pct(r.error)} | {r.peak_phase} |")


def main(argv: list[str]) -> None:
    after_cal = Calibration.load(argv[1]) if len(argv) > 1 else default_calibration()
    before = validate(calibration=Calibration())
    after = validate(calibration=after_cal)
    print("| reference rows in scope | figures | median \\|error\\| | worst under-prediction | "
          "worst over-prediction | fit verdict (point / conservative) |")
    print("|---|---|---|---|---|---|")
    print(_summary_line("before calibration (built-in priors)", before.reference))
    print(_summary_line("after calibration (shipped)", after.reference))
    print()
    print("| row | model | GPU | statistic | scope | measured | predicted | error | peak phase |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in after.rows:
        if r.scope in ("in", "verdict"):
            print(_row(r))
    print()
    a = after.approximate
    if a is not None:
        print(f"Out of scope, approximated: {a.rows} figures, median |error| "
              f"{'—' if a.median_abs_error is None else f'{a.median_abs_error * 100:.1f} %'}")
        for r in after.rows:
            if r.status == "out" and r.error is not None:
                print(_row(r))


if __name__ == "__main__":
    main(sys.argv)

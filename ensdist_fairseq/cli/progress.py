"""Progress of long commands on stderr, in fairseq's conventions: `--log-format simple|json|none`,
`--log-interval N` (a line every N units and one at the end), `--no-progress-bar` (lines, never
a bar: the only kind printed here). A line says what is done, the rate and the time left:

    [evaluate] ce-ens3: decoding 400/1000 sentences (40.0%), 12.3 sentences/s, 49 s left
    {"command": "evaluate", "name": "ce-ens3", "stage": "decoding", "done": 400, "total": 1000, ...}
"""

import json
import sys
import time

from ensdist_fairseq.cli import options

LOG_FORMATS = ("simple", "json", "none")


def add_progress_options(ap, default_interval: int, unit: str) -> None:
    ap.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default="simple",
        help="progress lines on stderr: plain text, one JSON object a line, or none",
    )
    ap.add_argument(
        "--log-interval",
        type=options.integer(1),
        default=default_interval,
        help=f"a progress line every this many {unit} (default: %(default)s)",
    )
    ap.add_argument(
        "--no-progress-bar",
        action="store_true",
        help="accepted for fairseq's sake: progress is always lines, never a bar",
    )


class Progress:
    """Counts `unit`s of one stage and prints a line every `interval` of them and at the end."""

    def __init__(self, command: str, name: str, stage: str, total: int, unit: str, args):
        self.command, self.name, self.stage, self.total, self.unit = (
            command,
            name,
            stage,
            total,
            unit,
        )
        self.log_format, self.interval = args.log_format, args.log_interval
        self.done, self.start, self._next = 0, time.perf_counter(), args.log_interval

    def update(self, n: int = 1) -> None:
        self.done += n
        if self.done >= self._next or self.done == self.total:
            self._next = (self.done // self.interval + 1) * self.interval
            self.emit()

    def emit(self) -> None:
        if self.log_format == "none":
            return
        seconds = max(time.perf_counter() - self.start, 1e-9)
        rate = self.done / seconds
        left = (self.total - self.done) / rate if rate > 0 and self.total else None
        if self.log_format == "json":
            line = json.dumps(
                {
                    "command": self.command,
                    "name": self.name,
                    "stage": self.stage,
                    "done": self.done,
                    "total": self.total,
                    "unit": self.unit,
                    "per_second": round(rate, 3),
                    "seconds_left": None if left is None else round(left, 1),
                }
            )
        else:
            share = f" ({100 * self.done / self.total:.1f}%)" if self.total else ""
            eta = "" if left is None else f", {left:.0f} s left"
            line = (
                f"[{self.command}] {self.name}: {self.stage} {self.done}/{self.total} "
                f"{self.unit}{share}, {rate:.1f} {self.unit}/s{eta}"
            )
        print(line, file=sys.stderr, flush=True)

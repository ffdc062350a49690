"""The report's "Measured on" line: the machines and dates the results came from.

Float results of CPU training differ across processors and library builds, so the report names
where its numbers were measured (each result records it: environment.py). Results from more
than one environment are listed with the systems of each; results written before the field
existed are counted as not recorded.
"""

import glob
import os
from collections import OrderedDict
from typing import Sequence

from ensdist_fairseq.environment import summary
from ensdist_fairseq.results import UNCERTAINTY, read_json


def uncertainty_results(results_dir: str) -> list:
    """The system.json of every RESULTS_DIR/uncertainty/<system>/."""
    found = []
    for path in sorted(glob.glob(os.path.join(results_dir, "uncertainty", "*", "system.json"))):
        data = read_json(path)
        if UNCERTAINTY.is_one(data):
            found.append(data)
    return found


def markdown(results: Sequence[dict]) -> str:
    """'Measured on ...' for result objects (evaluation and uncertainty alike)."""
    if not results:
        return ""
    groups: "OrderedDict[str, list]" = OrderedDict()
    dates = set()
    for r in results:
        env = r.get("environment")
        key = summary(env) if env else "not recorded"
        groups.setdefault(key, []).append(r["name"])
        if env:
            dates.add(env.get("date"))
    span = sorted(d for d in dates if d)
    when = "" if not span else f" ({span[0]}" + (f" to {span[-1]})" if len(span) > 1 else ")")
    if len(groups) == 1:
        return f"Measured on: {next(iter(groups))}{when}.\n\n"
    lines = [f"Measured on {len(groups)} environments{when}; each system's:\n"]
    for key, names in groups.items():
        lines.append(f"- {key}: {', '.join(sorted(set(names)))}")
    return "\n".join(lines) + "\n\n"

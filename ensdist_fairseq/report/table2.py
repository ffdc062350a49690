"""From `ensdist-evaluate` JSONs: a table shaped like Reich et al. (2020) Table 2, and
reliability diagrams like their Figure 2.

Rows are grouped by the JSONs' "method" (in order of first appearance), then by "kind":
individual members collapse into one row, their mean and its 95 % t interval over seeds
(report/bootstrap.seed_interval); ensembles follow by size, students by teacher-ensemble size. ECE columns are the
authors' unweighted form in percent; the second table has every metric of every system.
"""

import os
import re
from typing import Dict, List, Optional, Sequence

import numpy as np
from matplotlib.figure import Figure  # a bare Figure renders with Agg, no GUI backend needed

from ensdist_fairseq.atomic_files import atomic_open
from ensdist_fairseq.errors import EnsdistError
from ensdist_fairseq.report.bootstrap import (
    bleu_samples,
    percentile_interval,
    seed_interval,
    token_samples,
)
from ensdist_fairseq.report.markdown import MISSING, is_number, number, table, with_interval
from ensdist_fairseq.results import EVALUATION

KIND_ORDER = ("individual", "ensemble", "student")
KIND_LABEL = {"individual": "Individual", "ensemble": "Ensemble", "student": "Distilled"}
REQUIRED_KEYS = EVALUATION.required


def check_result(result: dict, source: str) -> None:
    """Raise EnsdistError naming `source` if `result` is not a result the report can read."""
    EVALUATION.check(result, source)


def check_comparable(results: Sequence[dict], sources: Sequence[str]) -> None:
    """A table mixes systems only when they were measured on the same split with the same bins."""
    for r, src in zip(results[1:], sources[1:]):
        for key in ("split", "num_bins"):
            if r[key] != results[0][key]:
                raise EnsdistError(
                    f"{src}: {key} {r[key]!r} differs from {sources[0]}'s {results[0][key]!r}"
                )


def mean_and_stderr(values: Sequence[float]):
    """(mean, s.e. = sample sd / sqrt(n)); s.e. is None for a single value."""
    v = np.asarray(values, dtype=np.float64)
    if v.size < 2:
        return float(v.mean()), None
    return float(v.mean()), float(v.std(ddof=1) / np.sqrt(v.size))


def _size(r: dict) -> int:
    """The '#models' of a row: a student counts its teachers, as in the paper."""
    if r["kind"] == "student" and r.get("num_teachers"):
        return r["num_teachers"]
    return r["num_models"]


def grouped(results: Sequence[dict]) -> Dict[str, Dict[str, List[dict]]]:
    """{method: {kind: results sorted by size then name}}, methods in order of appearance."""
    groups: Dict[str, Dict[str, List[dict]]] = {}
    for r in results:
        groups.setdefault(r["method"], {}).setdefault(r["kind"], []).append(r)
    for kinds in groups.values():
        for rows in kinds.values():
            rows.sort(key=lambda r: (_size(r), r["name"]))
    return groups


def _fmt(value: Optional[float], digits: int) -> str:
    return number(value, digits)


def _individual_cell(values: List[Optional[float]], digits: int) -> str:
    """Members: their mean and its 95 % t interval over seeds (just the mean for one seed)."""
    if not values or any(not is_number(v) for v in values):
        return MISSING
    return with_interval(float(np.mean(values)), *seed_interval(values), digits=digits)


def _temperature(r: dict) -> str:
    """' (T=1.23)' for a temperature-scaled result (ensdist-evaluate --fit-temperature-on)."""
    t = r.get("temperature")
    return f" (T={t:.2f})" if is_number(t) else ""


def _bleu_cell(r: dict) -> str:
    """BLEU and its 95 % bootstrap interval over test sentences, when the result has them."""
    samples = bleu_samples(r) if is_number(r["bleu"]) else None
    if samples is None:
        return _fmt(r["bleu"], 2)
    return with_interval(r["bleu"], *percentile_interval(samples), digits=2)


def _token_cell(r: dict, key: str, value, digits: int) -> str:
    """`value` and its 95 % bootstrap interval over test sentences from the per-token sidecar."""
    samples = token_samples(r) if is_number(value) else None
    if samples is None:
        return _fmt(value, digits)
    return with_interval(value, *percentile_interval(samples[key]), digits=digits)


def _ece(r: dict, which: str, form: str = "unweighted") -> Optional[float]:
    value = (r.get(which) or {}).get(form)
    return 100 * value if is_number(value) else None


def table2_markdown(results: Sequence[dict]) -> str:
    """Method | Model | # Models | BLEU | ECE-1 | ECE-5 (ECE unweighted, in percent)."""
    rows = []
    for method, kinds in grouped(results).items():
        first = True
        for kind in KIND_ORDER:
            group = kinds.get(kind, [])
            if not group:
                continue
            cells = []
            if kind == "individual":
                # the members' mean and spread over seeds, of the members as trained; a
                # temperature-scaled member is another system, a row of its own
                members = [r for r in group if r.get("temperature") is None]
                group = [r for r in group if r.get("temperature") is not None]
                if members:
                    cells.append(
                        (
                            f"Avg (n={len(members)})",
                            _individual_cell([r["bleu"] for r in members], 2),
                            _individual_cell([_ece(r, "ece1") for r in members], 3),
                            _individual_cell([_ece(r, "ece5") for r in members], 3),
                        )
                    )
            cells += [
                (
                    str(_size(r)) + _temperature(r),
                    _bleu_cell(r),
                    _token_cell(r, "ece1", _ece(r, "ece1"), 3),
                    _fmt(_ece(r, "ece5"), 3),
                )
                for r in group
            ]
            for i, (size, b, e1, e5) in enumerate(cells):
                label = KIND_LABEL[kind] if i == 0 else ""
                if kind == "student":  # several students of one teacher set: say which is which
                    # a Proxy-Dirichlet student's reading, from its result (not from its name)
                    reading = {"softmax": ", read as softmax(z)", "mean": ", read as α/α₀"}.get(
                        group[i].get("dirichlet_predictive"), ""
                    )
                    label = f"{KIND_LABEL[kind]} ({group[i]['name']}{reading})"
                rows.append([method if first else "", label, size, b, e1, e5])
                first = False
    header = ["Method", "Model", "# Models", "BLEU", "ECE-1 (%)", "ECE-5 (%)"]
    return table(header, rows, "llrrrr")


def details_markdown(results: Sequence[dict]) -> str:
    """Every system with both ECE forms, Brier, NLL and accuracy."""
    rows = []
    for kinds in grouped(results).values():
        for kind in KIND_ORDER:
            for r in kinds.get(kind, []):
                acc = r.get("accuracy")
                rows.append(
                    [
                        r["name"] + _temperature(r),
                        r["method"],
                        kind,
                        _size(r),
                        _fmt(r["bleu"], 2),
                        f"{_fmt(_ece(r, 'ece1'), 3)} / {_fmt(_ece(r, 'ece1', 'weighted'), 3)}",
                        f"{_fmt(_ece(r, 'ece5'), 3)} / {_fmt(_ece(r, 'ece5', 'weighted'), 3)}",
                        _fmt(r.get("brier"), 4),
                        _token_cell(r, "nll", r.get("nll"), 4),
                        _fmt(100 * acc if is_number(acc) else None, 2),
                        r.get("num_tokens", MISSING),
                    ]
                )
    header = [
        "System",
        "Method",
        "Kind",
        "# Models",
        "BLEU",
        "ECE-1 unw. / w. (%)",
        "ECE-5 unw. / w. (%)",
        "Brier",
        "NLL (nats)",
        "Acc. (%)",
        "Tokens",
    ]
    return table(header, rows, "lllrrrrrrrr")


def report_markdown(results: Sequence[dict]) -> str:
    r0 = results[0]
    signatures = sorted({r["bleu_signature"] for r in results if r.get("bleu_signature")})
    text = (
        f"## Results ({r0['split']} split)\n\n{table2_markdown(results)}\n"
        f"ECE: token level, teacher-forced, {r0['num_bins']} equal-count bins, unweighted mean "
        "over bins (the authors' form), in percent. Individual: mean of the "
        "members [95 % t interval over seeds]; other BLEU, ECE-1 and NLL "
        "[95 % bootstrap interval over test sentences, where the result has them].\n\n"
        f"### All metrics\n\n{details_markdown(results)}\n"
        "w. = count-weighted ECE. Brier: multi-class, per token.\n"
    )
    if signatures:
        text += "\nsacreBLEU: " + "; ".join(signatures) + "\n"
    return text


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_") or "method"


def reliability_figure(method: str, kinds: Dict[str, List[dict]]) -> Figure:
    """Accuracy vs confidence per bin (top-1 and top-5 pairs), the diagonal dotted."""
    fig = Figure(figsize=(10, 4.6))
    colours = {"ensemble": "tab:orange", "student": "tab:green"}
    for ax, which, title in zip(
        fig.subplots(1, 2), ("top1", "top5"), ("top-1 (ECE-1)", "top-5 pairs (ECE-5)")
    ):
        ax.plot([0, 1], [0, 1], ":", color="black", linewidth=1, label="perfect calibration")
        for i, r in enumerate(kinds.get("individual", [])):
            b = r["reliability"][which]
            ax.plot(
                b["confidence"],
                b["accuracy"],
                "o-",
                color="tab:blue",
                alpha=0.5,
                markersize=3,
                linewidth=1,
                label="individual" if i == 0 else None,
            )
        for kind in ("ensemble", "student"):
            rows = kinds.get(kind, [])
            for j, r in enumerate(rows):
                b = r["reliability"][which]
                shade = 0.4 + 0.6 * (j + 1) / len(rows)  # larger ensembles drawn more opaque
                ax.plot(
                    b["confidence"],
                    b["accuracy"],
                    "s-",
                    color=colours[kind],
                    alpha=shade,
                    markersize=4,
                    linewidth=1.5,
                    label=(
                        r["name"] if kind == "student" else f"{KIND_LABEL[kind].lower()} {_size(r)}"
                    ),
                )
        ax.set(
            xlim=(0, 1),
            ylim=(0, 1),
            xlabel="confidence (bin mean)",
            ylabel="accuracy (bin)",
            title=f"{method}: {title}",
        )
        ax.set_aspect("equal")
        ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    return fig


def write_reliability_diagrams(results: Sequence[dict], out_dir: str) -> List[str]:
    """One PNG per method, written atomically; returns their paths."""
    written = []
    for method, kinds in grouped(results).items():
        path = os.path.join(out_dir, f"reliability_{slug(method)}.png")
        with atomic_open(path, "wb") as f:
            reliability_figure(method, kinds).savefig(f, format="png", dpi=120)
        written.append(path)
    return written

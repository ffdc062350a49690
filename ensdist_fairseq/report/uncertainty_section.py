"""The report's uncertainty section: OOD detection like the PD paper's Table 4, error rejection,
ROC and retention figures, and whether the paper's findings hold (criteria fixed below).

Every ROC-AUC and PRR carries a 95 % paired bootstrap interval over sentences (report/bootstrap);
members of group "single" collapse into one row, their mean with a t interval over seeds. Every
table has the baselines of metrics/detection.BASELINES beside the uncertainty measures.
"""

import os
from typing import List, Tuple

import numpy as np
from matplotlib.figure import Figure  # a bare Figure renders with Agg, no GUI backend

from ensdist_fairseq.metrics import detection
from ensdist_fairseq.report import bootstrap as B
from ensdist_fairseq.report.markdown import MISSING, NOT_MEASURED, number, table, with_interval
from ensdist_fairseq.report.uncertainty_lengths import binning, set_table
from ensdist_fairseq.report.uncertainty_stats import Stats, load_systems, ood_sets, scored_columns

GROUP_ORDER = ("single", "ensemble", "mean-kd", "proxy-dirichlet", "other")
GROUP_LABEL = {
    "single": "Single",
    "ensemble": "Ensemble",
    "mean-kd": "Mean-KD student",
    "proxy-dirichlet": "PD student",
    "other": "Other",
}
KNOWLEDGE = "rmi"  # the paper's knowledge measure for Table 4 (sequence-level RMI)
LANGUAGE_SHIFT = ("target", "third")  # source in the target language / in a third language
# Findings' criteria, fixed before any run (percentage points of ROC-AUC), judged on the 95 %
# bootstrap interval (report/bootstrap.verdict):
KNOWLEDGE_MARGIN = 5.0  # F1: ensemble knowledge − min(total + this, SATURATED) > 0 on every
SATURATED = 95.0  #     language-shift set (a total already near 100 leaves no room)
CLOSE_TO_ENSEMBLE = 10.0  # F2: mean |ensemble − PD| knowledge AUC over the OOD sets < this


def _rows(systems: List[dict]) -> List[Tuple[str, List[dict]]]:
    """(row label, systems of the row) in table order."""
    rows = []
    for group in GROUP_ORDER:
        members = [s for s in systems if s["group"] == group]
        if group == "single" and len(members) > 1:
            rows.append((f"Single (mean of {len(members)}, t interval over seeds)", members))
        else:
            rows += [(f"{GROUP_LABEL[group]} ({s['name']})", [s]) for s in members]
    return rows


def _cell(
    points: List[float], samples: List[np.ndarray], digits: int = 1, missing: str = MISSING
) -> str:
    """One system: value [bootstrap interval]; several seeds: mean [t interval]."""
    if not points:
        return missing
    if len(points) == 1:
        return with_interval(points[0], *B.percentile_interval(samples[0]), digits=digits)
    return with_interval(float(np.mean(points)), *B.seed_interval(points), digits=digits)


def _measured(members, get) -> Tuple[List[float], List[np.ndarray]]:
    """(points, samples) of the members `get` measured; none at all when one member lacks it
    (a mean over some seeds only would read as the group's)."""
    got = [get(s) for s in members]
    if any(g is None for g in got):
        return [], []
    return [g[0] for g in got], [g[1] for g in got]


def ood_table(stats: Stats, sets: List[str]) -> str:
    """ROC-AUC of every (system, score) per OOD set, its length-matched AUC beside it."""
    rows = []
    for label, members in _rows(stats.systems):
        for m in scored_columns(members[0]):
            cells = []
            for st in sets:
                got = [stats.auc(s, st, m) for s in members]
                got = [g for g in got if g is not None]
                cells.append(_cell([g[0] for g in got], [g[1] for g in got]))
                matched = _measured(members, lambda s: stats.matched_auc(s, st, m))
                cells.append(_cell(*matched, missing=NOT_MEASURED))
            kind = "baseline" if m in detection.BASELINES else "measure"
            rows.append([label, f"{m} ({kind})", *cells])
    header = [h for st in sets for h in (st, f"{st}, length-matched")]
    return table(["system", "score", *header], rows, "ll" + "r" * len(header))


def rejection_table(stats: Stats) -> Tuple[str, dict]:
    rows, curves = [], {}
    for s in stats.systems:
        for m in scored_columns(s):
            got = stats.prr(s, m)
            if got is None:
                continue
            r, samples = got
            if m in ("total", KNOWLEDGE):
                curves[(s["name"], m)] = r
            rows.append(
                [
                    s["name"],
                    m + (" (baseline)" if m in detection.BASELINES else ""),
                    with_interval(r["prr"], *B.percentile_interval(samples), digits=1),
                    number(r["auc"]),
                    number(r["auc_random"]),
                    number(r["auc_oracle"]),
                ]
            )
    header = ["system", "score", "PRR % [95 % CI]", "AUC-RC (lower is better)", "random", "oracle"]
    return table(header, rows, "llrrrr"), curves


def _first(systems, group):
    return next((s for s in systems if s["group"] == group), None)


def _combine(verdicts: List[str]) -> str:
    if not verdicts or B.NOT_MEASURED in verdicts:
        return B.NOT_MEASURED
    if B.FAILS in verdicts:
        return B.FAILS
    return B.HOLDS if all(v == B.HOLDS for v in verdicts) else B.INCONCLUSIVE


def findings(stats: Stats, sets: List[str]) -> List[str]:
    """The paper's findings, each holds / fails / inconclusive / not measured, with numbers."""
    ens, pd, mkd = (_first(stats.systems, g) for g in ("ensemble", "proxy-dirichlet", "mean-kd"))
    out = []
    shift = [s for s in LANGUAGE_SHIFT if s in sets]
    claim = (
        f"**Ensemble: knowledge beats total on the language-shift sets** (criterion: the 95 % "
        f"interval of {KNOWLEDGE}-AUC − min(total-AUC + {KNOWLEDGE_MARGIN:g}, {SATURATED:g}) "
        f"above 0 on each of {', '.join(LANGUAGE_SHIFT)})"
    )
    got = (
        {s: (stats.auc(ens, s, KNOWLEDGE), stats.auc(ens, s, "total")) for s in shift}
        if ens
        else {}
    )
    if (
        len(shift) < len(LANGUAGE_SHIFT)
        or not got
        or any(k is None or t is None for k, t in got.values())
    ):
        out.append(f"- {claim}: {NOT_MEASURED}")
    else:
        parts, verdicts = [], []
        for s, (k, t) in got.items():
            d = k[1] - np.minimum(t[1] + KNOWLEDGE_MARGIN, SATURATED)
            ci = B.percentile_interval(d)
            verdicts.append(B.verdict(ci))
            parts.append(
                f"{s}: {k[0]:.1f} vs {t[0]:.1f}, criterion interval [{ci[0]:.1f}, {ci[1]:.1f}]"
            )
        out.append(f"- {claim}: {_combine(verdicts)} — " + "; ".join(parts))
    claim = (
        f"**PD student's knowledge comes close to the ensemble's** (criterion: the 95 % interval "
        f"of the mean |ensemble − PD| knowledge AUC over the OOD sets below {CLOSE_TO_ENSEMBLE:g})"
    )
    pairs = (
        [(stats.auc(ens, s, KNOWLEDGE), stats.auc(pd, s, KNOWLEDGE)) for s in sets]
        if ens and pd
        else []
    )
    if not pairs or any(e is None or p is None for e, p in pairs):
        out.append(f"- {claim}: {NOT_MEASURED}")
    else:
        gap = float(np.mean([abs(e[0] - p[0]) for e, p in pairs]))
        gaps = np.mean([np.abs(e[1] - p[1]) for e, p in pairs], axis=0)
        ci = B.percentile_interval(gaps)
        v = B.verdict(B.percentile_interval(CLOSE_TO_ENSEMBLE - gaps))
        out.append(
            f"- {claim}: {v} — mean gap {gap:.1f} [{ci[0]:.1f}, {ci[1]:.1f}] ("
            + ", ".join(f"{s}: {p[0]:.1f} vs {e[0]:.1f}" for s, (e, p) in zip(sets, pairs))
            + ")"
        )
    if mkd:
        has_none = not any(m != "total" and m != "data" for m in mkd["measures"])
        text = (
            f"- **Mean-KD student has no knowledge uncertainty**: "
            f"{B.HOLDS if has_none else B.FAILS} (a single softmax model gives only total"
            " uncertainty; ensdist-uncertainty refuses knowledge measures for it)"
        )
        both = [
            (stats.auc(mkd, s, "total"), stats.auc(pd, s, KNOWLEDGE) if pd else None) for s in shift
        ]
        if both and all(a is not None and b is not None for a, b in both):
            text += (
                "; on the language-shift sets its total vs the PD student's knowledge: "
                + ", ".join(f"{s}: {a[0]:.1f} vs {b[0]:.1f}" for s, (a, b) in zip(shift, both))
            )
        out.append(text)
    else:
        out.append(f"- Mean-KD student: {NOT_MEASURED}")
    return out


def write_figures(stats: Stats, sets: List[str], curves: dict, out_dir: str) -> List[str]:
    pngs = []
    if sets:
        fig = Figure(figsize=(4 * len(sets), 4))
        for i, st in enumerate(sets):
            ax = fig.add_subplot(1, len(sets), i + 1)
            for s in stats.systems:
                if st not in s["values"]:
                    continue
                ind = s["values"][s["in_domain"]]
                for m, style in (("total", "--"), (KNOWLEDGE, "-")):
                    if m in s["measures"]:
                        fpr, tpr = detection.roc_curve(ind[m], s["values"][st][m])
                        ax.plot(fpr, tpr, style, label=f"{s['name']} {m}")
            ax.plot([0, 1], [0, 1], ":", color="grey")
            ax.set(
                title=f"in-domain vs {st}",
                xlabel="false positive rate",
                ylabel="true positive rate",
            )
        fig.axes[0].legend(fontsize=6)
        fig.tight_layout()
        pngs.append(_save(fig, out_dir, "uncertainty_roc.png"))
    if curves:
        fig = Figure(figsize=(6, 4.5))
        ax = fig.add_subplot(1, 1, 1)
        for (name, m), r in curves.items():
            x = np.arange(len(r["kept_quality"])) / len(r["kept_quality"])
            ax.plot(
                x,
                r["kept_quality"],
                "-" if m != "total" else "--",
                label=f"{name} {m} (PRR {number(r['prr'], 0)})",
            )
        r = next(iter(curves.values()))
        x = np.arange(len(r["kept_quality_oracle"])) / len(r["kept_quality_oracle"])
        ax.plot(x, r["kept_quality_oracle"], ":", color="black", label="oracle (first system)")
        ax.axhline(r["mean_quality"], color="grey", lw=0.8, label="random (first system)")
        ax.set(
            xlabel="fraction rejected (most uncertain first)", ylabel="mean chrF of kept sentences"
        )
        ax.legend(fontsize=6)
        fig.tight_layout()
        pngs.append(_save(fig, out_dir, "uncertainty_rejection.png"))
    return pngs


def _save(fig, out_dir: str, name: str) -> str:
    path = os.path.join(out_dir, name)
    fig.savefig(path + ".tmp.png", dpi=110)
    os.replace(path + ".tmp.png", path)
    return path


def readings(systems: List[dict]) -> str:
    """How the ensembles and Dirichlet students were measured, from their system.json (results
    written before these fields existed: product-of-expectations, and α/α₀ for the students)."""
    parts = []
    for s in systems:
        if s.get("kind") == "ensemble":
            how = s.get("ensemble_combination") or "product-of-expectations"
            parts.append(f"{s['name']}: {how}")
        elif s.get("kind") == "dirichlet":
            expected = s.get("dirichlet_expected") or "mean"
            p = "softmax(z)" if expected == "softmax" else "α/α₀"
            parts.append(
                f"{s['name']}: expected categorical {p} (decodes with "
                f"{s.get('dirichlet_predictive') or 'α/α₀'})"
            )
    if not parts:
        return ""
    return (
        " Measured as: " + "; ".join(parts) + " (product-of-expectations: the members' token "
        "probabilities averaged, as fairseq's ensemble decodes; expectation-of-products: their "
        "sequence probabilities averaged; docs/uncertainty.md)."
    )


def section(results_dir: str, out_dir: str) -> Tuple[str, List[str]]:
    """(markdown, PNG paths) of the section; ('', []) when RESULTS/uncertainty has no system."""
    systems = load_systems(os.path.join(results_dir, "uncertainty"))
    if not systems:
        return "", []
    stats = Stats(systems)
    sets = ood_sets(systems)
    rej, curves = rejection_table(stats)
    pngs = write_figures(stats, sets, curves, out_dir)
    text = "\n## Uncertainty: out-of-distribution detection (PD paper Table 4 layout)\n\n"
    if sets:
        text += (
            f"ROC-AUC (%) of in-domain ({systems[0]['in_domain']}) vs each OOD set, with its 95 % "
            f"paired bootstrap interval over sentences ({B.RESAMPLES} resamples); beam "
            f"{systems[0]['beam']}. Baselines: "
            + "; ".join(f"{k} = {v}" for k, v in detection.BASELINES.items())
            + ". Sets: permuted = test sources with words shuffled, domain = source-language "
            "text of another domain, target = target-language sentences as sources, third = a "
            "third language (docs/uncertainty.md)."
            + readings(systems)
            + " "
            + binning(systems)
            + "\n\n"
            + ood_table(stats, sets)
            + "\nThe sets' sources (source lengths in pieces of the source dictionary, </s> "
            "excluded; <unk> pieces per piece):\n\n" + set_table(systems, sets)
        )
    else:
        text += f"{NOT_MEASURED}: no OOD set was scored (ensdist-uncertainty --ood-*).\n"
    text += "\n## Uncertainty: error detection (reject the most uncertain first)\n\n"
    if rej.count("\n") > 2:
        text += (
            "Sentence chrF of the 1-best on the in-domain set; PRR = 100 × (AUC_random − AUC)/"
            "(AUC_random − AUC_oracle) of the rejection curve of 100 − chrF, with its 95 % "
            "bootstrap interval.\n\n" + rej
        )
    else:
        text += f"{NOT_MEASURED}: no in-domain set with references (sentence chrF).\n"
    text += (
        "\n## Do the PD paper's uncertainty findings hold here?\n\n"
        + "\n".join(findings(stats, sets))
        + "\n\n"
        + "".join(f"![{os.path.basename(p)}]({os.path.basename(p)})\n" for p in pngs)
    )
    return text, pngs

"""The report's uncertainty section: OOD detection like the PD paper's Table 4, error rejection,
ROC and retention figures, and whether the paper's findings hold (criteria fixed below).

Reads RESULTS/uncertainty/<system>/system.json and its <set>.jsonl files (ensdist-uncertainty).
Rows: members of group "single" collapse into one row, mean ± s.e. (sample sd / sqrt(n)); then
one row per ensemble, mean-KD student, Proxy-Dirichlet student and other system.
"""

import glob
import json
import os
from typing import Dict, List, Optional, Tuple

import numpy as np
from matplotlib.figure import Figure  # a bare Figure renders with Agg, no GUI backend

from ensdist_fairseq.metrics import detection

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
# Findings' criteria, fixed before any run (percentage points of ROC-AUC):
KNOWLEDGE_MARGIN = 5.0  # F1: ensemble knowledge >= min(total + this, SATURATED) on every
SATURATED = 95.0  #     language-shift set (a total already near 100 leaves no room)
CLOSE_TO_ENSEMBLE = 10.0  # F2: PD knowledge within this of the ensemble's, averaged over OOD sets


def load_systems(unc_dir: str) -> List[dict]:
    """Every system under unc_dir: its system.json plus {set: {measure: array, 'chrf': array}}."""
    systems = []
    for meta_path in sorted(glob.glob(os.path.join(unc_dir, "*", "system.json"))):
        with open(meta_path, encoding="utf-8") as f:
            meta = json.load(f)
        meta["values"], meta["in_domain"] = {}, None
        for s in meta["sets"]:
            cols: Dict[str, list] = {m: [] for m in meta["measures"]}
            cols["chrf"] = []
            with open(os.path.join(os.path.dirname(meta_path), s["file"]), encoding="utf-8") as f:
                for line in f:
                    r = json.loads(line)
                    for m in meta["measures"]:
                        cols[m].append(r["uncertainty"][m])
                    if "chrf" in r:
                        cols["chrf"].append(r["chrf"])
            meta["values"][s["name"]] = {
                k: np.asarray(v, dtype=np.float64) for k, v in cols.items()
            }
            if s["role"] == "in-domain":
                meta["in_domain"] = s["name"]
        systems.append(meta)
    return systems


def ood_aucs(system: dict) -> Dict[str, Dict[str, float]]:
    """{ood set: {measure: ROC-AUC %}} of one system (in-domain vs that set)."""
    ind = system["values"][system["in_domain"]]
    return {
        name: {m: detection.roc_auc(ind[m], vals[m]) for m in system["measures"]}
        for name, vals in system["values"].items()
        if name != system["in_domain"]
    }


def _rows(systems: List[dict]) -> List[Tuple[str, List[dict]]]:
    """(row label, systems of the row) in table order."""
    rows = []
    for group in GROUP_ORDER:
        members = [s for s in systems if s["group"] == group]
        if group == "single" and members:
            rows.append(
                (
                    (
                        f"Single (mean ± s.e. of {len(members)})"
                        if len(members) > 1
                        else f"Single ({members[0]['name']})"
                    ),
                    members,
                )
            )
        else:
            rows += [(f"{GROUP_LABEL[group]} ({s['name']})", [s]) for s in members]
    return rows


def _cell(values: List[float]) -> str:
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.1f}"
    v = np.asarray(values)
    return f"{v.mean():.1f} ± {v.std(ddof=1) / np.sqrt(len(v)):.1f}"


def _mean(values: List[float]) -> Optional[float]:
    return float(np.mean(values)) if values else None


def ood_table(systems: List[dict], sets: List[str]) -> Tuple[str, dict]:
    """The Table-4-shaped markdown and {row label: {set: {"total"|"knowledge": mean AUC}}}."""
    head = "| system | BLEU-free chrF | " + " | ".join(f"{s} total / know." for s in sets) + " |"
    lines = [head, "|---|---:|" + "---:|" * len(sets)]
    summary = {}
    for label, members in _rows(systems):
        aucs = [ood_aucs(s) for s in members]
        cells, summary[label] = [], {"group": members[0]["group"]}
        for st in sets:
            tot = [a[st]["total"] for a in aucs if st in a]
            kno = [a[st][KNOWLEDGE] for a in aucs if st in a and KNOWLEDGE in a[st]]
            summary[label][st] = {"total": _mean(tot), "knowledge": _mean(kno)}
            cells.append(f"{_cell(tot)} / {_cell(kno)}")
        chrf = [float(s["values"][s["in_domain"]]["chrf"].mean()) for s in members]
        lines.append(f"| {label} | {_cell(chrf)} | " + " | ".join(cells) + " |")
    return "\n".join(lines).replace("BLEU-free chrF", "chrF (in-domain)"), summary


def rejection_table(systems: List[dict]) -> Tuple[str, Dict[str, dict]]:
    lines = [
        "| system | measure | PRR % | AUC-RC (lower is better) | random | oracle |",
        "|---|---|---:|---:|---:|---:|",
    ]
    curves = {}
    for s in systems:
        ind = s["values"][s["in_domain"]]
        if len(ind["chrf"]) != len(ind["total"]) or len(ind["chrf"]) == 0:
            continue
        for m in ("total", KNOWLEDGE):
            if m not in s["measures"]:
                continue
            r = detection.rejection(ind[m], ind["chrf"])
            curves[(s["name"], m)] = r
            lines.append(
                f"| {s['name']} | {m} | {r['prr']:.1f} | {r['auc']:.2f} | "
                f"{r['auc_random']:.2f} | {r['auc_oracle']:.2f} |"
            )
    return "\n".join(lines), curves


def findings(summary: dict, sets: List[str]) -> List[str]:
    """The paper's three findings, each 'holds' / 'does not hold' / 'not measured', with numbers."""
    by_group = {}
    for label, row in summary.items():
        by_group.setdefault(row["group"], row)
    out = []
    ens, pd, mkd = (
        by_group.get("ensemble"),
        by_group.get("proxy-dirichlet"),
        by_group.get("mean-kd"),
    )
    shift = [s for s in LANGUAGE_SHIFT if s in sets]
    if ens and shift and all(ens[s]["knowledge"] is not None for s in shift):
        ok = all(
            ens[s]["knowledge"] >= min(ens[s]["total"] + KNOWLEDGE_MARGIN, SATURATED) for s in shift
        )
        out.append(
            f"- **Ensemble: knowledge beats total on the language-shift sets** "
            f"(criterion: {KNOWLEDGE}-AUC ≥ min(total-AUC + {KNOWLEDGE_MARGIN:g}, {SATURATED:g}) on each of "
            f"{', '.join(shift)}): {'holds' if ok else 'does not hold'} — "
            + ", ".join(f"{s}: {ens[s]['knowledge']:.1f} vs {ens[s]['total']:.1f}" for s in shift)
        )
    else:
        out.append("- Ensemble knowledge vs total on the language-shift sets: not measured")
    if (
        ens
        and pd
        and all(ens[s]["knowledge"] is not None and pd[s]["knowledge"] is not None for s in sets)
    ):
        gap = float(np.mean([abs(ens[s]["knowledge"] - pd[s]["knowledge"]) for s in sets]))
        ok = gap <= CLOSE_TO_ENSEMBLE
        out.append(
            f"- **PD student's knowledge comes close to the ensemble's** (criterion: mean "
            f"|ensemble − PD| knowledge AUC over the OOD sets ≤ {CLOSE_TO_ENSEMBLE:g}): "
            f"{'holds' if ok else 'does not hold'} — mean gap {gap:.1f} ("
            + ", ".join(f"{s}: {pd[s]['knowledge']:.1f} vs {ens[s]['knowledge']:.1f}" for s in sets)
            + ")"
        )
    else:
        out.append("- PD student's knowledge vs the ensemble's: not measured")
    if mkd:
        has_none = all(mkd[s]["knowledge"] is None for s in sets)
        text = (
            f"- **Mean-KD student has no knowledge uncertainty**: "
            f"{'holds' if has_none else 'does not hold'} (a single softmax model gives only total"
            " uncertainty; ensdist-uncertainty refuses knowledge measures for it)"
        )
        if pd and shift and all(pd[s]["knowledge"] is not None for s in shift):
            text += (
                "; on the language-shift sets its total vs the PD student's knowledge: "
                + ", ".join(
                    f"{s}: {mkd[s]['total']:.1f} vs {pd[s]['knowledge']:.1f}" for s in shift
                )
            )
        out.append(text)
    else:
        out.append("- Mean-KD student: not measured")
    return out


def write_figures(systems: List[dict], sets: List[str], curves: dict, out_dir: str) -> List[str]:
    pngs = []
    if sets:
        fig = Figure(figsize=(4 * len(sets), 4))
        for i, st in enumerate(sets):
            ax = fig.add_subplot(1, len(sets), i + 1)
            for s in systems:
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
                label=f"{name} {m} (PRR {r['prr']:.0f})",
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
    systems = [s for s in load_systems(os.path.join(results_dir, "uncertainty")) if s["in_domain"]]
    if not systems:
        return "", []
    sets = sorted(
        {n for s in systems for n in s["values"] if n != s["in_domain"]},
        key=lambda n: (
            (
                ("permuted", "domain", "target", "third").index(n)
                if n in ("permuted", "domain", "target", "third")
                else 9
            ),
            n,
        ),
    )
    table, summary = ood_table(systems, sets)
    rej, curves = rejection_table(systems)
    pngs = write_figures(systems, sets, curves, out_dir)
    text = (
        "\n## Uncertainty: out-of-distribution detection (PD paper Table 4 layout)\n\n"
        f"ROC-AUC (%) of in-domain ({systems[0]['in_domain']}) vs each OOD set, sequence-level "
        f"total uncertainty / knowledge uncertainty ({KNOWLEDGE}), beam {systems[0]['beam']}; "
        "members as mean ± s.e. Sets: permuted = test sources with words shuffled, domain = "
        "source-language text of another domain, target = target-language sentences as sources, "
        "third = a third language (docs/uncertainty.md)."
        + readings(systems)
        + "\n\n"
        + table
        + "\n\n## Uncertainty: error detection (reject the most uncertain first)\n\n"
        "Sentence chrF on the in-domain set; PRR = 100 × (AUC_random − AUC)/(AUC_random − "
        "AUC_oracle) of the rejection curve of 100 − chrF.\n\n"
        + rej
        + "\n\n## Do the PD paper's uncertainty findings hold here?\n\n"
        + "\n".join(findings(summary, sets))
        + "\n\n"
        + "".join(f"![{os.path.basename(p)}]({os.path.basename(p)})\n" for p in pngs)
    )
    return text, pngs

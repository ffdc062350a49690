"""Does a run show the pattern Reich et al. (2020) report? Checked from ensdist-evaluate results.

The claims (Table 2), each answered yes / no / not measured with the numbers behind it:
1. the largest CE ensemble beats the mean of its members in BLEU and in ECE-1;
2. every student beats the CE members' mean in BLEU and in ECE-1;
3. the largest LS ensemble is worse calibrated (higher ECE-1) than the largest CE ensemble.
ECE-1 is the authors' unweighted form. "Beats" is a plain comparison of the measured numbers: at
small scale a difference can be within noise, which the table's standard errors let a reader judge.
"""

from typing import List, Optional, Sequence, Tuple

Check = Tuple[str, Optional[bool], str]  # (claim, holds or None when not measured, evidence)


def _ece1(r: dict) -> float:
    return 100 * r["ece1"]["unweighted"]


def _of(results, method, kind):
    return [r for r in results if r["method"] == method and r["kind"] == kind]


def _largest(rows):
    return max(rows, key=lambda r: r["num_models"]) if rows else None


def _mean(values):
    return sum(values) / len(values)


def pattern_checks(
    results: Sequence[dict], ce_method: str = "CE+SWA", ls_method: str = "LS+SWA"
) -> List[Check]:
    checks: List[Check] = []
    members = _of(results, ce_method, "individual")
    ens = _largest(_of(results, ce_method, "ensemble"))
    have_bleu = all(r["bleu"] is not None for r in members)
    if members and have_bleu:
        bleu_avg, ece_avg = _mean([r["bleu"] for r in members]), _mean([_ece1(r) for r in members])
    claim = f"{ce_method} ensemble better than its members' mean in BLEU and ECE-1"
    if ens is None or not members or not have_bleu or ens["bleu"] is None:
        checks.append((claim, None, "not measured"))
    else:
        holds = ens["bleu"] > bleu_avg and _ece1(ens) < ece_avg
        checks.append(
            (
                claim,
                holds,
                f"ensemble of {ens['num_models']}: BLEU {ens['bleu']:.2f} vs "
                f"{bleu_avg:.2f}, ECE-1 {_ece1(ens):.3f} vs {ece_avg:.3f}",
            )
        )
    for s in sorted(_of(results, ce_method, "student"), key=lambda r: r["name"]):
        claim = f"{s['name']} better than the members' mean in BLEU and ECE-1"
        if not members or not have_bleu or s["bleu"] is None:
            checks.append((claim, None, "not measured"))
            continue
        holds = s["bleu"] > bleu_avg and _ece1(s) < ece_avg
        checks.append(
            (
                claim,
                holds,
                f"BLEU {s['bleu']:.2f} vs {bleu_avg:.2f}, "
                f"ECE-1 {_ece1(s):.3f} vs {ece_avg:.3f}",
            )
        )
    ls_ens = _largest(_of(results, ls_method, "ensemble"))
    claim = f"{ls_method} ensemble worse calibrated (higher ECE-1) than the {ce_method} ensemble"
    if ls_ens is None or ens is None:
        checks.append((claim, None, "not measured"))
    else:
        checks.append(
            (
                claim,
                _ece1(ls_ens) > _ece1(ens),
                f"ECE-1 {_ece1(ls_ens):.3f} ({ls_ens['num_models']} models) vs "
                f"{_ece1(ens):.3f} ({ens['num_models']} models)",
            )
        )
    return checks


def pattern_markdown(checks: Sequence[Check]) -> str:
    answer = {True: "yes", False: "**no**", None: "not measured"}
    lines = ["| Paper's claim | Holds here? | Measured |", "|---|---|---|"]
    lines += [f"| {claim} | {answer[holds]} | {evidence} |" for claim, holds, evidence in checks]
    return "\n".join(lines) + "\n"

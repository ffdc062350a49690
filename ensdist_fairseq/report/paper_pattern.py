"""Do a run's results show what Reich et al. (2020) report, in the paper's own form?

The claims (their Table 2), each judged holds / fails / inconclusive / not measured:
1. the largest CE ensemble is better than its members in BLEU and in ECE-1;
2. every student is better than the CE members in BLEU and in ECE-1;
3. label smoothing: the largest LS ensemble is *worse* calibrated (higher ECE-1) than its own
   LS members (the paper: members 3.466 → ensemble 5.979): LS members are underconfident and
   averaging them makes it worse. Compared with the LS members, not with the CE ensemble.

Criteria, fixed before any run: "members" is the members' mean over seeds with its 95 % t
interval (report/bootstrap.seed_interval); a claim holds when the other system lies beyond the
whole interval on the claimed side, fails when it lies beyond it on the other side, and is
inconclusive inside it (a claim of two parts holds when both hold, fails when either fails).
Fewer than two members give no interval: not measured. ECE-1 is the authors' unweighted form.
Where the results carry sacreBLEU's per-sentence statistics (BLEU) or their per-token sidecar
(ECE-1), the claim must also hold on the 95 % paired bootstrap interval over test sentences of
the difference (system − members' mean).

The regime beside the verdicts: whether the members are over- or underconfident (bins of the
top-1 reliability diagram with confidence above accuracy) and the run's BLEU range, since the
paper's findings are about converged, full-size systems whose LS members are underconfident.
"""

from typing import List, Optional, Sequence, Tuple

import numpy as np

from ensdist_fairseq.report import bootstrap as B
from ensdist_fairseq.report.markdown import interval, table

Check = Tuple[str, str, str]  # (claim, verdict, evidence)

PAPER_LS_ECE1 = (3.466, 5.979)  # Reich et al. (2020) Table 2, LS members → LS ensemble, ECE-1 %


def _ece1(r: dict) -> float:
    return 100 * r["ece1"]["unweighted"]


def _of(results, method, kind):
    """The results of one method and kind; temperature-scaled ones are the rival, not the
    paper's systems, and are never part of a claim."""
    return [
        r
        for r in results
        if r["method"] == method and r["kind"] == kind and r.get("temperature") is None
    ]


def _largest(rows):
    return max(rows, key=lambda r: r["num_models"]) if rows else None


def beyond(value: float, members: Sequence[float], higher_is_claim: bool) -> Tuple[str, tuple]:
    """Verdict of 'value is higher (or lower) than the members' mean' and the members' interval."""
    ci = B.seed_interval(members)
    diff = (value - ci[1], value - ci[0]) if higher_is_claim else (ci[0] - value, ci[1] - value)
    return B.verdict(diff), ci


def _both(verdicts: List[str]) -> str:
    if B.NOT_MEASURED in verdicts:
        return B.NOT_MEASURED
    if B.FAILS in verdicts:
        return B.FAILS
    return B.HOLDS if all(v == B.HOLDS for v in verdicts) else B.INCONCLUSIVE


def _sentence_bleu_difference(system: dict, members: List[dict]) -> Optional[tuple]:
    """95 % paired bootstrap interval of system BLEU − members' mean BLEU over test sentences,
    or None when a result lacks sentence statistics or they cover different sentences."""
    stats = [r.get("bleu_sentence_stats") for r in (system, *members)]
    if any(not s for s in stats) or len({len(s) for s in stats}) != 1:
        return None
    rows = [B.bleu_samples(r) for r in (system, *members)]  # one index matrix per n: paired
    return B.percentile_interval(rows[0] - np.mean(rows[1:], axis=0))


def _sentence_ece_difference(minus: List[dict], system: dict) -> Optional[tuple]:
    """95 % paired bootstrap interval over test sentences of mean ECE-1 of `minus` − the
    system's, or None unless every result has its per-token sidecar on the same sentences."""
    rows = [B.token_samples(r) for r in (system, *minus)]
    if any(r is None for r in rows) or len({r["num_sentences"] for r in (system, *minus)}) != 1:
        return None
    return B.percentile_interval(np.mean([r["ece1"] for r in rows[1:]], axis=0) - rows[0]["ece1"])


def _better_than_members(system: dict, members: List[dict]) -> Tuple[str, str]:
    """(verdict, evidence) of 'higher BLEU and lower ECE-1 than the members'."""
    bleus = [r["bleu"] for r in members]
    if system["bleu"] is None or any(b is None for b in bleus):
        return B.NOT_MEASURED, "BLEU not measured"
    if len(members) < 2:
        return B.NOT_MEASURED, "fewer than two members: no interval over seeds"
    vb, cb = beyond(system["bleu"], bleus, higher_is_claim=True)
    sentences = ""
    diff = _sentence_bleu_difference(system, members)
    if diff is not None:  # the sentence noise of both sides, paired over the same sentences
        vs = B.verdict(diff)
        vb = _both([vb, vs])
        sentences = f"; difference over sentences {interval(*diff)}"
    ve, ce = beyond(_ece1(system), [_ece1(r) for r in members], higher_is_claim=False)
    ece_sentences = ""
    diff = _sentence_ece_difference(members, system)  # members − system: lower is the claim
    if diff is not None:
        ve = _both([ve, B.verdict(diff)])
        ece_sentences = f"; members − system over sentences {interval(*diff, digits=3)}"
    return _both([vb, ve]), (
        f"BLEU {system['bleu']:.2f} vs members {np.mean(bleus):.2f} (seeds {interval(*cb)}"
        f"{sentences}: {vb}); "
        f"ECE-1 {_ece1(system):.3f} vs {np.mean([_ece1(r) for r in members]):.3f} "
        f"(seeds {interval(*ce, digits=3)}{ece_sentences}: {ve})"
    )


def pattern_checks(
    results: Sequence[dict], ce_method: str = "CE+SWA", ls_method: str = "LS+SWA"
) -> List[Check]:
    checks: List[Check] = []
    members = _of(results, ce_method, "individual")
    ens = _largest(_of(results, ce_method, "ensemble"))
    claim = f"{ce_method} ensemble better than its members in BLEU and ECE-1"
    if ens is None or not members:
        checks.append((claim, B.NOT_MEASURED, "no ensemble or no members"))
    else:
        v, ev = _better_than_members(ens, members)
        checks.append((claim, v, f"ensemble of {ens['num_models']}: {ev}"))
    for s in sorted(_of(results, ce_method, "student"), key=lambda r: r["name"]):
        claim = f"{s['name']} better than the {ce_method} members in BLEU and ECE-1"
        if not members:
            checks.append((claim, B.NOT_MEASURED, "no members"))
            continue
        checks.append((claim, *_better_than_members(s, members)))
    ls_members = _of(results, ls_method, "individual")
    ls_ens = _largest(_of(results, ls_method, "ensemble"))
    claim = (
        f"{ls_method} ensemble worse calibrated (higher ECE-1) than its own members "
        f"(paper: {PAPER_LS_ECE1[0]} → {PAPER_LS_ECE1[1]})"
    )
    if ls_ens is None or len(ls_members) < 2:
        checks.append((claim, B.NOT_MEASURED, "needs an LS ensemble and at least two LS members"))
    else:
        eces = [_ece1(r) for r in ls_members]
        v, ci = beyond(_ece1(ls_ens), eces, higher_is_claim=True)
        diff = _sentence_ece_difference(ls_members, ls_ens)  # members − ensemble: claim < 0
        if diff is not None:
            v = _both([v, B.verdict((-diff[1], -diff[0]))])
        checks.append(
            (
                claim,
                v,
                f"members {np.mean(eces):.3f} {interval(*ci, digits=3)} → ensemble of "
                f"{ls_ens['num_models']} {_ece1(ls_ens):.3f}",
            )
        )
    return checks


def overconfident_bins(result: dict) -> Tuple[int, int]:
    """(bins with mean confidence above accuracy, bins) of the top-1 reliability diagram."""
    b = result["reliability"]["top1"]
    conf, acc = np.asarray(b["confidence"]), np.asarray(b["accuracy"])
    return int((conf > acc).sum()), int(conf.size)


def regime_notes(
    results: Sequence[dict], ce_method: str = "CE+SWA", ls_method: str = "LS+SWA"
) -> List[str]:
    """Where this run's regime differs from the paper's: members' over/underconfidence, BLEU."""
    notes = []
    for method, paper in ((ce_method, "overconfident"), (ls_method, "underconfident")):
        members = [r for r in _of(results, method, "individual") if "reliability" in r]
        if not members:
            continue
        counts = [overconfident_bins(r) for r in members]
        over = np.mean([c for c, _ in counts])
        n = counts[0][1]
        mine = "overconfident" if over > n / 2 else "underconfident" if over < n / 2 else "mixed"
        same = "as in the paper" if mine == paper else f"**the paper's are {paper}**"
        notes.append(
            f"- {method} members: overconfident in {over:.1f} of {n} top-1 bins on average "
            f"(mostly {mine}; {same})."
        )
    bleus = [r["bleu"] for r in results if r.get("bleu") is not None]
    if bleus:
        notes.append(
            f"- BLEU here ranges {min(bleus):.2f}–{max(bleus):.2f}; the papers' findings are for "
            "converged full-size systems, so a claim that fails at this scale may still hold there."
        )
    else:
        notes.append("- BLEU: not measured.")
    return notes


def pattern_markdown(checks: Sequence[Check], notes: Optional[Sequence[str]] = None) -> str:
    shown = {B.FAILS: f"**{B.FAILS}**"}
    text = table(
        ["Paper's claim", "Verdict", "Measured"],
        [[claim, shown.get(v, v), evidence] for claim, v, evidence in checks],
    )
    text += (
        f"\nVerdicts at the {100 * B.LEVEL:g} % level against the members' t interval over seeds "
        "(holds / fails: beyond the interval on the claimed / other side; inconclusive: inside). "
        "Where the results have per-sentence statistics (BLEU) or per-token sidecars (ECE-1), "
        "also the paired bootstrap over test sentences of the difference.\n"
    )
    if notes:
        text += "\nWhere this run's regime differs from the paper's:\n\n" + "\n".join(notes) + "\n"
    return text

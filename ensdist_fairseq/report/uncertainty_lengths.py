"""Source lengths in the report's uncertainty section: each set's length statistics and
<unk> rate, and the length-matched ROC-AUC (metrics/detection.length_matched_auc) with its
paired bootstrap samples.

Lengths are per sentence, in pieces of the source dictionary with </s> excluded (the records'
source_length, the unit ensdist-ood-sets draws and bins in). The bins are those the OOD sets
were drawn with (system.json length_edges, from the OOD manifest); without them, quantile bins
of the in-domain lengths by the same rule.
"""

from typing import Dict, List, Optional

import numpy as np

from ensdist_fairseq.report.markdown import NOT_MEASURED, number, table
from ensdist_fairseq.uncertainty.ood_sets import length_bins

DEFAULT_LENGTH_BINS = 10  # ensdist-ood-sets --length-bins's default


def source_columns(records) -> Optional[Dict[str, np.ndarray]]:
    """{"length", "unk"} per sentence (source pieces, </s> excluded, and its <unk> pieces), or
    None when the records do not all carry them (written before ensdist-uncertainty kept them)."""
    if not records or not all("source_length" in r and "source_unk" in r for r in records):
        return None
    return {
        "length": np.asarray([r["source_length"] for r in records], np.int64),
        "unk": np.asarray([r["source_unk"] for r in records], np.int64),
    }


def length_edges(system: dict) -> Optional[np.ndarray]:
    """The source-length bin edges of the system's length-matched AUC: those its OOD manifest
    drew the sets with (system.json's length_edges), else DEFAULT_LENGTH_BINS quantile bins of
    its in-domain lengths by ensdist-ood-sets' rule; None without in-domain lengths."""
    src = system["sources"].get(system["in_domain"])
    if src is None:
        return None
    if system.get("length_edges"):
        return np.asarray(system["length_edges"], np.float64)
    return np.asarray(length_bins(src["length"].tolist(), DEFAULT_LENGTH_BINS), np.float64)


def _multiplicities(idx: np.ndarray, n: int) -> np.ndarray:
    """(R, n) how often each sentence is drawn in each row of a (R, m) index matrix."""
    rows = np.arange(len(idx))[:, None] * n
    return np.bincount((idx + rows).ravel(), minlength=len(idx) * n).reshape(len(idx), n)


def length_matched_auc_rows(a, b, la, lb, edges, ia, ib) -> np.ndarray:
    """detection.length_matched_auc of every resample (in-domain sentences ia[r], OOD sentences
    ib[r]); NaN for a resample in which no pair shares a bin. Each bin's sentences are sorted
    once: a resample weighs each sentence by how often it was drawn, so its Mann–Whitney count
    within a bin is a weighted sum over the OOD sentences of the in-domain weight below them."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    wa, wb = _multiplicities(ia, len(a)), _multiplicities(ib, len(b))
    bin_a = np.searchsorted(edges, la, side="left") - 1
    bin_b = np.searchsorted(edges, lb, side="left") - 1
    u, pairs = np.zeros(len(ia)), np.zeros(len(ia))
    for k in range(len(edges) - 1):
        in_a, in_b = np.flatnonzero(bin_a == k), np.flatnonzero(bin_b == k)
        if not len(in_a) or not len(in_b):
            continue
        order = in_a[np.argsort(a[in_a], kind="mergesort")]
        cum = np.concatenate([np.zeros((len(ia), 1)), np.cumsum(wa[:, order], axis=1)], axis=1)
        below = np.searchsorted(a[order], b[in_b], side="left")
        upto = np.searchsorted(a[order], b[in_b], side="right")
        w = wb[:, in_b]
        u += (w * (cum[:, below] + cum[:, upto]) / 2).sum(axis=1)  # ties count 1/2
        pairs += cum[:, -1] * w.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(pairs > 0, 100.0 * u / pairs, np.nan)


def set_statistics(systems: List[dict], sets: List[str]) -> List[dict]:
    """Per set (in-domain first, then `sets`): sentences, mean and median source
    length and <unk> rate, from the first system whose records carry the source columns (every
    system reads the same sentences: report/inputs checks it); None fields: not measured."""
    out = []
    first = systems[0]
    for name in [first["in_domain"]] + list(sets):
        src = next((s["sources"][name] for s in systems if s["sources"].get(name)), None)
        n = next(len(s["values"][name]["source length"]) for s in systems if name in s["values"])
        row = {"name": name, "in_domain": name == first["in_domain"], "sentences": n}
        if src is None:
            row.update(mean=None, median=None, unk_rate=None)
        else:
            pieces = int(src["length"].sum())
            row.update(
                mean=float(src["length"].mean()),
                median=float(np.median(src["length"])),
                unk_rate=100.0 * int(src["unk"].sum()) / pieces if pieces else None,
            )
        out.append(row)
    return out


def binning(systems: List[dict]) -> str:
    """How the length-matched AUC's bins were chosen, with their edges."""
    described = []
    for s in systems:
        edges = length_edges(s)
        if edges is None:
            continue
        where = (
            "the bins ensdist-ood-sets drew the OOD sets with (system.json length_edges)"
            if s.get("length_edges")
            else f"{DEFAULT_LENGTH_BINS} quantile bins of the in-domain source lengths "
            "(ensdist-ood-sets' rule; no length bins recorded)"
        )
        text = f"{where}, edges {', '.join(f'{e:g}' for e in edges)}"
        if text not in [d for _n, d in described]:
            described.append((s["name"], text))
    if not described:
        return (
            f"Length-matched AUC: {NOT_MEASURED} (the records carry no source lengths: "
            "scored before ensdist-uncertainty kept them)."
        )
    if len(described) == 1:
        how = described[0][1]
    else:
        how = "; ".join(f"{n}: {d}" for n, d in described)
    return (
        "Length-matched AUC: the ROC-AUC over only the (in-domain, OOD) pairs whose source "
        "lengths (pieces of the source dictionary, </s> excluded) fall in one bin (e_i, e_i+1]; "
        f"bins: {how}. It has the same paired bootstrap as the plain AUC (docs/uncertainty.md)."
    )


def set_table(systems: List[dict], sets: List[str]) -> str:
    """Every scored set's size, source lengths against in-domain, and <unk> rate."""
    rows_in = set_statistics(systems, sets)
    ref = rows_in[0]["mean"]
    rows = []
    for r in rows_in:
        delta = r["mean"] - ref if r["mean"] is not None and ref is not None else None
        rows.append(
            [
                r["name"] + (" (in-domain)" if r["in_domain"] else ""),
                str(r["sentences"]),
                number(r["mean"], missing=NOT_MEASURED),
                number(r["median"], 1, missing=NOT_MEASURED),
                "" if r["in_domain"] else number(delta, missing=NOT_MEASURED),
                number(r["unk_rate"], missing=NOT_MEASURED),
            ]
        )
    header = [
        "set",
        "sentences",
        "mean source length",
        "median",
        "mean − in-domain",
        "<unk> % of pieces",
    ]
    return table(header, rows, "lrrrrr")

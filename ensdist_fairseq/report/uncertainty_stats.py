"""The numbers behind the report's uncertainty section, each with its bootstrap samples.

Reads RESULTS/uncertainty/<system>/system.json and its <set>.jsonl files (ensdist-uncertainty):
per sentence, every measure, chrF (in-domain) and the baselines (metrics/detection.BASELINES).
Every set is resampled with one index matrix per (set, number of sentences): systems scored
on the same sentences share it, so a difference between two systems or two measures is a
paired bootstrap over sentences.
"""

import glob
import json
import os
import zlib
from typing import Dict, List, Optional

import numpy as np

from ensdist_fairseq.metrics import detection
from ensdist_fairseq.report import bootstrap
from ensdist_fairseq.report.uncertainty_lengths import (
    length_edges,
    length_matched_auc_rows,
    source_columns,
)
from ensdist_fairseq.results import UNCERTAINTY, read_json

OOD_ORDER = ("permuted", "domain", "target", "third")


def load_systems(unc_dir: str) -> List[dict]:
    """Every system under unc_dir: its system.json plus {set: {column: array}}, where the columns
    are the measures, the baselines and (where scored) 'chrf'."""
    systems = []
    for meta_path in sorted(glob.glob(os.path.join(unc_dir, "*", "system.json"))):
        meta = UNCERTAINTY.check(read_json(meta_path), meta_path)
        meta["values"], meta["sources"], meta["in_domain"] = {}, {}, None
        for s in meta["sets"]:
            with open(os.path.join(os.path.dirname(meta_path), s["file"]), encoding="utf-8") as f:
                records = [json.loads(line) for line in f if line.strip()]
            cols = {
                m: np.asarray([r["uncertainty"][m] for r in records], np.float64)
                for m in meta["measures"]
            }
            cols.update(detection.baseline_scores(records))
            chrf = [r["chrf"] for r in records if "chrf" in r]
            cols["chrf"] = np.asarray(chrf if len(chrf) == len(records) else [], np.float64)
            meta["values"][s["name"]] = cols
            meta["sources"][s["name"]] = source_columns(records)
            if s["role"] == "in-domain":
                meta["in_domain"] = s["name"]
        systems.append(meta)
    return [s for s in systems if s["in_domain"]]


def ood_sets(systems: List[dict]) -> List[str]:
    names = {n for s in systems for n in s["values"] if n != s["in_domain"]}
    order = {n: i for i, n in enumerate(OOD_ORDER)}
    return sorted(names, key=lambda n: (order.get(n, len(OOD_ORDER)), n))


def scored_columns(system: dict) -> List[str]:
    """The measures, then the baselines this system's records allow."""
    ind = system["values"][system["in_domain"]]
    return list(system["measures"]) + [b for b in detection.BASELINES if b in ind]


class Resampler:
    """One (RESAMPLES, n) index matrix per (set, n), from a generator seeded by the set's name."""

    def __init__(self):
        self._cache: Dict[tuple, np.ndarray] = {}

    def indices(self, set_name: str, n: int) -> np.ndarray:
        key = (set_name, n)
        if key not in self._cache:
            seed = [bootstrap.SEED, zlib.crc32(set_name.encode()), n]
            self._cache[key] = bootstrap.resample_indices(n, np.random.default_rng(seed))
        return self._cache[key]


class Stats:
    """ROC-AUC and PRR of every (system, measure), point value and bootstrap samples."""

    def __init__(self, systems: List[dict]):
        self.systems = systems
        self.resampler = Resampler()
        self._auc: Dict[tuple, tuple] = {}
        self._prr: Dict[tuple, tuple] = {}
        self._matched: Dict[tuple, Optional[tuple]] = {}

    def auc(self, system: dict, ood: str, measure: str) -> Optional[tuple]:
        """(ROC-AUC %, its (RESAMPLES,) samples), or None when not measured."""
        vals, ind_name = system["values"], system["in_domain"]
        if ood not in vals or measure not in vals[ood] or measure not in vals[ind_name]:
            return None
        key = (system["name"], ood, measure)
        if key not in self._auc:
            a, b = vals[ind_name][measure], vals[ood][measure]
            if len(a) == 0 or len(b) == 0:
                return None
            ia = self.resampler.indices(ind_name, len(a))
            ib = self.resampler.indices(ood, len(b))
            self._auc[key] = (detection.roc_auc(a, b), detection.roc_auc_rows(a[ia], b[ib]))
        return self._auc[key]

    def matched_auc(self, system: dict, ood: str, measure: str) -> Optional[tuple]:
        """(length-matched ROC-AUC %, its samples, paired with auc's), or None when not
        measured (no source lengths, or no in-domain and OOD sentence share a bin)."""
        plain = self.auc(system, ood, measure)
        src = system["sources"]
        edges = length_edges(system)
        if plain is None or edges is None or src.get(ood) is None:
            return None
        key = (system["name"], ood, measure)
        if key not in self._matched:
            ind_name = system["in_domain"]
            a, b = system["values"][ind_name][measure], system["values"][ood][measure]
            la, lb = src[ind_name]["length"], src[ood]["length"]
            try:
                point = detection.length_matched_auc(a, b, la, lb, edges=edges)
            except ValueError:  # no pair shares a bin
                self._matched[key] = None
                return None
            ia = self.resampler.indices(ind_name, len(a))
            ib = self.resampler.indices(ood, len(b))
            self._matched[key] = (point, length_matched_auc_rows(a, b, la, lb, edges, ia, ib))
        return self._matched[key]

    def prr(self, system: dict, measure: str) -> Optional[tuple]:
        """(PRR %, its samples) of rejecting by `measure` on the in-domain set, or None."""
        ind = system["values"][system["in_domain"]]
        if measure not in ind or len(ind["chrf"]) == 0 or len(ind["chrf"]) != len(ind[measure]):
            return None
        key = (system["name"], measure)
        if key not in self._prr:
            u, q = ind[measure], ind["chrf"]
            idx = self.resampler.indices(system["in_domain"], len(u))
            point = detection.rejection(u, q)
            self._prr[key] = (point, detection.prr_rows(u[idx], q[idx]))
        return self._prr[key]

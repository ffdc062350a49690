"""The uncertainty section from crafted ensdist-uncertainty results: intervals, three-way
verdicts, baselines, and "not measured" (never NaN) for what a run did not score."""

import hashlib
import json

import numpy as np
import pytest

from ensdist_fairseq.cli import report as report_cli
from ensdist_fairseq.report import uncertainty_section as U
from ensdist_fairseq.report.uncertainty_stats import Stats, load_systems


def write_system(root, name, group, measures, sets, seed=0):
    """sets: {set name: (role, {measure: per-sentence values}, chrf or None)}."""
    d = root / "uncertainty" / name
    d.mkdir(parents=True)
    meta_sets = []
    for set_name, (role, cols, chrf) in sets.items():
        n = len(next(iter(cols.values())))
        with open(d / f"{set_name}.jsonl", "w", newline="\n") as f:
            for i in range(n):
                rec = {
                    "id": i,
                    "source": "w " * (1 + i % 7),
                    "log_prob": -float(1 + i % 5),
                    "length": 1 + i % 3,
                    "uncertainty": {m: float(v[i]) for m, v in cols.items()},
                }
                if chrf is not None:
                    rec["chrf"] = float(chrf[i])
                f.write(json.dumps(rec) + "\n")
        data = (d / f"{set_name}.jsonl").read_bytes()
        meta_sets.append(
            {
                "name": set_name,
                "role": role,
                "file": f"{set_name}.jsonl",
                "sentences": n,
                "sha256": hashlib.sha256(data).hexdigest(),
            }
        )
    meta = {
        "schema_version": 1,
        "name": name,
        "group": group,
        "kind": group,
        "num_models": 1,
        "measures": measures,
        "beam": 5,
        "split": "test",
        "generation": {"beam": 5},
        "limit": None,
        "weight_temperature": 1.0,
        "sets": meta_sets,
    }
    (d / "system.json").write_text(json.dumps(meta))


def ensemble(root, separation, n=200, sets=("target", "third"), name="ens"):
    """An ensemble whose knowledge separates OOD by `separation` s.d. and total by none."""
    g = np.random.default_rng(1)
    ind = {"total": g.normal(size=n), "rmi": g.normal(size=n)}
    spec = {"test": ("in-domain", ind, g.uniform(0, 100, n))}
    for s in sets:
        spec[s] = ("ood", {"total": g.normal(size=n), "rmi": g.normal(separation, 1, n)}, None)
    write_system(root, name, "ensemble", ["total", "rmi"], spec)


@pytest.mark.parametrize(
    "separation,verdict", [(3.0, "holds"), (-1.0, "fails"), (0.2, "inconclusive")]
)
def test_knowledge_finding_is_three_way(tmp_path, separation, verdict):
    ensemble(tmp_path, separation)
    stats = Stats(load_systems(str(tmp_path / "uncertainty")))
    first = U.findings(stats, ["target", "third"])[0]
    assert f"): {verdict} —" in first, first


def test_no_ood_sets_says_not_measured_and_no_nan(tmp_path, capsys):
    g = np.random.default_rng(0)
    spec = {
        "test": (
            "in-domain",
            {"total": g.normal(size=50), "rmi": g.normal(size=50)},
            g.uniform(0, 100, 50),
        )
    }
    write_system(tmp_path, "ens", "ensemble", ["total", "rmi"], spec)
    write_system(tmp_path, "pd", "proxy-dirichlet", ["total", "rmi"], spec)
    out = tmp_path / "out"
    rc = report_cli.main([str(tmp_path), "--out", str(out)])  # only uncertainty results
    assert rc == 0, capsys.readouterr().err
    text = (out / "report.md").read_text()
    assert "nan" not in text.lower() and "not measured" in text
    assert "PD student's knowledge comes close" in text
    assert "source length (baseline)" in text  # the rejection table has its baselines


def test_constant_quality_prr_is_not_measured_not_nan(tmp_path):
    spec = {"test": ("in-domain", {"total": np.arange(20.0)}, np.full(20, 50.0))}
    write_system(tmp_path, "m", "single", ["total"], spec)
    text, _ = U.section(str(tmp_path), str(tmp_path))
    assert "nan" not in text.lower()

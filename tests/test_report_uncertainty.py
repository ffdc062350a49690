"""The uncertainty section from crafted ensdist-uncertainty results: intervals, three-way
verdicts, baselines, and "not measured" (never NaN) for what a run did not score."""

import hashlib
import json
import statistics

import numpy as np
import pytest

from ensdist_fairseq.cli import report as report_cli
from ensdist_fairseq.report import uncertainty_section as U
from ensdist_fairseq.report.uncertainty_lengths import length_matched_auc_rows
from ensdist_fairseq.report.uncertainty_stats import Stats, load_systems


def write_system(root, name, group, measures, sets, seed=0, sources=None, length_edges=None):
    """sets: {set name: (role, {measure: per-sentence values}, chrf or None)}; sources: {set
    name: (source lengths, <unk> counts)} for the records' source_length/source_unk."""
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
                if sources and set_name in sources:
                    rec["source_length"] = int(sources[set_name][0][i])
                    rec["source_unk"] = int(sources[set_name][1][i])
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
    if length_edges is not None:
        meta["length_edges"] = length_edges
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


# Length-matched AUC and the sets' source statistics.


def pooled_within_bins(a, b, la, lb, edges):
    """Independent length-matched AUC (%): sklearn's ROC-AUC in each bin (e_i, e_i+1], weighted
    by the bin's number of (in-domain, OOD) pairs; None when no pair shares a bin."""
    from sklearn.metrics import roc_auc_score

    total, pairs = 0.0, 0
    for lo, hi in zip(edges[:-1], edges[1:]):
        xa, xb = a[(la > lo) & (la <= hi)], b[(lb > lo) & (lb <= hi)]
        if len(xa) and len(xb):
            y = np.r_[np.zeros(len(xa)), np.ones(len(xb))]
            total += roc_auc_score(y, np.r_[xa, xb]) * len(xa) * len(xb)
            pairs += len(xa) * len(xb)
    return 100.0 * total / pairs if pairs else None


def length_system(root, n=240, edges=(0, 3, 6, 9, 14, 30), name="ens", with_sources=True):
    """An ensemble whose 'total' tracks source length and OOD sentences are longer: the plain
    AUC of total is high, the length-matched one much lower; 'rmi' separates OOD by itself."""
    g = np.random.default_rng(7)
    la = g.integers(1, 15, n)
    lb = g.integers(4, 25, n)
    ind = {"total": la + g.normal(0, 2, n), "rmi": g.normal(size=n)}
    ood = {"total": lb + g.normal(0, 2, n), "rmi": g.normal(1.0, 1, n)}
    spec = {"test": ("in-domain", ind, g.uniform(0, 100, n)), "target": ("ood", ood, None)}
    unk_a, unk_b = (g.uniform(size=n) < 0.05).astype(int), (g.uniform(size=n) < 0.2).astype(int)
    sources = {"test": (la, unk_a), "target": (lb, unk_b)} if with_sources else None
    write_system(
        root,
        name,
        "ensemble",
        ["total", "rmi"],
        spec,
        sources=sources,
        length_edges=list(edges) if edges is not None else None,
    )
    return ind, ood, la, lb, unk_a, unk_b


def test_length_matched_auc_against_sklearn_within_bins(tmp_path):
    edges = (0, 3, 6, 9, 14, 30)
    ind, ood, la, lb, _, _ = length_system(tmp_path, edges=edges)
    stats = Stats(load_systems(str(tmp_path / "uncertainty")))
    ens = stats.systems[0]
    for m in ("total", "rmi"):
        want = pooled_within_bins(ind[m], ood[m], la, lb, np.asarray(edges))
        point, samples = stats.matched_auc(ens, "target", m)
        assert point == pytest.approx(want, abs=1e-9)
        low, high = np.quantile(samples, [0.025, 0.975])
        assert low < point < high and high - low < 20
    # length explains much of total's plain AUC: matching removes it (the test is able to fail)
    assert stats.auc(ens, "target", "total")[0] > stats.matched_auc(ens, "target", "total")[0] + 10
    text, _ = U.section(str(tmp_path), str(tmp_path))
    want = pooled_within_bins(ind["total"], ood["total"], la, lb, np.asarray(edges))
    row = next(line for line in text.splitlines() if "| total (measure) |" in line)
    assert row.split("|")[4].strip().startswith(f"{want:.1f} [")  # beside the plain AUC
    assert "target, length-matched" in text and "edges 0, 3, 6, 9, 14, 30" in text
    assert "nan" not in text.lower()


def test_default_bins_are_the_in_domain_quantiles(tmp_path):
    """Without recorded edges: 10 quantile bins of the in-domain lengths, ensdist-ood-sets' rule
    (bin i = (e_i, e_i+1]); in-domain lengths 1..10, 24 each: edges 0, 2, 3, ..., 10."""
    g = np.random.default_rng(3)
    la = np.tile(np.arange(1, 11), 24)
    lb = g.integers(1, 16, 240)  # 11..15 fall in no bin
    ind, ood = {"total": la + g.normal(0, 1, 240)}, {"total": lb + g.normal(0, 1, 240)}
    spec = {"test": ("in-domain", ind, None), "permuted": ("ood", ood, None)}
    zeros = np.zeros(240, int)
    write_system(
        tmp_path,
        "m",
        "single",
        ["total"],
        spec,
        sources={"test": (la, zeros), "permuted": (lb, zeros)},
    )
    stats = Stats(load_systems(str(tmp_path / "uncertainty")))
    edges = np.array([0, 2, 3, 4, 5, 6, 7, 8, 9, 10])
    want = pooled_within_bins(ind["total"], ood["total"], la, lb, edges)
    assert stats.matched_auc(stats.systems[0], "permuted", "total")[0] == pytest.approx(want)
    text, _ = U.section(str(tmp_path), str(tmp_path))
    assert "10 quantile bins of the in-domain source lengths" in text
    assert "edges 0, 2, 3, 4, 5, 6, 7, 8, 9, 10" in text


def test_a_length_only_score_is_chance_when_every_length_has_its_bin(tmp_path):
    g = np.random.default_rng(5)
    la, lb = g.integers(1, 10, 100), g.integers(3, 12, 100)
    spec = {
        "test": ("in-domain", {"total": la.astype(float)}, None),
        "domain": ("ood", {"total": lb.astype(float)}, None),
    }
    zeros = np.zeros(100, int)
    sources = {"test": (la, zeros), "domain": (lb, zeros)}
    write_system(
        tmp_path, "m", "single", ["total"], spec, sources=sources, length_edges=list(range(0, 10))
    )
    stats = Stats(load_systems(str(tmp_path / "uncertainty")))
    point, samples = stats.matched_auc(stats.systems[0], "domain", "total")
    assert point == 50.0 and np.all(samples == 50.0)  # within a bin every pair ties
    assert stats.auc(stats.systems[0], "domain", "total")[0] > 60


def test_resampled_rows_against_explicit_resamples():
    g = np.random.default_rng(11)
    a, b = g.integers(0, 4, 30).astype(float), g.integers(1, 5, 25).astype(float)  # ties
    la, lb = g.integers(1, 9, 30), g.integers(1, 12, 25)
    edges = np.array([0, 2, 4, 8])
    ia, ib = g.integers(0, 30, (200, 30)), g.integers(0, 25, (200, 25))
    ia[0], ib[0] = np.flatnonzero(la <= 2)[0], np.flatnonzero(lb > 2)[0]  # no shared bin
    got = length_matched_auc_rows(a, b, la, lb, edges, ia, ib)
    assert np.isnan(got[0])
    for r in range(1, 200):
        want = pooled_within_bins(a[ia[r]], b[ib[r]], la[ia[r]], lb[ib[r]], edges)
        assert got[r] == pytest.approx(want, abs=1e-9), r


def test_set_table_against_the_records(tmp_path):
    _, _, la, lb, unk_a, unk_b = length_system(tmp_path)
    text, _ = U.section(str(tmp_path), str(tmp_path))
    rows = {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("|")}
    cells = [c.strip() for c in rows["target"].split("|")[1:-1]]
    assert cells == [
        "target",
        "240",
        f"{np.mean(lb):.2f}",
        f"{statistics.median(lb.tolist()):.1f}",
        f"{np.mean(lb) - np.mean(la):.2f}",
        f"{100 * unk_b.sum() / lb.sum():.2f}",
    ]
    cells = [c.strip() for c in rows["test (in-domain)"].split("|")[1:-1]]
    assert cells[2] == f"{np.mean(la):.2f}" and cells[5] == f"{100 * unk_a.sum() / la.sum():.2f}"


def test_records_without_source_lengths_read_not_measured(tmp_path):
    length_system(tmp_path, with_sources=False, edges=None)
    text, _ = U.section(str(tmp_path), str(tmp_path))
    assert "nan" not in text.lower()
    assert "Length-matched AUC: not measured" in text
    row = next(line for line in text.splitlines() if "| rmi (measure) |" in line)
    assert (
        row.split("|")[4].strip() == "not measured" and row.split("|")[3].strip() != "not measured"
    )
    target = next(line for line in text.splitlines() if line.startswith("| target |"))
    assert target.count("not measured") == 4  # mean, median, difference, <unk>

"""ensdist-ood-sets and ensdist-uncertainty on tiny models (single, ensemble, Dirichlet student),
the report section, and the Dirichlet predictive option at load time."""

import copy
import filecmp
import json
import os

import pytest
import tiny_fairseq
import torch

from ensdist_fairseq.cli import ood_sets as ood_sets_cli
from ensdist_fairseq.cli import uncertainty as cli
from ensdist_fairseq.report import uncertainty_section as report_section
from ensdist_fairseq.uncertainty import measures as M
from ensdist_fairseq.uncertainty import ood_sets

pytestmark = pytest.mark.slow  # trains tiny models or runs fairseq commands


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A prepared corpus (raw/, spm/, bin/) and three tiny models: two members, one Dirichlet."""
    from ensdist_fairseq.cli import sentencepiece as spm_cli
    from ensdist_fairseq.corpus import sentencepiece_prep as sp

    root = tmp_path_factory.mktemp("unc")
    tiny_fairseq.write_synthetic_raw(str(root / "data" / "raw"), n_train=200, n_test=30)
    sp.run(
        spm_cli.build_parser().parse_args(
            [
                "--raw",
                str(root / "data" / "raw"),
                "--src",
                "en",
                "--tgt",
                "de",
                "--vocab-size",
                "48",
                "--out",
                str(root / "data" / "spm"),
            ]
        )
    )
    bin_dir = tiny_fairseq.binarize(str(root / "data" / "spm"), str(root / "data" / "bin"))
    # One training; the second member and the Dirichlet student are derived from it (a
    # dirichlet_transformer has the Transformer's parameters: only the output reading differs).
    ckpt = {"m1": tiny_fairseq.train_tiny(bin_dir, str(root / "m1"), seed=1, max_update=20)}
    state = torch.load(ckpt["m1"], weights_only=False)
    g = torch.Generator().manual_seed(0)
    for name, kind in (("m2", "transformer"), ("dir", "dirichlet_transformer")):
        derived = dict(
            state,
            model={
                k: v + 0.05 * torch.randn(v.shape, generator=g) if v.is_floating_point() else v
                for k, v in state["model"].items()
            },
        )
        derived["cfg"] = dict(state["cfg"], model=copy.copy(state["cfg"]["model"]))
        derived["cfg"]["model"].arch = derived["cfg"]["model"]._name = kind
        if kind == "dirichlet_transformer":  # as fairseq-train records the option's default
            derived["cfg"]["model"].dirichlet_predictive = "softmax"
        ckpt[name] = str(root / f"{name}.pt")
        torch.save(derived, ckpt[name])
    assert (
        ood_sets_cli.main(
            ["--data-dir", str(root / "data"), "--out", str(root / "ood"), "--size", "12"]
            + ["--length-bins", "0"]  # the synthetic corpus's lengths are nothing like prose
        )
        == 0
    )
    return root, bin_dir, ckpt


def run_cli(root, bin_dir, path, name, *extra):
    out = root / "results" / "uncertainty" / name
    code = cli.main(
        [
            bin_dir,
            "--path",
            path,
            "--name",
            name,
            "--out",
            str(out),
            "--cpu",
            "--ood-dir",
            str(root / "ood"),
            "--beam",
            "3",
            "--max-len-a",
            "1.5",
            "--max-len-b",
            "10",
            *extra,
        ]
    )
    return code, out


def records(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def test_ood_sets_are_deterministic_and_binarized(corpus, tmp_path):
    root, _, _ = corpus
    manifest = ood_sets.read_manifest(str(root / "ood"))
    assert [s["name"] for s in manifest["sets"]] == ["permuted", "target", "domain", "third"]
    assert all(s["lines"] == 12 for s in manifest["sets"])
    assert (
        ood_sets_cli.main(
            ["--data-dir", str(root / "data"), "--out", str(tmp_path), "--size", "12"]
            + ["--length-bins", "0"]
        )
        == 0
    )
    for s in manifest["sets"]:
        for rel in (s["raw"], s["bin"] + ".bin", s["bin"] + ".idx"):
            assert filecmp.cmp(root / "ood" / rel, tmp_path / rel, shallow=False), rel
    permuted = (root / "ood" / "spm" / "permuted.en").read_text().splitlines()
    test = (root / "data" / "spm" / "test.en").read_text().splitlines()
    assert all(sorted(p.split()) in [sorted(t.split()) for t in test] for p in permuted)
    third = (root / "ood" / "raw" / "third.en").read_text()
    assert any(w in third for w in (" le ", " la ", " les ", " de "))  # French


def test_ood_sets_errors(corpus, tmp_path, capsys):
    root, _, _ = corpus
    assert ood_sets_cli.main(["--data-dir", str(tmp_path), "--out", str(tmp_path / "o")]) == 1
    assert "no bin/test" in capsys.readouterr().err
    assert (
        ood_sets_cli.main(
            ["--data-dir", str(root / "data"), "--out", str(tmp_path / "o"), "--size", "1000"]
        )
        == 1
    )
    assert "only 30 usable lines, --size asks for 1000" in capsys.readouterr().err


def test_three_kinds_of_system_and_the_report(corpus, capsys):
    root, bin_dir, ckpt = corpus
    code, single = run_cli(root, bin_dir, ckpt["m1"], "m1")
    assert code == 0
    code, ens = run_cli(root, bin_dir, f"{ckpt['m1']}:{ckpt['m2']}", "ens")
    assert code == 0
    code, pd = run_cli(root, bin_dir, ckpt["dir"], "pd")
    assert code == 0
    meta = {
        n: json.loads((d / "system.json").read_text())
        for n, d in (("m1", single), ("ens", ens), ("pd", pd))
    }
    assert meta["m1"]["measures"] == ["total"] and meta["m1"]["group"] == "single"
    assert meta["ens"]["kind"] == "ensemble" and "rmi" in meta["ens"]["measures"]
    assert (
        meta["pd"]["group"] == "proxy-dirichlet" and meta["pd"]["dirichlet_predictive"] == "softmax"
    )
    rows = records(ens / "test.jsonl")
    assert sorted(r["id"] for r in rows) == list(range(30))
    for r in rows:
        u = r["uncertainty"]
        assert u["mi"] >= 0 and u["rmi"] >= 0
        assert u["epkl"] == pytest.approx(u["mi"] + u["rmi"], rel=1e-6)  # float32 members
        assert u["mi"] == pytest.approx(u["total"] - u["data"], abs=1e-5)
        assert 0 <= r["chrf"] <= 100 and r["num_hypotheses"] == 3
        # ln P(best|x) of the teacher-forced pass is the beam's score x length (lenpen 1)
        assert r["log_prob"] == pytest.approx(r["score"] * r["length"], abs=1e-3)
    assert len(records(ens / "third.jsonl")) == 12
    # each record's source pieces and <unk> pieces are the manifest's (ensdist-ood-sets)
    manifest = json.loads((root / "ood" / "ood_sets.json").read_text())
    for entry in manifest["sets"]:
        got = records(ens / f"{entry['name']}.jsonl")
        lengths = [r["source_length"] for r in got]
        assert sum(lengths) / len(lengths) == pytest.approx(entry["lengths"]["mean"], abs=1e-3)
        assert sum(r["source_unk"] for r in got) == entry["unk_tokens"]
    assert meta["ens"]["length_edges"] is None  # the sets were drawn without length matching
    text, pngs = report_section.section(str(root / "results"), str(root / "results"))
    assert "| third, length-matched |" in text  # beside the plain AUC
    assert "| third | 12 |" in text  # the sets' table
    assert (
        "| Single (m1) |" in text and "| Ensemble (ens) |" in text and "| PD student (pd) |" in text
    )
    assert "Do the PD paper's uncertainty findings hold here?" in text
    # which combination / expected categorical the Table-4 layout shows, from system.json
    assert "ens: product-of-expectations" in text
    assert "pd: expected categorical softmax(z) (decodes with softmax)" in text
    assert all(os.path.getsize(p) > 1000 for p in pngs) and len(pngs) == 2


def test_dirichlet_measures_follow_the_decoding_predictive_unless_self_consistent(corpus):
    root, bin_dir, ckpt = corpus
    code, soft = run_cli(root, bin_dir, ckpt["dir"], "pd-soft", "--limit", "15")
    code2, mean = run_cli(
        root, bin_dir, ckpt["dir"], "pd-mean", "--dirichlet-predictive", "mean", "--limit", "20"
    )
    code3, selfc = run_cli(
        root,
        bin_dir,
        ckpt["dir"],
        "pd-sc",
        "--dirichlet-measures",
        "self-consistent",
        "--limit",
        "15",
    )
    assert code == code2 == code3 == 0
    assert len(records(mean / "test.jsonl")) == 20 and len(records(mean / "third.jsonl")) == 12
    meta = {
        n: json.loads((d / "system.json").read_text())
        for n, d in (("soft", soft), ("mean", mean), ("sc", selfc))
    }
    assert [meta[n]["dirichlet_predictive"] for n in ("soft", "mean", "sc")] == [
        "softmax",
        "mean",
        "softmax",
    ]
    assert [meta[n]["dirichlet_measures"] for n in ("soft", "mean", "sc")] == [
        "predictive",
        "predictive",
        "self-consistent",
    ]
    assert [meta[n]["dirichlet_expected"] for n in ("soft", "mean", "sc")] == [
        "softmax",
        "mean",
        "mean",
    ]
    a = {r["id"]: r for r in records(soft / "test.jsonl")}
    b = {r["id"]: r for r in records(mean / "test.jsonl")}
    c = {r["id"]: r for r in records(selfc / "test.jsonl")}
    # different predictive: different scores of the best hypothesis
    assert any(abs(a[i]["log_prob"] - b[i]["log_prob"]) > 1e-4 for i in a)
    # same predictive, other expected categorical: same beam, same weights, other measures
    for i in a:
        assert a[i]["output"] == c[i]["output"] and a[i]["log_prob"] == c[i]["log_prob"]
        assert c[i]["uncertainty"]["epkl"] == pytest.approx(a[i]["uncertainty"]["epkl"], rel=1e-6)
        # self-consistent: total = data + mi, mi + rmi = epkl (float32 storage)
        u = c[i]["uncertainty"]
        assert u["total"] == pytest.approx(u["data"] + u["mi"], abs=1e-5)
        assert u["mi"] + u["rmi"] == pytest.approx(u["epkl"], rel=1e-4, abs=1e-7)
    assert any(abs(a[i]["uncertainty"]["total"] - c[i]["uncertainty"]["total"]) > 1e-4 for i in a)


def test_dirichlet_token_measures_are_the_closed_forms_of_its_logits(corpus):
    """The teacher-forced token values of a Dirichlet student are measures.py's closed forms of
    its raw logits, with softmax(z) or alpha/alpha_0 as asked."""
    from ensdist_fairseq.teachers import teacher_forcing
    from ensdist_fairseq.uncertainty import runner

    _, bin_dir, ckpt = corpus
    (model,), _ = teacher_forcing.load_models([ckpt["dir"]], bin_dir)
    net_input = {
        "src_tokens": torch.tensor([[5, 6, 7, 2]]),
        "src_lengths": torch.tensor([4]),
        "prev_output_tokens": torch.tensor([[2, 5, 6], [2, 8, 9]]),
    }
    target = torch.tensor([[5, 6, 2], [8, 9, 2]])
    mask = torch.ones_like(target, dtype=torch.bool)
    new_order = torch.tensor([0, 0])
    with torch.no_grad():
        src = {k: v[[0, 0]] for k, v in net_input.items() if k != "prev_output_tokens"}
        z = model(**src, prev_output_tokens=net_input["prev_output_tokens"])[0].double()
    for expected in ("softmax", "mean"):
        values, hyp_lp = runner.token_measures(
            [model], "dirichlet", net_input, target, mask, new_order, expected
        )
        ref = M.dirichlet_measures(z, expected)
        for name in M.DIRICHLET_MEASURES:
            torch.testing.assert_close(values[name], ref[name], rtol=1e-4, atol=1e-6)
        # the beam's weights: the decoding predictive (softmax here), whatever `expected`
        lp = z.log_softmax(-1).gather(-1, target[..., None]).squeeze(-1).sum(-1)
        torch.testing.assert_close(hyp_lp, lp, rtol=1e-5, atol=1e-5)


def test_evaluate_records_the_predictive_it_scored_with(corpus, tmp_path):
    from ensdist_fairseq.cli import evaluate

    _, bin_dir, ckpt = corpus
    results = {}
    for name, path, extra in (
        ("m1", ckpt["m1"], []),
        ("pd", ckpt["dir"], []),
        ("pd-mean", ckpt["dir"], ["--dirichlet-predictive", "mean"]),
    ):
        out = tmp_path / f"{name}.json"
        argv = [bin_dir, "--path", path, "--name", name, "--output", str(out), "--no-bleu"]
        assert evaluate.main([*argv, "--cpu", "--num-bins", "5", *extra]) == 0
        results[name] = json.loads(out.read_text())
    assert results["m1"]["dirichlet_predictive"] is None
    assert results["pd"]["dirichlet_predictive"] == "softmax"
    assert results["pd-mean"]["dirichlet_predictive"] == "mean"
    assert results["pd"]["nll"] != results["pd-mean"]["nll"]


def test_predictive_override_at_load_time(corpus):
    from ensdist_fairseq.teachers import teacher_forcing

    _, bin_dir, ckpt = corpus
    (soft,), task = teacher_forcing.load_models([ckpt["dir"]], bin_dir)
    (mean,), _ = teacher_forcing.load_models(
        [ckpt["dir"]], bin_dir, overrides={"dirichlet_predictive": "mean"}
    )
    assert soft.dirichlet_predictive == "softmax" and mean.dirichlet_predictive == "mean"
    src = torch.tensor([[5, 6, 7, 2]])
    net_input = {
        "src_tokens": src,
        "src_lengths": torch.tensor([4]),
        "prev_output_tokens": torch.tensor([[2, 5, 6]]),
    }
    with torch.no_grad():
        out = soft(**net_input)
        z = out[0].double()
        torch.testing.assert_close(
            soft.get_normalized_probs(out, True).double(),
            torch.log_softmax(z, -1),
            rtol=1e-5,
            atol=1e-5,
        )
        torch.testing.assert_close(
            mean.get_normalized_probs(out, True).double(),
            M.dirichlet_log_alpha(z) - torch.logsumexp(M.dirichlet_log_alpha(z), -1, keepdim=True),
            rtol=1e-5,
            atol=1e-5,
        )


def test_errors(corpus, tmp_path, capsys):
    root, bin_dir, ckpt = corpus
    out = str(tmp_path / "x")
    assert (
        cli.main(
            [
                bin_dir,
                "--path",
                ckpt["m1"],
                "--name",
                "x",
                "--out",
                out,
                "--measures",
                "total,rmi",
                "--cpu",
            ]
        )
        == 1
    )
    assert "error: --measures rmi: a single model" in capsys.readouterr().err
    assert cli.main([bin_dir, "--path", str(tmp_path / "no.pt"), "--name", "x", "--out", out]) == 1
    assert "checkpoint not found" in capsys.readouterr().err
    assert (
        cli.main(
            [
                bin_dir,
                "--path",
                ckpt["m1"],
                "--name",
                "x",
                "--out",
                out,
                "--ood",
                f"a={tmp_path / 'missing.txt'}",
                "--cpu",
            ]
        )
        == 1
    )
    assert "file not found" in capsys.readouterr().err
    (tmp_path / "user.txt").write_text("s1 s2 s3\ns4 s5\n")
    assert (
        cli.main(
            [
                bin_dir,
                "--path",
                ckpt["m1"],
                "--name",
                "x",
                "--out",
                out,
                "--cpu",
                "--ood",
                f"mine={tmp_path / 'user.txt'}",
                "--spm-model",
                str(root / "data" / "spm" / "spm.model"),
            ]
        )
        == 0
    )
    assert len(records(tmp_path / "x" / "mine.jsonl")) == 2


@pytest.mark.parametrize("system", ["ens", "ens-eop", "dir", "dir-sc", "m1"])
def test_measures_inside_the_search_equal_the_teacher_forced_ones(corpus, system):
    root, bin_dir, ckpt = corpus
    path = f"{ckpt['m1']}:{ckpt['m2']}" if system.startswith("ens") else ckpt[system[:3]]
    extra = {
        "ens-eop": ["--ensemble-combination", "expectation-of-products"],
        "dir-sc": ["--dirichlet-measures", "self-consistent"],
    }.get(system, [])
    _, fast = run_cli(root, bin_dir, path, f"{system}-search", "--limit", "15", *extra)
    _, slow = run_cli(
        root, bin_dir, path, f"{system}-tf", "--limit", "15", "--teacher-forced", *extra
    )
    for name in ("test", "permuted", "third"):
        a = {r["id"]: r for r in records(fast / f"{name}.jsonl")}
        b = {r["id"]: r for r in records(slow / f"{name}.jsonl")}
        assert a.keys() == b.keys()
        for i in a:
            assert a[i]["log_prob"] == pytest.approx(b[i]["log_prob"], abs=1e-4)
            for m, v in b[i][
                "uncertainty"
            ].items():  # fairseq stores the in-search values in float32
                assert a[i]["uncertainty"][m] == pytest.approx(v, rel=1e-4, abs=1e-7), (name, i, m)
    meta = json.loads((fast / "system.json").read_text())
    if system.startswith("ens"):
        assert meta["ensemble_combination"] == (
            "expectation-of-products" if system == "ens-eop" else "product-of-expectations"
        )
    if system == "ens-eop":  # the same beam (fairseq's), re-weighted: other measures and ln P
        poe = {r["id"]: r for r in records(fast.parent / "ens-search" / "test.jsonl")}
        eop = {r["id"]: r for r in records(fast / "test.jsonl")}
        assert all(poe[i]["output"] == eop[i]["output"] for i in eop)
        assert any(abs(poe[i]["log_prob"] - eop[i]["log_prob"]) > 1e-4 for i in eop)
        assert any(
            abs(poe[i]["uncertainty"]["rmi"] - eop[i]["uncertainty"]["rmi"]) > 1e-6 for i in eop
        )

"""Token and sequence uncertainty measures against independent computation (float64 references,
brute force over member pairs, Monte Carlo from torch.distributions.Dirichlet)."""

import math

import pytest
import torch

from ensdist_fairseq.uncertainty import measures as M
from ensdist_fairseq.uncertainty import sequence as S


def brute_force_ensemble(lp):
    """Every ensemble measure by definition, in float64, with explicit loops over members."""
    lp = lp.double()
    K = lp.size(0)
    p = lp.exp()
    mean = p.mean(0)
    H = lambda q: -(q * q.log()).sum(-1)  # noqa: E731
    KL = lambda a, b: (a * (a.log() - b.log())).sum(-1)  # noqa: E731
    total = H(mean)
    data = sum(H(p[k]) for k in range(K)) / K
    mi = sum(KL(p[k], mean) for k in range(K)) / K
    rmi = sum(KL(mean, p[k]) for k in range(K)) / K
    epkl = sum(KL(p[k], p[j]) for k in range(K) for j in range(K)) / K**2
    return {"total": total, "data": data, "mi": mi, "rmi": rmi, "epkl": epkl}


def random_members(K=4, shape=(3, 5), V=7, scale=2.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.log_softmax(
        scale * torch.randn(K, *shape, V, generator=g, dtype=torch.float64), -1
    )


def test_ensemble_measures_match_brute_force_and_identities():
    lp = random_members()
    got = M.ensemble_measures(lp)
    ref = brute_force_ensemble(lp)
    for name in M.ENSEMBLE_MEASURES:
        torch.testing.assert_close(got[name], ref[name], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(got["mi"], got["total"] - got["data"], rtol=1e-10, atol=1e-12)
    # EPKL = MI + RMI holds for the brute-force pairwise definition, not only by construction
    torch.testing.assert_close(ref["epkl"], ref["mi"] + ref["rmi"], rtol=1e-10, atol=1e-12)


def test_ensemble_measures_float32_close_to_float64():
    lp = random_members(seed=1)
    got32 = M.ensemble_measures(lp.float())
    ref = brute_force_ensemble(lp)
    for name in M.ENSEMBLE_MEASURES:
        assert got32[name].dtype == torch.float32
        torch.testing.assert_close(got32[name].double(), ref[name], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_knowledge_is_never_negative_for_near_identical_members(dtype):
    g = torch.Generator().manual_seed(2)
    base = 5 * torch.randn(64, 4000, generator=g, dtype=torch.float64)
    for eps in (0.0, 1e-9, 1e-7, 1e-5, 1e-3):
        noise = eps * torch.randn(3, 64, 4000, generator=g, dtype=torch.float64)
        lp = torch.log_softmax(base + noise, -1).to(dtype)
        got = M.ensemble_measures(lp)
        for name in M.KNOWLEDGE_MEASURES:
            assert (got[name] >= 0).all(), (name, eps, got[name].min())
        if eps == 0.0:  # identical members: only the rounding of logsumexp − ln K is left
            for name in M.KNOWLEDGE_MEASURES:
                assert (got[name] < 1e-5).all()


def test_naive_difference_would_go_negative_in_float32():
    """Why measures.py avoids total − data: the naive form is negative here, ours is not."""
    g = torch.Generator().manual_seed(3)
    base = 5 * torch.randn(256, 4000, generator=g)
    lp = torch.log_softmax(base.unsqueeze(0) + 1e-6 * torch.randn(3, 256, 4000, generator=g), -1)
    got = M.ensemble_measures(lp)
    naive = got["total"] - got["data"]
    assert (naive < 0).any()
    assert (got["mi"] >= 0).all()


def test_single_member_has_no_knowledge_uncertainty():
    lp = random_members(K=1)
    got = M.ensemble_measures(lp)
    assert torch.equal(got["mi"], torch.zeros_like(got["mi"]))
    torch.testing.assert_close(M.single_measures(lp[0])["total"], got["total"])


def mc_dirichlet(alpha, n=400_000, seed=0):
    """Monte Carlo estimates of every Dirichlet measure from samples π ~ Dir(α) (float64)."""
    torch.manual_seed(seed)
    pi = torch.distributions.Dirichlet(alpha).sample((n,)).clamp(min=1e-300)
    log_pi = pi.log()
    mean = alpha / alpha.sum()
    total = -(mean * mean.log()).sum()
    data = -(pi * log_pi).sum(-1).mean()
    e_log_pi = log_pi.mean(0)
    rmi = (mean * (mean.log() - e_log_pi)).sum()  # E_π KL(P̄ ‖ π)
    # EPKL from independent pairs: E_{π,π'} KL(π ‖ π') = E Σ π ln π − Σ E[π] E[ln π']
    epkl = (pi * log_pi).sum(-1).mean() - (pi.mean(0) * e_log_pi).sum()
    mi = (pi * (log_pi - mean.log())).sum(-1).mean()  # E_π KL(π ‖ P̄)
    return {"total": total, "data": data, "mi": mi, "rmi": rmi, "epkl": epkl}, n


@pytest.mark.parametrize("logits", [[0.5, -1.0, 2.0, 0.0, 1.0], [3.0, -2.0, -2.0, 1.0]])
def test_dirichlet_closed_forms_match_monte_carlo(logits):
    z = torch.tensor(logits, dtype=torch.float64)
    alpha = z.exp() + 1
    got = M.dirichlet_measures(z, "mean")
    mc, n = mc_dirichlet(alpha)
    for name in M.DIRICHLET_MEASURES:
        # MC error ~ sd / sqrt(n); these quantities have sd < 1, so 5e-3 is > 3 standard errors
        assert abs(float(got[name]) - float(mc[name])) < 5e-3, (
            name,
            float(got[name]),
            float(mc[name]),
        )


def mc_dirichlet_authors(logits, n=400_000, seed=0):
    """Monte Carlo of the authors' form: p = softmax(z) as the expected categorical, π ~ Dir(α)."""
    torch.manual_seed(seed)
    alpha = logits.exp() + 1
    pi = torch.distributions.Dirichlet(alpha).sample((n,)).clamp(min=1e-300)
    log_pi = pi.log()
    p = logits.softmax(-1)
    mean = alpha / alpha.sum()
    total = -(p * p.log()).sum()
    # E[π_v ln π_v] / E[π_v] = ψ(α_v + 1) − ψ(α₀ + 1): the digamma term, sampled
    data = -(p * (pi * log_pi).mean(0) / mean).sum()
    rmi = (p * (p.log() - log_pi.mean(0))).sum()  # E_π KL(p ‖ π)
    epkl = (pi * log_pi).sum(-1).mean() - (pi.mean(0) * log_pi.mean(0)).sum()
    return {"total": total, "data": data, "mi": total - data, "rmi": rmi, "epkl": epkl}


@pytest.mark.parametrize("logits", [[0.5, -1.0, 2.0, 0.0, 1.0], [3.0, -2.0, -2.0, 1.0]])
def test_dirichlet_authors_form_matches_monte_carlo(logits):
    z = torch.tensor(logits, dtype=torch.float64)
    got = M.dirichlet_measures(z, "softmax")
    mc = mc_dirichlet_authors(z)
    for name in M.DIRICHLET_MEASURES:
        assert abs(float(got[name]) - float(mc[name])) < 5e-3, (name, float(got[name]), mc[name])
    # the default is the authors' form; it differs from the self-consistent one here
    assert float(M.dirichlet_measures(z)["total"]) == float(got["total"])
    assert abs(float(got["total"]) - float(M.dirichlet_measures(z, "mean")["total"])) > 0.05


def test_dirichlet_authors_form_on_a_confident_student():
    """The +1 floor: with V = 4000 and α₀ ≈ 6e4, α/α₀ keeps ~7 % on the tail; the authors' total
    is the entropy of softmax(z) (what decodes), and their mi goes negative (not clamped)."""
    g = torch.Generator().manual_seed(7)
    z = torch.randn(4, 4000, generator=g, dtype=torch.float64) - 6
    z[:, :3] = torch.tensor([10.5, 9.8, 9.0], dtype=torch.float64)
    got, mean = M.dirichlet_measures(z, "softmax"), M.dirichlet_measures(z, "mean")
    p = z.softmax(-1)
    torch.testing.assert_close(got["total"], -(p * p.log()).sum(-1), rtol=1e-12, atol=0)
    assert (mean["total"] > got["total"] + 0.3).all()
    alpha = z.exp() + 1
    a0 = alpha.sum(-1, keepdim=True)  # textbook ψ forms (moderate α: nothing cancels)
    data = -(p * (torch.digamma(alpha + 1) - torch.digamma(a0 + 1))).sum(-1)
    rmi = (p * (p.log() - torch.digamma(alpha) + torch.digamma(a0))).sum(-1)
    torch.testing.assert_close(got["data"], data, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(got["rmi"], rmi, rtol=1e-10, atol=1e-12)
    assert (got["mi"] < 0).all() and (got["rmi"] > 0).all()


def test_dirichlet_predictives_are_softmax_and_alpha_over_alpha0():
    z = torch.randn(3, 9, dtype=torch.float64)
    alpha = z.exp() + 1
    torch.testing.assert_close(M.dirichlet_log_predictive(z, "softmax"), z.softmax(-1).log())
    torch.testing.assert_close(
        M.dirichlet_log_predictive(z, "mean"), (alpha / alpha.sum(-1, keepdim=True)).log()
    )
    assert M.dirichlet_log_predictive(z.half(), "mean").dtype == torch.float32
    with pytest.raises(ValueError, match="softmax, mean"):
        M.dirichlet_log_predictive(z, "median")


def test_dirichlet_identities_and_non_negativity():
    g = torch.Generator().manual_seed(4)
    # from flat (alpha ~ 1) to very confident students (alpha_0 ~ 1e13)
    z = torch.cat(
        [0.1 * torch.randn(8, 4000, generator=g), 30 * torch.rand(8, 4000, generator=g) - 20]
    )
    z[:, 0] += torch.linspace(0, 30, 16)
    for dtype in (torch.float32, torch.float64):
        got = M.dirichlet_measures(z.to(dtype), "mean")
        alpha0 = (z.double().exp() + 1).sum(-1)
        torch.testing.assert_close(got["epkl"], (4000 - 1) / alpha0, rtol=1e-9, atol=0)
        torch.testing.assert_close(got["mi"] + got["rmi"], got["epkl"], rtol=1e-6, atol=1e-15)
        for name in M.KNOWLEDGE_MEASURES:
            assert (got[name] >= 0).all(), name
        assert (got["data"] > 0).all()


def test_dirichlet_digamma_forms_match_the_textbook_expressions():
    """data and rmi written with ψ directly (float64, moderate α where nothing cancels)."""
    z = torch.tensor([[0.3, -0.7, 1.5, 2.2, -3.0, 0.0]], dtype=torch.float64)
    alpha = z.exp() + 1
    a0 = alpha.sum(-1, keepdim=True)
    mean = alpha / a0
    data = -(mean * (torch.digamma(alpha + 1) - torch.digamma(a0 + 1))).sum(-1)
    rmi = (mean * mean.log()).sum(-1) - (mean * (torch.digamma(alpha) - torch.digamma(a0))).sum(-1)
    got = M.dirichlet_measures(z, "mean")
    torch.testing.assert_close(got["data"], data, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got["rmi"], rmi, rtol=1e-12, atol=1e-12)


def test_phi_chi_asymptotic_branch_is_continuous():
    x = torch.tensor([9.999999, 10.0, 10.000001, 50.0], dtype=torch.float64)
    exact_phi = torch.digamma(x + 1) - x.log()
    torch.testing.assert_close(M._phi(x), exact_phi, rtol=1e-9, atol=0)
    torch.testing.assert_close(M._chi(x), x.log() - torch.digamma(x), rtol=1e-9, atol=0)


def test_sequence_estimator_by_hand():
    # two hypotheses: lengths 3 and 2, log-probs ln 0.3 and ln 0.1
    tok = {"total": torch.tensor([[1.0, 2.0, 3.0], [4.0, 6.0, 100.0]])}
    mask = torch.tensor([[True, True, True], [True, True, False]])
    lp = torch.tensor([math.log(0.3), math.log(0.1)])
    got = S.sequence_measures(tok, mask, lp)
    w = torch.tensor([0.75, 0.25])
    assert got["total"] == pytest.approx(float(w[0] * 2.0 + w[1] * 5.0))
    # T -> large: uniform average over the beam
    assert S.sequence_measures(tok, mask, lp, temperature=1e9)["total"] == pytest.approx(3.5)


def test_hypothesis_log_probs_sum_the_picked_tokens():
    lp = torch.log_softmax(torch.randn(2, 3, 5, dtype=torch.float64), -1)
    tokens = torch.tensor([[1, 2, 0], [4, 4, 3]])
    mask = torch.tensor([[True, True, False], [True, True, True]])
    got = S.hypothesis_log_probs(lp, tokens, mask)
    ref = torch.tensor([lp[0, 0, 1] + lp[0, 1, 2], lp[1, 0, 4] + lp[1, 1, 4] + lp[1, 2, 3]])
    torch.testing.assert_close(got, ref)


# ---- fast_measures: the same numbers with fewer passes (the exact forms where sums cancel) ----
from ensdist_fairseq.uncertainty import fast_measures as F  # noqa: E402


@pytest.mark.parametrize("eps", [0.0, 1e-7, 1e-3, 1.0])
def test_fast_ensemble_matches_exact_and_stays_non_negative(eps):
    g = torch.Generator().manual_seed(5)
    base = 4 * torch.randn(200, 500, generator=g, dtype=torch.float64)
    lp = torch.log_softmax(
        base + eps * torch.randn(3, 200, 500, generator=g, dtype=torch.float64), -1
    )
    fast, ref = F.ensemble_measures(lp.float()), brute_force_ensemble(lp.float())
    for name in M.ENSEMBLE_MEASURES:  # float32 element-wise, float64 sums: ~1e-7 absolute
        torch.testing.assert_close(fast[name], ref[name], rtol=1e-6, atol=1e-6)
    fast64 = F.ensemble_measures(lp)  # float64 members: float64 throughout
    for name in M.ENSEMBLE_MEASURES:
        torch.testing.assert_close(
            fast64[name], brute_force_ensemble(lp)[name], rtol=1e-6, atol=1e-12
        )
    for name in M.KNOWLEDGE_MEASURES:
        assert (fast[name] >= 0).all(), name
    # posterior member weights (expectation-of-products): the same agreement and guarantee
    log_w = M.member_log_weights(3 * torch.randn(3, 200, generator=g, dtype=torch.float64))
    fast_w, exact_w = F.ensemble_measures(lp.float(), log_w), M.ensemble_measures(lp, log_w)
    for name in M.ENSEMBLE_MEASURES:
        torch.testing.assert_close(fast_w[name], exact_w[name], rtol=1e-5, atol=2e-6)
    for name in M.KNOWLEDGE_MEASURES:
        assert (fast_w[name] >= 0).all(), name


def test_fast_dirichlet_matches_exact_from_flat_to_very_confident():
    g = torch.Generator().manual_seed(6)
    z = torch.cat(
        [
            0.1 * torch.randn(8, 4000, generator=g),  # flat: every class in the head
            3 * torch.randn(8, 4000, generator=g) - 12,  # trained-like: tail + a few
            2 * torch.randn(8, 4000, generator=g) - 8,  # tail near the threshold
            torch.full((4, 4000), -30.0),
        ]
    )  # everything in the tail
    z[8:, 0] += torch.linspace(0, 60, 20)  # alpha_0 up to ~1e21: the exact fallback
    # the whole batch (mostly tail: moments + sparse head) and the flat rows alone (dense path)
    for rows in (z, z[:8], z[8:]):
        for expected in M.DIRICHLET_PREDICTIVES:
            fast = F.dirichlet_measures(rows, expected)
            exact = M.dirichlet_measures(rows, expected)
            for name in M.DIRICHLET_MEASURES:  # float32 moments: < 1e-9 absolute
                torch.testing.assert_close(fast[name], exact[name], rtol=1e-6, atol=1e-9)
            for name in ("rmi", "epkl"):  # mi too for "mean"; the authors' mi can be < 0
                assert (fast[name] >= 0).all(), name
        assert (F.dirichlet_measures(rows, "mean")["mi"] >= 0).all()


# ---- ensembles both ways: product-of-expectations and expectation-of-products ----
import itertools  # noqa: E402


def toy_autoregressive_members(K=3, V=3, L=3, seed=8):
    """K members as explicit tables: member k's log P_k(· | prefix) for every prefix of length < L."""
    g = torch.Generator().manual_seed(seed)
    prefixes = [p for n in range(L) for p in itertools.product(range(V), repeat=n)]
    return {
        p: torch.log_softmax(2 * torch.randn(K, V, generator=g, dtype=torch.float64), -1)
        for p in prefixes
    }


def test_expectation_of_products_chain_rule_equals_the_sequence_level_measures():
    """Brute force over all V^L sequences: the measures of the sequence-level mixture
    P̄(y) = (1/K) Σ_k P_k(y) equal E_{P̄} of the summed token measures with posterior member
    weights; through sequence.py's estimator with every sequence as a hypothesis too."""
    K, V, L = 3, 3, 3
    table = toy_autoregressive_members(K, V, L)
    seqs = list(itertools.product(range(V), repeat=L))
    # member log-probs of every token of every sequence: (K, N, L)
    picked = torch.stack(
        [torch.stack([table[y[:i]][:, y[i]] for i in range(L)], -1) for y in seqs], 1
    )
    log_pk = picked.sum(-1)  # (K, N): ln P_k(y)
    pk = log_pk.exp()
    mix = pk.mean(0)
    H = lambda q: -(q * q.log()).sum(-1)  # noqa: E731
    KL = lambda a, b: (a * (a.log() - b.log())).sum(-1)  # noqa: E731
    exact = {
        "total": H(mix),
        "data": sum(H(pk[k]) for k in range(K)) / K,
        "mi": sum(KL(pk[k], mix) for k in range(K)) / K,
        "rmi": sum(KL(mix, pk[k]) for k in range(K)) / K,
        "epkl": sum(KL(pk[k], pk[j]) for k in range(K) for j in range(K)) / K**2,
    }
    mask = torch.ones(len(seqs), L, dtype=torch.bool)
    log_w = M.member_log_weights(S.prefix_log_probs(picked, mask))  # (K, N, L)
    members = torch.stack([torch.stack([table[y[:i]] for i in range(L)], 1) for y in seqs], 1)
    tok = M.ensemble_measures(members, log_w)  # (N, L) each
    fast = F.ensemble_measures(members.reshape(K, -1, V), log_w.reshape(K, -1))
    eop_lp = S.expectation_of_products_log_probs(log_pk)
    torch.testing.assert_close(eop_lp.exp(), mix)
    seq = S.sequence_measures(tok, mask, eop_lp)  # length-normalised: × L
    for name in M.ENSEMBLE_MEASURES:
        chain = (mix * tok[name].sum(-1)).sum()
        torch.testing.assert_close(chain, exact[name], rtol=1e-10, atol=1e-12)
        assert seq[name] * L == pytest.approx(float(exact[name]), rel=1e-10)
        torch.testing.assert_close(fast[name].view(len(seqs), L), tok[name], rtol=1e-9, atol=1e-12)
    # product-of-expectations: a different distribution; its total is still its sequence entropy
    poe = M.ensemble_measures(members)
    log_poe = torch.stack(
        [sum(M.ensemble_log_mean(table[y[:i]])[y[i]] for i in range(L)) for y in seqs]
    )
    torch.testing.assert_close((log_poe.exp() * poe["total"].sum(-1)).sum(), H(log_poe.exp()))
    assert float((log_poe.exp() * poe["rmi"].sum(-1)).sum()) != pytest.approx(
        float(exact["rmi"]), rel=1e-3
    )


def test_uniform_member_weights_are_product_of_expectations():
    lp = random_members()
    uniform = torch.full(lp.shape[:-1], -math.log(lp.size(0)), dtype=torch.float64)
    a, b = M.ensemble_measures(lp), M.ensemble_measures(lp, uniform)
    for name in M.ENSEMBLE_MEASURES:
        torch.testing.assert_close(a[name], b[name], rtol=1e-12, atol=1e-14)


def test_fast_entropy_is_measures_entropy_bit_for_bit():
    g = torch.Generator().manual_seed(3)
    lp = torch.log_softmax(torch.randn(6, 50, generator=g) * 30, dim=-1)  # some p underflow to 0
    lp[2, 7] = -float("inf")  # a class fairseq masked out: 0 · (−inf) must not make a NaN
    lp[4] = torch.log_softmax(
        torch.full((50,), -float("inf")).index_fill(0, torch.tensor([3]), 0), 0
    )
    assert (lp.exp() == 0).any()
    for x in (lp, lp.double()):
        fast = F.entropy(x)
        assert torch.equal(fast, M.entropy(x))
        brute = torch.tensor(
            [-sum(math.exp(v) * v for v in row.tolist() if v > -math.inf) for row in x.double()],
            dtype=torch.float64,
        )
        torch.testing.assert_close(fast.double(), brute, rtol=1e-6, atol=1e-7)
    assert float(F.entropy(lp)[4]) == 0.0
    assert torch.equal(F.single_measures(lp)["total"], M.single_measures(lp)["total"])


def test_fast_ensemble_reuses_a_given_log_mean_with_the_same_numbers():
    g = torch.Generator().manual_seed(4)
    lp = torch.log_softmax(torch.randn(3, 40, 30, generator=g) * 2, dim=-1)
    given = F.ensemble_measures(lp, log_mean=M.ensemble_log_mean(lp))
    own = F.ensemble_measures(lp)
    for name in M.ENSEMBLE_MEASURES:
        assert torch.equal(given[name], own[name]), name
    with pytest.raises(ValueError):
        F.ensemble_measures(lp, torch.full((3, 40), -math.log(3)), log_mean=given["total"])


def test_fast_phi_chi_match_mpmath_on_both_branches():
    mpmath = pytest.importorskip("mpmath")
    x = torch.cat([torch.linspace(1, 12, 200), torch.logspace(1, 12, 30)]).double()
    phi, chi = F._phi_chi(x)
    with mpmath.workdps(40):
        ref_phi = [
            float(mpmath.digamma(v + 1) - mpmath.log(v)) for v in map(mpmath.mpf, x.tolist())
        ]
        ref_chi = [float(mpmath.log(v) - mpmath.digamma(v)) for v in map(mpmath.mpf, x.tolist())]
    ref = torch.tensor([ref_phi, ref_chi], dtype=torch.float64)
    torch.testing.assert_close(
        torch.stack([phi, chi]), ref, rtol=1e-12, atol=0
    )  # series: < 2e-15 at x = 10


def test_fast_dirichlet_dense_path_on_a_ce_like_student():
    """Most classes in the head, some with α >= 10 (the asymptotic branch): the dense path."""
    g = torch.Generator().manual_seed(9)
    z = 1.5 * torch.randn(16, 4000, generator=g) - 2.1
    z[:, :5] += 6
    assert float((z.exp() >= F._TAIL_EPS).double().mean()) > F._DENSE_HEAD_SHARE
    assert bool((z.exp() + 1 >= 10).any())
    fast, exact = F.dirichlet_measures(z, "softmax"), M.dirichlet_measures(z, "softmax")
    for name in M.DIRICHLET_MEASURES:
        torch.testing.assert_close(fast[name], exact[name], rtol=1e-9, atol=1e-12)


def test_fast_dirichlet_in_row_blocks_keeps_shapes_and_values():
    g = torch.Generator().manual_seed(10)
    z = torch.cat(
        [1.5 * torch.randn(2, 150, 300, generator=g) - 2.1, torch.full((1, 150, 300), -9.0)]
    )
    fast, exact = F.dirichlet_measures(z, "softmax"), M.dirichlet_measures(z, "softmax")
    assert 3 * 150 > F._ROWS
    for name in M.DIRICHLET_MEASURES:
        assert fast[name].shape == (3, 150)
        torch.testing.assert_close(fast[name], exact[name], rtol=1e-9, atol=1e-12)
    assert F.dirichlet_measures(z[:, :0], "softmax")["total"].shape == (3, 0)


def test_fast_ensemble_in_row_blocks_equals_one_block():
    g = torch.Generator().manual_seed(11)
    lp = torch.log_softmax(torch.randn(3, 2 * F._ROWS + 7, 20, generator=g) * 2, dim=-1)
    lw = M.member_log_weights(torch.randn(3, lp.size(1), generator=g, dtype=torch.float64))
    for weights in (None, lw):
        whole = F._ensemble_block(lp, weights, None)
        blocks = F.ensemble_measures(lp, weights)
        exact = M.ensemble_measures(lp.double(), weights)
        for name in M.ENSEMBLE_MEASURES:
            assert torch.equal(blocks[name], whole[name]), name
            torch.testing.assert_close(blocks[name], exact[name], rtol=1e-5, atol=2e-6)

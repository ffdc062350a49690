"""The token_kd criterion and the dirichlet_transformer model on tiny in-process fairseq models."""

import argparse
import json
import math
import os
from types import SimpleNamespace

import pytest
import tiny_fairseq
import torch
from fairseq.criterions import CRITERION_REGISTRY
from fairseq.criterions.label_smoothed_cross_entropy import LabelSmoothedCrossEntropyCriterion
from fairseq.data import Dictionary
from fairseq.logging import metrics
from fairseq.models import ARCH_MODEL_REGISTRY
from fairseq.sequence_generator import SequenceGenerator
from torch.distributions import Categorical, Dirichlet, kl_divergence

import ensdist_fairseq.models  # noqa: F401  (registers dirichlet_transformer)
from ensdist_fairseq.criterions.token_kd import TokenKDCriterion
from ensdist_fairseq.errors import EnsdistError
from ensdist_fairseq.losses import adaptive_alpha

WORDS, BATCH, SRC_LEN, TGT_LEN = 20, 3, 6, 5


def make_task():
    d = Dictionary()
    for i in range(WORDS):
        d.add_symbol(f"w{i}")
    return SimpleNamespace(source_dictionary=d, target_dictionary=d)


def make_model(task, arch="transformer", dropout=0.3):
    args = argparse.Namespace(
        arch=arch,
        encoder_layers=1,
        decoder_layers=1,
        encoder_embed_dim=16,
        decoder_embed_dim=16,
        encoder_ffn_embed_dim=32,
        decoder_ffn_embed_dim=32,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        dropout=dropout,
        share_all_embeddings=True,
        max_source_positions=64,
        max_target_positions=64,
    )
    torch.manual_seed(0)
    return ARCH_MODEL_REGISTRY[arch].build_model(args, task)


def make_sample(task, stored=None, seed=0):
    """A right-padded batch with a synthetic teacher that follows the batch contract."""
    g = torch.Generator().manual_seed(seed)
    d = task.target_dictionary
    vocab, pad, eos = len(d), d.pad(), d.eos()
    lengths = torch.tensor([TGT_LEN, TGT_LEN - 2, 2])
    target = torch.randint(d.nspecial, vocab, (BATCH, TGT_LEN), generator=g)
    non_pad = torch.arange(TGT_LEN)[None] < lengths[:, None]
    target[torch.arange(BATCH), lengths - 1] = eos
    target[~non_pad] = pad
    prev = torch.cat([torch.full((BATCH, 1), eos), target[:, :-1]], 1).masked_fill(~non_pad, pad)
    src = torch.randint(d.nspecial, vocab, (BATCH, SRC_LEN), generator=g)
    src[:, -1] = eos
    full = torch.softmax(torch.randn(BATCH, TGT_LEN, vocab, generator=g) * 3, -1)
    probs, indices = full.topk(stored or vocab, dim=-1)
    probs = probs * non_pad[..., None]
    precision = (torch.rand(BATCH, TGT_LEN, generator=g) * 1e3 + 1) * non_pad
    return {
        "net_input": {
            "src_tokens": src,
            "src_lengths": torch.full((BATCH,), SRC_LEN),
            "prev_output_tokens": prev,
        },
        "target": target,
        "ntokens": int(non_pad.sum()),
        "teacher": {"indices": indices, "probs": probs, "precision": precision},
        "teacher_full": full,  # only for the independent reference computations below
    }


def make_criterion(task, num_updates=0, **overrides):
    cfg = dict(
        label_smoothing=0.1,
        kd_loss="mean_kd",
        kd_weight=0.5,
        kd_temperature=1.0,
        kd_truncation="tail",
        precision_limit=1e6,
        precision_floor=1.0,
        intra_passes=1,
        intra_alpha=5.0,
        no_intra_adaptive=False,
        intra_p=5.0,
        intra_q=10.0,
        intra_forward="stacked",
        max_update=1000,
        sentence_avg=False,
    )
    cfg.update(overrides)
    criterion = TokenKDCriterion(task, **cfg)
    criterion.set_num_updates(num_updates)  # as TranslationDistillTask.train_step does
    return criterion


def run(criterion, model, sample, seed=1):
    torch.manual_seed(seed)  # same dropout masks for runs compared with each other
    model.zero_grad()
    loss, sample_size, log = criterion(model, sample)
    loss.backward()
    return loss, log, [p.grad.clone() for p in model.parameters() if p.grad is not None]


def test_registered_with_fairseq():
    assert "token_kd" in CRITERION_REGISTRY
    assert {"dirichlet_transformer", "dirichlet_transformer_iwslt_de_en"} <= set(
        ARCH_MODEL_REGISTRY
    )


def test_beta_zero_is_fairseq_label_smoothed_cross_entropy_exactly():
    task = make_task()
    model, sample = make_model(task), make_sample(task, stored=8)
    ours, log, grads = run(make_criterion(task, kd_weight=0.0), model, sample)
    fairseq_ls = LabelSmoothedCrossEntropyCriterion(task, sentence_avg=False, label_smoothing=0.1)
    ref, ref_log, ref_grads = run(fairseq_ls, model, sample)
    assert torch.equal(ours, ref) and torch.equal(log["nll_loss"], ref_log["nll_loss"])
    assert all(torch.equal(a, b) for a, b in zip(grads, ref_grads))


def test_mean_kd_loss_is_the_interpolation_with_the_categorical_kl():
    task = make_task()
    model, sample = make_model(task, dropout=0.0), make_sample(task)
    model.train()
    _, log, _ = run(make_criterion(task, kd_weight=0.3), model, sample)
    lprobs = model.get_normalized_probs(model(**sample["net_input"]), log_probs=True)
    non_pad = sample["target"].ne(task.target_dictionary.pad())
    kl = kl_divergence(Categorical(probs=sample["teacher_full"]), Categorical(logits=lprobs))[
        non_pad
    ].sum()
    ls, _ = LabelSmoothedCrossEntropyCriterion(task, False, 0.1).compute_loss(
        model, model(**sample["net_input"]), sample
    )
    assert log["kd_loss"].item() == pytest.approx(kl.item(), rel=1e-4)
    assert log["objective"].item() == pytest.approx(0.7 * ls.item() + 0.3 * kl.item(), rel=1e-4)
    # "loss" is the references' label-smoothed loss, as validation logs it
    assert log["loss"].item() == pytest.approx(ls.item(), rel=1e-4)


@pytest.mark.parametrize(
    "kd_loss, arch",
    [("mean_kd", "transformer"), ("proxy_dirichlet", "dirichlet_transformer")],
)
def test_loss_means_the_same_in_training_and_validation(kd_loss, arch):
    """'loss' is the references' label-smoothed loss in training and in validation (what
    fairseq-train compares and --best-checkpoint-metric loss selects on); the KD mixture that is
    optimized is 'objective', logged in training only."""
    task = make_task()
    model, sample = make_model(task, arch=arch, dropout=0.0), make_sample(task)
    criterion = make_criterion(task, kd_loss=kd_loss, kd_weight=0.6)
    loss, _, train_log = criterion(model.train(), sample)
    with torch.no_grad():
        _, _, valid_log = criterion(model.eval(), sample)
    assert "objective" not in valid_log and "kd_loss" not in valid_log
    assert train_log["loss"].item() == pytest.approx(valid_log["loss"].item(), rel=1e-5)
    assert train_log["objective"].item() == pytest.approx(loss.item(), rel=1e-6)
    assert train_log["objective"].item() != pytest.approx(train_log["loss"].item(), rel=1e-3)


def test_proxy_dirichlet_matches_torch_distributions_and_refuses_softmax_models():
    task = make_task()
    sample = make_sample(task)
    criterion = make_criterion(task, kd_loss="proxy_dirichlet", kd_weight=1.0)
    with pytest.raises(ValueError, match="dirichlet_transformer"):
        criterion(make_model(task), sample)
    model = make_model(task, arch="dirichlet_transformer", dropout=0.0)
    model.train()
    _, log, grads = run(criterion, model, sample)
    logits = model(**sample["net_input"])[0].double()
    non_pad = sample["target"].ne(task.target_dictionary.pad())
    precision = sample["teacher"]["precision"].double()[non_pad]
    beta = sample["teacher_full"].double()[non_pad] * precision[:, None] + 1
    expected = (
        kl_divergence(Dirichlet(logits[non_pad].exp() + 1), Dirichlet(beta)) / precision
    ).sum()
    assert log["kd_loss"].item() == pytest.approx(expected.item(), rel=1e-4)
    assert log["objective"].item() == pytest.approx(expected.item(), rel=1e-4)  # pure RKL
    assert all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("predictive", ["softmax", "mean"])  # --dirichlet-predictive
def test_dirichlet_student_predictive_is_what_fairseq_generate_scores(predictive):
    task = make_task()
    model = make_model(task, arch="dirichlet_transformer").eval()
    model.args.dirichlet_predictive = predictive
    sample = make_sample(task)
    generator = SequenceGenerator([model], task.target_dictionary, beam_size=1, max_len_b=8)
    hypos = generator.generate([model], sample)
    for i, hypo in enumerate(h[0] for h in hypos):
        tokens = hypo["tokens"]
        prev = torch.cat([tokens.new_tensor([task.target_dictionary.eos()]), tokens[:-1]])
        src = {k: v[i : i + 1] for k, v in sample["net_input"].items() if k != "prev_output_tokens"}
        z = model(**src, prev_output_tokens=prev[None])[0][0].double()
        alpha = z.exp() + 1
        dist = alpha / alpha.sum(-1, keepdim=True) if predictive == "mean" else z.softmax(-1)
        expected = dist.log().gather(-1, tokens[:, None]).squeeze(-1)
        torch.testing.assert_close(
            hypo["positional_scores"].double(), expected, rtol=1e-4, atol=1e-4
        )


def test_dirichlet_predictive_changes_neither_the_objective_nor_validation_nll():
    """--dirichlet-predictive reads a checkpoint: token_kd's NLL term and the validation loss /
    nll_loss (early stopping) are on softmax(z) whatever it says."""
    task = make_task()
    sample = make_sample(task)
    del sample["teacher"]
    model = make_model(task, arch="dirichlet_transformer", dropout=0.0).eval()
    non_pad = sample["target"].ne(task.target_dictionary.pad())
    with torch.no_grad():
        z = model(**sample["net_input"])[0].double()
    nll = -z.log_softmax(-1).gather(-1, sample["target"][..., None]).squeeze(-1)[non_pad].sum()
    logs = {}
    for predictive in ("softmax", "mean"):
        model.args.dirichlet_predictive = predictive
        _, _, logs[predictive] = make_criterion(task, kd_loss="none")(model, sample)
        assert logs[predictive]["nll_loss"].item() == pytest.approx(nll.item(), rel=1e-5)
    assert logs["softmax"]["loss"].item() == logs["mean"]["loss"].item()
    # while scoring does follow the option (get_normalized_probs)
    lp = model.get_normalized_probs((z, None), log_probs=True)
    torch.testing.assert_close(lp, torch.log((z.exp() + 1) / (z.exp() + 1).sum(-1, keepdim=True)))


def test_checkpoints_without_the_option_load_as_the_dirichlet_mean(caplog):
    """A cfg without dirichlet_predictive predates the option (then the model decoded and
    validated with alpha/alpha_0): it loads as "mean", and says so; a recorded one is kept."""
    task = make_task()
    with caplog.at_level("WARNING"):
        legacy = make_model(task, arch="dirichlet_transformer")
    assert legacy.dirichlet_predictive == "mean" and "saved before the option" in caplog.text
    parser = argparse.ArgumentParser()
    ARCH_MODEL_REGISTRY["dirichlet_transformer"].add_args(parser)
    assert parser.parse_args([]).dirichlet_predictive == "softmax"  # what fairseq-train records
    args = legacy.args
    args.dirichlet_predictive = "softmax"
    assert (
        ARCH_MODEL_REGISTRY["dirichlet_transformer"].build_model(args, task).dirichlet_predictive
        == "softmax"
    )
    args.dirichlet_predictive = "median"
    with pytest.raises(ValueError, match="softmax, mean"):
        ARCH_MODEL_REGISTRY["dirichlet_transformer"].build_model(args, task)


def test_validation_needs_no_teacher_and_reports_label_smoothed_nll():
    task = make_task()
    model, sample = make_model(task).eval(), make_sample(task)
    del sample["teacher"]
    loss, _, log = make_criterion(task, intra_passes=3)(model, sample)
    ref, nll = LabelSmoothedCrossEntropyCriterion(task, False, 0.1).compute_loss(
        model, model(**sample["net_input"]), sample
    )
    assert loss.item() == pytest.approx(ref.item()) and log["nll_loss"].item() == pytest.approx(
        nll.item()
    )
    assert not {"kd_loss", "intra_loss", "teacher_coverage"} & set(log)
    with pytest.raises(ValueError, match="teacher"):
        make_criterion(task)(model.train(), sample)


@pytest.mark.parametrize(
    "flag,value",
    [
        ("kd_weight", 1.5),
        ("kd_weight", -0.1),
        ("kd_temperature", 0.0),
        ("intra_passes", 0),
        ("precision_limit", 0.0),
        ("label_smoothing", 1.0),
        ("intra_alpha", -1.0),
    ],
)
def test_impossible_flag_values_name_the_flag(flag, value):
    with pytest.raises(ValueError, match="--" + flag.replace("_", "-")):
        make_criterion(make_task(), **{flag: value})


def test_adaptive_intra_needs_max_update_and_a_valid_schedule():
    with pytest.raises(ValueError, match="--max-update"):
        make_criterion(make_task(), intra_passes=3, max_update=0)
    with pytest.raises(ValueError, match="p < q"):
        make_criterion(make_task(), intra_passes=3, intra_p=10.0, intra_q=5.0)
    make_criterion(
        make_task(), intra_passes=3, max_update=0, no_intra_adaptive=True
    )  # fixed alpha: fine


def reference_pass_losses(model, sample, passes, forward, kd_weight, seed=1):
    """(per-pass (1 - beta) LS + beta KL, per-pass NLL, X) in float64, computed independently of
    the criterion from the same dropout masks (same seed, same forward calls)."""
    torch.manual_seed(seed)
    net_input = sample["net_input"]
    if forward == "stacked":
        logits = model(**{k: torch.cat([v] * passes) for k, v in net_input.items()})[0].chunk(
            passes
        )
    else:
        logits = [model(**net_input)[0] for _ in range(passes)]
    non_pad = sample["target"].ne(1)
    ls_ref = LabelSmoothedCrossEntropyCriterion(make_task(), False, 0.1)
    losses, nlls, lps = [], [], []
    for z in logits:
        ls, nll = ls_ref.compute_loss(model, (z.double(), {"attn": [None]}), sample)
        lp = torch.log_softmax(z.double(), -1)
        kl = kl_divergence(
            Categorical(probs=sample["teacher_full"].double()), Categorical(logits=lp)
        )[non_pad].sum()
        losses.append((1 - kd_weight) * ls + kd_weight * kl)
        nlls.append(nll)
        lps.append(lp)
    p = torch.stack(lps).exp()
    p_bar = p.mean(0)
    x = sum(((pi - p_bar) * (pi.log() - p_bar.log())).sum(-1)[non_pad].sum() for pi in p) / passes
    return losses, nlls, x


@pytest.mark.parametrize("forward", ["sequential", "stacked"])
def test_intra_distillation_is_mean_pass_loss_plus_weighted_x_divergence(forward):
    task = make_task()
    sample = make_sample(task)
    # Without dropout the K passes agree: X = 0 and the loss is the single-pass loss.
    model = make_model(task, dropout=0.0)
    single, _, _ = run(make_criterion(task), model, sample)
    loss, log, _ = run(make_criterion(task, intra_passes=3, intra_forward=forward), model, sample)
    assert log["intra_loss"].item() == pytest.approx(0.0, abs=1e-5)
    assert loss.item() == pytest.approx(single.item(), rel=1e-5)
    # With dropout they differ: L = mean over the passes + alpha_t X, checked against an
    # independent float64 computation. Catches training on one pass only and a dropped alpha_t X.
    model = make_model(task, dropout=0.3)
    criterion = make_criterion(
        task, kd_weight=0.3, intra_passes=3, intra_forward=forward, intra_alpha=5.0
    )
    criterion.set_num_updates(100)  # what the task's train_step does; N/q = 1000/10: alpha_t = 1
    loss, log, grads = run(criterion, model, sample)
    with torch.no_grad():
        losses, nlls, x = reference_pass_losses(model, sample, 3, forward, kd_weight=0.3)
    mean = sum(losses) / 3
    assert log["intra_alpha"] / log["sample_size"] == pytest.approx(1.0)
    assert loss.item() == pytest.approx((mean + x).item(), rel=1e-5)
    assert log["intra_loss"].item() == pytest.approx(x.item(), rel=1e-4)
    assert log["nll_loss"].item() == pytest.approx((sum(nlls) / 3).item(), rel=1e-5)
    # the test is sensitive: pass 1 alone, or no X, would be off by far more than rel=1e-5
    assert abs(losses[0] - mean) > 1e-3 * mean and x > 1e-3 * mean
    assert all(torch.isfinite(g).all() for g in grads)


def test_adaptive_alpha_needs_the_update_number_from_the_task():
    task = make_task()
    model, sample = make_model(task), make_sample(task)
    criterion = TokenKDCriterion(task, sentence_avg=False, intra_passes=2, max_update=1000)
    with pytest.raises(EnsdistError, match="translation_distill"):
        criterion(model.train(), sample)
    # fairseq's plain tasks never call set_num_updates: a fixed alpha needs no update number
    fixed = TokenKDCriterion(
        task, sentence_avg=False, intra_passes=2, no_intra_adaptive=True, intra_alpha=2.0
    )
    _, _, log = fixed(model, sample)
    assert log["intra_alpha"] / log["sample_size"] == 2.0


def test_translation_distill_train_step_hands_the_update_number_to_the_criterion(tiny_data):
    from fairseq import options, tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    import ensdist_fairseq.tasks.translation_distill  # noqa: F401

    args = options.parse_args_and_arch(
        options.get_training_parser(),
        [tiny_data, "--task", "translation_distill", "--arch", "transformer"],
    )
    distill_task = tasks.setup_task(convert_namespace_to_omegaconf(args).task)
    task = make_task()
    model, sample = make_model(task), make_sample(task)
    criterion = make_criterion(task, intra_passes=2)
    optimizer = SimpleNamespace(backward=lambda loss: loss.backward())
    for update, expected in ((0, 0.0), (100, 1.0), (200, 5.0)):  # N = 1000: 0, N/q, N/p
        _, sample_size, log = distill_task.train_step(sample, model, criterion, optimizer, update)
        assert criterion.num_updates == update
        assert log["intra_alpha"] / sample_size == pytest.approx(expected)


def test_reduce_false_returns_per_token_losses_like_fairseq():
    task = make_task()
    model, sample = make_model(task, dropout=0.0), make_sample(task, stored=8)
    non_pad = sample["target"].ne(1).view(-1, 1)
    # beta = 0: fairseq's own per-token label-smoothed losses
    torch.manual_seed(1)
    ours, _, _ = make_criterion(task, kd_weight=0.0)(model.train(), sample, reduce=False)
    torch.manual_seed(1)
    ref, _, _ = LabelSmoothedCrossEntropyCriterion(task, False, 0.1)(model, sample, reduce=False)
    assert ours.shape == ref.shape == (sample["target"].numel(), 1) and torch.equal(ours, ref)
    for kd_loss, arch, passes in (
        ("mean_kd", "transformer", 3),
        ("proxy_dirichlet", "dirichlet_transformer", 2),
    ):
        model = make_model(task, arch=arch, dropout=0.0).train()
        criterion = make_criterion(
            task, kd_loss=kd_loss, intra_passes=passes, no_intra_adaptive=True
        )
        per_token, _, log = criterion(model, sample, reduce=False)
        total, _, _ = criterion(model, sample)
        assert per_token.shape == (sample["target"].numel(), 1)
        assert not per_token[~non_pad].any() and (per_token[non_pad] > 0).all()
        assert per_token.sum().item() == pytest.approx(total.item(), rel=1e-5)
        assert log["objective"].item() == pytest.approx(total.item(), rel=1e-5)


def test_logged_statistics_ignore_pads_and_reduce_per_token():
    """Every logged value against an independent computation, in the units fairseq prints
    (losses in bits per token: a kd_loss logged in nats is caught)."""
    task = make_task()
    model, sample = make_model(task, dropout=0.0), make_sample(task)
    sample["teacher"]["precision"][0, 0] = float("inf")  # members agreed: bounded by the limit
    sample["teacher"]["precision"][0, 1] = 0.0  # a member with log-prob -inf: raised to the floor
    criterion = make_criterion(
        task,
        kd_weight=0.3,
        intra_passes=2,
        no_intra_adaptive=True,
        intra_alpha=2.0,
        precision_limit=1e4,
        precision_floor=2.0,
    )
    _, log, _ = run(criterion, model, sample)
    non_pad = sample["target"].ne(task.target_dictionary.pad())
    teacher = sample["teacher"]
    coverage = teacher["probs"].sum(-1)[non_pad].mean().item()
    precision = teacher["precision"].clamp(min=2.0, max=1e4)[non_pad].mean().item()
    with torch.no_grad():
        losses, nlls, x = reference_pass_losses(model, sample, 2, "stacked", kd_weight=0.3)
        lp = torch.log_softmax(model(**sample["net_input"])[0].double(), -1)
    kl = kl_divergence(Categorical(probs=sample["teacher_full"].double()), Categorical(logits=lp))[
        non_pad
    ].sum()
    ntokens, bits = sample["ntokens"], math.log(2)
    with metrics.aggregate() as agg:
        TokenKDCriterion.reduce_metrics([log])
    values = agg.get_smoothed_values()
    assert values["teacher_coverage"] == pytest.approx(coverage, abs=1e-4)
    assert values["teacher_precision"] == pytest.approx(precision, abs=0.1)
    assert values["intra_alpha"] == pytest.approx(2.0)
    assert values["kd_loss"] == pytest.approx(kl.item() / ntokens / bits, abs=2e-3)
    assert values["intra_loss"] == pytest.approx(x.item() / ntokens / bits, abs=2e-3)
    assert values["objective"] == pytest.approx(
        (sum(losses) / 2 + 2.0 * x).item() / ntokens / bits, abs=2e-3
    )
    assert values["nll_loss"] == pytest.approx(nlls[0].item() / ntokens / bits, abs=2e-3)
    assert values["ppl"] == pytest.approx(2 ** values["nll_loss"], rel=1e-2)


@pytest.mark.parametrize(
    "kd_loss,arch", [("mean_kd", "transformer"), ("proxy_dirichlet", "dirichlet_transformer")]
)
def test_extremely_peaked_teacher_and_student_stay_finite(kd_loss, arch):
    task = make_task()
    model, sample = make_model(task, arch=arch), make_sample(task, stored=4)
    teacher = sample["teacher"]
    teacher["probs"] = torch.zeros_like(teacher["probs"])
    teacher["probs"][..., 0] = sample["target"].ne(task.target_dictionary.pad()).float()  # one-hot
    teacher["precision"] = torch.where(
        teacher["precision"] > 0, torch.tensor(float("inf")), teacher["precision"]
    )
    with torch.no_grad():
        model.decoder.output_projection.weight.mul_(1e4)  # logits in the 1e4-1e5 range
    loss, log, grads = run(make_criterion(task, kd_loss=kd_loss, intra_passes=2), model, sample)
    assert (
        torch.isfinite(loss)
        and torch.isfinite(log["kd_loss"])
        and torch.isfinite(log["intra_loss"])
    )
    assert all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_models_give_finite_losses(dtype):
    task = make_task()
    model = make_model(task, arch="dirichlet_transformer").to(dtype)
    sample = make_sample(task)
    for kd_loss in ("mean_kd", "proxy_dirichlet"):
        loss, log, grads = run(make_criterion(task, kd_loss=kd_loss, intra_passes=2), model, sample)
        assert loss.dtype == torch.float32 and torch.isfinite(loss)
        assert all(torch.isfinite(g.float()).all() for g in grads)


@pytest.mark.slow
def test_fairseq_train_runs_intra_distillation_alone_on_the_translation_task(tiny_data, tmp_path):
    """--kd-loss none --intra-passes 3 on translation_distill without a store (fairseq's translation
    plus the update number for alpha_t), then fairseq-generate."""
    # A user dir importing our registrations explicitly, independent of the package's __init__.
    plugin = tmp_path / "token_kd_plugin"
    plugin.mkdir()
    (plugin / "__init__.py").write_text(
        "import ensdist_fairseq.criterions.token_kd  # noqa\nimport ensdist_fairseq.models  # noqa\n"
        "import ensdist_fairseq.tasks.translation_distill  # noqa\n"
    )
    save = tmp_path / "ckpt"
    out = tiny_fairseq.run(
        [
            os.path.join(tiny_fairseq.BIN, "fairseq-train"),
            tiny_data,
            "--user-dir",
            str(plugin),
            "--task",
            "translation_distill",
            *tiny_fairseq.TINY_ARCH_ARGS[2:],
            "--arch",
            "dirichlet_transformer",
            "--criterion",
            "token_kd",
            "--kd-loss",
            "none",
            "--intra-passes",
            "3",
            "--max-update",
            "20",
            "--optimizer",
            "adam",
            "--lr",
            "1e-3",
            "--max-tokens",
            "400",
            "--cpu",
            "--log-format",
            "json",
            "--log-interval",
            "1",
            "--save-dir",
            str(save),
            "--no-epoch-checkpoints",
            "--seed",
            "1",
        ]
    )
    log = out.stdout + out.stderr
    assert (
        '"train_intra_alpha"' in log and '"train_intra_loss"' in log and '"valid_nll_loss"' in log
    )
    assert '"valid_intra_loss"' not in log
    # the checkpoint records the predictive it decodes with (the flag's default)
    saved = torch.load(save / "checkpoint_last.pt", weights_only=False)["cfg"]["model"]
    assert saved.dirichlet_predictive == "softmax"
    # alpha_t per update t = 0, 1, ... with N = 20, p = 5, q = 10: alpha (t p / N)^gamma up to N/p = 4
    inner = [
        json.loads(line[line.index('{"') :])
        for line in log.splitlines()
        if '{"' in line and "train_inner" in line
    ]
    assert [float(r["intra_alpha"]) for r in inner[:6]] == pytest.approx(
        [adaptive_alpha(5.0, t, 20, 5.0, 10.0) for t in range(6)], abs=1e-3
    )
    gen = tiny_fairseq.run(
        [
            os.path.join(tiny_fairseq.BIN, "fairseq-generate"),
            tiny_data,
            "--user-dir",
            str(plugin),
            "--path",
            str(save / "checkpoint_last.pt"),
            "--beam",
            "2",
            "--max-sentences",
            "8",
            "--cpu",
        ]
    )
    assert "BLEU" in gen.stdout + gen.stderr


@pytest.mark.parametrize(
    "kd_loss, arch, passes",
    [
        ("mean_kd", "transformer", 1),
        ("mean_kd", "transformer", 2),
        ("proxy_dirichlet", "dirichlet_transformer", 1),
        ("proxy_dirichlet", "dirichlet_transformer", 2),
    ],
)
def test_stand_in_batch_without_teacher_gives_zeros_with_the_keys_of_a_real_batch(
    kd_loss, arch, passes
):
    # fairseq's stand-in ("dummy") batch for a rank out of batches may be a validation batch:
    # no teacher. The ranks sum logging outputs as one buffer, key by key in order.
    from ensdist_fairseq.tasks.translation_distill import TranslationDistillTask

    task = make_task()
    model = make_model(task, arch=arch).train()
    criterion = make_criterion(task, kd_loss=kd_loss, intra_passes=passes, num_updates=300)
    _, real_log, _ = run(criterion, model, make_sample(task))
    stand_in = make_sample(task, seed=1)
    del stand_in["teacher"]
    with pytest.raises(ValueError, match="teacher"):
        criterion(model, stand_in)  # a real training batch without entries is still refused
    optimizer = SimpleNamespace(backward=lambda loss: loss.backward())
    model.zero_grad()
    distill_task = TranslationDistillTask.__new__(TranslationDistillTask)  # train_step only
    loss, _, log = distill_task.train_step(
        stand_in, model, criterion, optimizer, 300, ignore_grad=True
    )
    assert list(log) == list(real_log)
    assert all(float(v) == 0 for v in log.values()), log
    assert loss.item() == 0 and not criterion.stand_in
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.equal(g, torch.zeros_like(g)) for g in grads)  # reached, zero
    # and the rank's step counts in no metric: fairseq zeroes the values, then they sum
    summed = {k: real_log[k] + log[k] for k in real_log}
    for key in ("loss", "nll_loss", "kd_loss", "ntokens", "sample_size", "teacher_ntokens"):
        assert float(summed[key]) == pytest.approx(float(real_log[key]))


@pytest.mark.parametrize(
    "flag, value, message",
    [
        ("kd_temperature", math.inf, "must be finite"),
        ("intra_alpha", math.nan, "must be a number, got nan"),
        ("kd_weight", math.nan, "must be a number"),
        ("precision_floor", -math.inf, "must be finite"),
        ("intra_p", 0.0, "must be > 0, got 0"),
        ("intra_alpha", -1.0, "must be >= 0, got -1"),
        ("intra_passes", 0, r"must be in 1\.\."),
        ("max_update", -1, r"must be in 0\.\."),
        ("label_smoothing", math.inf, "must be finite"),
    ],
)
def test_non_finite_and_out_of_range_fields_are_refused_by_the_shared_rule(flag, value, message):
    with pytest.raises(EnsdistError, match="^--" + flag.replace("_", "-") + f": {message}"):
        make_criterion(make_task(), **{"intra_passes": 2, flag: value})


def test_build_time_refusals_need_no_data():
    # what the criterion can judge before any batch: a KD term without a store, Proxy-Dirichlet
    # with the softmax student the task has just built
    no_store = SimpleNamespace(cfg=SimpleNamespace(teacher_store=None), **vars(make_task()))
    with pytest.raises(EnsdistError, match="^--kd-loss mean_kd needs the teacher store"):
        make_criterion(no_store)
    make_criterion(no_store, kd_loss="none")
    softmax = SimpleNamespace(
        cfg=SimpleNamespace(teacher_store="s.h5"),
        model_predicts_dirichlet=False,
        **vars(make_task()),
    )
    with pytest.raises(EnsdistError, match="^--kd-loss proxy_dirichlet needs a Dirichlet student"):
        make_criterion(softmax, kd_loss="proxy_dirichlet")
    make_criterion(softmax, kd_loss="mean_kd")
    softmax.model_predicts_dirichlet = True
    make_criterion(softmax, kd_loss="proxy_dirichlet")

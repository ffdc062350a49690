"""token_kd under fairseq's mixed precision, for every --kd-loss and --intra-passes combination,
--kd-truncation tail_kl, and nucleus stores (rows of variable length).

--fp16 / --bf16: fairseq's Trainer._fp_convert_sample casts every float32 tensor of the sample
to half / bfloat16 (called here as fairseq's own method), then the model runs in that dtype.
--amp: nothing is cast; the forward pass runs under autocast. The batch comes from the real
collater (TeacherStoreDataset over fairseq's LanguagePairDataset) with beta0_hat up to 1e6,
beyond the limit and infinite (half's largest value is 65504).

Stated tolerances: the sample conversion changes nothing the criterion reads (bitwise equal loss
and gradients); half / bfloat16 logits give bitwise the float32 loss of the same (rounded) logits
and that loss's logits-gradient within 2 roundings of the logits' dtype (relative to the
largest entry: autograd adds the NLL and KD paths' gradients in that dtype); a whole bfloat16 model stays within
5 % of float32 (its own rounding, not the loss's).
"""

import json
import math
import os
import re
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import tiny_fairseq
import torch
import torch.nn.functional as F
from fairseq import utils
from fairseq.data import Dictionary, LanguagePairDataset
from fairseq.trainer import Trainer

from ensdist_fairseq.criterions.token_kd import TokenKDCriterion
from ensdist_fairseq.data.teacher_dataset import TeacherStoreDataset
from ensdist_fairseq.losses import dirichlet_log_predictive
from ensdist_fairseq.store.teacher_distribution import nucleus_lengths, truncate_to_nucleus

pytestmark = pytest.mark.slow  # trains tiny models or runs fairseq commands

WORDS, TOPK, SENTENCES = 30, 6, 5
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRECISIONS = [3.0, 5e4, 1e5, 7e5, 1e6, 3e6, float("inf")]
VARIANTS = [
    ("none", 1),
    ("none", 3),
    ("mean_kd", 1),
    ("mean_kd", 3),
    ("proxy_dirichlet", 1),
    ("proxy_dirichlet", 3),
]
# The sample-cast matrix: every variant above on whole rows (mean_kd with its default tail
# truncation), plus --kd-truncation tail_kl, and nucleus stores (memoize --top-p/--min-k: rows
# of variable length padded with index 0, probability 0).
TOP_P, MIN_K = 0.6, 2
CAST_VARIANTS = [(kd, passes, "tail", False) for kd, passes in VARIANTS] + [
    ("mean_kd", 1, "tail_kl", False),
    ("mean_kd", 3, "tail_kl", False),
    ("mean_kd", 1, "tail", True),
    ("mean_kd", 3, "tail_kl", True),
    ("proxy_dirichlet", 1, "tail", True),
    ("proxy_dirichlet", 3, "tail", True),
]
CAST_IDS = [
    f"{kd}-x{passes}" + (f"-{t}" if t != "tail" else "") + ("-nucleus" if n else "")
    for kd, passes, t, n in CAST_VARIANTS
]


def fp_convert_sample(sample, dtype):
    """fairseq's own Trainer._fp_convert_sample under --fp16 (half) or --bf16 (bfloat16)."""
    common = SimpleNamespace(fp16=dtype == torch.half, bf16=dtype == torch.bfloat16)
    return Trainer._fp_convert_sample(SimpleNamespace(cfg=SimpleNamespace(common=common)), sample)


class FakeReader:
    """StoreReader.read's contract (float32 arrays, as read from the store's float16/float32)."""

    path = "fake.h5"

    def __init__(self, lengths, vocab, nucleus=False):
        self.rows = []
        rng = np.random.default_rng(0)
        for i, n in enumerate(lengths):
            probs = np.sort(rng.dirichlet(np.ones(TOPK + 2), size=n)[:, :TOPK], 1)[:, ::-1]
            indices = np.stack(
                [rng.choice(np.arange(4, vocab), TOPK, replace=False) for _ in range(n)]
            )
            if nucleus:  # as memoize --top-p/--min-k writes them
                p = torch.from_numpy(probs.copy())
                keep = nucleus_lengths(p, TOP_P, MIN_K)
                i_t, p_t = truncate_to_nucleus(torch.from_numpy(indices), p, keep)
                indices, probs = i_t.numpy(), p_t.numpy()
            precision = np.array([PRECISIONS[(i + t) % len(PRECISIONS)] for t in range(n)])
            self.rows.append(
                (indices, probs.astype(np.float16).astype(np.float32), precision.astype(np.float32))
            )

    def read(self, i, topk):
        indices, probs, precision = self.rows[i]
        return indices[:, :topk].astype(np.int64), probs[:, :topk], precision


def collated_sample(nucleus=False):
    d = Dictionary()
    for i in range(WORDS):
        d.add_symbol(f"w{i}")
    g = torch.Generator().manual_seed(0)
    lengths = [5, 3, 7, 2, 6]
    src = [
        torch.cat([torch.randint(4, len(d), (n + 1,), generator=g), torch.tensor([d.eos()])])
        for n in lengths
    ]
    tgt = [
        torch.cat([torch.randint(4, len(d), (n - 1,), generator=g), torch.tensor([d.eos()])])
        for n in lengths
    ]
    pairs = LanguagePairDataset(src, [len(s) for s in src], d, tgt, [len(t) for t in tgt], d)
    dataset = TeacherStoreDataset(pairs, FakeReader(lengths, len(d), nucleus), TOPK, d.pad())
    sample = dataset.collater([dataset[i] for i in range(SENTENCES)])
    return SimpleNamespace(source_dictionary=d, target_dictionary=d), sample


class LogitsModel(torch.nn.Module):
    """A stand-in decoder: logits = dropout(w) in the model's dtype (what a --fp16/--bf16
    model hands the criterion), with fairseq's get_normalized_probs of either student."""

    def __init__(self, logits, dtype, dirichlet):
        super().__init__()
        self.w = torch.nn.Parameter(logits.clone())
        self.dtype, self.predicts_dirichlet, self.outputs = dtype, dirichlet, []

    def forward(self, src_tokens, src_lengths, prev_output_tokens):
        reps = src_tokens.size(0) // self.w.size(0)  # K-times stacked batch for intra-distillation
        z = F.dropout(self.w.repeat(reps, 1, 1), 0.1, self.training).to(self.dtype)
        z.retain_grad()
        self.outputs.append(z)
        return z, {"attn": [None]}

    def get_normalized_probs(self, net_output, log_probs, sample=None):
        z = net_output[0]
        lp = (
            dirichlet_log_predictive(z) if self.predicts_dirichlet else utils.log_softmax(z, dim=-1)
        )
        return lp if log_probs else lp.exp()

    def get_targets(self, sample, net_output):
        return sample["target"]


def criterion(task, kd_loss, passes, truncation="tail"):
    c = TokenKDCriterion(
        task,
        sentence_avg=False,
        kd_loss=kd_loss,
        kd_truncation=truncation,
        intra_passes=passes,
        max_update=100,
    )
    c.set_num_updates(30)
    return c


def run(c, model, sample):
    torch.manual_seed(1)
    model.outputs.clear()
    loss, _, log = c(model.train(), sample)
    loss.backward()
    return loss, log, [z.grad for z in model.outputs]


def test_collater_puts_the_teacher_in_dtypes_the_conversion_leaves_alone():
    _, sample = collated_sample()
    teacher = sample["teacher"]
    assert teacher["probs"].dtype == torch.float16 and teacher["precision"].dtype == torch.float64
    for dtype in (torch.half, torch.bfloat16):
        converted = fp_convert_sample(sample, dtype)["teacher"]
        for key in ("indices", "probs", "precision"):
            assert converted[key].dtype == teacher[key].dtype and torch.equal(
                converted[key], teacher[key]
            )
    stored = teacher["precision"][sample["target"].ne(1)]
    assert stored.max() == float("inf") and (stored == 7e5).any()  # beyond half's 65504, kept
    # what the conversion did to the float32 teacher in store format 1: beta0_hat -> inf
    assert torch.isinf(torch.tensor([1e5]).half()).all()


def test_nucleus_rows_are_of_variable_length():
    _, sample = collated_sample(nucleus=True)
    stored = sample["teacher"]["probs"][sample["target"].ne(1)].gt(0).sum(-1)
    assert stored.min() >= MIN_K and stored.max() <= TOPK and len(set(stored.tolist())) > 2


@pytest.mark.parametrize("dtype", [torch.half, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("kd_loss,passes,truncation,nucleus", CAST_VARIANTS, ids=CAST_IDS)
def test_sample_conversion_changes_neither_loss_nor_gradient(
    kd_loss, passes, truncation, nucleus, dtype
):
    task, sample = collated_sample(nucleus)
    logits = (
        torch.randn(*sample["target"].shape, WORDS + 4, generator=torch.Generator().manual_seed(2))
        * 4
    )
    model = LogitsModel(logits, torch.float32, kd_loss == "proxy_dirichlet")
    c = criterion(task, kd_loss, passes, truncation)
    loss, log, grads = run(c, model, sample)
    loss_c, log_c, grads_c = run(c, model, fp_convert_sample(sample, dtype))
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert torch.equal(loss, loss_c) and all(torch.equal(a, b) for a, b in zip(grads, grads_c))
    for key in ("kd_loss", "teacher_precision", "teacher_coverage", "intra_loss"):
        if key in log:
            assert torch.equal(torch.as_tensor(log[key]), torch.as_tensor(log_c[key])), key


@pytest.mark.parametrize("dtype", [torch.half, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("kd_loss,passes,truncation,nucleus", CAST_VARIANTS, ids=CAST_IDS)
def test_half_logits_give_the_float32_loss_of_the_same_logits(
    kd_loss, passes, truncation, nucleus, dtype
):
    task, sample = collated_sample(nucleus)
    sample = fp_convert_sample(sample, dtype)
    logits = (
        torch.randn(*sample["target"].shape, WORDS + 4, generator=torch.Generator().manual_seed(3))
        * 4
    )
    logits[0, 0, 5] = 40.0  # an overconfident logit: alpha = e^40 in the Proxy-Dirichlet loss
    c = criterion(task, kd_loss, passes, truncation)
    # Reference: float32 logits that went through the same rounding (dropout first, then dtype).
    ref_model = LogitsModel(logits, torch.float32, kd_loss == "proxy_dirichlet")
    ref_model.forward = _rounded_forward(ref_model, dtype)
    loss_ref, _, grads_ref = run(c, ref_model, sample)
    loss, _, grads = run(c, LogitsModel(logits, dtype, kd_loss == "proxy_dirichlet"), sample)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert torch.equal(loss, loss_ref)
    for g, g_ref in zip(grads, grads_ref):
        assert g.dtype == dtype and torch.isfinite(g.float()).all()
        # Autograd sums the NLL and KD paths' gradients in the logits' dtype, each rounded to it:
        # within 2 units of that dtype's rounding of the largest entry.
        eps = torch.finfo(dtype).eps
        torch.testing.assert_close(
            g.float(), g_ref, rtol=2 * eps, atol=2 * eps * g_ref.abs().max().item()
        )


def _rounded_forward(model, dtype):
    plain = LogitsModel.forward

    def forward(src_tokens, src_lengths, prev_output_tokens):
        reps = src_tokens.size(0) // model.w.size(0)
        z = F.dropout(model.w.repeat(reps, 1, 1), 0.1, model.training).to(dtype).float()
        z.retain_grad()
        model.outputs.append(z)
        return z, {"attn": [None]}

    assert plain is not forward
    return forward


@pytest.mark.parametrize("kd_loss,passes,truncation,nucleus", CAST_VARIANTS, ids=CAST_IDS)
def test_amp_autocast_leaves_the_loss_in_float32(kd_loss, passes, truncation, nucleus):
    """--amp: the model's matrix products run in a low precision under autocast (bfloat16 on
    this CPU, float16 on CUDA); the criterion's math is done outside autocast, in float32."""
    task, sample = collated_sample(nucleus)
    logits = (
        torch.randn(*sample["target"].shape, WORDS + 4, generator=torch.Generator().manual_seed(4))
        * 4
    )
    c = criterion(task, kd_loss, passes, truncation)
    model = LogitsModel(logits, torch.float32, kd_loss == "proxy_dirichlet")
    loss_ref, _, grads_ref = run(c, model, sample)
    torch.manual_seed(1)
    model.outputs.clear()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _, _ = c(model.train(), sample)
    loss.backward()
    assert loss.dtype == torch.float32 and torch.equal(loss, loss_ref)
    assert all(torch.equal(z.grad, g) for z, g in zip(model.outputs, grads_ref))


def test_bfloat16_transformer_students_stay_close_to_float32():
    """Whole tiny fairseq models in bfloat16 (what --bf16 trains): every variant's loss within
    5 % of the float32 model's, finite gradients."""
    import argparse

    from fairseq.models import ARCH_MODEL_REGISTRY

    import ensdist_fairseq.models  # noqa: F401

    task, sample = collated_sample()
    for kd_loss, passes in VARIANTS:
        arch = "dirichlet_transformer" if kd_loss == "proxy_dirichlet" else "transformer"
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
            dropout=0.0,
            share_all_embeddings=True,
            max_source_positions=64,
            max_target_positions=64,
        )
        torch.manual_seed(0)
        model = ARCH_MODEL_REGISTRY[arch].build_model(args, task).train()
        c = criterion(task, kd_loss, passes)
        loss32, _, _ = c(model, sample)
        loss16, _, _ = c(model.to(torch.bfloat16), fp_convert_sample(sample, torch.bfloat16))
        loss16.backward()
        assert loss16.dtype == torch.float32
        assert loss16.item() == pytest.approx(loss32.item(), rel=0.05), (kd_loss, passes)
        assert all(
            torch.isfinite(p.grad.float()).all() for p in model.parameters() if p.grad is not None
        )


def test_fairseq_train_bf16_proxy_dirichlet_on_a_memoized_store(
    tiny_data, tiny_checkpoints, tmp_path
):
    """A real --bf16 run on the CPU (ensdist-train, i.e. ensdist_fairseq/cli/train.py: fairseq 0.12 ties --bf16 to
    --tpu) of the Proxy-Dirichlet student with intra-distillation, on a store made by memoize."""
    store = str(tmp_path / "teacher.h5")
    tiny_fairseq.run(
        [
            os.path.join(tiny_fairseq.BIN, "ensdist-memoize"),
            tiny_data,
            "--path",
            ":".join(tiny_checkpoints),
            "--output",
            store,
            "--topk",
            "8",
            "--cpu",
        ]
    )
    out = tiny_fairseq.run(
        [
            sys.executable,
            "-m",
            "ensdist_fairseq.cli.train",
            tiny_data,
            "--user-dir",
            os.path.join(ROOT, "ensdist_fairseq"),
            "--task",
            "translation_distill",
            "--teacher-store",
            store,
            *tiny_fairseq.TINY_ARCH_ARGS[2:],
            "--arch",
            "dirichlet_transformer",
            "--criterion",
            "token_kd",
            "--kd-loss",
            "proxy_dirichlet",
            "--intra-passes",
            "2",
            "--max-update",
            "6",
            "--optimizer",
            "adam",
            "--lr",
            "1e-3",
            "--max-tokens",
            "400",
            "--cpu",
            "--bf16",
            "--log-format",
            "json",
            "--log-interval",
            "1",
            "--no-save",
            "--seed",
            "1",
        ]
    )
    records = [
        json.loads(line[line.index('{"') :])
        for line in (out.stdout + out.stderr).splitlines()
        if '{"' in line and "train" in line[: line.index('{"')]
    ]
    inner = [
        r for r in records if "update" in r and "loss" in r
    ]  # one per update (--log-interval 1)
    assert len(inner) == 6 and all(
        math.isfinite(float(r[k])) for r in inner for k in ("loss", "kd_loss", "intra_loss")
    )
    assert records[-1]["train_num_updates"] == "6" and "train_teacher_precision" in records[-1]
    # fairseq-train's own timestamped log format, as fairseq-train prints it
    assert re.search(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \| INFO \| fairseq", out.stdout, re.M)

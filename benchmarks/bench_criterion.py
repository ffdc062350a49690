"""Step time of token_kd variants against fairseq's label_smoothed_cross_entropy (a script, not a test).

Same transformer weights, same batches, synthetic in-memory teacher (top-V' of a random softmax);
each timed step is forward + backward + Adam step. Variants are interleaved round by round so that
load from other processes hits them alike; the median step time is reported, as a ratio to the
label-smoothed baseline (intra-distillation also against K x baseline).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_criterion.py
    python benchmarks/bench_criterion.py --device cuda [--precision fp16] --sentences 256 --length 32

On CUDA each step is synchronized before the clock stops. --precision fp16/bf16 puts the models
in that dtype (fairseq's --fp16/--bf16; Adam then steps half weights, which only matters for
timing) and converts the batch as fairseq's trainer does.
"""

import argparse
import copy
import statistics
import time
from types import SimpleNamespace

import torch
from fairseq import utils
from fairseq.criterions.label_smoothed_cross_entropy import LabelSmoothedCrossEntropyCriterion
from fairseq.criterions.label_smoothed_cross_entropy_with_rdrop import (
    RdropLabelSmoothedCrossEntropyCriterion,
)
from fairseq.data import Dictionary
from fairseq.models import ARCH_MODEL_REGISTRY

import ensdist_fairseq.losses.proxy_dirichlet as proxy_dirichlet
import ensdist_fairseq.models  # noqa: F401  (registers dirichlet_transformer)
from ensdist_fairseq.criterions.token_kd import TokenKDCriterion


def parse_args():
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--vocab", type=int, default=8000, help="joint dictionary size")
    p.add_argument("--stored", type=int, default=64, help="V', stored teacher events per token")
    p.add_argument("--sentences", type=int, default=48)
    p.add_argument("--length", type=int, default=20, help="source and target length (tokens)")
    p.add_argument("--embed-dim", type=int, default=256)
    p.add_argument("--layers", type=int, default=3)
    p.add_argument(
        "--rounds", type=int, default=6, help="timed steps per variant (after one warm-up)"
    )
    p.add_argument("--intra-passes", type=int, default=3)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--precision", choices=["fp32", "fp16", "bf16"], default="fp32")
    p.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="cpu: the process's CPU time (one thread), which load from other processes "
        "inflates far less than the wall clock",
    )
    p.add_argument(
        "--dirichlet-shift",
        type=float,
        default=10.0,
        help="also time Proxy-Dirichlet with the student's logits lowered by this much (a hook on "
        "the output projection), so that its tail classes have e^z << 1 as a trained student's "
        "do (at initialization z ~ N(0, 1)); 0: not timed",
    )
    p.add_argument(
        "--only",
        default="",
        help="comma-separated substrings: time only the variants whose name contains one "
        "(label_smoothed_cross_entropy, the baseline, always runs)",
    )
    return p.parse_args()


def make_task(vocab):
    d = Dictionary()
    for i in range(vocab - d.nspecial):
        d.add_symbol(f"w{i}")
    return SimpleNamespace(source_dictionary=d, target_dictionary=d)


def make_model(task, arch, args):
    ns = argparse.Namespace(
        arch=arch,
        encoder_layers=args.layers,
        decoder_layers=args.layers,
        encoder_embed_dim=args.embed_dim,
        decoder_embed_dim=args.embed_dim,
        encoder_ffn_embed_dim=4 * args.embed_dim,
        decoder_ffn_embed_dim=4 * args.embed_dim,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        dropout=0.3,
        share_all_embeddings=True,
        max_source_positions=256,
        max_target_positions=256,
    )
    torch.manual_seed(0)
    return ARCH_MODEL_REGISTRY[arch].build_model(ns, task)


def make_batch(task, args, seed):
    g = torch.Generator().manual_seed(seed)
    d = task.target_dictionary
    n, length, vocab = args.sentences, args.length, len(d)
    src = torch.randint(d.nspecial, vocab, (n, length), generator=g)
    target = torch.randint(d.nspecial, vocab, (n, length), generator=g)
    target[:, -1] = d.eos()
    prev = torch.cat([torch.full((n, 1), d.eos()), target[:, :-1]], 1)
    teacher_logits = torch.randn(n, length, vocab, generator=g) * 3
    probs, indices = torch.softmax(teacher_logits, -1).topk(args.stored, dim=-1)
    return {
        "net_input": {
            "src_tokens": src,
            "src_lengths": torch.full((n,), length),
            "prev_output_tokens": prev,
        },
        "target": target,
        "ntokens": n * length,
        # the collater's dtypes: float16 probabilities, float64 precisions
        "teacher": {
            "indices": indices,
            "probs": probs.half(),
            "precision": torch.rand(n, length, generator=g, dtype=torch.float64) * 1e4 + 10,
        },
    }


DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def to_device(sample, device, precision):
    """fairseq's trainer: float32 tensors -> the training dtype, then to the device."""
    dtype = DTYPES[precision]

    def convert(t):
        return (t.to(dtype) if t.dtype is torch.float32 else t).to(device)

    return utils.apply_to_sample(convert, sample)


def token_kd(task, **overrides):
    cfg = dict(
        label_smoothing=0.1,
        kd_loss="none",
        kd_weight=0.5,
        kd_temperature=1.0,
        kd_truncation="tail",
        intra_passes=1,
        intra_alpha=5.0,
        no_intra_adaptive=True,
        intra_forward="sequential",
        sentence_avg=False,
    )
    cfg.update(overrides)
    return TokenKDCriterion(task, **cfg)


def main():
    args = parse_args()
    torch.manual_seed(0)
    task = make_task(args.vocab)
    softmax_model = make_model(task, "transformer", args)
    dirichlet_model = make_model(task, "dirichlet_transformer", args)
    k = args.intra_passes
    variants = {
        "label_smoothed_cross_entropy": (
            softmax_model,
            LabelSmoothedCrossEntropyCriterion(task, False, 0.1),
        ),
        "token_kd mean_kd": (softmax_model, token_kd(task, kd_loss="mean_kd")),
        "token_kd mean_kd tail_kl": (
            softmax_model,
            token_kd(task, kd_loss="mean_kd", kd_truncation="tail_kl"),
        ),
        "token_kd proxy_dirichlet": (dirichlet_model, token_kd(task, kd_loss="proxy_dirichlet")),
        "token_kd proxy_dirichlet unfused": (
            dirichlet_model,
            token_kd(task, kd_loss="proxy_dirichlet"),
        ),
        **(
            {
                "token_kd proxy_dirichlet shifted": (
                    dirichlet_model,
                    token_kd(task, kd_loss="proxy_dirichlet"),
                ),
                "token_kd proxy_dirichlet shifted unfused": (
                    dirichlet_model,
                    token_kd(task, kd_loss="proxy_dirichlet"),
                ),
            }
            if args.dirichlet_shift
            else {}
        ),
        f"token_kd intra K={k} sequential": (softmax_model, token_kd(task, intra_passes=k)),
        f"token_kd intra K={k} stacked": (
            softmax_model,
            token_kd(task, intra_passes=k, intra_forward="stacked"),
        ),
        "fairseq R-Drop (K=2, stacked)": (
            softmax_model,
            RdropLabelSmoothedCrossEntropyCriterion(task, False, 0.1, rdrop_alpha=5.0),
        ),
        "token_kd intra K=2 sequential": (softmax_model, token_kd(task, intra_passes=2)),
        "token_kd intra K=2 stacked": (
            softmax_model,
            token_kd(task, intra_passes=2, intra_forward="stacked"),
        ),
    }
    if args.only:
        wanted = [w.strip() for w in args.only.split(",") if w.strip()]
        variants = {
            name: v
            for name, v in variants.items()
            if name == "label_smoothed_cross_entropy" or any(w in name for w in wanted)
        }
    passes = {name: (k if f"K={k}" in name else 2 if "K=2" in name else 1) for name in variants}
    device, dtype = torch.device(args.device), DTYPES[args.precision]
    states = {}
    for name, (model, criterion) in variants.items():
        m = copy.deepcopy(model).to(device=device, dtype=dtype).train()
        if "shifted" in name:
            # softmax(z) (the NLL term) does not change; the Dirichlet sees a trained-like tail
            shift = args.dirichlet_shift
            m.decoder.output_projection.register_forward_hook(lambda mod, inp, out: out - shift)
        # eps representable in half precision (Adam's default 1e-8 underflows in float16)
        states[name] = (
            m,
            criterion,
            torch.optim.Adam(
                m.parameters(), lr=1e-4, eps=1e-8 if args.precision == "fp32" else 1e-4
            ),
        )
    batches = [
        to_device(make_batch(task, args, seed), device, args.precision)
        for seed in range(args.rounds + 1)
    ]
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def step(name, batch):
        model, criterion, optimizer = states[name]
        # R-Drop duplicates net_input in place: give every step its own shallow copy.
        sample = {**batch, "net_input": dict(batch["net_input"])}
        # the float32 Proxy-Dirichlet pass: fused (default) or torch's special functions
        proxy_dirichlet.FUSED = not name.endswith("unfused")  # (no effect on the other variants)
        sync()
        start = clock()
        optimizer.zero_grad()
        loss, _, _ = criterion(model, sample)
        loss.backward()
        optimizer.step()
        sync()
        return clock() - start

    times = {name: [] for name in variants}
    for r, batch in enumerate(batches):
        for name in variants:
            elapsed = step(name, batch)
            if r > 0:  # the first round is warm-up
                times[name].append(elapsed)

    base = statistics.median(times["label_smoothed_cross_entropy"])
    print(
        f"vocab {args.vocab}, V' {args.stored}, {args.sentences}x{args.length} target tokens, "
        f"d={args.embed_dim}, {args.layers}+{args.layers} layers, {args.rounds} rounds, "
        f"{_device_name(device)}, {args.precision}, torch threads {torch.get_num_threads()}, "
        f"{args.clock} clock\n"
    )
    print("| variant | median step (s) | ratio to LS | ratio to passes x LS |")
    print("|---|---|---|---|")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"| {name} | {med:.3f} | {med / base:.3f} | {med / (passes[name] * base):.3f} |")


def _device_name(device):
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


if __name__ == "__main__":
    main()

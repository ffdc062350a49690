"""`ensdist-evaluate`: BLEU and token-level calibration of one model or an ensemble.

Loads the checkpoints once, then over the same batches (teacher_forcing.plan_batches):
teacher-forces the references (ensemble = mean of the members' probabilities) for ECE-1, ECE-5,
Brier, NLL and accuracy, and decodes in-process with fairseq's SequenceGenerator for sacreBLEU.
Writes one JSON per system (schema: docs/evaluation.md) and prints one summary line.
"""

import argparse
import os
import sys
import time
from typing import List, Optional

from ensdist_fairseq.atomic_files import check_writable, finite_json, write_or_keep
from ensdist_fairseq.cli import generation_options as gen_opts
from ensdist_fairseq.cli import options, progress
from ensdist_fairseq.corpus.binarized import check_data
from ensdist_fairseq.environment import describe as describe_environment
from ensdist_fairseq.errors import EnsdistError
from ensdist_fairseq.metrics.calibration import DEFAULT_NUM_BINS, CalibrationAccumulator
from ensdist_fairseq.results import EVALUATION as EVALUATION_SCHEMA
from ensdist_fairseq.results import token_file_of, write_token_file
from ensdist_fairseq.uncertainty.measures import DIRICHLET_PREDICTIVES

KINDS = EVALUATION_SCHEMA.choices[0][1]
MAX_CAUSE_CHARS = 200  # fairseq's messages can list every registered task: keep one readable line


def build_parser() -> options.Parser:
    ap = options.Parser(prog="ensdist-evaluate", description=__doc__)
    ap.add_argument("data", help="fairseq binarized data directory")
    options.add_path(ap)
    options.add_split(ap, "test")
    ap.add_argument("--name", required=True, help="name of the evaluated system")
    ap.add_argument(
        "--method",
        default="default",
        help="report group, e.g. 'CE+SWA' (rows of one method share a block)",
    )
    ap.add_argument(
        "--kind",
        choices=KINDS,
        help="report row type (default: individual for one model, else ensemble)",
    )
    ap.add_argument(
        "--num-teachers",
        type=options.integer(1),
        help="students: size of the teacher ensemble (the report's #models)",
    )
    ap.add_argument(
        "--output",
        "--output-json",
        dest="output",
        required=True,
        help="the result file to write (JSON)",
    )
    ap.add_argument(
        "--bleu",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also decode (in-process beam search) and score with sacreBLEU",
    )
    options.add_batching(ap)
    ap.add_argument(
        "--num-bins",
        type=options.integer(1),
        default=DEFAULT_NUM_BINS,
        help="equal-count bins for ECE (at most the split's number of target tokens)",
    )
    ap.add_argument(
        "--reference",
        help="raw reference file of the split (BLEU; default: fairseq's detokenized targets)",
    )
    options.add_cpu(ap)
    ap.add_argument(
        "--dirichlet-predictive",
        choices=DIRICHLET_PREDICTIVES,
        help="Proxy-Dirichlet students: score and decode with softmax(z) or the "
        "Dirichlet mean alpha/alpha_0 (default: the checkpoint's own option; recorded in "
        "the result as dirichlet_predictive)",
    )
    progress.add_progress_options(ap, default_interval=500, unit="sentences")
    ap.add_argument(
        "--fit-temperature-on",
        metavar="SPLIT",
        help="temperature scaling: fit T on this split's reference tokens (minimum NLL; the "
        "first batches, at most FIT_ELEMENTS token x vocabulary entries) and score --split "
        "with softmax(log p / T); BLEU decoding is left untempered; T is in the result",
    )
    gen_opts.add_generation_options(ap)
    return ap


FIT_ELEMENTS = 2**24  # token x vocabulary log-probs kept for the fit (64 MiB of float32)


class TokenRecorder:
    """Per target token, its sentence, top-1 confidence and correctness and ln p(reference):
    the sidecar the report resamples sentences over (ECE-1 and NLL bootstrap)."""

    def __init__(self, pad: int):
        self.pad, self.parts = pad, []

    def __call__(self, sample, preds) -> None:
        counts = sample["target"].ne(self.pad).sum(1).cpu()
        self.parts.append(
            (
                sample["id"].cpu().repeat_interleave(counts).numpy().astype("int32"),
                preds.top_confidence[:, 0].float().cpu().numpy(),
                preds.top_correct[:, 0].cpu().numpy(),
                preds.target_log_prob.float().cpu().numpy(),
            )
        )

    def arrays(self) -> dict:
        """The records in dataset order (sentence id, then position), as numpy arrays."""
        import numpy as np

        cols = [np.concatenate(c) for c in zip(*self.parts)]
        order = np.argsort(cols[0], kind="stable")
        names = ("sentence", "confidence", "correct", "log_prob")
        return {n: c[order] for n, c in zip(names, cols)}


def fit_temperature_on(models, task, split: str, args, device) -> dict:
    """{"temperature": T, "temperature_split": split, "temperature_tokens": n} fitted on `split`."""
    import torch

    from ensdist_fairseq.metrics.temperature import fit_temperature
    from ensdist_fairseq.teachers import teacher_forcing

    task.load_dataset(split)
    dataset = task.dataset(split)
    pad = task.target_dictionary.pad()
    batches = teacher_forcing.plan_batches(dataset, None, args.max_tokens, args.batch_size)
    log_probs, targets, kept = [], [], 0
    with torch.no_grad():
        for sample in teacher_forcing.samples(dataset, batches, device):
            lp = teacher_forcing.ensemble_log_probs(models, sample["net_input"])
            keep = sample["target"].ne(pad)
            lp, tgt = lp[keep].float().cpu(), sample["target"][keep].cpu()
            room = max(FIT_ELEMENTS // lp.size(-1) - kept, 0)
            log_probs.append(lp[:room])
            targets.append(tgt[:room])
            kept += len(targets[-1])
            if room <= len(tgt):
                break
    if kept == 0:
        raise EnsdistError(f"--fit-temperature-on {split}: no target tokens in {args.data}")
    temperature = fit_temperature(log_probs, targets)
    print(
        f"[evaluate] {args.name}: temperature {temperature:.4f} fitted on {kept} tokens of "
        f"{split}",
        file=sys.stderr,
        flush=True,
    )
    return {"temperature": temperature, "temperature_split": split, "temperature_tokens": kept}


def flag_error(args) -> Optional[str]:
    """The first impossible combination of flags, as an error message, or None."""
    problem = gen_opts.generation_error(args)
    if problem:
        return problem
    if args.num_teachers is not None and args.kind != "student":
        return f"--num-teachers {args.num_teachers} needs --kind student"
    if args.fit_temperature_on is not None and args.fit_temperature_on == args.split:
        return (
            f"--fit-temperature-on {args.fit_temperature_on}: the temperature must be fitted on "
            "another split than the evaluated one"
        )
    if args.reference and not os.path.isfile(args.reference):
        return f"--reference {args.reference}: file not found"
    return None


def check_reference(path: str) -> None:
    """Every line of a --reference decodes (the BLEU reader would fail after all the decoding,
    without a line number)."""
    from ensdist_fairseq.corpus.text_lines import read_lines

    for _ in read_lines(path):
        pass


def _load(paths: List[str], data: str, device, overrides=None):
    from ensdist_fairseq.teachers.teacher_forcing import (
        load_models,
    )  # imports fairseq: keep --help fast

    try:
        return load_models(paths, data, device, overrides=overrides)
    except (RuntimeError, KeyError, AttributeError, AssertionError) as e:  # fairseq load failures
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        first = first if len(first) <= MAX_CAUSE_CHARS else first[:MAX_CAUSE_CHARS] + "..."
        raise EnsdistError(f"{':'.join(paths)}: cannot load as a fairseq model ({first})") from None


def check_num_bins(num_bins: int, num_tokens: int, where: str) -> None:
    """Equal-count bins need a pair each: more ECE-1 bins than tokens would leave bins empty
    (and ECE silently averaged over fewer bins than asked for)."""
    if num_bins > num_tokens:
        raise EnsdistError(
            f"--num-bins {num_bins}: more bins than the {num_tokens} target tokens of {where}"
        )


def evaluate(args, paths: List[str], device) -> dict:
    from ensdist_fairseq.evaluation import bleu, decoding
    from ensdist_fairseq.evaluation.ensemble_scoring import score_split
    from ensdist_fairseq.teachers import teacher_forcing

    models, task = _load(
        paths,
        args.data,
        device,
        overrides=(
            {"dirichlet_predictive": args.dirichlet_predictive}
            if args.dirichlet_predictive
            else None
        ),
    )
    if args.bleu:
        gen_opts.check_min_len(args, models)  # before the scoring pass, not after it
    fitted = (
        fit_temperature_on(models, task, args.fit_temperature_on, args, device)
        if args.fit_temperature_on
        else {"temperature": None}
    )
    task.load_dataset(args.split)
    dataset = task.dataset(args.split)
    where = f"split {args.split} of {args.data}"
    teacher_forcing.check_sizes(
        dataset, teacher_forcing.max_positions(task, models), args.max_tokens, where
    )
    check_num_bins(args.num_bins, int(dataset.tgt_sizes.sum()), where)
    batches = teacher_forcing.plan_batches(dataset, None, args.max_tokens, args.batch_size)
    accumulator = CalibrationAccumulator(num_bins=args.num_bins)
    start = time.perf_counter()

    scored = progress.Progress("evaluate", args.name, "scoring", len(dataset), "sentences", args)

    def on_scored(done: int, total: int, tokens: int) -> None:
        scored.update(len(batches[done - 1]))

    tokens = TokenRecorder(task.target_dictionary.pad())
    num_sentences = score_split(
        models,
        dataset,
        batches,
        task.target_dictionary.pad(),
        accumulator,
        device,
        names=paths,
        where=where,
        progress=on_scored,
        temperature=fitted["temperature"] or 1.0,
        on_batch=tokens,
    )
    seconds = time.perf_counter() - start
    fields = {
        "name": args.name,
        "method": args.method,
        "kind": args.kind or ("individual" if len(paths) == 1 else "ensemble"),
        "num_models": len(paths),
        "num_teachers": args.num_teachers,
        "paths": [os.path.abspath(p) for p in paths],
        "data": os.path.abspath(args.data),
        "split": args.split,
        "num_sentences": num_sentences,
        # a Proxy-Dirichlet student's predictive (what scored and decoded), None for other models
        "dirichlet_predictive": (
            models[0].dirichlet_predictive
            if len(models) == 1 and getattr(models[0], "predicts_dirichlet", False)
            else None
        ),
        **accumulator.result().to_dict(),
        "scoring_seconds": seconds,
        "tokens_per_second": accumulator.num_tokens / seconds,
        "bleu": None,
        "bleu_signature": None,
        **fitted,  # temperature: null when not scaled
        "token_file": os.path.basename(token_file_of(args.output)),
        "environment": describe_environment(device),  # floats depend on the machine
    }
    result = EVALUATION_SCHEMA.make(**fields)
    if args.bleu:
        post = decoding.resolve_post_process(args.post_process, task.target_dictionary)
        print(
            f"[evaluate] {args.name}: decoding (beam {args.beam}, post-process "
            f"{post or 'none'})",
            file=sys.stderr,
            flush=True,
        )
        start = time.perf_counter()
        gen_cfg = decoding.generation_config(**gen_opts.generation_overrides(args))
        decoded = progress.Progress(
            "evaluate", args.name, "decoding", len(dataset), "sentences", args
        )
        b = bleu.decode_bleu(
            models,
            task,
            dataset,
            gen_cfg,
            batches,
            device,
            reference_file=args.reference,
            post_process=post,
            progress=lambda done, total: decoded.update(),
        )
        result.update(
            bleu=b.bleu,
            bleu_signature=b.signature,
            post_process=post or "none",
            decoding_seconds=time.perf_counter() - start,
            bleu_sentence_stats=b.sentence_stats,  # dataset order: the report's bootstrap
            # what the BLEU depends on besides the models: the report compares like with like
            generation=gen_opts.generation_overrides(args),
        )
    result["_tokens"] = tokens.arrays()  # written beside the result by main, not in it
    return result


def summary_line(r: dict) -> str:
    bleu_text = "n/a" if r["bleu"] is None else f"{r['bleu']:.2f}"
    return (
        f"{r['name']} ({r['kind']}, {r['num_models']} model(s), {r['split']}): "
        f"BLEU {bleu_text} | ECE-1 {100 * r['ece1']['unweighted']:.3f}% "
        f"ECE-5 {100 * r['ece5']['unweighted']:.3f}% (unweighted; weighted "
        f"{100 * r['ece1']['weighted']:.3f}% / {100 * r['ece5']['weighted']:.3f}%) | "
        f"Brier {r['brier']:.4f} | NLL {r['nll']:.4f} | acc {100 * r['accuracy']:.2f}% | "
        f"{r['num_tokens']} tokens"
    )


@options.command
def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    options.quiet_fairseq_logging()
    if unknown:  # decoding is in-process: nothing is passed on to fairseq-generate
        parser.error(gen_opts.unknown_options_error(unknown))
    problem = flag_error(args)
    if problem:
        parser.error(problem)
    paths = options.split_paths(args.path)
    inputs = [("--path", p) for p in paths] + [("--reference", args.reference or "")]
    inputs += options.data_inputs(args.data)
    options.check_outputs([("--output", args.output)], [i for i in inputs if i[1]])
    check_writable(args.output, "--output")  # before any work
    if args.reference:
        check_reference(args.reference)
    from ensdist_fairseq.checkpoints.checks import check_ensemble

    check_data(args.data, args.split)  # damaged files named before fairseq reads them
    check_ensemble(paths, args.data)
    result = evaluate(args, paths, options.device(args))
    token_arrays = result.pop("_tokens")
    # never write NaN as a result
    text = finite_json(result, f"{':'.join(paths)} on split {args.split}")
    write_token_file(token_file_of(args.output), token_arrays)  # before the result names it
    write_or_keep(args.output, text, "--output")
    print(summary_line(result))
    return 0


if __name__ == "__main__":
    options.console(main)

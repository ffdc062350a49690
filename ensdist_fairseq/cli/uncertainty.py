"""`ensdist-uncertainty`: sequence-level uncertainty of one system, per sentence, in- and out-of-domain.

    ensdist-uncertainty DATA --path a.pt[:b.pt...] --name NAME --out DIR
        [--split test] [--ood-dir OOD] [--ood NAME=FILE ...] [--group single|ensemble|mean-kd|
        proxy-dirichlet] [--measures total,rmi] [--beam 5] [--dirichlet-predictive softmax|mean]

Decodes DATA's --split (in-domain, with references: sentence chrF) and every OOD set of OOD
(built by ensdist-ood-sets) or given as raw source-language text with --ood, with beam B, and
writes per sentence its output and the sequence-level measures (docs/uncertainty.md):
    DIR/<set>.jsonl   one JSON object per sentence
    DIR/system.json   name, group, kind, measures, sets (lines, seconds), written last
`ensdist-report RESULTS` reads RESULTS/uncertainty/*/system.json.
"""

import argparse
import glob
import hashlib
import os
import re
import sys
import time
from typing import List, Optional

import torch

from ensdist_fairseq.atomic_files import OutputLock, check_writable, finite_json, write_or_keep
from ensdist_fairseq.checkpoints.checks import check_ensemble
from ensdist_fairseq.cli import generation_options as gen_opts
from ensdist_fairseq.cli import options, progress
from ensdist_fairseq.corpus.binarized import check_data
from ensdist_fairseq.corpus.text_lines import read_lines
from ensdist_fairseq.environment import describe as describe_environment
from ensdist_fairseq.errors import EnsdistError
from ensdist_fairseq.hashing import file_sha256
from ensdist_fairseq.results import UNCERTAINTY as UNCERTAINTY_SCHEMA
from ensdist_fairseq.uncertainty.measures import (
    DIRICHLET_FORMS,
    DIRICHLET_PREDICTIVES,
    ENSEMBLE_COMBINATIONS,
)

GROUPS = ("single", "ensemble", "mean-kd", "proxy-dirichlet", "other")
SYSTEM_FILE = "system.json"
LOCK_FILE = ".ensdist-uncertainty.lock"
SET_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")  # <set>.jsonl stays inside --out
TMP_MARK = ".part."  # <set>.jsonl.part.<pid>: a set being written


def build_parser() -> options.Parser:
    ap = options.Parser(
        prog="ensdist-uncertainty",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("data", help="fairseq binarized data directory (the system's dictionary)")
    options.add_path(ap)
    ap.add_argument("--name", required=True, help="system name (a row of the report)")
    ap.add_argument("--out", required=True, help="output directory of this system")
    ap.add_argument(
        "--group",
        choices=GROUPS,
        help="report row (default: ensemble for K > 1, proxy-dirichlet for a "
        "Dirichlet model, else single; use mean-kd for mean-KD students)",
    )
    options.add_split(ap, "test")
    ap.add_argument("--ood-dir", help="OOD sets built by ensdist-ood-sets (all of them)")
    ap.add_argument(
        "--ood",
        action="append",
        default=[],
        metavar="NAME=FILE",
        help="an extra OOD set: raw source-language text, one sentence a line",
    )
    ap.add_argument(
        "--spm-model",
        help="SentencePiece model for --ood files (default: DATA/../spm/spm.model)",
    )
    ap.add_argument(
        "--ood-encoded",
        action="store_true",
        help="--ood files are already in the data's pieces (any subword scheme)",
    )
    ap.add_argument("--measures", help="comma-separated (default: every measure the system has)")
    ap.add_argument(
        "--weight-temperature",
        type=options.real(1e-3, 1e3),
        default=1.0,
        help="temperature of the importance weights over the beam (sequence.py; "
        "not the generation --temperature)",
    )
    ap.add_argument(
        "--dirichlet-predictive",
        choices=DIRICHLET_PREDICTIVES,
        help="override a Dirichlet student's decoding predictive (default: its checkpoint's)",
    )
    ap.add_argument(
        "--dirichlet-measures",
        choices=DIRICHLET_FORMS,
        default=DIRICHLET_FORMS[0],
        help="a Dirichlet student's expected categorical in the measures: the predictive it "
        "decodes with (default, the authors' form) or self-consistent alpha/alpha_0 "
        "(total = data + mi; docs/uncertainty.md)",
    )
    ap.add_argument(
        "--ensemble-combination",
        choices=ENSEMBLE_COMBINATIONS,
        default=ENSEMBLE_COMBINATIONS[0],
        help="an ensemble's sequence distribution for the measures and the beam's weights: "
        "token probabilities averaged (default; what fairseq decodes) or sequence "
        "probabilities averaged (Malinin & Gales 2021); the beam is fairseq's either way",
    )
    options.add_batching(ap)
    ap.add_argument(
        "--teacher-forced",
        action="store_true",
        help="measure by a second, teacher-forced pass over the hypotheses instead of "
        "inside the beam search (same values, about twice the cost; a cross-check)",
    )
    ap.add_argument(
        "--limit",
        type=options.integer(1),
        help="score only the first N sentences of each set (a cheaper, deterministic run)",
    )
    ap.add_argument(
        "--sentences-per-chunk",
        type=options.integer(1),
        default=64,
        help="sentences whose hypotheses are teacher-forced together",
    )
    progress.add_progress_options(ap, default_interval=100, unit="sentences")
    options.add_cpu(ap)
    gen_opts.add_generation_options(ap)
    return ap


def _ood_files(args, src_lang: str):
    """([(name, kind, path)] of the OOD sets to score, after checking they fit DATA; the
    length bins of --ood-dir's manifest, or None)."""
    from ensdist_fairseq.uncertainty.ood_sets import read_manifest

    sets, edges = [], None
    if args.ood_dir:
        manifest = read_manifest(args.ood_dir)
        data_dict = os.path.join(args.data, f"dict.{manifest['src']}.txt")
        if not os.path.isfile(data_dict) or file_sha256(data_dict) != manifest["dict_sha256"]:
            raise EnsdistError(
                f"--ood-dir {args.ood_dir}: built with another dictionary than {data_dict}"
            )
        if manifest["src"] != src_lang:
            raise EnsdistError(
                f"--ood-dir {args.ood_dir}: source language {manifest['src']}, the "
                f"system reads {src_lang}"
            )
        sets += [(s["name"], "bin", os.path.join(args.ood_dir, s["bin"])) for s in manifest["sets"]]
        edges = (manifest.get("length_match") or {}).get("edges")
    for item in args.ood:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise EnsdistError(f"--ood {item}: expected NAME=FILE")
        if not os.path.isfile(path):
            raise EnsdistError(f"--ood {path}: file not found")
        sets.append((name, "raw", path))
    names = [s[0] for s in sets] + [args.split]
    odd = next((n for n in names if not SET_NAME.fullmatch(n)), None)
    if odd is not None:
        raise EnsdistError(f"--ood {odd}: a set name is letters, digits, '.', '_' or '-'")
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup:
        raise EnsdistError(f"--ood {dup}: set name used twice (or equal to --split)")
    return sets, edges


def _raw_dataset(task, path: str, spm_model: str, post: Optional[str], encoded: bool):
    """A raw text file as the task's source tokens: encoded with the corpus's SentencePiece model
    (SentencePiece data), split at spaces (word-level data, or --ood-encoded: already in the
    data's pieces); subword-nmt BPE needs its codes, which the data directory does not hold."""

    lines = [line.strip() for line in read_lines(path) if line.strip()]
    if not lines:
        raise EnsdistError(f"--ood {path}: no non-empty lines")
    if post == "sentencepiece" and not encoded:
        import sentencepiece as spm

        if not os.path.isfile(spm_model):
            raise EnsdistError(
                f"--spm-model {spm_model}: not found (needed to encode --ood files of "
                "SentencePiece data; or give them already encoded with --ood-encoded)"
            )
        sp = spm.SentencePieceProcessor(model_file=spm_model)
        lines = [" ".join(sp.encode(line, out_type=str)) for line in lines]
    elif post not in (None, "sentencepiece") and not encoded:
        raise EnsdistError(
            f"--ood {path}: the data's subword scheme is {post}, whose encoder is not in the "
            "data directory: give the file in the data's pieces (--ood-encoded) or binarized "
            "(ensdist-ood-sets --extra)"
        )
    d = task.source_dictionary
    tokens = [d.encode_line(line, add_if_not_exist=False, append_eos=True).long() for line in lines]
    return task.build_dataset_for_inference(tokens, [t.numel() for t in tokens])


def run(args, paths: List[str], device: torch.device) -> dict:
    from ensdist_fairseq.evaluation.decoding import generation_config, resolve_post_process
    from ensdist_fairseq.teachers import teacher_forcing
    from ensdist_fairseq.uncertainty import runner

    overrides = (
        {"dirichlet_predictive": args.dirichlet_predictive} if args.dirichlet_predictive else None
    )
    models, task = teacher_forcing.load_models(paths, args.data, device, overrides=overrides)
    gen_opts.check_min_len(args, models)
    kind = runner.system_kind(models)
    measures = runner.check_measures(
        kind, args.measures.split(",") if args.measures else runner.AVAILABLE[kind]
    )
    group = args.group or {"ensemble": "ensemble", "dirichlet": "proxy-dirichlet"}.get(
        kind, "single"
    )
    post = resolve_post_process(args.post_process, task.target_dictionary)
    task.load_dataset(args.split)
    sets = [(args.split, "in-domain", task.dataset(args.split))]
    spm_model = args.spm_model or os.path.join(
        os.path.dirname(os.path.abspath(args.data)), "spm", "spm.model"
    )
    ood, length_edges = _ood_files(args, task.cfg.source_lang)
    for name, how, path in ood:
        sets.append(
            (
                name,
                "ood",
                (
                    runner.ood_dataset(task, path)
                    if how == "bin"
                    else _raw_dataset(task, path, spm_model, post, args.ood_encoded)
                ),
            )
        )
    options.check_outputs(
        [("--out", os.path.join(args.out, f"{name}.jsonl")) for name, _r, _d in sets]
        + [("--out", os.path.join(args.out, SYSTEM_FILE))],
        [("--path", p) for p in paths]
        + [("--ood", p) for _n, how, p in ood if how == "raw"]
        + ood_bins(ood),
    )
    gen_cfg = generation_config(nbest=args.beam, **gen_opts.generation_overrides(args))
    summary = []
    for name, role, dataset in sets:
        start = time.perf_counter()
        final = os.path.join(args.out, f"{name}.jsonl")
        tmp, n, sha256 = f"{final}{TMP_MARK}{os.getpid()}", 0, hashlib.sha256()
        total = len(dataset) if args.limit is None else min(args.limit, len(dataset))
        done = progress.Progress("uncertainty", args.name, name, total, "sentences", args)
        with open(tmp, "wb") as f:
            for record in runner.score_split(
                models,
                task,
                dataset,
                name,
                gen_cfg,
                measures,
                args.max_tokens,
                args.sentences_per_chunk,
                args.weight_temperature,
                chrf=(role == "in-domain"),
                limit=args.limit,
                teacher_forced=args.teacher_forced,
                post_process=post,
                dirichlet_form=args.dirichlet_measures,
                ensemble_combination=args.ensemble_combination,
            ):
                line = (finite_json(record, f"{final} line {n + 1}", indent=None) + "\n").encode()
                f.write(line)
                sha256.update(line)
                n += 1
                done.update()
            f.flush()
            os.fsync(f.fileno())
        seconds = time.perf_counter() - start
        summary.append(
            {
                "name": name,
                "role": role,
                "file": os.path.basename(final),
                "sentences": n,
                "sha256": sha256.hexdigest(),
                "seconds": round(seconds, 3),
                "tmp": tmp,
            }
        )
        print(
            f"[uncertainty] {args.name}: {name} ({role}) {n} sentences in {seconds:.1f} s",
            file=sys.stderr,
            flush=True,
        )
    predictive = getattr(models[0], "dirichlet_predictive", None) if kind == "dirichlet" else None
    return UNCERTAINTY_SCHEMA.make(
        **{
            "name": args.name,
            "group": group,
            "kind": kind,
            "num_models": len(paths),
            "paths": [os.path.abspath(p) for p in paths],
            "data": os.path.abspath(args.data),
            "measures": measures,
            "knowledge": [m for m in measures if m != "total" and m != "data"],
            "beam": args.beam,
            "lenpen": args.lenpen,
            "weight_temperature": args.weight_temperature,
            "generation": gen_opts.generation_overrides(args),
            "post_process": post or "none",
            "split": args.split,
            "limit": args.limit,
            "teacher_forced": args.teacher_forced,
            "environment": describe_environment(device),
            # what decoded (and weighs the beam), and the expected categorical of the measures
            "dirichlet_predictive": predictive,
            "dirichlet_measures": args.dirichlet_measures if kind == "dirichlet" else None,
            "dirichlet_expected": runner.dirichlet_expected(models, args.dirichlet_measures),
            "ensemble_combination": args.ensemble_combination if kind == "ensemble" else None,
            # the source-length bins the OOD sets were drawn with (the report's length-matched
            # AUC uses them); null without --ood-dir or for sets drawn without length matching
            "length_edges": length_edges,
            "sets": summary,
        }
    )


def ood_bins(ood) -> List[tuple]:
    return [
        ("--ood-dir", p + ext) for _n, how, p in ood if how == "bin" for ext in (".bin", ".idx")
    ]


def prepare_out(out: str) -> None:
    """--out exists, is writable and not a file; EnsdistError before any work otherwise."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise EnsdistError(f"--out {out}: exists and is not a directory")
    os.makedirs(out, exist_ok=True)
    check_writable(os.path.join(out, SYSTEM_FILE), "--out")


def publish(out: str, result: dict) -> None:
    """Put the finished set files under their names, then system.json (what makes the
    directory a result: the report reads nothing else). An interrupted publish leaves no
    system.json, never one describing other files; a failed final write keeps the result."""
    parts = [(s.pop("tmp"), os.path.join(out, s["file"])) for s in result["sets"]]
    text = finite_json(result, f"--out {out}")  # refused here, before anything is replaced
    system = os.path.join(out, SYSTEM_FILE)
    if os.path.lexists(system):
        os.remove(system)
    for tmp, final in parts:
        os.replace(tmp, final)
    write_or_keep(system, text, "--out")


def remove_stale_parts(out: str) -> None:
    """Set files a killed run left (this run holds the lock: no other writer is alive)."""
    for path in glob.glob(os.path.join(glob.escape(out), f"*.jsonl{TMP_MARK}*")):
        os.remove(path)


@options.command
def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    problem = gen_opts.generation_error(args)
    if problem:
        parser.error(problem)
    paths = options.split_paths(args.path)
    prepare_out(args.out)  # before any work
    lock = OutputLock(os.path.join(args.out, LOCK_FILE), f"--out {args.out}")
    try:
        remove_stale_parts(args.out)
        check_data(args.data, args.split)  # damaged files named before fairseq reads them
        check_ensemble(paths, args.data)
        result = run(args, paths, options.device(args))
        publish(args.out, result)
    except BaseException:
        remove_stale_parts(args.out)  # this run's unfinished set files
        raise
    finally:
        lock.release()
    total = sum(s["seconds"] for s in result["sets"])
    print(
        f"{args.name} ({result['group']}, {result['kind']}, {len(paths)} model(s)): "
        f"{', '.join(result['measures'])} on {len(result['sets'])} sets in {total:.1f} s -> {args.out}"
    )
    return 0


if __name__ == "__main__":
    options.console(main)

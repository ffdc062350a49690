"""`ensdist-bleu-table`: BLEU of each ensemble member and of the ensembles of its first 1..K.

Members are given in seed order, so the ensemble of k is members 1..k (smaller ensembles are
subsets of larger ones, as in Reich et al.). The K checkpoints are loaded once and every
system decodes in-process (evaluation/decoding.py) over the same batches. Decoding accepts
fairseq-generate's search options under their own names (--beam, --lenpen, --max-len-a, ...).
Writes a JSON results file and a markdown table.
"""
import argparse
import json
import logging
import os
import sys
from typing import List, Optional

from ..evaluation import bleu
from ..atomic_files import check_writable, write_or_keep
from ..training.checkpoint_checks import check_ensemble
from ..evaluation import generation_options as gen_opts
from ..evaluation.report import mean_and_stderr


def markdown_table(results: dict) -> str:
    ind = results["individual"]
    se = "n/a" if ind["stderr"] is None else f"{ind['stderr']:.2f}"
    rows = ["| system | #models | BLEU |", "|---|---:|---:|",
            f"| individual (mean ± s.e., n={ind['n']}) | 1 | {ind['mean']:.2f} ± {se} |"]
    rows += [f"| ensemble | {e['size']} | {e['bleu']:.2f} |" for e in results["ensembles"]]
    return "\n".join(rows) + f"\n\nsacreBLEU: {results['signature']}\n"


def bleu_of_members_and_ensembles(args, paths: List[str]):
    """(members, ensembles) result rows; every checkpoint loaded once."""
    import torch

    from .. import teacher_forcing
    from ..evaluation import decoding

    device = torch.device("cuda" if args.gpu and torch.cuda.is_available() else "cpu")
    models, task = teacher_forcing.load_models(paths, args.data, device)
    task.load_dataset(args.split)
    dataset = task.dataset(args.split)
    teacher_forcing.check_sizes(dataset, teacher_forcing.max_positions(task, models),
                                args.max_tokens, f"split {args.split} of {args.data}")
    batches = teacher_forcing.plan_batches(dataset, None, args.max_tokens, args.batch_size)
    gen_cfg = decoding.generation_config(**gen_opts.generation_overrides(args))

    def score(systems):
        return bleu.decode_bleu(systems, task, dataset, gen_cfg, batches, device,
                                reference_file=args.reference,
                                post_process=gen_opts.post_process(args))

    members = []
    for i, (p, model) in enumerate(zip(paths, models), 1):
        print(f"[bleu] member {i}/{len(paths)}: {p}", file=sys.stderr, flush=True)
        members.append({"member": i, "path": p, **score([model]).to_dict()})
    ensembles = [{"size": 1, "paths": paths[:1], "bleu": members[0]["bleu"]}]
    for k in range(2, len(paths) + 1):
        print(f"[bleu] ensemble of {k}/{len(paths)}", file=sys.stderr, flush=True)
        ensembles.append({"size": k, "paths": paths[:k], "bleu": score(models[:k]).bleu})
    return members, ensembles


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="ensdist-bleu-table", description=__doc__)
    ap.add_argument("data", help="fairseq binarized data directory")
    ap.add_argument("--path", required=True, help="members in seed order: a.pt:b.pt:c.pt")
    ap.add_argument("--split", default="test")
    ap.add_argument("--reference", help="raw reference file of the split (default: fairseq's T- lines)")
    ap.add_argument("--max-tokens", type=int, default=4000)
    ap.add_argument("--gpu", action="store_true", help="decode on the GPU (default: CPU)")
    ap.add_argument("--output-json", required=True)
    ap.add_argument("--output-md", required=True)
    gen_opts.add_generation_options(ap)
    args, unknown = ap.parse_known_args(argv)
    # fairseq's INFO lines (dictionary sizes, examples loaded) before fairseq is imported: our own
    # progress goes to stderr, and an error stays the one line a user sees.
    logging.basicConfig(level=logging.WARNING, force=True,
                        format="%(levelname)s | %(name)s | %(message)s")
    if unknown:
        print(f"error: {gen_opts.unknown_options_error(unknown)}", file=sys.stderr)
        return 2
    paths = [p for p in args.path.split(":") if p]
    try:
        problem = gen_opts.generation_error(args)
        if problem or args.max_tokens < 1:
            raise ValueError(problem or f"--max-tokens must be >= 1, got {args.max_tokens}")
        if args.reference and not os.path.isfile(args.reference):
            raise ValueError(f"--reference {args.reference}: file not found")
        check_writable(args.output_json, "--output-json")
        check_writable(args.output_md, "--output-md")
        check_ensemble(paths, args.data)
        members, ensembles = bleu_of_members_and_ensembles(args, paths)
        mean, se = mean_and_stderr([m["bleu"] for m in members])
        results = {"data": args.data, "split": args.split, "signature": members[0]["signature"],
                   "members": members, "individual": {"mean": mean, "stderr": se, "n": len(members)},
                   "ensembles": ensembles}
        table = markdown_table(results)
        write_or_keep(args.output_json, json.dumps(results, indent=2) + "\n", "--output-json")
        write_or_keep(args.output_md, table, "--output-md")
    except (ValueError, RuntimeError, OSError) as e:
        message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"error: {message}", file=sys.stderr)
        return 1
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`ensdist-bleu-table`: BLEU of each ensemble member and of the ensembles of its first 1..K.

Members are given in seed order, so the ensemble of k is members 1..k (smaller ensembles are
subsets of larger ones, as in Reich et al.). The K checkpoints are loaded once and every
system decodes in-process (evaluation/decoding.py) over the same batches. Decoding accepts
fairseq-generate's search options under their own names (--beam, --lenpen, --max-len-a, ...).
Writes a JSON results file and a markdown table.
"""

import os
import sys
from typing import List, Optional

from ensdist_fairseq.atomic_files import check_writable, finite_json, write_or_keep
from ensdist_fairseq.checkpoints.checks import check_ensemble
from ensdist_fairseq.cli import generation_options as gen_opts
from ensdist_fairseq.cli import options
from ensdist_fairseq.cli.evaluate import check_reference
from ensdist_fairseq.corpus.binarized import check_data
from ensdist_fairseq.errors import EnsdistError
from ensdist_fairseq.evaluation import bleu
from ensdist_fairseq.report.table2 import mean_and_stderr


def markdown_table(results: dict) -> str:
    ind = results["individual"]
    se = "n/a" if ind["stderr"] is None else f"{ind['stderr']:.2f}"
    rows = [
        "| system | #models | BLEU |",
        "|---|---:|---:|",
        f"| individual (mean ± s.e., n={ind['n']}) | 1 | {ind['mean']:.2f} ± {se} |",
    ]
    rows += [f"| ensemble | {e['size']} | {e['bleu']:.2f} |" for e in results["ensembles"]]
    return "\n".join(rows) + f"\n\nsacreBLEU: {results['signature']}\n"


def bleu_of_members_and_ensembles(args, paths: List[str]):
    """(members, ensembles) result rows; every checkpoint loaded once."""
    from ensdist_fairseq.evaluation import decoding
    from ensdist_fairseq.teachers import teacher_forcing

    device = options.device(args)
    models, task = teacher_forcing.load_models(paths, args.data, device)
    gen_opts.check_min_len(args, models)
    task.load_dataset(args.split)
    dataset = task.dataset(args.split)
    teacher_forcing.check_sizes(
        dataset,
        teacher_forcing.max_positions(task, models),
        args.max_tokens,
        f"split {args.split} of {args.data}",
    )
    batches = teacher_forcing.plan_batches(dataset, None, args.max_tokens, args.batch_size)
    gen_cfg = decoding.generation_config(**gen_opts.generation_overrides(args))
    post = decoding.resolve_post_process(args.post_process, task.target_dictionary)
    print(f"[bleu] post-process: {post or 'none'}", file=sys.stderr, flush=True)

    def score(systems):
        return bleu.decode_bleu(
            systems,
            task,
            dataset,
            gen_cfg,
            batches,
            device,
            reference_file=args.reference,
            post_process=post,
        )

    members = []
    for i, (p, model) in enumerate(zip(paths, models), 1):
        print(f"[bleu] member {i}/{len(paths)}: {p}", file=sys.stderr, flush=True)
        members.append({"member": i, "path": p, **score([model]).to_dict()})
    ensembles = [{"size": 1, "paths": paths[:1], "bleu": members[0]["bleu"]}]
    for k in range(2, len(paths) + 1):
        print(f"[bleu] ensemble of {k}/{len(paths)}", file=sys.stderr, flush=True)
        ensembles.append({"size": k, "paths": paths[:k], "bleu": score(models[:k]).bleu})
    return members, ensembles


@options.command
def main(argv: Optional[List[str]] = None) -> int:
    ap = options.Parser(prog="ensdist-bleu-table", description=__doc__)
    ap.add_argument("data", help="fairseq binarized data directory")
    options.add_path(ap, "members in seed order")
    options.add_split(ap, "test")
    ap.add_argument(
        "--reference", help="raw reference file of the split (default: fairseq's T- lines)"
    )
    options.add_batching(ap)
    options.add_cpu(ap)
    ap.add_argument("--output-json", required=True)
    ap.add_argument("--output-md", required=True)
    gen_opts.add_generation_options(ap)
    args, unknown = ap.parse_known_args(argv)
    options.quiet_fairseq_logging()
    if unknown:
        ap.error(gen_opts.unknown_options_error(unknown))
    problem = gen_opts.generation_error(args)
    if problem:
        ap.error(problem)
    if os.path.abspath(args.output_json) == os.path.abspath(args.output_md):
        ap.error(f"--output-json and --output-md are the same file: {args.output_json}")
    if args.reference and not os.path.isfile(args.reference):
        raise EnsdistError(f"--reference {args.reference}: file not found")
    paths = options.split_paths(args.path)
    inputs = [("--path", p) for p in paths] + (
        [("--reference", args.reference)] * bool(args.reference)
    )
    options.check_outputs(
        [("--output-json", args.output_json), ("--output-md", args.output_md)],
        inputs + options.data_inputs(args.data),
    )
    check_writable(args.output_json, "--output-json")
    check_writable(args.output_md, "--output-md")
    if args.reference:
        check_reference(args.reference)
    check_data(args.data, args.split)  # damaged files named before fairseq reads them
    check_ensemble(paths, args.data)
    members, ensembles = bleu_of_members_and_ensembles(args, paths)
    mean, se = mean_and_stderr([m["bleu"] for m in members])
    results = {
        "data": args.data,
        "split": args.split,
        "signature": members[0]["signature"],
        "members": members,
        "individual": {"mean": mean, "stderr": se, "n": len(members)},
        "ensembles": ensembles,
    }
    table = markdown_table(results)
    text = finite_json(results, f"{args.path} on split {args.split}")
    write_or_keep(args.output_json, text, "--output-json")
    write_or_keep(args.output_md, table, "--output-md")
    print(table)
    return 0


if __name__ == "__main__":
    options.console(main)

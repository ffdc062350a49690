"""`ensdist-bleu-table`: BLEU of each ensemble member and of the ensembles of its first 1..K.

Options it does not know are passed on to fairseq-generate.

Members are given in seed order, so the ensemble of k is members 1..k (smaller ensembles are
subsets of larger ones, as in Reich et al.). Writes a JSON results file and a markdown table.
"""
import argparse
import json
import os
import sys
from typing import List, Optional

from .. import bleu
from ..atomic_files import write_text_atomically
from ..checkpoint_checks import check_ensemble
from ..report import mean_and_stderr


def markdown_table(results: dict) -> str:
    ind = results["individual"]
    se = "n/a" if ind["stderr"] is None else f"{ind['stderr']:.2f}"
    rows = ["| system | #models | BLEU |", "|---|---:|---:|",
            f"| individual (mean ± s.e., n={ind['n']}) | 1 | {ind['mean']:.2f} ± {se} |"]
    rows += [f"| ensemble | {e['size']} | {e['bleu']:.2f} |" for e in results["ensembles"]]
    return "\n".join(rows) + f"\n\nsacreBLEU: {results['signature']}\n"


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("data", help="fairseq binarized data directory")
    ap.add_argument("--path", required=True, help="members in seed order: a.pt:b.pt:c.pt")
    ap.add_argument("--split", default="test")
    ap.add_argument("--reference", help="raw reference file of the split (default: fairseq's T- lines)")
    ap.add_argument("--beam", type=int, default=5)
    ap.add_argument("--lenpen", type=float, default=1.0)
    ap.add_argument("--max-tokens", type=int, default=4000)
    ap.add_argument("--gpu", action="store_true", help="decode on the GPU (default: CPU)")
    ap.add_argument("--output-json", required=True)
    ap.add_argument("--output-md", required=True)
    # Anything else (e.g. --max-len-a 1.5) is passed on to fairseq-generate.
    args, generate_args = ap.parse_known_args(argv)
    if args.beam < 1:
        ap.error(f"--beam must be >= 1, got {args.beam}")
    paths = [p for p in args.path.split(":") if p]
    try:
        check_ensemble(paths, args.data)
        if args.reference and not os.path.isfile(args.reference):
            raise ValueError(f"{args.reference}: reference file not found")
        gen = dict(split=args.split, reference_file=args.reference, beam=args.beam,
                   lenpen=args.lenpen, max_tokens=args.max_tokens, cpu=not args.gpu,
                   extra_args=generate_args)
        members = []
        for i, p in enumerate(paths, 1):
            print(f"[bleu] member {i}/{len(paths)}: {p}", file=sys.stderr, flush=True)
            members.append({"member": i, "path": p, **bleu.bleu_of(args.data, [p], **gen).to_dict()})
        ensembles = [{"size": 1, "paths": paths[:1], "bleu": members[0]["bleu"]}]
        for k in range(2, len(paths) + 1):
            print(f"[bleu] ensemble of {k}/{len(paths)}", file=sys.stderr, flush=True)
            r = bleu.bleu_of(args.data, paths[:k], **gen)
            ensembles.append({"size": k, "paths": paths[:k], "bleu": r.bleu})
    except (ValueError, RuntimeError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    mean, se = mean_and_stderr([m["bleu"] for m in members])
    results = {"data": args.data, "split": args.split, "signature": members[0]["signature"],
               "members": members, "individual": {"mean": mean, "stderr": se, "n": len(members)},
               "ensembles": ensembles}
    write_text_atomically(args.output_json, json.dumps(results, indent=2) + "\n")
    table = markdown_table(results)
    write_text_atomically(args.output_md, table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`ensdist-report`: the Table-2-style markdown table and reliability diagrams of a run.

Reads every ``*.json`` in RESULTS_DIR that ``ensdist-evaluate`` wrote (files without its
"schema_version" are skipped, so a run directory may hold other JSONs), writes report.md and
one reliability_<method>.png per method to --out (default RESULTS_DIR), prints the table.
"""

import os
import sys
from typing import List, Optional

from ensdist_fairseq.atomic_files import check_writable, write_or_keep
from ensdist_fairseq.cli import options
from ensdist_fairseq.errors import EnsdistError
from ensdist_fairseq.report import inputs, measured_on
from ensdist_fairseq.report import table2 as report
from ensdist_fairseq.report.markdown import NOT_MEASURED
from ensdist_fairseq.report.paper_pattern import pattern_checks, pattern_markdown, regime_notes
from ensdist_fairseq.report.regime import regime_markdown
from ensdist_fairseq.report.uncertainty_section import section as uncertainty_section
from ensdist_fairseq.results import EVALUATION, read_json, read_token_file


def load_results(results_dir: str):
    """(results, their files), sorted by file name; raise EnsdistError naming a bad file.
    Empty when the directory holds no ensdist-evaluate result (it may hold only uncertainty)."""
    results, sources = [], []
    for path in inputs.result_files(results_dir):
        data = read_json(path)
        if not EVALUATION.is_one(data):
            continue
        report.check_result(data, path)
        data["_tokens"] = read_token_file(data, path)  # per-token sidecar: ECE-1/NLL bootstrap
        results.append(data)
        sources.append(path)
    if results:
        report.check_comparable(results, sources)
        inputs.check_same_decoding(results, sources)
    return results, sources


@options.command
def main(argv: Optional[List[str]] = None) -> int:
    ap = options.Parser(prog="ensdist-report", description=__doc__)
    ap.add_argument("results_dir", help="directory of ensdist-evaluate --output files")
    ap.add_argument("--out", help="output directory (default: RESULTS_DIR)")
    ap.add_argument(
        "--ce-method",
        default="CE+SWA",
        help="method of the distillation teachers, for the paper-pattern checks",
    )
    ap.add_argument(
        "--ls-method", default="LS+SWA", help="method of the label-smoothed comparison ensemble"
    )
    args = ap.parse_args(argv)
    out = args.out or args.results_dir
    if not os.path.isdir(args.results_dir):
        raise EnsdistError(f"{args.results_dir}: results directory not found")
    results, sources = load_results(args.results_dir)
    inputs.check_uncertainty(os.path.join(args.results_dir, "uncertainty"))
    os.makedirs(out, exist_ok=True)
    check_writable(os.path.join(out, "report.md"), "--out")
    if results:
        checks = pattern_checks(results, args.ce_method, args.ls_method)
        text = (
            report.report_markdown(results)
            + "\n## Do the papers' claims hold here?\n\n"
            + pattern_markdown(checks, regime_notes(results, args.ce_method, args.ls_method))
        )
        regime = regime_markdown(results)  # where each model stopped (from its train.log)
        text += "\n" + regime if regime else ""
    else:
        text = f"## Results\n\n{NOT_MEASURED}: no ensdist-evaluate result in {args.results_dir}.\n"
    unc_text, unc_pngs = uncertainty_section(args.results_dir, out)  # RESULTS/uncertainty/*/
    if not results and not unc_text:
        raise EnsdistError(
            f"{args.results_dir}: no ensdist-evaluate result JSONs and no "
            "uncertainty/*/system.json"
        )
    text += unc_text
    # where the numbers come from, first: floats differ across machines and library builds
    text = measured_on.markdown(results + measured_on.uncertainty_results(args.results_dir)) + text
    write_or_keep(os.path.join(out, "report.md"), text, "--out")
    pngs = (report.write_reliability_diagrams(results, out) if results else []) + unc_pngs
    print(text)
    print(
        f"[report] {len(sources)} systems -> {os.path.join(out, 'report.md')}, "
        f"{', '.join(pngs)}",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    options.console(main)

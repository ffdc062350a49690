"""The training regime beside the results: where each member and student stopped.

The paper's claims are about converged models (members at their validation plateau are
overconfident; averaging them corrects it). A report that says whether the claims hold must
also say whether its models were in that regime, so a reader can tell the method from the
regime. For every single-model result (kind "individual" or "student") this reads the
fairseq-train log next to its checkpoint (ensdist-evaluate records the checkpoint paths) and
reports the epoch it stopped at, its best validation epoch and loss, and how it stopped.

Criterion fixed before the run (docs/teachers.md): a model "reached its plateau" when its
training ended by early stopping (PATIENCE validations without a new best), i.e. its best
validation epoch is followed by epochs that did not improve; a run that hit the epoch cap
did not show its plateau.
"""

import os
from typing import List, Optional, Sequence

from ensdist_fairseq.report.train_logs import RunLog, read_train_log

SINGLE_KINDS = ("individual", "student")


def train_log_of(result: dict) -> Optional[str]:
    """SAVE_DIR/train.log of a single-model result, if its checkpoint's directory has one."""
    paths = result.get("paths") or []
    if result.get("kind") not in SINGLE_KINDS or len(paths) != 1:
        return None
    log = os.path.join(os.path.dirname(paths[0]), "train.log")
    return log if os.path.isfile(log) else None


def regime_rows(results: Sequence[dict]) -> List[dict]:
    rows = []
    for r in sorted(results, key=lambda r: (r["method"], r["kind"], r["name"])):
        log = train_log_of(r)
        if log is None:
            continue
        run: RunLog = read_train_log(log)
        if not run.valid:
            continue
        best = run.best_epoch
        rows.append(
            {
                "name": r["name"],
                "method": r["method"],
                "kind": r["kind"],
                "checkpoint": os.path.basename(r["paths"][0]),
                "last_epoch": run.last_epoch,
                "best_epoch": best,
                "best_loss": run.valid[best][run.metric],
                "best_ece1": run.valid[best].get("ece1"),
                "plateau": run.stopped_early,
            }
        )
    return rows


def regime_markdown(results: Sequence[dict]) -> str:
    """The report's section; empty when no result has a training log at hand."""
    rows = regime_rows(results)
    if not rows:
        return ""
    lines = [
        "## Training regime\n",
        "Each model's own validation: the epoch its training stopped at, its best epoch "
        "(the SWA window ends there), the validation NLL of the references (bits) and ECE-1 "
        "there, and whether it reached its plateau (stopped by early stopping rather than the "
        "epoch cap).\n",
        "| System | Method | Evaluated | Stopped at epoch | Best epoch | Valid NLL at best | "
        "Valid ECE-1 at best (%) | Plateau reached? |",
        "|---|---|---|---:|---:|---:|---:|---|",
    ]
    for w in rows:
        ece = f"{w['best_ece1']:.2f}" if w["best_ece1"] is not None else "–"
        lines.append(
            f"| {w['name']} | {w['method']} | {w['checkpoint']} | {w['last_epoch']} | "
            f"{w['best_epoch']} | {w['best_loss']:.3f} | {ece} | "
            f"{'yes' if w['plateau'] else '**no** (epoch cap)'} |"
        )
    n_plateau = sum(w["plateau"] for w in rows)
    lines.append("")
    lines.append(
        f"{n_plateau} of {len(rows)} models reached their plateau"
        + (
            "."
            if n_plateau == len(rows)
            else ": the rest stopped at the epoch cap, so the comparison above is partly "
            "between models still improving, not the converged models the papers' "
            "claims are about."
        )
    )
    return "\n".join(lines) + "\n"

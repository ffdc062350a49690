"""Learning curves from fairseq-train logs: validation loss and ECE-1 per epoch, as a markdown
table and a PNG (docs/learning_curves*.md / .png are made with this).

    ensdist-learning-curves \
        --run "CE member=runs/demo/teachers/ce/seed1/train.log" \
        --run "LS member=runs/demo/teachers/ls/seed1/train.log" \
        --output-md docs/learning_curves_cpu.md --output-png docs/learning_curves_cpu.png

Each --run is LABEL=TRAIN_LOG. The table has one row per epoch and, per run, the validation
NLL of the references (bits, fairseq's base 2: the quantity early stopping watches, the same
for CE and label-smoothed members), ECE-1 (%) and a marker on the best epoch (where the SWA
window ends). ECE-1 needs a validation that
measures calibration (the teacher recipes pass it); "–" where a log has none.
"""

from typing import Optional, Sequence, Tuple

from ensdist_fairseq.report.train_logs import RunLog

Run = Tuple[str, RunLog]


def curves_markdown(runs: Sequence[Run], title: Optional[str] = None) -> str:
    epochs = sorted({e for _, r in runs for e in r.valid})
    head = ["epoch"]
    for label, _ in runs:
        head += [f"{label}: valid NLL (bits)", f"{label}: ECE-1 (%)"]
    lines = [
        f"## {title}\n" if title else "",
        "| " + " | ".join(head) + " |",
        "|" + "---:|" * len(head),
    ]
    for e in epochs:
        row = [str(e)]
        for _, r in runs:
            v = r.valid.get(e)
            if v is None:
                row += ["", ""]
                continue
            mark = " **(best)**" if e == r.best_epoch else ""
            row += [f"{v[r.metric]:.3f}{mark}", f"{v['ece1']:.2f}" if "ece1" in v else "–"]
        lines.append("| " + " | ".join(row) + " |")
    notes = []
    for label, r in runs:
        if not r.valid:
            continue
        how = (
            f"early stop (patience {r.early_stop_patience})"
            if r.stopped_early
            else "no early stop in the log (epoch cap, or still running)"
        )
        secs = [t["train_wall"] for t in r.train.values() if "train_wall" in t]
        per_epoch = f", {sum(secs) / len(secs):.0f} s/epoch training" if secs else ""
        notes.append(
            f"- {label}: best epoch {r.best_epoch} "
            f"(validation {r.metric} {r.valid[r.best_epoch][r.metric]:.3f} bits), "
            f"last epoch {r.last_epoch}: {how}{per_epoch}."
        )
    return "\n".join(line for line in lines if line != "") + "\n\n" + "\n".join(notes) + "\n"


def write_curves_png(runs: Sequence[Run], path: str, title: Optional[str] = None) -> None:
    from matplotlib.figure import Figure  # Agg through a bare Figure: no GUI backend needed

    from ensdist_fairseq.atomic_files import atomic_open

    fig = Figure(figsize=(9, 3.6))
    ax_loss, ax_ece = fig.subplots(1, 2)
    for label, r in runs:
        ep = r.epochs
        (line,) = ax_loss.plot(
            ep, [r.valid[e][r.metric] for e in ep], marker="o", ms=3, label=label
        )
        if r.best_epoch is not None:
            ax_loss.axvline(r.best_epoch, color=line.get_color(), ls=":", lw=1)
        ece_ep = [e for e in ep if "ece1" in r.valid[e]]
        if ece_ep:
            ax_ece.plot(
                ece_ep,
                [r.valid[e]["ece1"] for e in ece_ep],
                marker="o",
                ms=3,
                color=line.get_color(),
                label=label,
            )
            if r.best_epoch is not None:
                ax_ece.axvline(r.best_epoch, color=line.get_color(), ls=":", lw=1)
    ax_loss.set(
        xlabel="epoch", ylabel="validation NLL (bits)", title="validation NLL of the references"
    )
    ax_ece.set(xlabel="epoch", ylabel="validation ECE-1 (%)", title="validation ECE-1")
    for ax in (ax_loss, ax_ece):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=110)

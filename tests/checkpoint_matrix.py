"""Checkpoints written by real fairseq-train runs with the options people use (for tests).

Each variant is trained once on tiny data; two layouts are derived from a trained checkpoint
because this machine cannot write them itself:
  - fp16: fairseq's FP16Optimizer (CUDA only) saves the model in float16, ``cfg.common.fp16``
    true and the loss scaler as ``last_optimizer_state["loss_scale"]`` (a Python float: see
    fairseq/optim/fp16_optimizer.py, state_dict); we write exactly those three things;
  - legacy: fairseq 0.10 and older saved ``args`` (fairseq-train's argparse Namespace) and no
    ``cfg``; we save the Namespace fairseq's own training parser makes of the same command line.
"""

import glob
import os

import tiny_fairseq
import torch

BLEU = [
    "--task",
    "translation",
    "--eval-bleu",
    "--eval-bleu-args",
    '{"beam": 1, "max_len_b": 10}',
    "--eval-bleu-detok",
    "space",
    "--best-checkpoint-metric",
    "bleu",
    "--maximize-best-checkpoint-metric",
]
TRAINED = {
    "plain": [],
    "eval_bleu": BLEU,
    "ema": ["--store-ema", "--ema-decay", "0.9"],
    "keep_best": ["--keep-best-checkpoints", "2"],
    "update_interval": ["--save-interval-updates", "10"],
}
UPDATES = 20


def train_variant(data, root, name):
    save = os.path.join(root, name)
    tiny_fairseq.train_tiny(data, save, seed=1, max_update=UPDATES, extra=TRAINED[name])
    return save


def pick(save_dir, name):
    """The checkpoint file a variant is about (its own kind of file, not checkpoint_last)."""
    if name == "keep_best":
        return sorted(glob.glob(os.path.join(save_dir, "checkpoint.best_*.pt")))[0]
    if name == "update_interval":
        return sorted(glob.glob(os.path.join(save_dir, "checkpoint_*_*.pt")))[0]
    return os.path.join(save_dir, "checkpoint_last.pt")


def write_fp16(src, dst):
    state = torch.load(src, weights_only=True)
    state["model"] = {
        k: v.half() if v.is_floating_point() else v for k, v in state["model"].items()
    }
    state["cfg"]["common"]["fp16"] = True
    state["last_optimizer_state"]["loss_scale"] = 128.0
    torch.save(state, dst)
    return dst


def write_legacy(src, dst, data):
    """The args-only layout of fairseq <= 0.10 for the checkpoint `src` trained on `data`."""
    from fairseq import options

    state = torch.load(src, weights_only=True)
    parser = options.get_training_parser()
    argv = [data, *tiny_fairseq.TINY_ARCH_ARGS, "--optimizer", "adam", "--lr", "3e-3"]
    argv += ["--lr-scheduler", "inverse_sqrt", "--warmup-updates", "10", "--max-tokens", "600"]
    args = options.parse_args_and_arch(parser, input_args=argv)
    legacy = {
        "args": args,
        "model": state["model"],
        "optimizer_history": state["optimizer_history"],
        "extra_state": state["extra_state"],
        "last_optimizer_state": state["last_optimizer_state"],
    }
    torch.save(legacy, dst)
    return dst


def build(data, root):
    """{variant name: checkpoint path} for every variant."""
    paths = {name: pick(train_variant(data, root, name), name) for name in TRAINED}
    paths["eval_bleu_best"] = os.path.join(
        os.path.dirname(paths["eval_bleu"]), "checkpoint_best.pt"
    )
    os.makedirs(os.path.join(root, "derived"), exist_ok=True)
    paths["fp16"] = write_fp16(paths["plain"], os.path.join(root, "derived", "fp16.pt"))
    paths["legacy_args"] = write_legacy(
        paths["plain"], os.path.join(root, "derived", "legacy.pt"), data
    )
    return paths

"""Small, fast fairseq artefacts for tests: a synthetic parallel corpus and tiny trained models.

The synthetic task (target = source words reversed and mapped to other words) is learnable in a
few dozen updates, so trained models are better than chance but still uncertain.
"""

import os
import random
import subprocess
import sys

BIN = os.path.dirname(sys.executable)

TINY_ARCH_ARGS = [
    "--arch",
    "transformer",
    "--encoder-layers",
    "1",
    "--decoder-layers",
    "1",
    "--encoder-embed-dim",
    "32",
    "--decoder-embed-dim",
    "32",
    "--encoder-ffn-embed-dim",
    "64",
    "--decoder-ffn-embed-dim",
    "64",
    "--encoder-attention-heads",
    "2",
    "--decoder-attention-heads",
    "2",
    "--share-all-embeddings",
]


def run(cmd, **kw):
    """Run a command; on failure raise with its output so the test log shows why."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, **kw)
    if p.returncode != 0:
        raise RuntimeError(
            f"{' '.join(map(str, cmd))} failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
        )
    return p


def write_synthetic_raw(raw_dir, n_train=300, n_valid=40, n_test=40, vocab=40, seed=0):
    rng = random.Random(seed)
    src_words = [f"s{i}" for i in range(vocab)]
    tgt_of = {w: f"t{(i * 7) % vocab}" for i, w in enumerate(src_words)}
    os.makedirs(raw_dir, exist_ok=True)
    for split, n in (("train", n_train), ("valid", n_valid), ("test", n_test)):
        with (
            open(os.path.join(raw_dir, f"{split}.en"), "w") as fe,
            open(os.path.join(raw_dir, f"{split}.de"), "w") as fd,
        ):
            for _ in range(n):
                s = [rng.choice(src_words) for _ in range(rng.randint(2, 7))]
                fe.write(" ".join(s) + "\n")
                fd.write(" ".join(tgt_of[w] for w in reversed(s)) + "\n")


def binarize(raw_dir, bin_dir, src="en", tgt="de"):
    run(
        [
            os.path.join(BIN, "fairseq-preprocess"),
            "--source-lang",
            src,
            "--target-lang",
            tgt,
            "--trainpref",
            os.path.join(raw_dir, "train"),
            "--validpref",
            os.path.join(raw_dir, "valid"),
            "--testpref",
            os.path.join(raw_dir, "test"),
            "--destdir",
            bin_dir,
            "--joined-dictionary",
            "--workers",
            "1",
        ]
    )
    return bin_dir


def train_tiny(bin_dir, save_dir, seed, max_update=40, extra=(), epoch_checkpoints=False):
    run(
        [
            os.path.join(BIN, "fairseq-train"),
            bin_dir,
            *TINY_ARCH_ARGS,
            "--optimizer",
            "adam",
            "--lr",
            "3e-3",
            "--lr-scheduler",
            "inverse_sqrt",
            "--warmup-updates",
            "10",
            "--max-tokens",
            "600",
            "--max-update",
            str(max_update),
            "--seed",
            str(seed),
            "--cpu",
            "--save-dir",
            save_dir,
            *([] if epoch_checkpoints else ["--no-epoch-checkpoints"]),
            "--log-format",
            "simple",
            "--dropout",
            "0.1",
            *extra,
        ]
    )
    return os.path.join(save_dir, "checkpoint_last.pt")

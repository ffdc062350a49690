from setuptools import find_packages, setup

setup(
    name="ensdist_fairseq",
    version="0.1.0",
    description="Ensemble distillation for NMT as a fairseq user-dir plugin",
    packages=find_packages(include=["ensdist_fairseq", "ensdist_fairseq.*"]),
    license="MIT",
    # 3.9: argparse.BooleanOptionalAction (cli/evaluate.py) and torch>=2.6 need it; the code's
    # syntax parses as 3.8 (checked with ast feature_version), so these are the real floor.
    # Tested: 3.11 (CPU, ve-fairseq cp311 wheel) and 3.12 (GPU, ve-fairseq cp312 wheel); on 3.9
    # and 3.10 pip takes the official fairseq 0.12.2, which this project has not been tested with.
    python_requires=">=3.9",
    install_requires=[
        # torch>=2.6: torch.serialization.add_safe_globals and weights_only=True by default.
        # A range, not a pin, so an installed CUDA torch is kept; scripts/setup_env.sh installs
        # the CPU wheel 2.13.0 first so pip never resolves torch on its own.
        "torch>=2.6",
        # The official fairseq 0.12.2 fails at import on Python >= 3.11 (mutable dataclass
        # defaults); ve-fairseq ships a cp311 wheel of 0.12.3 providing the same `fairseq` module.
        'fairseq==0.12.2; python_version < "3.11"',
        've-fairseq==0.12.3; python_version >= "3.11"',
        "numpy>=1.24",
        "h5py>=3.8",
        "sentencepiece>=0.1.99",
        "sacrebleu>=2.3",
        "matplotlib>=3.7",
    ],
    extras_require={
        "test": ["pytest>=7", "scikit-learn>=1.2", "scipy>=1.10", "black>=24", "ruff>=0.5"]
    },
    entry_points={
        "console_scripts": [
            "ensdist-path=ensdist_fairseq.cli.path:main",
            "ensdist-memoize=ensdist_fairseq.cli.memoize:main",
            "ensdist-evaluate=ensdist_fairseq.cli.evaluate:main",
            "ensdist-report=ensdist_fairseq.cli.report:main",
            "ensdist-bleu-table=ensdist_fairseq.cli.bleu_table:main",
            "ensdist-train=ensdist_fairseq.cli.train:main",
            "ensdist-uncertainty=ensdist_fairseq.cli.uncertainty:main",
            "ensdist-ood-sets=ensdist_fairseq.cli.ood_sets:main",
            "ensdist-swa=ensdist_fairseq.cli.swa:main",
            "ensdist-learning-curves=ensdist_fairseq.cli.learning_curves:main",
            "ensdist-corpus-ding=ensdist_fairseq.cli.corpus_ding:main",
            "ensdist-sentencepiece=ensdist_fairseq.cli.sentencepiece:main",
            "ensdist-seqkd=ensdist_fairseq.cli.seqkd:main",
            "ensdist-export=ensdist_fairseq.cli.export:main",
        ]
    },
)

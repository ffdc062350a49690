"""What every ensdist-* command shares: the parser, the numeric-flag rule, the common options and
the error policy (no fairseq import at module level: `--help` stays fast).

The conventions, decided here once:

- Exit status 2: the command line is wrong (an unknown flag, a value outside its range), as
  argparse and fairseq-train do; printed before any work. Exit status 1: an input file or the
  run failed (an `EnsdistError` or an `OSError`). Either way the user sees one line
  ``error: <flag or file>: <what is wrong>``; a traceback means a bug.
- Numbers: every numeric flag is parsed by `integer` or `real`, which refuse what is not a
  number of that kind, what is outside the flag's range, NaN always, and infinity unless the
  flag says what infinity means.
- Names: `--path a.pt:b.pt` (an ensemble, split as fairseq splits it), `--split` (a split of the
  data directory), `--cpu` (run on the CPU although CUDA is visible), `--max-tokens` /
  `--batch-size` (batch limits, same defaults everywhere), `--out DIR` for a directory,
  `--output FILE` for one file, `--output-json` / `--output-md` where a command writes both.
"""

import argparse
import functools
import math
import os
import sys
from typing import Callable, List, Optional, Sequence, Tuple

from ensdist_fairseq import numeric
from ensdist_fairseq.errors import EnsdistError, report

EXIT_USAGE = 2
EXIT_FAILED = 1
INT_MAX = numeric.INT_MAX
DEFAULT_MAX_TOKENS = 4096


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``error: argument --beam: ...`` and exit status 2."""

    def error(self, message):
        print(f"error: {message} (see {self.prog} --help)", file=sys.stderr, flush=True)
        sys.exit(EXIT_USAGE)


def integer(lo: int = 0, hi: int = INT_MAX) -> Callable[[str], int]:
    """An argparse type: a decimal integer in [lo, hi]."""

    def parse(text: str) -> int:
        try:
            value = int(text, 10)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        problem = numeric.integer_problem(value, lo, hi, shown=text)
        if problem is not None:
            raise argparse.ArgumentTypeError(problem)
        return value

    parse.__name__ = "integer"
    return parse


def real(
    lo: float = -math.inf,
    hi: float = math.inf,
    *,
    lo_open: bool = False,
    hi_open: bool = False,
    inf_means: Optional[str] = None,
) -> Callable[[str], float]:
    """An argparse type: a finite float in the interval (open ends where asked). ``inf`` is
    taken only where `inf_means` says what it does (e.g. "no limit"); NaN never."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        problem = numeric.real_problem(
            value, lo, hi, lo_open=lo_open, hi_open=hi_open, inf_means=inf_means, shown=text
        )
        if problem is not None:
            raise argparse.ArgumentTypeError(problem)
        return value

    parse.__name__ = "number"
    return parse


def check_outputs(outputs: Sequence[Tuple[str, str]], inputs: Sequence[Tuple[str, str]]) -> None:
    """EnsdistError, before any work, if an output is an input or two outputs are one file.

    `outputs` and `inputs` are (flag, path) pairs; a path is compared by the file it names
    (symlinks and `..` resolved; an existing file also by device and inode, so a hard link
    counts), so that no command ever writes over what it reads or one result over another."""
    seen = [(flag, path, _identity(path), "the input") for flag, path in inputs]
    for flag, path in outputs:
        ident = _identity(path)
        for other_flag, other_path, other, role in seen:
            if ident & other:
                raise EnsdistError(
                    f"{flag} {path}: is {role} {other_flag} {other_path}; refusing to write over it"
                )
        seen.append((flag, path, ident, "also the output"))


def data_inputs(data_dir: str) -> List[Tuple[str, str]]:
    """The files of a binarized data directory, as inputs for check_outputs."""
    if not os.path.isdir(data_dir):
        return []
    names = sorted(os.listdir(data_dir))
    return [
        ("DATA", os.path.join(data_dir, n))
        for n in names
        if os.path.isfile(os.path.join(data_dir, n))
    ]


def _identity(path: str) -> set:
    ids = {("path", os.path.realpath(path))}
    try:
        st = os.stat(path)
        ids.add(("inode", st.st_dev, st.st_ino))
    except OSError:
        pass
    return ids


def add_path(ap: argparse.ArgumentParser, what: str = "checkpoint(s)") -> None:
    ap.add_argument(
        "--path", required=True, help=f"{what}; an ensemble as a.pt:b.pt:c.pt (fairseq's separator)"
    )


def split_paths(spec: str) -> List[str]:
    """`--path` as fairseq splits it (fairseq.utils.split_paths), empty items dropped."""
    from fairseq.utils import split_paths as fairseq_split

    return [p for p in fairseq_split(spec) if p]


def add_split(ap: argparse.ArgumentParser, default: str) -> None:
    ap.add_argument(
        "--split", default=default, help="split of the data directory (default: %(default)s)"
    )


def add_batching(ap: argparse.ArgumentParser) -> None:
    ap.add_argument(
        "--max-tokens",
        type=integer(1),
        default=DEFAULT_MAX_TOKENS,
        help="at most this many tokens a batch (default: %(default)s)",
    )
    ap.add_argument(
        "--batch-size",
        type=integer(1),
        default=None,
        help="at most this many sentences a batch (with --max-tokens)",
    )


def add_cpu(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--cpu", action="store_true", help="run on the CPU even if CUDA is visible")


def device(args):
    import torch

    return torch.device("cuda" if torch.cuda.is_available() and not args.cpu else "cpu")


def quiet_fairseq_logging() -> None:
    """fairseq's import leaves the root logger at DEBUG and prints INFO lines: keep warnings
    only, so our progress lines and the one error line are what a user reads."""
    import logging

    logging.basicConfig(
        level=logging.WARNING, force=True, format="%(levelname)s | %(name)s | %(message)s"
    )


def command(main: Callable[..., Optional[int]]) -> Callable[..., int]:
    """The error policy of a console script's main(): EnsdistError and OSError become one
    ``error:`` line and exit status 1, a wrong command line exit status 2 (also when main() is
    called in-process); the return value (None = 0) is the exit status."""

    @functools.wraps(main)
    def wrapped(*args, **kwargs) -> int:
        try:
            rc = main(*args, **kwargs)
        except SystemExit as e:  # argparse: --help (0) or a wrong command line (2)
            if e.code is None or isinstance(e.code, int):
                return e.code or 0
            raise
        except EnsdistError as e:
            report(e)
            return EXIT_FAILED
        except OSError as e:
            where = e.filename if e.filename else None
            text = e.strerror or str(e) or type(e).__name__
            report(EnsdistError(f"{where}: {text}" if where else text))
            return EXIT_FAILED
        return 0 if rc is None else rc

    return wrapped


def console(main: Callable[..., int]) -> None:
    """`if __name__ == "__main__": console(main)`."""
    sys.exit(main())

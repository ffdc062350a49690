"""The package's one error type, and how it reaches a user of fairseq's own commands (pure Python).

An EnsdistError is bad input: its message is one line that starts with the file or the flag it
is about. Our CLIs print it as ``error: <message>`` and exit 1 (cli/options.py: the policy). Inside fairseq-train,
fairseq-generate and fairseq-validate the plugin cannot wrap fairseq's main(), so registering
the plugin installs a sys.excepthook that prints an EnsdistError the same way; every other
exception keeps the previous hook (a traceback: those are bugs, not bad input), with one
exception: a checkpoint that fairseq's own loader cannot unpickle (a truncated
checkpoint_last.pt when fairseq-train resumes, a malicious one pickling a global outside the
allow-list, refused unread) or whose weights do not fit its architecture is reported as one line
naming the file, and an
EnsdistError of a process started by torch.multiprocessing.spawn (fairseq-train on several
GPUs) arrives as ProcessRaisedException holding its traceback text: its last line is used.

An EnsdistError raised in a torch DataLoader worker reaches the main process re-created by
torch as ``type(e)("Caught X in DataLoader worker process N.\\nOriginal Traceback ...")``;
`one_line` recovers the original message from that text.
"""

import re
import sys

_WORKER_PREFIX = "Caught "


class EnsdistError(ValueError):
    """Bad input: a one-line message starting with the file or flag it is about."""


def one_line(e: BaseException) -> str:
    """The user-facing line of an EnsdistError (also when re-raised from a DataLoader worker)."""
    text = str(e).strip()
    lines = [line for line in text.splitlines() if line.strip()]
    if len(lines) > 1 and text.startswith(_WORKER_PREFIX) and "Original Traceback" in text:
        last = lines[-1]  # "<module>.<Class>: <original message>"
        name = type(e).__name__ + ": "
        i = last.find(name)
        return last[i + len(name) :] if i >= 0 else last
    return lines[0] if lines else type(e).__name__


def report(e: BaseException, file=None) -> None:
    print(f"error: {one_line(e)}", file=file or sys.stderr, flush=True)


_ADVICE = (
    "Check the documentation",
    "Please file an issue",
    "Re-running",
    "In PyTorch",
    "(1)",
    "(2)",
)


def unpickling_refusal(e: BaseException) -> str:
    """The one line saying why torch refused to unpickle a file. For a global outside the
    allow-list torch's message is a page of advice (including to switch weights_only off, which
    would run the pickle); the line naming the global is the reason."""
    lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
    if lines and lines[0].startswith("Weights only load failed"):
        reasons = [x for x in lines[1:] if not x.startswith(_ADVICE)]
        named = [x for x in reasons if "global" in x.lower() or "Can only build" in x]
        if named or reasons:
            reason = (named or reasons)[0].removeprefix("WeightsUnpickler error: ")
            reason = reason.split(". Please use")[0].rstrip(".")
            return f"{reason}; refused unread: not a type fairseq checkpoints contain"
    return lines[0] if lines else type(e).__name__


def _frame_local(tb, function: str, name: str):
    """`name` in the innermost frame of fairseq's checkpoint_utils.`function` on the traceback."""
    value = None
    while tb is not None:
        code = tb.tb_frame.f_code
        if code.co_name == function and code.co_filename.endswith(
            ("fairseq/checkpoint_utils.py", "fairseq\\checkpoint_utils.py")
        ):
            value = tb.tb_frame.f_locals.get(name)
        tb = tb.tb_next
    return value


def _unloadable_checkpoint(exc, tb):
    """One line for a checkpoint that escaped fairseq's checkpoint_utils while unpickling (a
    truncated checkpoint_last.pt on resume, a file that is no checkpoint, a pickled global outside
    the allow-list: refused unread) or while loading its weights (a wrong-shaped weight)."""
    import pickle

    path = _frame_local(tb, "load_checkpoint_to_cpu", "path")
    if path is not None and not isinstance(exc, (FileNotFoundError, pickle.PicklingError)):
        if isinstance(exc, (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError)):
            return f"{path}: not a loadable fairseq checkpoint ({unpickling_refusal(exc)})"
    path = _frame_local(tb, "load_model_ensemble_and_task", "filename")
    if path is not None and isinstance(exc, RuntimeError) and "loading state_dict" in str(exc):
        return f"{path}: {state_dict_mismatch(exc)}"
    names = _frame_local(tb, "load_model_ensemble_and_task", "filenames")
    if names and isinstance(exc, OSError) and "Model file not found" in str(exc):
        joined = colon_in_path(list(names))
        if joined is not None:
            return f"{joined}: {COLON_MESSAGE}"
    return None


COLON_MESSAGE = (
    "a checkpoint path may not contain ':' (fairseq's ensemble separator in --path splits it); "
    "rename the file or link it under another name"
)


def colon_in_path(pieces):
    """The existing file that `pieces` (a --path split on ':') were cut from, if any."""
    import os

    for a in range(len(pieces)):
        for b in range(a + 1, len(pieces)):
            joined = ":".join(pieces[a : b + 1])
            if os.path.isfile(joined):
                return joined
    return None


def state_dict_mismatch(e: BaseException) -> str:
    """One line of torch's 'Error(s) in loading state_dict' (first mismatch and how many)."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    details = [line for line in lines[1:] if not line.startswith("Error(s)")]
    first = details[0].rstrip(".") if details else lines[0]
    more = f" and {len(details) - 1} more" if len(details) > 1 else ""
    return f"weights do not fit the architecture in its cfg ({first}{more})"


def _from_spawned_process(exc):
    """The message of an EnsdistError raised in a process of torch.multiprocessing.spawn
    (fairseq-train on several GPUs): the parent gets ProcessRaisedException holding the child's
    traceback text, whose last line is '<module>.<Class>: <message>'."""
    if type(exc).__name__ != "ProcessRaisedException":
        return None
    lines = [line for line in str(exc).splitlines() if line.strip()]
    match = re.match(r"^ensdist_fairseq\.[\w.]*Error: (.*)$", lines[-1]) if lines else None
    return match.group(1) if match else None


def _hook(previous):
    def excepthook(exc_type, exc, tb):
        if isinstance(exc, EnsdistError):
            report(exc)
            return  # the interpreter then exits with status 1
        spawned = _from_spawned_process(exc)
        if spawned is not None:
            print(f"error: {spawned}", file=sys.stderr, flush=True)
            return
        line = _unloadable_checkpoint(exc, tb)
        if line is not None:
            print(f"error: {line}", file=sys.stderr, flush=True)
            return
        previous(exc_type, exc, tb)

    excepthook.ensdist = True
    return excepthook


def install_excepthook() -> None:
    """Make an uncaught EnsdistError print one ``error:`` line (idempotent)."""
    if not getattr(sys.excepthook, "ensdist", False):
        sys.excepthook = _hook(sys.excepthook)

"""Write a file so that its final name only ever holds complete content.

Results, checkpoints and reports are written to a temporary name in the same directory,
flushed to disk, then renamed (os.replace is atomic on POSIX): an interrupted job leaves
either the old file or none, never half a file that a later stage would take as finished.
"""

import json
import math
import os
import tempfile
from contextlib import contextmanager
from typing import Optional


@contextmanager
def atomic_open(path: str, mode: str = "w", **kwargs):
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        with open(tmp, mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_text_atomically(path: str, text: str) -> None:
    with atomic_open(path, "w", encoding="utf-8") as f:
        f.write(text)


# --- Finished work is never lost -------------------------------------------------------------
# A command checks its output locations before it starts (check_writable), and if the final
# write still fails (disk full, directory removed or made read-only meanwhile) it saves the
# result in the temp directory and names that file in its one-line error (write_or_keep).


def check_writable(path: str, flag: str) -> None:
    """EnsdistError now, before any work, if `path` could not be written at the end."""
    from ensdist_fairseq.errors import EnsdistError

    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise EnsdistError(f"{flag} {path}: directory {directory} does not exist")
    if os.path.isdir(path):
        raise EnsdistError(f"{flag} {path}: is a directory")
    try:  # really create a file: os.access says yes to root on a read-only mount
        fd, probe = tempfile.mkstemp(dir=directory, prefix=".ensdist-write-check-")
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        raise EnsdistError(
            f"{flag} {path}: cannot write in {directory} ({e.strerror or type(e).__name__})"
        ) from None


def write_or_keep(path: str, text: str, flag: str) -> None:
    """Write `text` to `path` atomically; if that fails, save it to a file in the temp
    directory and raise EnsdistError naming that file (or, failing that too, print it)."""
    from ensdist_fairseq.errors import EnsdistError

    try:
        write_text_atomically(path, text)
        return
    except OSError as e:
        cause = e.strerror or type(e).__name__
    stem, ext = os.path.splitext(os.path.basename(path))
    try:
        fd, kept = tempfile.mkstemp(prefix=f"{stem or 'result'}-", suffix=ext or ".txt")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        where = f"it was saved to {kept}"
    except OSError:
        print(text, flush=True)
        where = "it is printed on stdout above"
    raise EnsdistError(f"{flag} {path}: cannot write ({cause}); {where}")


# --- Results are valid JSON -------------------------------------------------------------------
# json.dumps writes NaN and Infinity by default, which no JSON reader (and not the report's
# checks) accepts: every result goes through finite_json, which refuses them by key.


def non_finite_field(value, key: str = "") -> Optional[str]:
    """The key path of the first number in `value` that is NaN or infinite, or None."""
    if isinstance(value, float) and not math.isfinite(value):
        return key or "value"
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, (list, tuple)):
        items = enumerate(value)
    else:
        return None
    for k, v in items:
        found = non_finite_field(v, f"{key}.{k}" if key else str(k))
        if found:
            return found
    return None


def finite_json(value, what: str, indent: Optional[int] = 2) -> str:
    """`value` as JSON text (a line if indent is None); EnsdistError naming `what` and the key
    if it holds NaN or an infinity."""
    from ensdist_fairseq.errors import EnsdistError

    try:
        text = json.dumps(value, indent=indent, ensure_ascii=False, allow_nan=False)
    except ValueError:
        raise EnsdistError(
            f"{what}: {non_finite_field(value)} is not a finite number; refusing to write it"
        ) from None
    return text + "\n" if indent is not None else text


# --- One writer per output --------------------------------------------------------------------


class OutputLock:
    """An exclusive flock on `lock_path`, taken without waiting, held until release() or the
    process ends (the kernel drops it when a killed run dies, so a rerun is never blocked)."""

    def __init__(self, lock_path: str, what: str):
        import fcntl

        from ensdist_fairseq.errors import EnsdistError

        self.path = lock_path
        try:
            self._fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise EnsdistError(f"{what}: cannot create {lock_path} ({e.strerror})") from None
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            raise EnsdistError(
                f"{what}: another run is writing here (it holds {lock_path})"
            ) from None

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

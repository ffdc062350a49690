"""Write a file so that its final name only ever holds complete content.

Results, checkpoints and reports are written to a temporary name in the same directory,
flushed to disk, then renamed (os.replace is atomic on POSIX): an interrupted job leaves
either the old file or none, never half a file that a later stage would take as finished.
"""
import os
from contextlib import contextmanager


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

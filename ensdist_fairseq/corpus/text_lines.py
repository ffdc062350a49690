"""Reading parallel text line by line, the one way every corpus step does it (pure Python).

A line ends at "\\n" only. Python's text mode also ends a line at a lone "\\r" (and
str.splitlines at "\\x0b", "\\x1c", "\\u2028", ...), while fairseq-preprocess and `wc -l` count
"\\n": one stray "\\r" inside a sentence would shift every later pair by one. So files are read
in binary, split at b"\\n", and each line is decoded on its own, so that invalid UTF-8 is
reported with its file and line. A Windows line end ("\\r\\n") is one line end; a "\\r" inside a
line is whitespace and becomes a space.
"""

from typing import Iterator, Tuple

from ensdist_fairseq.errors import EnsdistError


def read_lines(path: str) -> Iterator[str]:
    """The decoded lines of `path`, without their line end."""
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            yield decode_line(raw, path, number)


def decode_line(raw: bytes, path: str, number: int) -> str:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise EnsdistError(
            f"{path}: line {number}: invalid UTF-8 (byte 0x{raw[e.start]:02x} at "
            f"column {e.start + 1})"
        ) from None
    if text.endswith("\n"):
        text = text[:-1]
    if text.endswith("\r"):
        text = text[:-1]
    return text.replace("\r", " ")


def read_pairs(src_path: str, tgt_path: str) -> Iterator[Tuple[str, str]]:
    """The aligned lines of two files; EnsdistError when one file ends before the other
    (zip() would silently drop the rest)."""
    with open(src_path, "rb") as fs, open(tgt_path, "rb") as ft:
        number = 0
        while True:
            s, t = fs.readline(), ft.readline()
            if not s and not t:
                return
            number += 1
            if not s or not t:
                short, other = (src_path, tgt_path) if not s else (tgt_path, src_path)
                raise EnsdistError(f"{short}: ends after line {number - 1}, {other} goes on")
            yield decode_line(s, src_path, number), decode_line(t, tgt_path, number)

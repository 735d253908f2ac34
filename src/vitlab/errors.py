"""What the user can fix: every expected failure is a `VitlabError`, and `user_message` turns one into a line.

The layers raise their own subclasses (`ConfigError` for a training config, `DataError` for a data source,
`CheckpointError` for a checkpoint); each message names the file, key or value and what to do. The command
line (`vitlab.cli.main`) prints that message as one line on stderr and exits with code 2. A few exceptions of
Python's own (a file that is missing, unreadable or cannot be written; bytes that are not UTF-8) are just as
expected and get the same treatment. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import re


class VitlabError(Exception):
    """An expected failure: bad input the user can fix. The message names the problem and what to do."""


class UsageError(VitlabError, ValueError):
    """Settings that cannot work (together), found after parsing; the message says which and what to give."""


def user_message(error: BaseException) -> str | None:
    """One line for an expected failure, or None for a bug (which should keep its traceback)."""
    if isinstance(error, VitlabError):
        return one_line(str(error))
    if isinstance(error, UnicodeDecodeError):
        return one_line(f"a file is not UTF-8 text ({error.reason} at byte {error.start}); save it as UTF-8")
    if isinstance(error, OSError):
        return one_line(_os_error(error))
    if _is_safetensors_error(error):
        return one_line(f"a damaged safetensors file ({error}); write it again or use an earlier copy")
    return None


def _os_error(error: OSError) -> str:
    if error.filename is None and error.strerror is None:  # raised with a message of our own
        return str(error)
    where = f"{error.filename}: " if error.filename is not None else ""
    what = error.strerror or str(error)
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"{where}disk full ({what}); free some space (files already written are intact) and run it again"
    if isinstance(error, FileNotFoundError):
        return f"{where}not found; check the path"
    if isinstance(error, PermissionError):
        return f"{where}permission denied; check the file's owner and mode"
    if isinstance(error, IsADirectoryError):
        return f"{where}is a directory, but a file was expected"
    if isinstance(error, NotADirectoryError):
        return f"{where}is not a directory"
    return f"{where}{what}"


def _is_safetensors_error(error: BaseException) -> bool:
    return type(error).__name__ == "SafetensorError" and type(error).__module__.startswith("safetensors")


@contextlib.contextmanager
def quiet_logger(name: str | None = None):
    """A library's logger (the root logger for None) says nothing below ERROR meanwhile: its outcome reaches the
    user as vitlab's own one line."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def one_line(text: str) -> str:
    """A message on one line: a wrapped worker exception keeps only its last line (the error itself)."""
    lines = [line.strip() for line in str(text).strip().splitlines() if line.strip()]
    if not lines:
        return "unknown error"
    if any(line.startswith(("Traceback", "Original Traceback")) for line in lines):
        return re.sub(r"^[\w.]+(Error|Exception): ", "", lines[-1])
    return " ".join(lines)

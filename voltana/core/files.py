"""Writing a file so that a reader, or the next run, never sees half of it."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from voltana.core.errors import VoltanaError


class OutputPathError(VoltanaError, ValueError):
    """An output file path (``--json``, ``--plot``) that cannot be written; ``str()`` is one line without
    the option's name, which the caller adds."""


def output_file(text: str) -> Path:
    """``text`` as the path of an output file that can be written, checked before a long run rather than
    after it. Raises :class:`OutputPathError` for a path that names no file (empty, ending in a separator,
    ``.`` or ``..``: ``Path`` drops those, so ``out/`` or ``out/.`` would be written as a file ``out``), an
    existing directory, a link to a missing place, a missing or non-directory parent, one that cannot be
    written, or one the system refuses (e.g. a name too long)."""
    last = text.replace(os.sep, "/").rsplit("/", 1)[-1]  # "" when text ends in a separator
    if not text.strip() or last in ("", ".", ".."):
        raise OutputPathError(f"{text!r} is not a file path (give a file name)")
    path = Path(text)
    parent = path.parent
    try:
        if path.is_symlink() and not path.exists():
            raise OutputPathError(f"{text!r} is a link to a missing place; give a file path")
        if path.is_dir():
            raise OutputPathError(f"{text!r} is a directory; give a file path")
        if parent.exists() and not parent.is_dir():
            raise OutputPathError(f"{text!r}: {str(parent)!r} is a file, not a directory")
        if not parent.is_dir():
            raise OutputPathError(f"{text!r}: no such directory {str(parent)!r}")
        writable = os.access(parent, os.W_OK | os.X_OK) and (not path.exists() or os.access(path, os.W_OK))
    except OSError as exc:  # e.g. ENAMETOOLONG from the checks themselves
        raise OutputPathError(f"{text!r}: {exc.strerror or exc}") from None
    if not writable:
        raise OutputPathError(f"{text!r}: not writable")
    return path


def write_text_atomically(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` (UTF-8): written beside it under a name private to this process and
    thread, then renamed into place, so a concurrent reader sees the old file or the new one and an
    interrupted or failed write (Ctrl-C, a full disk) leaves the old one, never a truncated file; the
    temporary is removed on failure. Raises ``OSError``."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise

"""Writing a file so that a reader, or the next run, never sees half of it."""

from __future__ import annotations

import os
import threading
from pathlib import Path


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

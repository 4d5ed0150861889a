"""Writing a file so that a reader, or the next run, never sees half of it."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import threading
from pathlib import Path

from voltana.core.errors import VoltanaError
from voltana.core.extras import require_extra


class OutputPathError(VoltanaError, ValueError):
    """An output file path (``--json``, ``--plot``) that cannot be written; ``str()`` is one line without
    the option's name, which the caller adds."""


def output_file(text: str) -> Path:
    """``text`` as the path of an output file that can be written, checked before a long run rather than
    after it. Raises :class:`OutputPathError` for a path that names no file (empty, ending in a separator,
    ``.`` or ``..``: ``Path`` drops those, so ``out/`` or ``out/.`` would be written as a file ``out``), an
    existing directory, an existing file that is not a regular one (``/dev/null``, a named pipe: a save
    renames over it), a link to a missing place, a missing or non-directory parent, one that cannot be
    written, or one the system refuses (e.g. a name too long); a link to a missing place or one that
    loops."""
    _check_file_name(text)
    path = Path(text)
    parent = path.parent
    try:
        if path.is_symlink() and not path.exists():
            if _loops(path):
                raise OutputPathError(f"{text!r} is a link that leads back to itself; give a file path")
            raise OutputPathError(f"{text!r} is a link to a missing place; give a file path")
        if path.is_dir():
            raise OutputPathError(f"{text!r} is a directory; give a file path")
        if path.exists() and not path.is_file():  # a device, a pipe, a socket: writing would replace it
            raise OutputPathError(f"{text!r} is not a regular file; give a file path")
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


def _check_file_name(text: str) -> None:
    """Raise :class:`OutputPathError` when ``text`` names no file: empty, ending in a separator, ``.`` or
    ``..`` (``Path`` drops those, so ``out/`` or ``out/.`` would be written as a file ``out``)."""
    last = text.replace(os.sep, "/").rsplit("/", 1)[-1]  # "" when text ends in a separator
    if not text.strip() or last in ("", ".", ".."):
        raise OutputPathError(f"{text!r} is not a file path (give a file name)")


def _loops(path: Path) -> bool:
    """Whether following the link ``path`` never ends (``ELOOP``)."""
    try:
        os.stat(path)
    except OSError as exc:
        return exc.errno == errno.ELOOP
    return False


def same_file(first: Path, second: Path) -> bool:
    """Whether two output paths name one file (symbolic links followed; two hard links to one existing file
    are one file too): the one written last would replace the other's content (``-o``/``--json`` and
    ``--plot`` given the same file)."""
    if os.path.realpath(first) == os.path.realpath(second):
        return True
    try:
        return os.path.samefile(first, second)
    except OSError:  # one of them does not exist yet: different names of different files
        return False


def plot_file(text: str, command: str) -> Path:
    """``text`` as the file a ``--plot`` option will write, checked before any long run.

    ``text`` as a path (:func:`output_file`), with ``.png`` added when it has no extension (matplotlib
    would add it silently; ``figure.`` becomes ``figure.png``). Raises
    :class:`~voltana.core.extras.MissingExtraError` naming ``command`` (e.g. ``voltana simulate --plot``)
    when matplotlib, the ``plot`` extra, is missing, and :class:`OutputPathError` (one line) for a path
    :func:`output_file` refuses or an extension matplotlib cannot write
    (:meth:`FigureCanvasBase.get_supported_filetypes`; ``.pgf`` only where its LaTeX engine,
    ``rcParams["pgf.texsystem"]``, is installed).
    """
    require_extra(command, "plot", ("matplotlib",))
    import matplotlib
    from matplotlib.backend_bases import FigureCanvasBase

    _check_file_name(text)
    path = Path(text)
    # The extension as matplotlib reads it (os.path.splitext: '....png' has none, 'figure.' an empty one);
    # without one it would write NAME.rstrip('.') + '.png': that file is the one checked (a directory or
    # a pipe named NAME is no obstacle), and named in any refusal.
    if not os.path.splitext(path.name)[1][1:]:
        stem = path.name.rstrip(".")
        if not stem:
            raise OutputPathError(f"{text!r} is not a file path (give a file name)")
        path = path.with_name(stem + ".png")
    path = output_file(str(path))
    supported = set(FigureCanvasBase.get_supported_filetypes())
    texsystem = str(matplotlib.rcParams["pgf.texsystem"])
    if shutil.which(texsystem) is None:  # matplotlib lists .pgf, but writing it runs this LaTeX engine
        supported.discard("pgf")
    extension = os.path.splitext(path.name)[1][1:].lower()
    if extension not in supported:
        known = ", ".join(f".{name}" for name in sorted(supported))
        raise OutputPathError(f"{text!r}: cannot write .{extension} files; use one of {known}")
    return path


def cannot_write_plot(path: Path, exc: OSError) -> str:
    """The one line for a plot that cannot be written at the end of a run (its directory removed since the
    check, a full disk). Commands say it after their results, which are printed or saved whatever becomes of
    the plot, and then exit with status 2."""
    return f"cannot write the plot {path}: {exc.strerror or exc}"


def write_text_atomically(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` (UTF-8): written beside it under a name private to this process and
    thread, then renamed into place, so a concurrent reader sees the old file or the new one and an
    interrupted or failed write (Ctrl-C, a full disk) leaves the old one, never a truncated file; the
    temporary is removed on failure. A symbolic link is written through: its target is replaced, the link
    kept; a replaced file keeps its permission bits (a hard link to it is not updated). Raises
    ``OSError``."""
    path = Path(os.path.realpath(path))
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        with contextlib.suppress(FileNotFoundError):  # the file replaced keeps its permissions
            os.chmod(tmp, stat.S_IMODE(os.stat(path).st_mode))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise

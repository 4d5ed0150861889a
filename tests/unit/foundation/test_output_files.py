"""``voltana.core.files``: the one check of an output path (``--json``, ``-o``, ``--plot``) and the atomic
write, against what a user types and what the file system holds."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from voltana.core.files import OutputPathError, output_file, plot_file, same_file, write_text_atomically


def test_a_file_that_is_not_regular_is_refused_not_replaced(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    for text in (os.devnull, str(fifo)):
        with pytest.raises(OutputPathError, match="is not a regular file; give a file path"):
            output_file(text)
    assert not fifo.is_file() and fifo.exists()  # still the pipe
    with pytest.raises(OutputPathError, match="is not a regular file"):
        plot_file(str(fifo), "voltana simulate --plot")


def test_a_link_to_a_regular_file_is_written_through(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    target = tmp_path / "real" / "p.json"
    target.write_text("old")
    link = tmp_path / "link.json"
    link.symlink_to(target)
    assert output_file(str(link)) == link
    write_text_atomically(link, "new")
    assert link.is_symlink() and target.read_text() == "new"
    assert sorted(p.name for p in (tmp_path / "real").iterdir()) == ["p.json"]  # no temporary left


def test_a_replaced_file_keeps_its_permissions(tmp_path: Path) -> None:
    private = tmp_path / "p.json"
    private.write_text("old")
    private.chmod(0o600)
    write_text_atomically(private, "new")
    assert private.read_text() == "new" and (private.stat().st_mode & 0o777) == 0o600


@pytest.mark.parametrize(
    ("typed", "written"),
    [
        ("figure", "figure.png"),
        ("figure.", "figure.png"),
        ("figure..", "figure.png"),
        ("....png", "....png.png"),  # matplotlib's own reading (os.path.splitext): no extension
        ("..png", "..png.png"),
        ("x.SVG", "x.SVG"),
    ],
)
def test_the_plot_file_is_the_one_matplotlib_writes(typed: str, written: str, tmp_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = plot_file(str(tmp_path / typed), "voltana simulate --plot")
    assert path == tmp_path / written
    fig = plt.figure()
    fig.savefig(path)  # as the plots save: the path given, format from its extension
    plt.close(fig)
    assert sorted(p.name for p in tmp_path.iterdir()) == [written]


@pytest.mark.parametrize("typed", ["...", "..", "."])
def test_a_plot_name_of_dots_only_is_refused(typed: str, tmp_path: Path) -> None:
    with pytest.raises(OutputPathError, match="is not a file path"):
        plot_file(f"{tmp_path}/{typed}", "voltana simulate --plot")  # as typed: Path would drop '.'
    assert list(tmp_path.iterdir()) == []


def test_two_hard_links_to_one_file_are_the_same_file(tmp_path: Path) -> None:
    """``--json X --plot Y`` with X and Y hard links to one file: the plot would replace the results."""
    first = tmp_path / "results.json"
    first.write_text("{}")
    second = tmp_path / "figure.png"
    os.link(first, second)
    assert same_file(first, second) and same_file(second, first)
    assert not same_file(first, tmp_path / "other.png")  # a file not there yet is another file
    assert not same_file(tmp_path / "a.json", tmp_path / "b.png")


def test_a_link_that_loops_is_named_so(tmp_path: Path) -> None:
    loop = tmp_path / "loop.json"
    loop.symlink_to(loop)
    with pytest.raises(OutputPathError, match="is a link that leads back to itself"):
        output_file(str(loop))
    dangling = tmp_path / "dangling.json"
    dangling.symlink_to(tmp_path / "gone" / "x.json")
    with pytest.raises(OutputPathError, match="is a link to a missing place"):
        output_file(str(dangling))


def test_a_plot_name_without_extension_is_checked_as_the_file_written(tmp_path: Path) -> None:
    """``--plot results`` writes ``results.png``: a directory or a pipe named ``results`` is no obstacle,
    while a directory named ``results.png`` is."""
    (tmp_path / "results").mkdir()
    os.mkfifo(tmp_path / "pipe")
    assert plot_file(str(tmp_path / "results"), "voltana simulate --plot") == tmp_path / "results.png"
    assert plot_file(str(tmp_path / "pipe"), "voltana simulate --plot") == tmp_path / "pipe.png"
    (tmp_path / "taken.png").mkdir()
    with pytest.raises(OutputPathError, match=r"taken\.png' is a directory"):
        plot_file(str(tmp_path / "taken"), "voltana simulate --plot")

"""flashstream.data.austen on the real Debian r-cran-janeaustenr files (skipped when absent)."""

import pytest

from flashstream.data import austen

pytestmark = pytest.mark.skipif(not austen.austen_available(),
                                reason="r-cran-janeaustenr not extracted (run 'make deps' or set FLASHSTREAM_AUSTEN_DIR)")


def test_six_novels_with_known_sizes():
    books = austen.austen_books()
    assert list(books) == list(austen.BOOKS)
    # Word counts of the janeaustenr texts (whitespace split), 717,537 in all.
    words = {name: len(text.split()) for name, text in books.items()}
    assert sum(words.values()) == 717_537
    assert words["prideprejudice"] == 121_567


def test_pride_and_prejudice_opening():
    text = austen.austen_text()
    assert text.startswith("PRIDE AND PREJUDICE\n\nBy Jane Austen")
    assert "It is a truth universally acknowledged, that a single man in possession\nof a good fortune" in text
    assert text.rstrip().endswith("uniting them.")


def test_env_var_points_at_the_data_folder(monkeypatch):
    folder = austen.austen_data_dir()
    monkeypatch.setenv("FLASHSTREAM_AUSTEN_DIR", str(folder))
    assert austen.austen_data_dir() == folder
    monkeypatch.setenv("FLASHSTREAM_AUSTEN_DIR", str(folder / "nowhere"))
    assert austen.austen_data_dir() is None
    with pytest.raises(FileNotFoundError, match="r-cran-janeaustenr"):
        austen.austen_text()


def test_unknown_book():
    with pytest.raises(ValueError, match="unknown book"):
        austen.austen_text("middlemarch")

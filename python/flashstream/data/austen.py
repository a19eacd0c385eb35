"""Jane Austen's six novels from the Debian package ``r-cran-janeaustenr`` (public domain texts).

Where the files are: the package is not installed (it depends on R); its .deb is extracted with
``apt-get download r-cran-janeaustenr && dpkg-deb -x <deb> <root>`` (``make deps`` does this).
``<root>`` is ``$FLASHSTREAM_AUSTEN_DIR`` if set, else ``$XDG_CACHE_HOME/flashstream/janeaustenr``
(``~/.cache/...`` when XDG_CACHE_HOME is unset). The variable may also point straight at the
folder holding ``Rdata.rdx``.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from .rdata import read_lazyload

__all__ = ["BOOKS", "austen_data_dir", "austen_available", "austen_books", "austen_text"]

# R variable name -> title, in the order janeaustenr's austen_books() uses.
BOOKS = {
    "sensesensibility": "Sense & Sensibility",
    "prideprejudice": "Pride & Prejudice",
    "mansfieldpark": "Mansfield Park",
    "emma": "Emma",
    "northangerabbey": "Northanger Abbey",
    "persuasion": "Persuasion",
}
_IN_DEB = Path("usr", "lib", "R", "site-library", "janeaustenr", "data")


def _root() -> Path:
    env = os.environ.get("FLASHSTREAM_AUSTEN_DIR")
    if env:
        return Path(env)
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "flashstream" / "janeaustenr"


def austen_data_dir() -> Path | None:
    """The folder holding ``Rdata.rdx``/``Rdata.rdb``, or None when they are not there."""
    root = _root()
    for folder in (root, root / _IN_DEB):
        if (folder / "Rdata.rdx").is_file() and (folder / "Rdata.rdb").is_file():
            return folder
    return None


def austen_available() -> bool:
    return austen_data_dir() is not None


def _missing() -> FileNotFoundError:
    return FileNotFoundError(
        f"flashstream.data.austen: Rdata.rdx/Rdata.rdb not found under {_root()}; run "
        "'apt-get download r-cran-janeaustenr && dpkg-deb -x r-cran-janeaustenr_*.deb <dir>' "
        "and set FLASHSTREAM_AUSTEN_DIR=<dir> (or extract into the default, as 'make deps' does)")


@lru_cache(maxsize=2)
def _books(folder: Path) -> dict[str, str]:
    objects = read_lazyload(folder / "Rdata.rdx")
    out = {}
    for name in BOOKS:
        lines = objects[name].value
        # One element per line of the Project Gutenberg text; NA never occurs but is read as "".
        out[name] = "\n".join(line or "" for line in lines)
    return out


def austen_books() -> dict[str, str]:
    """The six novels as ``{r_name: text}`` (lines joined with newlines), in :data:`BOOKS` order."""
    folder = austen_data_dir()
    if folder is None:
        raise _missing()
    return dict(_books(folder))


def austen_text(book: str = "prideprejudice") -> str:
    """One novel's text; ``book`` is an R name of :data:`BOOKS` (e.g. ``"prideprejudice"``)."""
    if book not in BOOKS:
        raise ValueError(f"flashstream.data.austen: unknown book {book!r}; expected one of {list(BOOKS)}")
    return austen_books()[book]

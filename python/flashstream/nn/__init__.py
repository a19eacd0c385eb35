"""Reusable streaming modules built on :mod:`flashstream.ops`."""

from .fsq import FSQ
from .mod import MoDBlock

__all__ = ["FSQ", "MoDBlock"]

"""Reusable streaming modules built on :mod:`flashstream.ops`."""

from .fsq import FSQ

__all__ = ["FSQ"]

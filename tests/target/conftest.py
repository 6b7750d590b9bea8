"""Fixtures of the reference target's tests (defined in target_helpers.py)."""

from target_helpers import connect, server

__all__ = ["connect", "server"]

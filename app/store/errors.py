"""The store's one domain error: the shared state cannot be reached right now."""

from __future__ import annotations


class StoreUnavailable(Exception):
    """The store did not answer in time or refused the command; callers answer 503."""

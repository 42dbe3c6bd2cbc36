"""Stored chat completions (`store: true`): SQLite by default, PostgreSQL to share.

Beside the HTTP layer, not under it: the routes see the store through a protocol of
their own and get plain records back; only the start-up wiring builds one.
"""

from chatd.store.database import StoreConfigError, database_url, default_path
from chatd.store.retention import parse_duration
from chatd.store.service import CompletionStore

__all__ = ["CompletionStore", "StoreConfigError", "database_url", "default_path",
           "parse_duration"]

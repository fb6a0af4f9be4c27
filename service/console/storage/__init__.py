"""The console's state in SQL (SQLAlchemy Core, async) with Alembic migrations: SQLite for one
replica, PostgreSQL for several. :class:`ConsoleStore` is what the rest of the console uses; a
repository per concern (``items``, ``decisions``, ``sessions``, ``logins``) holds the statements,
``database`` the engine and every difference between the two databases, ``migrate`` the schema.
"""

from service.console.storage.console_store import ConsoleStore, Counts, open_store
from service.console.storage.database import StoreError
from service.console.storage.decisions import Built, DecideResult, Decision, HistoryEntry
from service.console.storage.items import ClaimResult, Item
from service.console.storage.sessions import Session

__all__ = [
    "Built",
    "ClaimResult",
    "ConsoleStore",
    "Counts",
    "DecideResult",
    "Decision",
    "HistoryEntry",
    "Item",
    "Session",
    "StoreError",
    "open_store",
]

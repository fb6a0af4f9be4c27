"""Browser sessions, kept in the database so logout is real and every replica sees them.

Only a SHA-256 of the session id is stored (see ``service.console.auth``); expired rows are
pruned whenever a session is created.
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa

from service.console.storage.database import Database
from service.console.storage.tables import sessions


@dataclass(frozen=True, slots=True)
class Session:
    username: str
    csrf: str
    expires_at: float


_NOW = sa.bindparam("now", type_=sa.DOUBLE_PRECISION)
_ID = sa.bindparam("id", type_=sa.Text)
_PRUNE = sa.delete(sessions).where(sessions.c.expires_at <= _NOW)
_INSERT = sa.insert(sessions)
_SELECT = sa.select(sessions.c.username, sessions.c.csrf, sessions.c.expires_at).where(
    sessions.c.id_hash == _ID, sessions.c.expires_at > _NOW
)
_DELETE = sa.delete(sessions).where(sessions.c.id_hash == _ID)


class Sessions:
    """Each method is one transaction."""

    def __init__(self, database: Database) -> None:
        self._db = database

    async def create(
        self, id_hash: str, username: str, csrf: str, now: float, ttl_s: float
    ) -> None:
        row = {
            "id_hash": id_hash,
            "username": username,
            "csrf": csrf,
            "created_at": float(now),
            "expires_at": float(now + ttl_s),
        }
        async with self._db.transaction() as conn:
            await conn.execute(_PRUNE, {"now": float(now)})
            await conn.execute(_INSERT, row)

    async def get(self, id_hash: str, now: float) -> Session | None:
        async with self._db.transaction() as conn:
            row = (await conn.execute(_SELECT, {"id": id_hash, "now": float(now)})).first()
        return Session(row[0], row[1], float(row[2])) if row is not None else None

    async def delete(self, id_hash: str) -> None:
        async with self._db.transaction() as conn:
            await conn.execute(_DELETE, {"id": id_hash})

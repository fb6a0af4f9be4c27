"""Login attempts per user name, shared through the database so a guesser gets the same few
tries however many console replicas answer."""

from __future__ import annotations

import sqlalchemy as sa

from service.console.storage.database import Database, nul_free
from service.console.storage.tables import login_failures

_NOW = sa.bindparam("now", type_=sa.DOUBLE_PRECISION)
_NAME = sa.bindparam("name", type_=sa.Text)
# A run is forgotten once it is old and not locked (this also bounds the table).
_FORGET = sa.delete(login_failures).where(
    login_failures.c.last_failure <= sa.bindparam("forget_before", type_=sa.DOUBLE_PRECISION),
    login_failures.c.locked_until <= _NOW,
)
_CLEAR = sa.delete(login_failures).where(login_failures.c.username == _NAME)


class LoginAttempts:
    """Each method is one transaction."""

    def __init__(self, database: Database) -> None:
        self._db = database
        table = login_failures
        insert = database.insert(table)
        # The name's run goes on (and locks at the limit) unless it is locked now.
        self._reserve = insert.on_conflict_do_update(
            index_elements=[table.c.username],
            set_={
                "failures": table.c.failures + 1,
                "locked_until": sa.case(
                    (
                        table.c.failures + 1 >= sa.bindparam("max_failures", type_=sa.Integer),
                        sa.bindparam("lock_until", type_=sa.DOUBLE_PRECISION),
                    ),
                    else_=sa.cast(0.0, sa.DOUBLE_PRECISION),
                ),
                "last_failure": _NOW,
            },
            where=table.c.locked_until <= _NOW,
        ).returning(table.c.failures)

    async def reserve(
        self, username: str, now: float, *, max_failures: int, lockout_s: float, forget_s: float
    ) -> int | None:
        """Reserve the right to check one password for ``username``; None while it is locked out.

        The attempt counts as a failure from the moment it is reserved, before the password is
        checked, until :meth:`clear` (the password was right) ends the run. So a burst of logins,
        at one replica or many, cannot all be checked: reserving is one atomic upsert (SQLite
        serialises writers; PostgreSQL's ``ON CONFLICT DO UPDATE`` locks the row and re-checks
        the ``WHERE`` on its newest version), and the ``max_failures``-th reservation in a row,
        and every later one, locks the name for ``lockout_s``. A run older than ``forget_s`` is
        forgotten (which also bounds the table under a spray of names). Returns the attempt's
        number in the run.
        """
        lock_until = float(now + lockout_s)
        params = {
            "username": nul_free(username),
            "failures": 1,
            "locked_until": lock_until if max_failures <= 1 else 0.0,
            "last_failure": float(now),
            "now": float(now),
            "max_failures": int(max_failures),
            "lock_until": lock_until,
        }
        async with self._db.transaction() as conn:
            await conn.execute(_FORGET, {"forget_before": float(now - forget_s), "now": float(now)})
            row = (await conn.execute(self._reserve, params)).first()
        return int(row[0]) if row is not None else None

    async def clear(self, username: str) -> None:
        async with self._db.transaction() as conn:
            await conn.execute(_CLEAR, {"name": nul_free(username)})

"""Login attempts per user name, shared through the database so a guesser gets the same few
tries however many console replicas answer."""

from __future__ import annotations

import sqlalchemy as sa

from service.console.storage.database import Database, nul_free
from service.console.storage.tables import login_failures


class LoginAttempts:
    """Each method is one transaction."""

    def __init__(self, database: Database) -> None:
        self._db = database

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
        table = login_failures
        locked_until = float(now + lockout_s)
        insert = self._db.insert(table).values(
            username=nul_free(username),
            failures=1,
            locked_until=locked_until if max_failures <= 1 else 0.0,
            last_failure=float(now),
        )
        reserve = insert.on_conflict_do_update(
            index_elements=[table.c.username],
            set_={
                "failures": table.c.failures + 1,
                "locked_until": sa.case(
                    (table.c.failures + 1 >= int(max_failures), locked_until), else_=0.0
                ),
                "last_failure": float(now),
            },
            where=table.c.locked_until <= now,
        ).returning(table.c.failures)
        forget = sa.delete(table).where(
            table.c.last_failure <= float(now - forget_s), table.c.locked_until <= now
        )
        async with self._db.transaction() as conn:
            await conn.execute(forget)
            row = (await conn.execute(reserve)).first()
        return int(row[0]) if row is not None else None

    async def clear(self, username: str) -> None:
        async with self._db.transaction() as conn:
            await conn.execute(
                sa.delete(login_failures).where(login_failures.c.username == nul_free(username))
            )

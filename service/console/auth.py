"""Who is asking: built-in accounts or a trusted proxy's header, sessions, and CSRF tokens.

* **Sessions** are rows in the store (so logout is real and every replica sees them); the browser
  holds a random session id signed with ``MODERATION_CONSOLE_SECRET`` (HMAC-SHA256), in a cookie
  that is ``HttpOnly``, ``SameSite=Strict``, ``Path=/`` and, when configured, ``Secure`` with the
  ``__Host-`` prefix. The store keeps only a SHA-256 of the id, so a database dump holds no
  usable session.
* **CSRF**: each session has a synchronizer token; every state-changing request must echo it
  (form field ``csrf_token`` or header ``X-CSRF-Token``). The login form, which has no session
  yet, uses a signed one-off token in a short-lived cookie (double submit).
* **Passwords**: scrypt hashes from the users file, checked in a worker thread; an unknown user
  costs the same as a wrong password.
* **Lockout**: per user name, counted in the database (``console_login_failures``), not in this
  process, so every replica sees the same run: the ``MAX_FAILURES``-th attempt in a row that was
  not right locks the name everywhere for ``LOCKOUT_S``. Each attempt is reserved in the database
  before its password is checked, so a burst of logins, at one replica or spread over several,
  gets at most ``MAX_FAILURES`` checks. A name no account can have is not counted (nothing to
  lock).
* **Trusted header** (``MODERATION_CONSOLE_TRUSTED_HEADER``): only when configured, and only from
  the proxy networks in ``MODERATION_CONSOLE_TRUSTED_PROXIES``; from anywhere else it is ignored.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from aiohttp import web

from service.console.metrics import ConsoleMetrics
from service.console.settings import ConsoleSettings, is_trusted_proxy, valid_user_name
from service.console.storage import ConsoleStore, Session
from service.console.users import hash_password, verify_password

log = logging.getLogger(__name__)

LOGIN_COOKIE = "moderation_console_login"
LOGIN_TOKEN_TTL_S = 3600
MAX_FAILURES = 5
LOCKOUT_S = 60.0
FAILURES_FORGOTTEN_S = 900.0  # a run of failed logins older than this no longer counts


@dataclass(frozen=True, slots=True)
class Identity:
    user: str
    session: Session
    session_id_hash: str
    new_cookie: str | None = None  # set: the response must carry this session cookie


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def id_hash(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


class Auth:
    def __init__(
        self,
        settings: ConsoleSettings,
        store: ConsoleStore,
        metrics: ConsoleMetrics,
        clock: Callable[[], float],
    ) -> None:
        self._settings = settings
        self._store = store
        self._metrics = metrics
        self._clock = clock
        self._dummy_hash: str | None = None
        self.cookie_name = (
            "__Host-moderation_console_session"
            if settings.secure_cookies
            else "moderation_console_session"
        )

    # -- signing ------------------------------------------------------------------------------

    def _mac(self, purpose: str, value: str) -> str:
        digest = hmac.new(
            self._settings.secret.get_secret_value().encode(),
            f"{purpose}\0{value}".encode(),
            hashlib.sha256,
        ).digest()
        return _b64(digest)

    def sign(self, purpose: str, value: str) -> str:
        return f"{value}.{self._mac(purpose, value)}"

    def unsign(self, purpose: str, signed: str | None) -> str | None:
        if not signed or "." not in signed or len(signed) > 512:
            return None
        value, _, mac = signed.rpartition(".")
        return value if hmac.compare_digest(mac, self._mac(purpose, value)) else None

    def is_lead(self, user: str) -> bool:
        return user in self._settings.leads

    # -- passwords ----------------------------------------------------------------------------

    async def check_password(
        self, username: str, password: str
    ) -> Literal["ok", "failed", "locked"]:
        """Verify a password; MAX_FAILURES attempts in a row lock the name for LOCKOUT_S.

        The attempt is reserved in the database *before* the password is checked (and counts as
        a failure until it proves right), so a burst of logins, at one replica or spread over
        many, gets at most MAX_FAILURES checks, never one per request."""
        known = username in self._settings.users
        if known or valid_user_name(username):
            attempt = await self._store.reserve_login_attempt(
                username,
                self._clock(),
                max_failures=MAX_FAILURES,
                lockout_s=LOCKOUT_S,
                forget_s=FAILURES_FORGOTTEN_S,
            )
            if attempt is None:
                self._metrics.console_logins.labels(outcome="locked").inc()
                return "locked"
        else:
            attempt = 0  # not a name any account can have: nothing to lock, never succeeds
        encoded = self._settings.users.get(username)
        if encoded is None:
            if self._dummy_hash is None:
                self._dummy_hash = await asyncio.to_thread(hash_password, secrets.token_hex(16))
            encoded = self._dummy_hash  # the same work as a real check: no user enumeration
        ok = await asyncio.to_thread(verify_password, password, encoded)
        if ok and known:
            await self._store.clear_login_failures(username)
            self._metrics.console_logins.labels(outcome="ok").inc()
            return "ok"
        self._metrics.console_logins.labels(outcome="failed").inc()
        log.warning("failed login for a user name (%d in a row)", attempt)
        return "failed"

    # -- sessions -----------------------------------------------------------------------------

    async def start_session(self, user: str) -> tuple[str, Session]:
        session_id = secrets.token_urlsafe(32)
        csrf = secrets.token_urlsafe(32)
        now = self._clock()
        ttl = self._settings.session_ttl_s
        await self._store.create_session(id_hash(session_id), user, csrf, now, ttl)
        return self.sign("session", session_id), Session(user, csrf, now + ttl)

    async def identify(self, request: web.Request) -> Identity | None:
        """The caller's identity, from the trusted header (if allowed) or the session cookie."""
        session_id = self.unsign("session", request.cookies.get(self.cookie_name))
        session = None
        hashed = ""
        if session_id is not None:
            hashed = id_hash(session_id)
            session = await self._store.session(hashed, self._clock())
        present, header_user = self._trusted_user(request)
        if present and header_user is None:
            return None  # the proxy vouches for no valid name: no session cookie overrides it
        if header_user is not None:
            if session is not None and session.username == header_user:
                return Identity(header_user, session, hashed)
            cookie, session = await self.start_session(header_user)
            self._metrics.console_logins.labels(outcome="trusted_header").inc()
            session_id = self.unsign("session", cookie)
            assert session_id is not None
            return Identity(header_user, session, id_hash(session_id), new_cookie=cookie)
        if session is None:
            return None
        return Identity(session.username, session, hashed)

    def _trusted_user(self, request: web.Request) -> tuple[bool, str | None]:
        """(a trusted proxy sent the header, the valid user name in it)."""
        header = self._settings.trusted_header
        if header is None:
            return False, None
        value = request.headers.get(header)
        if value is None:
            return False, None
        if not is_trusted_proxy(request.remote, self._settings.trusted_proxies):
            log.warning("%s header from untrusted address %s ignored", header, request.remote)
            return False, None
        value = value.strip()
        return True, value if valid_user_name(value) else None

    async def end_session(self, identity: Identity) -> None:
        await self._store.delete_session(identity.session_id_hash)

    def set_session_cookie(self, response: web.StreamResponse, value: str) -> None:
        response.set_cookie(
            self.cookie_name,
            value,
            max_age=int(self._settings.session_ttl_s),
            path="/",
            httponly=True,
            secure=self._settings.secure_cookies,
            samesite="Strict",
        )

    def clear_session_cookie(self, response: web.StreamResponse) -> None:
        response.del_cookie(
            self.cookie_name,
            path="/",
            secure=self._settings.secure_cookies,
            httponly=True,
            samesite="Strict",
        )

    # -- CSRF ---------------------------------------------------------------------------------

    @staticmethod
    def csrf_ok(session: Session, token: str | None) -> bool:
        return bool(token) and hmac.compare_digest(str(token), session.csrf)

    def login_token(self, cookie: str | None) -> tuple[str, str]:
        """(cookie value, form value) for the login form's double-submit CSRF token.

        A still-fresh token from the visitor's cookie is reused, so a second login page (another
        tab, or a browser's own request for /favicon.ico) does not invalidate the first form.
        """
        existing = self._fresh_login_token(cookie)
        if existing is not None and cookie is not None:
            return cookie, existing
        token = secrets.token_urlsafe(24)
        return self.sign("login", f"{token}:{int(self._clock())}"), token

    def _fresh_login_token(self, cookie: str | None) -> str | None:
        value = self.unsign("login", cookie)
        if value is None:
            return None
        token, _, issued = value.rpartition(":")
        try:
            fresh = self._clock() - int(issued) < LOGIN_TOKEN_TTL_S / 2
        except ValueError:
            return None
        return token if fresh and token else None

    def login_token_ok(self, cookie: str | None, token: str | None) -> bool:
        value = self.unsign("login", cookie)
        if value is None or not token:
            return False
        expected, _, issued = value.rpartition(":")
        try:
            fresh = self._clock() - int(issued) < LOGIN_TOKEN_TTL_S
        except ValueError:
            return False
        return fresh and hmac.compare_digest(expected, token)

    def set_login_cookie(self, response: web.StreamResponse, value: str) -> None:
        response.set_cookie(
            LOGIN_COOKIE,
            value,
            max_age=LOGIN_TOKEN_TTL_S,
            path="/login",
            httponly=True,
            secure=self._settings.secure_cookies,
            samesite="Strict",
        )

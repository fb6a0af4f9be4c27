"""Built-in reviewer accounts: ``name:scrypt-hash`` lines and the helper that writes them.

Hashes are ``scrypt$N$r$p$salt$hash`` (stdlib :func:`hashlib.scrypt`, salt and hash in unpadded
base64url). The cost parameters travel with each hash, so they can be raised later without
invalidating existing lines. Usage::

    python -m service.console.users add alice [--file users.txt]   # asks for the password twice
    python -m service.console.users hash                            # prints a hash only

The password may also come on standard input (one line) for scripts: ``... add alice --stdin``.
"""

from __future__ import annotations

import argparse
import base64
import getpass
import hashlib
import hmac
import os
import re
import secrets
import sys
from pathlib import Path
from typing import Final

# 2**15 x 8 x 128 bytes = 32 MiB and ~0.1 s per check: dear for a guesser, cheap for a login.
DEFAULT_N: Final = 2**15
DEFAULT_R: Final = 8
DEFAULT_P: Final = 1
_MAXMEM: Final = 256 * 1024 * 1024
_MAX_N: Final = 2**20
_NAME: Final = re.compile(r"[A-Za-z0-9._@+-]{1,128}")
MIN_PASSWORD_CHARS: Final = 10


class UserFileError(ValueError):
    """The users file cannot be used (the message names the line, never a hash)."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def hash_password(
    password: str, *, n: int = DEFAULT_N, r: int = DEFAULT_R, p: int = DEFAULT_P
) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, maxmem=_MAXMEM, dklen=32)
    return f"scrypt${n}${r}${p}${_b64(salt)}${_b64(digest)}"


def parse_hash(encoded: str) -> tuple[int, int, int, bytes, bytes]:
    parts = encoded.split("$")
    if len(parts) != 6 or parts[0] != "scrypt":
        raise ValueError("not a scrypt$N$r$p$salt$hash value")
    n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
    if n < 2 or n & (n - 1) or n > _MAX_N or not 1 <= r <= 64 or not 1 <= p <= 16:
        raise ValueError("scrypt parameters out of range")
    salt, digest = _unb64(parts[4]), _unb64(parts[5])
    if len(salt) < 8 or len(digest) < 16:
        raise ValueError("salt or hash too short")
    return n, r, p, salt, digest


def verify_password(password: str, encoded: str) -> bool:
    """Constant-time check; a malformed hash never matches (it was validated at start-up)."""
    try:
        n, r, p, salt, digest = parse_hash(encoded)
    except ValueError:
        return False
    candidate = hashlib.scrypt(
        password.encode(), salt=salt, n=n, r=r, p=p, maxmem=_MAXMEM, dklen=len(digest)
    )
    return hmac.compare_digest(candidate, digest)


def load_users(path: Path) -> dict[str, str]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UserFileError(f"cannot read {path}: {exc.strerror}") from exc
    users: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, encoded = line.partition(":")
        if not sep or not _NAME.fullmatch(name):
            raise UserFileError(f"{path} line {number}: expected name:scrypt-hash")
        try:
            parse_hash(encoded)
        except ValueError as exc:
            raise UserFileError(f"{path} line {number} ({name}): {exc}") from None
        if name in users:
            raise UserFileError(f"{path} line {number}: {name} appears twice")
        users[name] = encoded
    return users


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = getpass.getpass("password: ")
        if getpass.getpass("again: ") != password:
            raise SystemExit("passwords differ")
    if len(password) < MIN_PASSWORD_CHARS:
        raise SystemExit(f"password must have at least {MIN_PASSWORD_CHARS} characters")
    return password


def _add(path: Path, name: str, encoded: str) -> None:
    lines: list[str] = []
    if path.exists():
        lines = [
            line
            for line in path.read_text(encoding="utf-8").splitlines()
            if line.partition(":")[0].strip() != name
        ]
    lines.append(f"{name}:{encoded}")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write("\n".join(lines) + "\n")
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m service.console.users", description="Manage console reviewer accounts."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    add = commands.add_parser("add", help="add or replace a user in the users file")
    add.add_argument("name")
    add.add_argument(
        "--file", type=Path, default=None, help="default: $MODERATION_CONSOLE_USERS_FILE"
    )
    add.add_argument("--stdin", action="store_true", help="read the password from standard input")
    hash_cmd = commands.add_parser("hash", help="print a hash for a password, write nothing")
    hash_cmd.add_argument("--stdin", action="store_true")
    args = parser.parse_args(argv)
    if args.command == "hash":
        print(hash_password(_read_password(args.stdin)))
        return 0
    if not _NAME.fullmatch(args.name):
        raise SystemExit("user names are 1-128 of A-Z a-z 0-9 . _ @ + -")
    path = args.file or (
        Path(os.environ["MODERATION_CONSOLE_USERS_FILE"])
        if os.environ.get("MODERATION_CONSOLE_USERS_FILE")
        else None
    )
    if path is None:
        raise SystemExit("no users file: pass --file or set MODERATION_CONSOLE_USERS_FILE")
    _add(path, args.name, hash_password(_read_password(args.stdin)))
    print(f"{args.name} written to {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The console's own configuration (``MODERATION_CONSOLE_*``), validated once at start-up.

Everything shared with the rest of the service (Kafka, topics, S3 endpoint, local review store,
URL-fetch rules) comes from :class:`service.settings.Settings`; this adds what only the console
needs. Each problem is a :class:`ConfigError` naming the variable. The session secret and the
database password never appear in ``repr``.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

from service.console.users import UserFileError, load_users
from service.errors import ConfigError
from service.settings import EnvReader, IpNetwork, Settings

_FLOW_DEFINITION_ARN = re.compile(
    r"arn:aws[a-z\-]*:sagemaker:(?P<region>[a-z0-9\-]+):(?P<account>[0-9]{12}):"
    r"flow-definition/(?P<name>[a-z0-9](-*[a-z0-9])*)"
)
_HEADER_NAME = re.compile(r"[A-Za-z0-9-]{1,64}")
_USER_NAME = re.compile(r"[A-Za-z0-9._@+-]{1,128}")
MIN_SECRET_CHARS = 32


@dataclass(frozen=True)
class Database:
    """Where the console keeps its state: ``sqlite`` (one file) or ``postgresql`` (shared)."""

    kind: Literal["sqlite", "postgresql"]
    path: Path | None  # sqlite
    dsn: str | None = field(default=None, repr=False)  # postgresql, may carry a password
    shown: str = ""  # the DSN without its password, for logs


@dataclass(frozen=True)
class OutputLocation:
    """Where ``output.json`` files go: A2I's ``S3OutputPath`` or a local directory."""

    kind: Literal["s3", "file"]
    bucket: str | None  # s3
    prefix: str  # s3: key prefix without slashes at either end ("" for the bucket root)
    directory: Path | None  # file


@dataclass(frozen=True)
class FlowDefinition:
    arn: str
    name: str
    region: str
    account: str


@dataclass(frozen=True)
class ConsoleSettings:
    host: str
    port: int  # 0 picks a free port (tests)
    public_url: str
    issuer: str  # workerMetadata.identityData.issuer
    secret: bytes = field(repr=False)
    secure_cookies: bool
    session_ttl_s: float
    claim_ttl_s: float
    users: Mapping[str, str] = field(repr=False)  # name -> scrypt hash
    leads: frozenset[str]
    trusted_header: str | None
    trusted_proxies: tuple[IpNetwork, ...]
    database: Database
    output: OutputLocation
    flow_definition: FlowDefinition
    group_id: str
    include_managed: bool

    @classmethod
    def from_env(cls, env: Mapping[str, str], base: Settings) -> ConsoleSettings:
        return _ConsoleReader(env).console(base)


def parse_flow_definition(variable: str, arn: str) -> FlowDefinition:
    match = _FLOW_DEFINITION_ARN.fullmatch(arn)
    if match is None:
        raise ConfigError(
            variable, "expected arn:aws:sagemaker:<region>:<account>:flow-definition/<name>"
        )
    return FlowDefinition(
        arn=arn, name=match["name"], region=match["region"], account=match["account"]
    )


class _ConsoleReader(EnvReader):
    def console(self, base: Settings) -> ConsoleSettings:
        port = self.integer("MODERATION_CONSOLE_PORT", 8090, low=0, high=65535)
        public_url = self.public_url(port)
        secure_default = public_url.startswith("https://")
        trusted_header = self.raw("MODERATION_CONSOLE_TRUSTED_HEADER")
        proxies = self.networks("MODERATION_CONSOLE_TRUSTED_PROXIES")
        if trusted_header is not None:
            if not _HEADER_NAME.fullmatch(trusted_header):
                raise ConfigError(
                    "MODERATION_CONSOLE_TRUSTED_HEADER", f"not a header name: {trusted_header!r}"
                )
            if not proxies:
                raise ConfigError(
                    "MODERATION_CONSOLE_TRUSTED_PROXIES",
                    "required with MODERATION_CONSOLE_TRUSTED_HEADER: the addresses of the "
                    "authenticating proxy (the header is ignored from anywhere else)",
                )
        users = self.users()
        if not users and trusted_header is None:
            raise ConfigError(
                "MODERATION_CONSOLE_USERS_FILE",
                "no way to log in: set it (or MODERATION_CONSOLE_TRUSTED_HEADER)",
            )
        region = base.backend.region or "us-east-1"
        flow = parse_flow_definition(
            "MODERATION_CONSOLE_FLOW_DEFINITION_ARN",
            self.text(
                "MODERATION_CONSOLE_FLOW_DEFINITION_ARN",
                f"arn:aws:sagemaker:{region}:000000000000:flow-definition/moderation-console",
            ),
        )
        return ConsoleSettings(
            host=self.text("MODERATION_CONSOLE_HOST", "0.0.0.0"),  # noqa: S104  (behind a Service)
            port=port,
            public_url=public_url,
            issuer=self.text("MODERATION_CONSOLE_ISSUER", public_url),
            secret=self.secret(),
            secure_cookies=self.boolean("MODERATION_CONSOLE_SECURE_COOKIES", secure_default),
            session_ttl_s=self.number(
                "MODERATION_CONSOLE_SESSION_TTL_S", 12 * 3600.0, low=60, high=30 * 86400
            ),
            claim_ttl_s=self.number("MODERATION_CONSOLE_CLAIM_TTL_S", 900.0, low=1, high=86400),
            users=users,
            leads=self.leads(),
            trusted_header=trusted_header,
            trusted_proxies=proxies,
            database=self.database(),
            output=self.output(base),
            flow_definition=flow,
            group_id=self.text("MODERATION_CONSOLE_GROUP_ID", f"{base.kafka.group_id}-console"),
            include_managed=self.boolean("MODERATION_CONSOLE_INCLUDE_MANAGED", False),
        )

    def public_url(self, port: int) -> str:
        value = self.text("MODERATION_CONSOLE_PUBLIC_URL", f"http://localhost:{port}")
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigError(
                "MODERATION_CONSOLE_PUBLIC_URL", f"expected an http(s) URL, got {value!r}"
            )
        return urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))

    def secret(self) -> bytes:
        inline = self.raw("MODERATION_CONSOLE_SECRET")
        path = self.raw("MODERATION_CONSOLE_SECRET_FILE")
        if inline is not None and path is not None:
            raise ConfigError(
                "MODERATION_CONSOLE_SECRET_FILE",
                "set either it or MODERATION_CONSOLE_SECRET, not both",
            )
        variable = "MODERATION_CONSOLE_SECRET"
        value = inline
        if path is not None:
            variable = "MODERATION_CONSOLE_SECRET_FILE"
            try:
                value = Path(path).read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise ConfigError(variable, f"cannot read {path}: {exc.strerror}") from exc
        if value is None:
            raise ConfigError(
                "MODERATION_CONSOLE_SECRET",
                "required: a random string of at least 32 characters that signs session cookies "
                "(e.g. python -c 'import secrets; print(secrets.token_urlsafe(48))')",
            )
        if len(value) < MIN_SECRET_CHARS:
            # The value itself is never echoed.
            raise ConfigError(variable, f"must be at least {MIN_SECRET_CHARS} characters")
        return value.encode()

    def users(self) -> dict[str, str]:
        path = self.raw("MODERATION_CONSOLE_USERS_FILE")
        if path is None:
            return {}
        try:
            return load_users(Path(path))
        except UserFileError as exc:
            raise ConfigError("MODERATION_CONSOLE_USERS_FILE", str(exc)) from exc

    def leads(self) -> frozenset[str]:
        names = {
            part.strip() for part in (self.raw("MODERATION_CONSOLE_LEADS") or "").split(",")
        } - {""}
        for name in names:
            if not _USER_NAME.fullmatch(name):
                raise ConfigError("MODERATION_CONSOLE_LEADS", f"not a user name: {name!r}")
        return frozenset(names)

    def database(self) -> Database:
        value = self.raw("MODERATION_CONSOLE_DATABASE")
        variable = "MODERATION_CONSOLE_DATABASE"
        if value is None:
            raise ConfigError(
                variable,
                "required: sqlite:///relative.db, sqlite:////absolute/path.db (one replica) or "
                "postgresql://user@host/db (several replicas)",
            )
        if value.startswith("sqlite:///"):
            path = Path(value.removeprefix("sqlite:///"))
            if not path.name:
                raise ConfigError(variable, "the sqlite URL names no file")
            if not path.parent.is_dir():
                raise ConfigError(variable, f"directory {path.parent} does not exist")
            return Database(kind="sqlite", path=path, shown=value)
        parts = urlsplit(value)
        if parts.scheme in ("postgresql", "postgres"):
            host = parts.hostname or ""
            user = f"{parts.username}@" if parts.username else ""
            port = f":{parts.port}" if parts.port else ""
            shown = f"{parts.scheme}://{user}{host}{port}{parts.path}"
            return Database(kind="postgresql", path=None, dsn=value, shown=shown)
        raise ConfigError(variable, "expected a sqlite:/// or postgresql:// URL")

    def output(self, base: Settings) -> OutputLocation:
        variable = "MODERATION_CONSOLE_OUTPUT_URI"
        local_store = base.review.local_store
        value = self.raw(variable)
        if value is None:
            if local_store is None:
                raise ConfigError(
                    variable,
                    "required: s3://bucket[/prefix] (A2I's S3OutputPath) or, for the embedded "
                    "setup, set MODERATION_REVIEW_LOCAL_STORE",
                )
            value = local_store.resolve().as_uri()
        parts = urlsplit(value)
        if parts.scheme == "s3":
            if not parts.netloc:
                raise ConfigError(variable, f"no bucket in {value!r}")
            return OutputLocation(
                kind="s3", bucket=parts.netloc, prefix=parts.path.strip("/"), directory=None
            )
        if parts.scheme == "file":
            directory = Path(parts.path).resolve()
            if local_store is None or not directory.is_relative_to(local_store.resolve()):
                raise ConfigError(
                    variable,
                    "a file:// output must be inside MODERATION_REVIEW_LOCAL_STORE, the directory "
                    "the completion sink reads from",
                )
            return OutputLocation(kind="file", bucket=None, prefix="", directory=directory)
        raise ConfigError(variable, f"expected s3:// or file://, got {value!r}")


def is_trusted_proxy(remote: str | None, networks: tuple[IpNetwork, ...]) -> bool:
    if not remote:
        return False
    try:
        address = ipaddress.ip_address(remote)
    except ValueError:
        return False
    return any(address in network for network in networks)


def valid_user_name(name: str) -> bool:
    return _USER_NAME.fullmatch(name) is not None

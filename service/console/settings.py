"""The console's own configuration (``MODERATION_CONSOLE_*``), validated once at start-up.

Everything shared with the rest of the service (Kafka, topics, S3 endpoint, local review store,
URL-fetch rules) comes from :class:`service.settings.Settings`; this adds what only the console
needs. Each problem is a :class:`ConfigError` naming the variable. The session secret and the
database's DSN are ``SecretStr`` and never appear in ``repr``.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from service.console.users import load_users
from service.environment import (
    CommaSeparated,
    EnvSettings,
    Flag,
    IpNetwork,
    Networks,
    load,
    required,
    variable,
)
from service.errors import ConfigError
from service.settings import Settings

_FLOW_DEFINITION_ARN = re.compile(
    r"arn:aws[a-z\-]*:sagemaker:(?P<region>[a-z0-9\-]+):(?P<account>[0-9]{12}):"
    r"flow-definition/(?P<name>[a-z0-9](-*[a-z0-9])*)"
)
_HEADER_NAME = re.compile(r"[A-Za-z0-9-]{1,64}")
_USER_NAME = re.compile(r"[A-Za-z0-9._@+-]{1,128}")
MIN_SECRET_CHARS = 32


class _Value(BaseModel):
    model_config = ConfigDict(frozen=True)


class Database(_Value):
    """Where the console keeps its state: ``sqlite`` (one file) or ``postgresql`` (shared)."""

    kind: Literal["sqlite", "postgresql"]
    path: Path | None  # sqlite
    dsn: SecretStr | None = Field(default=None, repr=False)  # postgresql, may carry a password
    shown: str = ""  # the DSN without its password, for logs


class OutputLocation(_Value):
    """Where ``output.json`` files go: A2I's ``S3OutputPath`` or a local directory."""

    kind: Literal["s3", "file"]
    bucket: str | None  # s3
    prefix: str  # s3: key prefix without slashes at either end ("" for the bucket root)
    directory: Path | None  # file


class FlowDefinition(_Value):
    arn: str
    name: str
    region: str
    account: str


def parse_flow_definition(variable: str, arn: str) -> FlowDefinition:
    match = _FLOW_DEFINITION_ARN.fullmatch(arn)
    if match is None:
        raise ConfigError(
            variable, "expected arn:aws:sagemaker:<region>:<account>:flow-definition/<name>"
        )
    return FlowDefinition(
        arn=arn, name=match["name"], region=match["region"], account=match["account"]
    )


def _public_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"expected an http(s) URL, got {value!r}")
    return urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))


def _header_name(value: str) -> str:
    if not _HEADER_NAME.fullmatch(value):
        raise ValueError(f"not a header name: {value!r}")
    return value


def _user_name(value: str) -> str:
    if not valid_user_name(value):
        raise ValueError(f"not a user name: {value!r}")
    return value


def _users(value: object) -> object:
    return load_users(Path(value)) if isinstance(value, str) else value


def _database(value: object) -> object:
    """``sqlite:///path`` or ``postgresql://user:password@host/db``; the error never echoes it."""
    if not isinstance(value, str):
        return value
    if value.startswith("sqlite:///"):
        path = Path(value.removeprefix("sqlite:///"))
        if not path.name:
            raise ValueError("the sqlite URL names no file")
        if not path.parent.is_dir():
            raise ValueError(f"directory {path.parent} does not exist")
        return Database(kind="sqlite", path=path, shown=value)
    parts = urlsplit(value)
    if parts.scheme in ("postgresql", "postgres"):
        host = parts.hostname or ""
        user = f"{parts.username}@" if parts.username else ""
        port = f":{parts.port}" if parts.port else ""
        shown = f"{parts.scheme}://{user}{host}{port}{parts.path}"
        return Database(kind="postgresql", path=None, dsn=SecretStr(value), shown=shown)
    raise ValueError("expected a sqlite:/// or postgresql:// URL")


def _flow_definition(value: object) -> object:
    if isinstance(value, str):
        return parse_flow_definition("MODERATION_CONSOLE_FLOW_DEFINITION_ARN", value)
    return value


def _secret_from_file(data: dict[str, Any]) -> SecretStr:
    path: Path | None = data["secret_file"]
    if path is None:
        raise ConfigError(
            "MODERATION_CONSOLE_SECRET",
            f"required: a random string of at least {MIN_SECRET_CHARS} characters that signs "
            "session cookies (e.g. python -c 'import secrets; print(secrets.token_urlsafe(48))')",
        )
    try:
        value = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(
            "MODERATION_CONSOLE_SECRET_FILE", f"cannot read {path}: {exc.strerror}"
        ) from exc
    if len(value) < MIN_SECRET_CHARS:
        raise ConfigError(
            "MODERATION_CONSOLE_SECRET_FILE", f"must be at least {MIN_SECRET_CHARS} characters"
        )
    return SecretStr(value)


def _output(data: dict[str, Any]) -> str:
    local_store: Path | None = data["review_local_store"]
    if local_store is None:
        raise ConfigError(
            "MODERATION_CONSOLE_OUTPUT_URI",
            "required: s3://bucket[/prefix] (A2I's S3OutputPath) or, for the embedded setup, "
            "set MODERATION_REVIEW_LOCAL_STORE",
        )
    return local_store.resolve().as_uri()


class ConsoleSettings(EnvSettings):
    host: str = variable("MODERATION_CONSOLE_HOST", "0.0.0.0")  # noqa: S104  (behind a Service)
    port: int = variable("MODERATION_CONSOLE_PORT", 8090, ge=0, le=65535)  # 0: a free port
    public_url: Annotated[str, AfterValidator(_public_url)] = variable(
        "MODERATION_CONSOLE_PUBLIC_URL", default_factory=lambda d: f"http://localhost:{d['port']}"
    )
    issuer: str = variable(  # workerMetadata.identityData.issuer
        "MODERATION_CONSOLE_ISSUER", default_factory=lambda d: d["public_url"]
    )
    secret_file: Path | None = variable("MODERATION_CONSOLE_SECRET_FILE", None)
    secret: SecretStr = variable(
        "MODERATION_CONSOLE_SECRET", default_factory=_secret_from_file, repr=False
    )
    secure_cookies: Flag = variable(
        "MODERATION_CONSOLE_SECURE_COOKIES",
        default_factory=lambda d: d["public_url"].startswith("https://"),
    )
    session_ttl_s: float = variable(
        "MODERATION_CONSOLE_SESSION_TTL_S", 12 * 3600.0, ge=60, le=30 * 86400
    )
    claim_ttl_s: float = variable("MODERATION_CONSOLE_CLAIM_TTL_S", 900.0, ge=1, le=86400)
    # name -> scrypt hash
    users: Annotated[Mapping[str, str], BeforeValidator(_users)] = variable(
        "MODERATION_CONSOLE_USERS_FILE", default_factory=dict, repr=False, exclude=True
    )
    leads: Annotated[frozenset[Annotated[str, AfterValidator(_user_name)]], CommaSeparated] = (
        variable("MODERATION_CONSOLE_LEADS", frozenset())
    )
    trusted_header: Annotated[str, AfterValidator(_header_name)] | None = variable(
        "MODERATION_CONSOLE_TRUSTED_HEADER", None
    )
    trusted_proxies: Networks = variable("MODERATION_CONSOLE_TRUSTED_PROXIES", ())
    database: Annotated[Database, BeforeValidator(_database)] = variable(
        "MODERATION_CONSOLE_DATABASE",
        default_factory=required(
            "MODERATION_CONSOLE_DATABASE",
            "sqlite:///relative.db, sqlite:////absolute/path.db (one replica) or "
            "postgresql://user@host/db (several replicas)",
        ),
    )
    # From the service's settings: where the completion sink reads file:// outputs.
    review_local_store: Path | None = None
    output: OutputLocation = variable("MODERATION_CONSOLE_OUTPUT_URI", default_factory=_output)
    flow_definition: Annotated[FlowDefinition, BeforeValidator(_flow_definition)] = variable(
        "MODERATION_CONSOLE_FLOW_DEFINITION_ARN"
    )
    group_id: str = variable("MODERATION_CONSOLE_GROUP_ID")
    include_managed: Flag = variable("MODERATION_CONSOLE_INCLUDE_MANAGED", False)

    @field_validator("secret")
    @classmethod
    def _long_enough(cls, value: SecretStr) -> SecretStr:
        if len(value.get_secret_value()) < MIN_SECRET_CHARS:
            raise ValueError(f"must be at least {MIN_SECRET_CHARS} characters")  # never echoed
        return value

    @field_validator("output", mode="before")
    @classmethod
    def _output_location(cls, value: Any, info: ValidationInfo) -> Any:
        if not isinstance(value, str):
            return value
        parts = urlsplit(value)
        if parts.scheme == "s3":
            if not parts.netloc:
                raise ValueError(f"no bucket in {value!r}")
            return OutputLocation(
                kind="s3", bucket=parts.netloc, prefix=parts.path.strip("/"), directory=None
            )
        if parts.scheme == "file":
            directory = Path(parts.path).resolve()
            local_store = info.data.get("review_local_store")
            if local_store is None or not directory.is_relative_to(local_store.resolve()):
                raise ValueError(
                    "a file:// output must be inside MODERATION_REVIEW_LOCAL_STORE, the directory "
                    "the completion sink reads from"
                )
            return OutputLocation(kind="file", bucket=None, prefix="", directory=directory)
        raise ValueError(f"expected s3:// or file://, got {value!r}")

    @model_validator(mode="after")
    def _a_way_to_log_in(self) -> ConsoleSettings:
        if self.secret_file is not None and "secret" in self.model_fields_set:
            raise ConfigError(
                "MODERATION_CONSOLE_SECRET_FILE",
                "set either it or MODERATION_CONSOLE_SECRET, not both",
            )
        if self.trusted_header is not None and not self.trusted_proxies:
            raise ConfigError(
                "MODERATION_CONSOLE_TRUSTED_PROXIES",
                "required with MODERATION_CONSOLE_TRUSTED_HEADER: the addresses of the "
                "authenticating proxy (the header is ignored from anywhere else)",
            )
        if not self.users and self.trusted_header is None:
            raise ConfigError(
                "MODERATION_CONSOLE_USERS_FILE",
                "no way to log in: set it (or MODERATION_CONSOLE_TRUSTED_HEADER)",
            )
        return self

    @classmethod
    def from_env(cls, env: Mapping[str, str], base: Settings) -> ConsoleSettings:
        region = base.backend.region or "us-east-1"
        return load(
            cls,
            env,
            defaults={
                "MODERATION_CONSOLE_GROUP_ID": f"{base.kafka.group_id}-console",
                "MODERATION_CONSOLE_FLOW_DEFINITION_ARN": (
                    f"arn:aws:sagemaker:{region}:000000000000:flow-definition/moderation-console"
                ),
            },
            review_local_store=base.review.local_store,
        )


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

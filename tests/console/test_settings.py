"""Start-up validation of the console's settings, and the accounts helper."""

from __future__ import annotations

import io
import logging
import traceback
from pathlib import Path

import pytest

from service.console.settings import ConsoleSettings
from service.console.users import load_users, main, verify_password
from service.errors import ConfigError
from service.logs import JsonFormatter
from service.settings import Settings
from tests.console.harness import SECRET, base_env


def console_settings(env: dict[str, str]) -> ConsoleSettings:
    return ConsoleSettings.from_env(env, Settings.from_env(env))


def test_defaults_and_secrets_stay_out_of_repr(tmp_path: Path) -> None:
    env = base_env(tmp_path)
    settings = console_settings(env)
    assert settings.claim_ttl_s == 300
    assert settings.secure_cookies is False  # http public URL
    assert settings.output.kind == "file"
    assert settings.output.directory == (tmp_path / "outputs").resolve()
    assert settings.flow_definition.name == "moderation-console"
    assert settings.group_id == "image-moderation-console"
    assert SECRET not in repr(settings) and "scrypt$" not in repr(settings)
    https = console_settings(
        env
        | {
            "MODERATION_CONSOLE_PUBLIC_URL": "https://review.example.com/",
            "MODERATION_CONSOLE_OUTPUT_URI": "s3://a2i-output/reviews/",
            "MODERATION_CONSOLE_DATABASE": "postgresql://console:hunter2@db:5432/console",
        }
    )
    assert https.secure_cookies is True and https.issuer == "https://review.example.com"
    assert (https.output.bucket, https.output.prefix) == ("a2i-output", "reviews")
    assert (
        "hunter2" not in repr(https)
        and https.database.shown == "postgresql://console@db:5432/console"
    )


@pytest.mark.parametrize(
    ("change", "variable"),
    [
        ({"MODERATION_CONSOLE_SECRET": ""}, "MODERATION_CONSOLE_SECRET"),
        ({"MODERATION_CONSOLE_SECRET": "short"}, "MODERATION_CONSOLE_SECRET"),
        ({"MODERATION_CONSOLE_DATABASE": ""}, "MODERATION_CONSOLE_DATABASE"),
        ({"MODERATION_CONSOLE_DATABASE": "mysql://x"}, "MODERATION_CONSOLE_DATABASE"),
        (
            {"MODERATION_CONSOLE_DATABASE": "sqlite:////no/such/dir/x.db"},
            "MODERATION_CONSOLE_DATABASE",
        ),
        ({"MODERATION_CONSOLE_USERS_FILE": ""}, "MODERATION_CONSOLE_USERS_FILE"),
        ({"MODERATION_CONSOLE_USERS_FILE": "/no/such/file"}, "MODERATION_CONSOLE_USERS_FILE"),
        ({"MODERATION_CONSOLE_TRUSTED_HEADER": "X-User"}, "MODERATION_CONSOLE_TRUSTED_PROXIES"),
        ({"MODERATION_CONSOLE_TRUSTED_HEADER": "bad header"}, "MODERATION_CONSOLE_TRUSTED_HEADER"),
        ({"MODERATION_CONSOLE_OUTPUT_URI": "file:///etc"}, "MODERATION_CONSOLE_OUTPUT_URI"),
        ({"MODERATION_CONSOLE_OUTPUT_URI": "ftp://x"}, "MODERATION_CONSOLE_OUTPUT_URI"),
        ({"MODERATION_REVIEW_LOCAL_STORE": ""}, "MODERATION_CONSOLE_OUTPUT_URI"),
        ({"MODERATION_CONSOLE_CLAIM_TTL_S": "0"}, "MODERATION_CONSOLE_CLAIM_TTL_S"),
        ({"MODERATION_CONSOLE_PUBLIC_URL": "review.example.com"}, "MODERATION_CONSOLE_PUBLIC_URL"),
        ({"MODERATION_CONSOLE_LEADS": "ok, not ok"}, "MODERATION_CONSOLE_LEADS"),
        (
            {"MODERATION_CONSOLE_FLOW_DEFINITION_ARN": "arn:aws:sagemaker:x"},
            "MODERATION_CONSOLE_FLOW_DEFINITION_ARN",
        ),
    ],
)
def test_bad_settings_name_their_variable(
    tmp_path: Path, change: dict[str, str], variable: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        console_settings(base_env(tmp_path) | change)
    assert caught.value.variable == variable
    assert "short" not in caught.value.problem  # a secret is never echoed


def test_secrets_stay_out_of_dumps_logs_and_error_traces(tmp_path: Path) -> None:
    dsn = "postgresql://console:hunter2@db:5432/console"
    settings = console_settings(base_env(tmp_path) | {"MODERATION_CONSOLE_DATABASE": dsn})
    assert settings.secret.get_secret_value() == SECRET
    assert settings.database.dsn is not None and settings.database.dsn.get_secret_value() == dsn
    record = logging.LogRecord("t", logging.INFO, __file__, 1, "console %s", (settings,), None)
    for text in (settings.model_dump_json(), str(settings.model_dump()), *formatted(record)):
        assert SECRET not in text and "hunter2" not in text and "scrypt$" not in text
    for change in (
        {"MODERATION_CONSOLE_SECRET": "tooshort-s3cret"},
        {"MODERATION_CONSOLE_DATABASE": "mysql://console:hunter2@db/console"},
    ):
        with pytest.raises(ConfigError) as caught:
            console_settings(base_env(tmp_path) | change)
        trace = "".join(traceback.format_exception(caught.value))  # with pydantic's cause
        assert "tooshort-s3cret" not in trace and "hunter2" not in trace


def formatted(record: logging.LogRecord) -> tuple[str, str]:
    return JsonFormatter().format(record), logging.Formatter().format(record)


def test_secret_from_a_file(tmp_path: Path) -> None:
    env = base_env(tmp_path)
    del env["MODERATION_CONSOLE_SECRET"]
    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET + "\n")
    env["MODERATION_CONSOLE_SECRET_FILE"] = str(secret_file)
    assert console_settings(env).secret.get_secret_value() == SECRET
    secret_file.write_text("tooshort-s3cret")
    with pytest.raises(ConfigError) as caught:
        console_settings(env)
    assert caught.value.variable == "MODERATION_CONSOLE_SECRET_FILE"
    assert "tooshort" not in str(caught.value)
    with pytest.raises(ConfigError) as caught:
        console_settings(env | {"MODERATION_CONSOLE_SECRET": SECRET})
    assert "not both" in caught.value.problem


def test_users_file_errors_name_the_line_not_the_hash(tmp_path: Path) -> None:
    path = tmp_path / "users.txt"
    path.write_text(
        "# reviewers\nalice:scrypt$1024$8$1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA\nbob:plain\n"
    )
    with pytest.raises(ValueError, match=r"line 3 \(bob\)"):
        load_users(path)


def test_the_users_helper_adds_and_replaces_accounts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "users.txt"
    for password in ("first password", "second password"):
        monkeypatch.setattr("sys.stdin", io.StringIO(password + "\n"))
        assert main(["add", "alice", "--file", str(path), "--stdin"]) == 0
    monkeypatch.setattr("sys.stdin", io.StringIO("bob's password\n"))
    assert main(["add", "bob", "--file", str(path), "--stdin"]) == 0
    users = load_users(path)
    assert sorted(users) == ["alice", "bob"]
    assert verify_password("second password", users["alice"])
    assert not verify_password("first password", users["alice"])
    assert path.stat().st_mode & 0o077 == 0  # not readable by others
    monkeypatch.setattr("sys.stdin", io.StringIO("short\n"))
    with pytest.raises(SystemExit):
        main(["add", "carol", "--file", str(path), "--stdin"])

"""Settings from RECALL_* variables; bad ones fail at start-up naming what to change."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import BaseModel

from recall.cli import main
from service.settings import OTHER_ENV, Settings, SettingsInvalidError, env_name, load_settings
from tests.service.fixtures import ROOT


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No RECALL_* variables and no .env file from the machine running the tests."""
    for key in list(os.environ):
        if key.startswith("RECALL_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)


def test_defaults_are_safe_for_latency() -> None:
    settings = load_settings()
    assert settings.limits.max_k == 1000 and settings.limits.default_k == 100
    assert settings.redis.socket_timeout_ms == 50 and settings.redis.connect_timeout_ms == 50
    assert (settings.threads.torch, settings.threads.faiss) == (1, 1)
    assert settings.redis_url is None and settings.admin_token is None


def test_nested_groups_and_secrets_come_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RECALL_LIMITS__MAX_K", "500")
    monkeypatch.setenv("RECALL_REDIS__SOCKET_TIMEOUT_MS", "20")
    monkeypatch.setenv("RECALL_REDIS_URL", "redis://:hunter2@cache:6379/0")
    monkeypatch.setenv("RECALL_ADMIN_TOKEN", "a" * 32)
    settings = load_settings(port=9000)
    assert settings.limits.max_k == 500 and settings.redis.socket_timeout_ms == 20
    assert settings.port == 9000
    assert "hunter2" not in repr(settings) and "a" * 32 not in repr(settings)
    assert settings.redis_url is not None
    assert settings.redis_url.get_secret_value().endswith("@cache:6379/0")


def test_an_empty_token_or_url_means_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECALL_ADMIN_TOKEN", "")
    monkeypatch.setenv("RECALL_REDIS_URL", "")
    settings = load_settings()
    assert settings.admin_token is None and settings.redis_url is None


@pytest.mark.parametrize(
    ("name", "value", "says"),
    [
        ("RECALL_LIMITS__MAX_K", "0", "greater than or equal to 1"),
        ("RECALL_LIMITS__DEFAULT_K", "5000", "RECALL_LIMITS__MAX_K"),
        ("RECALL_REDIS__SOCKET_TIMEOUT_MS", "5000", "less than or equal to 1000"),
        ("RECALL_ADMIN_TOKEN", "short", "at least 16 characters"),
        ("RECALL_REDIS_URL", "http://cache:6379", "redis://"),
        ("RECALL_THREADS__TORCH", "many", "valid integer"),
        ("RECALL_LIMITS__MAX_KK", "5", "Extra inputs"),
        ("RECALL_REDIS_TIMEOUT", "5", "not a setting"),
    ],
)
def test_bad_settings_fail_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, says: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsInvalidError) as caught:
        load_settings()
    message = str(caught.value)
    assert says in message
    assert name.split("__")[0] in message


def test_recall_serve_exits_2_with_the_message_on_bad_settings(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("RECALL_LIMITS__MAX_BATCH", "0")
    assert main(["serve", "--snapshots", "nowhere"]) == 2
    assert "RECALL_LIMITS__MAX_BATCH" in capsys.readouterr().err


def documented_names() -> set[str]:
    text = (ROOT / ".env.example").read_text()
    return {line.split("=", 1)[0] for line in text.splitlines() if line.startswith("RECALL_")}


def setting_names() -> set[str]:
    names = set(OTHER_ENV)
    for name, field in Settings.model_fields.items():
        group = field.annotation
        if isinstance(group, type) and issubclass(group, BaseModel):
            names |= {env_name((name, knob)) for knob in group.model_fields}
        else:
            names.add(env_name((name,)))
    return names


def test_env_example_documents_every_setting_and_loads() -> None:
    assert documented_names() == setting_names()
    settings = Settings(_env_file=ROOT / ".env.example")  # type: ignore[call-arg]
    assert settings == load_settings()  # the example holds the defaults


def test_a_typo_in_the_env_file_is_refused_like_one_in_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("RECALL_ADMN_TOKEN=0123456789abcdef0123\n")
    with pytest.raises(SettingsInvalidError) as caught:
        load_settings()
    assert "RECALL_ADMN_TOKEN (in .env): not a setting" in str(caught.value)
    (tmp_path / ".env").write_text("RECALL_ADMIN_TOKEN=0123456789abcdef0123\n")
    assert load_settings().admin_token is not None

"""Settings: one loader, one-line errors, every variable in --help."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from consumers.settings import VARS, Settings, SettingsError


def test_defaults_match_the_contract() -> None:
    """With no environment, every default of CONTRACT §6 applies."""
    s = Settings.from_env({})
    assert s.nats_url == "nats://127.0.0.1:4222"
    assert s.database_url == "postgresql://127.0.0.1:5432/batchyard"
    assert s.gemini_api_version == "v1beta" and s.model == "gemini-embedding-001"
    assert (s.poll_interval, s.key_check_interval, s.max_wait) == (30, 60, 48 * 3600)
    assert s.auth_recovery_enabled and s.fallback_to_online
    assert (s.max_item_attempts, s.concurrency, s.online_threshold) == (3, 8, 10)
    assert (s.http_port, s.max_active_jobs, s.max_enqueued_tokens) == (8080, 100, 0)
    assert (s.max_job_tokens, s.quota_cooldown, s.quota_cooldown_max) == (1_000_000, 60, 900)


@pytest.mark.parametrize(("env", "message"), [
    ({"BATCHYARD_CONCURRENCY": "many"}, "BATCHYARD_CONCURRENCY='many': expected an integer"),
    ({"BATCHYARD_CONCURRENCY": "0"}, "BATCHYARD_CONCURRENCY='0': must be between 1 and 1024"),
    ({"BATCHYARD_POLL_INTERVAL": "soon"}, "BATCHYARD_POLL_INTERVAL='soon': expected a duration"),
    ({"BATCHYARD_MAX_WAIT": "0s"}, "BATCHYARD_MAX_WAIT='0s': must be longer than zero"),
    ({"BATCHYARD_AUTH_RECOVERY_ENABLED": "maybe"}, "expected true or false"),
    ({"NATS_URL": "http://x"}, "NATS_URL='http://x': expected a URL starting with nats://"),
    ({"DATABASE_URL": "mysql://x"}, "DATABASE_URL='mysql://x': expected a URL"),
    ({"GEMINI_API_VERSION": "v2"}, "GEMINI_API_VERSION='v2': expected v1, v1beta or v1alpha"),
    ({"BATCHYARD_MODEL": "../x"}, "BATCHYARD_MODEL='../x': expected a model name"),
    ({"BATCHYARD_LOG_LEVEL": "loud"}, "BATCHYARD_LOG_LEVEL='loud'"),
    ({"BATCHYARD_QUOTA_COOLDOWN": "10m", "BATCHYARD_QUOTA_COOLDOWN_MAX": "1m"},
     "BATCHYARD_QUOTA_COOLDOWN_MAX: must not be shorter"),
])
def test_bad_setting_names_the_variable(env: dict[str, str], message: str) -> None:
    """A bad value raises one error naming the variable and what is wrong."""
    with pytest.raises(SettingsError) as info:
        Settings.from_env(env)
    assert message in str(info.value)


def test_durations_parse() -> None:
    """Durations take ms, s, m, h, d or bare seconds."""
    s = Settings.from_env({"BATCHYARD_POLL_INTERVAL": "250ms", "BATCHYARD_MAX_WAIT": "2d",
                           "BATCHYARD_KEY_CHECK_INTERVAL": "90"})
    assert (s.poll_interval, s.max_wait, s.key_check_interval) == (0.25, 172800, 90)


def test_key_never_in_repr() -> None:
    """The API key is hidden in the settings' repr."""
    s = Settings.from_env({"GEMINI_API_KEY": "AIzaSyTOPSECRET0000000000000000000000000"})
    assert "TOPSECRET" not in repr(s) and "TOPSECRET" not in str(s)


def test_cli_help_lists_every_variable_and_bad_setting_exits_nonzero() -> None:
    """`batchyard --help` lists every variable; a bad one exits 2 with one line."""
    out = subprocess.run([sys.executable, "-m", "consumers", "--help"],
                         capture_output=True, text=True, check=True).stdout
    for var in VARS:
        assert var.env in out
    env = {**os.environ, "BATCHYARD_CONCURRENCY": "-3"}
    bad = subprocess.run([sys.executable, "-m", "consumers", "migrate", "status"],
                         capture_output=True, text=True, env=env)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [
        "batchyard: bad setting: BATCHYARD_CONCURRENCY='-3': must be between 1 and 1024"]

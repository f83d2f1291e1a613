"""How settings reach Redis: a plain URL, TLS (rediss://) and Sentinel, and the refusals of bad values.
Only arq's connection settings are built here; nothing connects."""

from pathlib import Path

import pytest

from jobs.queue import redis_settings_for
from jobs.runner import worker_options
from settings import SettingsError, load_settings


def test_a_plain_url_connects_directly_without_tls() -> None:
    redis = redis_settings_for(load_settings(_env_file=None, redis_url="redis://cache.internal:6390/4"))
    assert (redis.host, redis.port, redis.database) == ("cache.internal", 6390, 4)
    assert redis.ssl is False
    assert redis.sentinel is False


def test_rediss_turns_tls_on_and_checks_the_certificate_and_its_host_name() -> None:
    redis = redis_settings_for(load_settings(_env_file=None, redis_url="rediss://cache.example.com:6380/2"))
    assert redis.ssl is True
    assert redis.ssl_cert_reqs == "required"
    assert redis.ssl_check_hostname is True
    assert redis.ssl_ca_certs is None  # the system's CAs
    assert (redis.host, redis.port, redis.database) == ("cache.example.com", 6380, 2)


def test_a_private_ca_file_is_handed_to_tls(tmp_path: Path) -> None:
    ca_file = tmp_path / "ca.pem"
    ca_file.write_text("-----BEGIN CERTIFICATE-----\n")
    redis = redis_settings_for(
        load_settings(_env_file=None, redis_url="rediss://cache:6380/0", redis_tls_ca_file=str(ca_file))
    )
    assert redis.ssl is True
    assert redis.ssl_ca_certs == str(ca_file)


def test_percent_encoded_credentials_reach_redis_decoded() -> None:
    redis = redis_settings_for(load_settings(_env_file=None, redis_url="redis://app:p%40ss%2Fw@cache:6379/0"))
    assert (redis.username, redis.password) == ("app", "p@ss/w")


def test_sentinels_give_the_sentinel_list_and_the_master_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "rediss://:secret@unused:6379/3")
    monkeypatch.setenv("REDIS_SENTINELS", "sentinel-1:26379, sentinel-2:26380,sentinel-3,[fd00::5]:26381")
    monkeypatch.setenv("REDIS_SENTINEL_MASTER", "aibot")
    redis = redis_settings_for(load_settings(_env_file=None))
    assert redis.sentinel is True
    assert redis.host == [
        ("sentinel-1", 26379),
        ("sentinel-2", 26380),
        ("sentinel-3", 26379),  # Sentinel's usual port when none is given
        ("fd00::5", 26381),
    ]
    assert redis.sentinel_master == "aibot"
    # The URL still gives TLS to the master, its password and the database.
    assert (redis.ssl, redis.password, redis.database) == (True, "secret", 3)


def test_without_sentinels_the_master_name_is_not_used() -> None:
    redis = redis_settings_for(load_settings(_env_file=None, redis_sentinel_master="elsewhere"))
    assert redis.sentinel is False
    assert redis.host == "localhost"


def test_the_worker_reaches_redis_the_same_way(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_SENTINELS", "10.0.0.1:26379")
    monkeypatch.setenv("REDIS_SENTINEL_MASTER", "queue")
    redis = worker_options(load_settings(_env_file=None))["redis_settings"]
    assert (redis.sentinel, redis.host, redis.sentinel_master) == (True, [("10.0.0.1", 26379)], "queue")


def test_connection_failures_are_reported_at_once() -> None:
    redis = redis_settings_for(load_settings(_env_file=None, redis_timeout=2.5))
    assert (redis.conn_timeout, redis.conn_retries) == (2, 0)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"redis_sentinels": "sentinel-1:abc"}, "REDIS_SENTINELS: 'sentinel-1:abc' is not host:port"),
        ({"redis_sentinels": "a:26379,b:99999"}, "REDIS_SENTINELS: 'b:99999' is not host:port"),
        ({"redis_sentinels": "a:0"}, "REDIS_SENTINELS: 'a:0' is not host:port"),
        ({"redis_sentinels": "redis://a:26379"}, "REDIS_SENTINELS: 'redis://a:26379' is not host:port"),
        ({"redis_sentinels": "[fd00::1"}, "REDIS_SENTINELS: '[fd00::1' is not host:port"),
        ({"redis_sentinel_master": "my master"}, "REDIS_SENTINEL_MASTER: must be the master's name"),
        ({"redis_sentinel_master": ""}, "REDIS_SENTINEL_MASTER: must be the master's name"),
        (
            {"redis_sentinels": "a:26379", "redis_url": "unix:///run/redis.sock"},
            "REDIS_SENTINELS needs REDIS_URL to be redis:// or rediss://",
        ),
        ({"redis_url": "redis://cache:port/0"}, "REDIS_URL: has a port that is not a number"),
        ({"redis_url": "redis://cache:6379/zero"}, "REDIS_URL: must end with the database number"),
        ({"redis_tls_ca_file": "/no/such/ca.pem"}, "REDIS_TLS_CA_FILE: no such file: /no/such/ca.pem"),
    ],
)
def test_bad_redis_values_are_refused_with_a_clear_message(overrides: dict[str, str], expected: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(_env_file=None, **overrides)
    assert expected in str(caught.value)


def test_a_ca_file_needs_tls_and_cannot_go_through_sentinel(tmp_path: Path) -> None:
    ca_file = tmp_path / "ca.pem"
    ca_file.write_text("-----BEGIN CERTIFICATE-----\n")
    with pytest.raises(SettingsError, match="REDIS_TLS_CA_FILE is used only with TLS"):
        load_settings(_env_file=None, redis_url="redis://cache:6379/0", redis_tls_ca_file=str(ca_file))
    with pytest.raises(SettingsError, match="REDIS_TLS_CA_FILE cannot be used with REDIS_SENTINELS"):
        load_settings(
            _env_file=None,
            redis_url="rediss://cache:6379/0",
            redis_tls_ca_file=str(ca_file),
            redis_sentinels="a:26379",
        )


def test_a_bad_redis_url_never_echoes_its_password() -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(_env_file=None, redis_url="redis://:hunter2secret@cache:port/0")
    assert "hunter2secret" not in str(caught.value)

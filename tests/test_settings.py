"""Producer settings from the environment: parsing, fallbacks, and errors that name the variable."""

from __future__ import annotations

import pytest

from producer.settings import DEFAULT_REDIS_URL, ProducerConfigError, ProducerSettings


def test_defaults_with_empty_environment() -> None:
    s = ProducerSettings.from_env({})
    assert s == ProducerSettings()
    assert s.redis_url == DEFAULT_REDIS_URL
    assert s.namespace == "lsm"


def test_from_env_reads_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LSM_REDIS_URL", raising=False)
    monkeypatch.setenv("REDIS_URL", "redis://envhost:6390/3")
    monkeypatch.setenv("LSM_NAMESPACE", "from-process-env")
    s = ProducerSettings.from_env()
    assert s.redis_url == "redis://envhost:6390/3"
    assert s.namespace == "from-process-env"


def test_every_field_is_parsed_with_its_type() -> None:
    env = {
        "LSM_REDIS_URL": "rediss://user:pw@redis.example:6380/2",
        "LSM_REDIS_CLUSTER": "true",
        "LSM_NAMESPACE": "prod.metrics-1",
        "LSM_SHARDS": "4",
        "LSM_BUFFER_MAX_EVENTS": "1_000",
        "LSM_BUFFER_MAX_BYTES": "2097152",
        "LSM_MAX_EVENT_BYTES": "4096",
        "LSM_BATCH_MAX_EVENTS": "50",
        "LSM_BATCH_MAX_BYTES": "65536",
        "LSM_FLUSH_INTERVAL": "0.25",
        "LSM_CONNECT_TIMEOUT": "1.5",
        "LSM_SOCKET_TIMEOUT": "3",
        "LSM_BACKOFF_BASE": "0.1",
        "LSM_BACKOFF_MAX": "10",
        "LSM_SHUTDOWN_TIMEOUT": "7.5",
        "LSM_STATS_INTERVAL": "2",
        "LSM_STREAM_MAXLEN": "100000",
        "LSM_COMPRESS_MIN_BYTES": "0",
        "LSM_LOG_LEVEL": "warning",
        "LSM_PROXY_METRICS_ENDPOINT": "false",
        "LSM_WAIT_REPLICAS": "1",
        "LSM_WAIT_TIMEOUT": "0.75",
        "LSM_EXEMPLARS": "true",
    }
    s = ProducerSettings.from_env(env)
    assert s == ProducerSettings(
        redis_url="rediss://user:pw@redis.example:6380/2",
        redis_cluster=True,
        namespace="prod.metrics-1",
        shards=4,
        buffer_max_events=1000,
        buffer_max_bytes=2097152,
        max_event_bytes=4096,
        batch_max_events=50,
        batch_max_bytes=65536,
        flush_interval=0.25,
        connect_timeout=1.5,
        socket_timeout=3.0,
        backoff_base=0.1,
        backoff_max=10.0,
        shutdown_timeout=7.5,
        stats_interval=2.0,
        stream_maxlen=100000,
        compress_min_bytes=0,
        log_level="warning",
        proxy_metrics_endpoint=False,
        wait_replicas=1,
        wait_timeout=0.75,
        exemplars=True,
    )
    # Every field has a variable: the test covers them all.
    assert {f"LSM_{name.upper()}" for name in ProducerSettings.model_fields} == set(env)
    assert isinstance(s.shards, int) and isinstance(s.socket_timeout, float)


def test_the_wait_for_replicas_ends_before_the_socket_gives_up() -> None:
    with pytest.raises(ProducerConfigError, match=r"LSM_WAIT_TIMEOUT \(2.0\) must be below LSM_SOCKET_TIMEOUT \(2.0\)"):
        ProducerSettings.from_env({"LSM_WAIT_REPLICAS": "1", "LSM_WAIT_TIMEOUT": "2"})
    assert ProducerSettings.from_env({"LSM_WAIT_TIMEOUT": "2"}).wait_replicas == 0  # no wait: no conflict
    with pytest.raises(ProducerConfigError, match="LSM_WAIT_REPLICAS"):
        ProducerSettings.from_env({"LSM_WAIT_REPLICAS": "-1"})


@pytest.mark.parametrize(("raw", "value"), [("true", True), ("1", True), ("Yes", True), ("off", False), ("0", False)])
def test_booleans_are_parsed_as_booleans(raw: str, value: bool) -> None:
    assert ProducerSettings.from_env({"LSM_PROXY_METRICS_ENDPOINT": raw}).proxy_metrics_endpoint is value


def test_a_bad_boolean_is_refused() -> None:
    with pytest.raises(ProducerConfigError, match="ENDPOINT='maybe': Input should be a valid boolean"):
        ProducerSettings.from_env({"LSM_PROXY_METRICS_ENDPOINT": "maybe"})


def test_redis_url_falls_back_to_redis_url() -> None:
    assert ProducerSettings.from_env({"REDIS_URL": "redis://other:1/0"}).redis_url == "redis://other:1/0"
    assert ProducerSettings.from_env({"REDIS_URL": "unix:///tmp/r.sock"}).redis_url == "unix:///tmp/r.sock"


def test_lsm_redis_url_wins_over_redis_url() -> None:
    env = {"REDIS_URL": "redis://fallback:1/0", "LSM_REDIS_URL": "redis://primary:2/0"}
    assert ProducerSettings.from_env(env).redis_url == "redis://primary:2/0"


def test_blank_values_mean_default() -> None:
    env = {"LSM_REDIS_URL": "  ", "REDIS_URL": "", "LSM_SHARDS": "", "LSM_FLUSH_INTERVAL": " \t"}
    assert ProducerSettings.from_env(env) == ProducerSettings()


def test_values_are_stripped() -> None:
    s = ProducerSettings.from_env({"LSM_SHARDS": " 3 ", "LSM_NAMESPACE": " ns1 ", "LSM_FLUSH_INTERVAL": "0.5\n"})
    assert (s.shards, s.namespace, s.flush_interval) == (3, "ns1", 0.5)


@pytest.mark.parametrize(
    "var,value",
    [
        ("LSM_SHARDS", "two"),
        ("LSM_SHARDS", "1.5"),
        ("LSM_BUFFER_MAX_EVENTS", "1e5"),
        ("LSM_BUFFER_MAX_BYTES", "64MB"),
        ("LSM_MAX_EVENT_BYTES", "lots"),
        ("LSM_BATCH_MAX_EVENTS", "5OO"),
        ("LSM_BATCH_MAX_BYTES", "0x10"),
        ("LSM_STREAM_MAXLEN", "none"),
        ("LSM_COMPRESS_MIN_BYTES", "yes"),
        ("LSM_FLUSH_INTERVAL", "100ms"),
        ("LSM_CONNECT_TIMEOUT", "one"),
        ("LSM_SOCKET_TIMEOUT", "2s"),
        ("LSM_BACKOFF_BASE", "fast"),
        ("LSM_BACKOFF_MAX", "1,5"),
        ("LSM_SHUTDOWN_TIMEOUT", "forever"),
        ("LSM_STATS_INTERVAL", "often"),
    ],
)
def test_unparsable_number_names_the_variable(var: str, value: str) -> None:
    with pytest.raises(ProducerConfigError) as info:
        ProducerSettings.from_env({var: value})
    assert var in str(info.value)
    assert repr(value) in str(info.value)


@pytest.mark.parametrize(
    "var,value",
    [
        ("LSM_SHARDS", "0"),
        ("LSM_BUFFER_MAX_EVENTS", "-1"),
        ("LSM_BUFFER_MAX_BYTES", "0"),
        ("LSM_MAX_EVENT_BYTES", "0"),
        ("LSM_BATCH_MAX_EVENTS", "0"),
        ("LSM_BATCH_MAX_BYTES", "-5"),
        ("LSM_FLUSH_INTERVAL", "0"),
        ("LSM_CONNECT_TIMEOUT", "-0.5"),
        ("LSM_SOCKET_TIMEOUT", "0"),
        ("LSM_BACKOFF_BASE", "0"),
        ("LSM_BACKOFF_MAX", "-1"),
        ("LSM_SHUTDOWN_TIMEOUT", "0"),
        ("LSM_STATS_INTERVAL", "0.0"),
        ("LSM_STREAM_MAXLEN", "-1"),
        ("LSM_COMPRESS_MIN_BYTES", "-1"),
    ],
)
def test_out_of_range_value_names_the_variable(var: str, value: str) -> None:
    with pytest.raises(ProducerConfigError) as info:
        ProducerSettings.from_env({var: value})
    assert var in str(info.value)


@pytest.mark.parametrize("value", ["has space", "a:b", "{s0}", "x" * 65, "ns/1"])
def test_invalid_namespace_names_the_variable(value: str) -> None:
    with pytest.raises(ProducerConfigError) as info:
        ProducerSettings.from_env({"LSM_NAMESPACE": value})
    assert "LSM_NAMESPACE" in str(info.value)


@pytest.mark.parametrize("var", ["LSM_REDIS_URL", "REDIS_URL"])
@pytest.mark.parametrize("value", ["http://127.0.0.1:6379", "127.0.0.1:6379", "localhost"])
def test_invalid_redis_url_names_the_variable(var: str, value: str) -> None:
    with pytest.raises(ProducerConfigError) as info:
        ProducerSettings.from_env({var: value})
    assert "LSM_REDIS_URL" in str(info.value)
    assert value in str(info.value)


def test_max_event_bytes_must_fit_in_a_batch() -> None:
    with pytest.raises(ProducerConfigError) as info:
        ProducerSettings.from_env({"LSM_MAX_EVENT_BYTES": "2048", "LSM_BATCH_MAX_BYTES": "1024"})
    assert "LSM_MAX_EVENT_BYTES" in str(info.value) and "LSM_BATCH_MAX_BYTES" in str(info.value)
    # Equal is allowed.
    s = ProducerSettings.from_env({"LSM_MAX_EVENT_BYTES": "1024", "LSM_BATCH_MAX_BYTES": "1024"})
    assert s.max_event_bytes == s.batch_max_bytes == 1024


def test_backoff_base_must_not_exceed_max() -> None:
    with pytest.raises(ProducerConfigError) as info:
        ProducerSettings.from_env({"LSM_BACKOFF_BASE": "3", "LSM_BACKOFF_MAX": "2"})
    assert "LSM_BACKOFF_BASE" in str(info.value)
    assert ProducerSettings.from_env({"LSM_BACKOFF_BASE": "2", "LSM_BACKOFF_MAX": "2"}).backoff_base == 2.0


def test_config_error_is_a_value_error() -> None:
    assert issubclass(ProducerConfigError, ValueError)


def test_unrelated_variables_are_ignored() -> None:
    assert ProducerSettings.from_env({"LSM_UNKNOWN": "x", "PATH": "/bin", "LSM_": "y"}) == ProducerSettings()


def test_empty_lsm_redis_url_falls_back_to_redis_url() -> None:
    # An unset compose variable arrives as an empty string: it means "not given".
    s = ProducerSettings.from_env({"LSM_REDIS_URL": "", "REDIS_URL": "redis://other:6379/1"})
    assert s.redis_url == "redis://other:6379/1"

"""One rule for which environment variable sets which setting (producer/envvars.py), for the
producer's and the aggregator's settings alike: ``LSM_<NAME>``, then the aliases declared on the
field, which only fill in what nothing else set."""

from __future__ import annotations

import typing
from pathlib import Path

import pytest

from aggregator.settings import AggregatorConfigError, AggregatorSettings
from producer import envvars
from producer.settings import ProducerSettings

ROOT = Path(__file__).resolve().parents[1]


def declared_aliases() -> set[tuple[str, str, str]]:
    out = set()
    for where, model in (("producer", ProducerSettings), ("aggregator", AggregatorSettings)):
        for name, info in model.model_fields.items():
            out |= {(where, name, a.variable) for a in envvars.aliases(info)}
    return out


def test_the_aliases_are_declared_on_the_fields_and_documented() -> None:
    assert declared_aliases() == {
        ("producer", "redis_url", "REDIS_URL"),
        ("aggregator", "redis_url", "REDIS_URL"),
        ("aggregator", "database_url", "DATABASE_URL"),
        ("aggregator", "budget_refresh_interval_seconds", "PROMETHEUS_BUDGET_METRICS_REFRESH_INTERVAL_MINUTES"),
    }
    reference = (ROOT / "README.md").read_text()
    for _where, name, variable in declared_aliases():
        row = next((line for line in reference.splitlines() if line.startswith(f"| `{envvars.primary(name)}`")), "")
        assert variable in row, f"README's configuration reference: {envvars.primary(name)} does not name {variable}"


@pytest.mark.parametrize("load", [ProducerSettings.from_env, AggregatorSettings.load], ids=["producer", "aggregator"])
def test_primary_variable_wins_and_an_alias_fills_in(load: typing.Callable[..., typing.Any]) -> None:
    assert load({"REDIS_URL": "redis://alias:1/0"}).redis_url == "redis://alias:1/0"
    assert load({"REDIS_URL": "redis://alias:1/0", "LSM_REDIS_URL": "redis://own:2/0"}).redis_url == "redis://own:2/0"
    assert load({"REDIS_URL": "redis://alias:1/0", "LSM_REDIS_URL": " "}).redis_url == "redis://alias:1/0"


def test_an_alias_does_not_override_the_settings_file(tmp_path: Path) -> None:
    settings_file = tmp_path / "settings.yaml"
    settings_file.write_text("redis_url: redis://from-file:3/0\nbudget_refresh_interval_seconds: 42\n")
    env = {"LSM_SETTINGS_FILE": str(settings_file), "REDIS_URL": "redis://alias:1/0"}
    env["PROMETHEUS_BUDGET_METRICS_REFRESH_INTERVAL_MINUTES"] = "2"
    s = AggregatorSettings.load(env)
    assert (s.redis_url, s.budget_refresh_interval_seconds) == ("redis://from-file:3/0", 42.0)
    # LSM_* overrides the file.
    assert AggregatorSettings.load({**env, "LSM_REDIS_URL": "redis://own:2/0"}).redis_url == "redis://own:2/0"


def test_an_alias_with_a_conversion() -> None:
    minutes = "PROMETHEUS_BUDGET_METRICS_REFRESH_INTERVAL_MINUTES"
    assert AggregatorSettings.load({minutes: "2.5"}).budget_refresh_interval_seconds == 150.0
    with pytest.raises(AggregatorConfigError, match=f"{minutes}: 'soon' is not a number"):
        AggregatorSettings.load({minutes: "soon"})


def test_a_value_from_an_alias_is_reported_under_its_variable() -> None:
    with pytest.raises(ValueError, match="REDIS_URL"):
        ProducerSettings.from_env({"REDIS_URL": "http://not-redis"})

"""Settings: contract defaults, COLLECTOR_* environment variables, flags winning."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import structlog

from collector.config import (
    EMPTY_LAYER_DIGEST,
    Effective,
    Settings,
    effective,
    load_settings,
    mask_url,
    unknown_variables,
    warn_unknown_variables,
)
from collector.errors import ConfigError


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No COLLECTOR_* variable of the calling shell leaks into a test."""
    for name in list(os.environ):
        if name.upper().startswith("COLLECTOR_"):
            monkeypatch.delenv(name)


def test_defaults_match_contract() -> None:
    """Without environment or flags, the settings are the defaults CONTRACT §1 and §4 pin."""
    settings = load_settings()
    assert settings.database_url == "postgresql://postgres@127.0.0.1:5432/registry"
    assert settings.kafka_bootstrap == "127.0.0.1:9092"
    assert settings.topic_requests == "registry.gc.requests"
    assert settings.topic_removals == "registry.gc.removals"
    assert settings.topic_dead_letter == "registry.gc.dead-letter"
    assert settings.group_id == "registry-collector"
    assert settings.topic_partitions == 12


def test_empty_layer_protected_by_default() -> None:
    """The gzipped empty layer is a protected digest by default."""
    assert EMPTY_LAYER_DIGEST in load_settings().protected_digests


def test_empty_layer_digest_is_a_sha256_digest() -> None:
    """EMPTY_LAYER_DIGEST is a well-formed sha256 digest."""
    algorithm, _, hex_digest = EMPTY_LAYER_DIGEST.partition(":")
    assert algorithm == "sha256"
    assert len(hex_digest) == 64
    assert int(hex_digest, 16) >= 0


def test_load_settings_returns_settings() -> None:
    """load_settings gives a Settings object."""
    assert isinstance(load_settings(), Settings)


@pytest.mark.parametrize(
    ("variable", "field", "value"),
    [
        ("COLLECTOR_DATABASE_URL", "database_url", "postgresql://gc@db.example:5433/reg"),
        ("COLLECTOR_KAFKA_BOOTSTRAP", "kafka_bootstrap", "kafka-1:9093,kafka-2:9093"),
        ("COLLECTOR_TOPIC_REQUESTS", "topic_requests", "acme.gc.requests"),
        ("COLLECTOR_TOPIC_REMOVALS", "topic_removals", "acme.gc.removals"),
        ("COLLECTOR_TOPIC_DEAD_LETTER", "topic_dead_letter", "acme.gc.dlq"),
        ("COLLECTOR_GROUP_ID", "group_id", "acme-collector"),
        ("COLLECTOR_KAFKA_SECURITY_PROTOCOL", "kafka_security_protocol", "SSL"),
    ],
)
def test_environment_variable_is_read(
    monkeypatch: pytest.MonkeyPatch, variable: str, field: str, value: str
) -> None:
    """Each COLLECTOR_<FIELD> variable sets its field."""
    monkeypatch.setenv(variable, value)
    assert getattr(load_settings(), field) == value


def test_environment_integers_are_parsed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Numeric settings given in the environment are parsed to integers."""
    monkeypatch.setenv("COLLECTOR_BATCH_SIZE", "250")
    monkeypatch.setenv("COLLECTOR_TOPIC_PARTITIONS", "3")
    settings = load_settings()
    assert settings.batch_size == 250
    assert settings.topic_partitions == 3


@pytest.mark.parametrize(
    ("field", "variable"),
    [
        ("intake_poll_records", "COLLECTOR_INTAKE_POLL_RECORDS"),
        ("sink_poll_records", "COLLECTOR_SINK_POLL_RECORDS"),
        ("relay_batch_size", "COLLECTOR_RELAY_BATCH_SIZE"),
    ],
)
def test_each_size_has_its_own_variable_and_the_engine_s_batch_size_sets_none_of_them(
    monkeypatch: pytest.MonkeyPatch, field: str, variable: str
) -> None:
    """The intake's and the blob deleter's records per poll and the relay's events per
    transaction default to 500, as when COLLECTOR_BATCH_SIZE sized them too; now each is
    set by its own variable, and COLLECTOR_BATCH_SIZE sizes the engine's transactions
    alone."""
    assert getattr(load_settings(), field) == 500
    monkeypatch.setenv("COLLECTOR_BATCH_SIZE", "7")
    assert getattr(load_settings(), field) == 500
    monkeypatch.setenv(variable, "9")
    settings = load_settings()
    assert (getattr(settings, field), settings.batch_size) == (9, 7)


def test_log_level_is_read_in_any_case_and_a_flag_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    """COLLECTOR_LOG_LEVEL sets the log level (info by default), as the flag does, which
    wins over it; any case is taken and kept lower case."""
    assert load_settings().log_level == "info"
    monkeypatch.setenv("COLLECTOR_LOG_LEVEL", "WARNING")
    assert load_settings().log_level == "warning"
    assert load_settings(log_level="Debug").log_level == "debug"


@pytest.mark.parametrize("value", ["loud", "", "warn"])
def test_an_unknown_log_level_is_a_config_error_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    """A COLLECTOR_LOG_LEVEL that is no level is refused by name, with the levels."""
    monkeypatch.setenv("COLLECTOR_LOG_LEVEL", value)
    with pytest.raises(ConfigError) as refused:
        load_settings()
    assert str(refused.value) == (
        f"invalid COLLECTOR_LOG_LEVEL: expected one of debug, info, warning, error, not {value!r}"
    )


def test_storage_root_is_read_and_a_flag_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    """COLLECTOR_STORAGE_ROOT names the blob deleter's storage (unset by default); the
    flag wins over it. Nothing checks it here: a command that deletes nothing never
    fails on it."""
    assert load_settings().storage_root is None
    monkeypatch.setenv("COLLECTOR_STORAGE_ROOT", "/no/such/storage")
    assert load_settings().storage_root == Path("/no/such/storage")
    assert load_settings(storage_root=Path("/srv/blobs")).storage_root == Path("/srv/blobs")


def test_an_empty_storage_root_variable_names_no_root(monkeypatch: pytest.MonkeyPatch) -> None:
    """COLLECTOR_STORAGE_ROOT="" is unset, not the current directory."""
    monkeypatch.setenv("COLLECTOR_STORAGE_ROOT", "")
    assert load_settings().storage_root is None


def test_environment_list_is_parsed(monkeypatch: pytest.MonkeyPatch) -> None:
    """A list setting is read from a JSON array in the environment."""
    monkeypatch.setenv("COLLECTOR_PROTECTED_DIGESTS", '["sha256:aa", "sha256:bb"]')
    assert load_settings().protected_digests == ["sha256:aa", "sha256:bb"]


def test_environment_secret_is_kept_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    """The SASL password is read from the environment and not shown in the settings' repr."""
    monkeypatch.setenv("COLLECTOR_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("COLLECTOR_KAFKA_SASL_MECHANISM", "SCRAM-SHA-512")
    monkeypatch.setenv("COLLECTOR_KAFKA_SASL_USERNAME", "gc")
    monkeypatch.setenv("COLLECTOR_KAFKA_SASL_PASSWORD", "hunter2")
    settings = load_settings()
    assert settings.kafka_sasl_password is not None
    assert settings.kafka_sasl_password.get_secret_value() == "hunter2"
    assert "hunter2" not in repr(settings)


SASL = {"kafka_sasl_mechanism": "PLAIN", "kafka_sasl_username": "gc"}


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (
            {"kafka_security_protocol": "SASL_SSL"},
            "invalid settings: kafka_security_protocol SASL_SSL needs kafka_sasl_mechanism,"
            " kafka_sasl_username and kafka_sasl_password",
        ),
        (
            {"kafka_security_protocol": "SASL_PLAINTEXT", **SASL},
            "invalid settings: kafka_sasl_password is needed with kafka_sasl_username",
        ),
        (
            {**SASL, "kafka_sasl_password": "pw"},
            "invalid settings: kafka_sasl_mechanism is set but kafka_security_protocol is"
            " PLAINTEXT: use SASL_SSL (or SASL_PLAINTEXT)",
        ),
        (
            {"kafka_ssl_cafile": "/ca.pem"},
            "invalid settings: kafka_ssl_* files are set but kafka_security_protocol is"
            " PLAINTEXT: use SSL or SASL_SSL",
        ),
        (
            {"kafka_security_protocol": "SSL", "kafka_ssl_keyfile": "/client.key"},
            "invalid settings: kafka_ssl_keyfile needs kafka_ssl_certfile",
        ),
        (
            {"kafka_security_protocol": "TLS"},
            "invalid setting kafka_security_protocol: Input should be 'PLAINTEXT', 'SSL',"
            " 'SASL_PLAINTEXT' or 'SASL_SSL'",
        ),
        (
            {"kafka_security_protocol": "SASL_SSL", **SASL, "kafka_sasl_mechanism": "GSSAPI"},
            "invalid setting kafka_sasl_mechanism: Input should be 'PLAIN', 'SCRAM-SHA-256'"
            " or 'SCRAM-SHA-512'",
        ),
    ],
)
def test_incomplete_or_contradictory_kafka_security_is_refused(
    settings: dict[str, str], message: str
) -> None:
    """Half a security setup would fail later, at the broker, with a vaguer error."""
    with pytest.raises(ConfigError) as refused:
        load_settings(**settings)
    assert str(refused.value) == message


def test_complete_kafka_security_is_accepted() -> None:
    settings = load_settings(
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_password="pw",
        kafka_ssl_cafile="/ca.pem",
        kafka_ssl_certfile="/client.pem",
        kafka_ssl_keyfile="/client.key",
        **SASL,
    )
    assert (settings.kafka_security_protocol, settings.kafka_sasl_mechanism) == (
        "SASL_SSL",
        "PLAIN",
    )


def test_override_wins_over_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """A non-None override (a flag) beats the environment variable for the same field."""
    monkeypatch.setenv("COLLECTOR_DATABASE_URL", "postgresql://env/db")
    monkeypatch.setenv("COLLECTOR_BATCH_SIZE", "250")
    settings = load_settings(database_url="postgresql://flag/db", batch_size=10)
    assert settings.database_url == "postgresql://flag/db"
    assert settings.batch_size == 10


def test_override_keeps_other_environment_values(monkeypatch: pytest.MonkeyPatch) -> None:
    """Overriding one field leaves the environment's values for the others."""
    monkeypatch.setenv("COLLECTOR_GROUP_ID", "env-group")
    settings = load_settings(kafka_bootstrap="flag:9092")
    assert settings.kafka_bootstrap == "flag:9092"
    assert settings.group_id == "env-group"


def test_override_wins_over_default() -> None:
    """A non-None override replaces the default."""
    assert load_settings(group_id="flag-group").group_id == "flag-group"


def test_none_override_is_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    """A None override (a flag not given) leaves the environment value in place."""
    monkeypatch.setenv("COLLECTOR_DATABASE_URL", "postgresql://env/db")
    settings = load_settings(database_url=None, batch_size=None)
    assert settings.database_url == "postgresql://env/db"
    assert settings.batch_size == 500


def test_none_override_keeps_default() -> None:
    """A None override leaves the default in place."""
    assert load_settings(kafka_bootstrap=None).kafka_bootstrap == "127.0.0.1:9092"


def test_falsy_override_is_not_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only None is ignored: a falsy value such as an empty list still overrides."""
    monkeypatch.setenv("COLLECTOR_PROTECTED_DIGESTS", '["sha256:aa"]')
    assert load_settings(protected_digests=[]).protected_digests == []


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("batch_size", 0),
        ("batch_size", 50_001),
        ("repository_concurrency", 0),
        ("topic_partitions", 0),
        ("topic_replication_factor", -2),
        ("batch_size", "abc"),
        ("intake_poll_records", 0),
        ("sink_poll_records", 50_001),
        ("relay_batch_size", 0),
        ("log_level", "loud"),
    ],
)
def test_invalid_override_is_config_error(field: str, value: object) -> None:
    """An out-of-range or unparsable override raises ConfigError naming the field."""
    with pytest.raises(ConfigError, match=f"invalid setting {field}"):
        load_settings(**{field: value})


@pytest.mark.parametrize(
    ("variable", "field", "value"),
    [
        ("COLLECTOR_BATCH_SIZE", "batch_size", "abc"),
        ("COLLECTOR_BATCH_SIZE", "batch_size", "0"),
        ("COLLECTOR_REPOSITORY_CONCURRENCY", "repository_concurrency", "65"),
        ("COLLECTOR_TOPIC_PARTITIONS", "topic_partitions", "many"),
        ("COLLECTOR_INTAKE_POLL_RECORDS", "intake_poll_records", "0"),
        ("COLLECTOR_SINK_POLL_RECORDS", "sink_poll_records", "50001"),
        ("COLLECTOR_RELAY_BATCH_SIZE", "relay_batch_size", "many"),
    ],
)
def test_invalid_environment_is_config_error(
    monkeypatch: pytest.MonkeyPatch, variable: str, field: str, value: str
) -> None:
    """An invalid COLLECTOR_* value raises ConfigError naming the variable the user set
    (not the field, not a ValidationError)."""
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError, match=rf"^invalid {variable}: ") as refused:
        load_settings()
    assert field not in str(refused.value)


def test_valid_override_repairs_invalid_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """A valid flag for a field whose environment value is invalid is used (flags win)."""
    monkeypatch.setenv("COLLECTOR_BATCH_SIZE", "abc")
    assert load_settings(batch_size=100).batch_size == 100


def test_unparsable_environment_list_is_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """A COLLECTOR_PROTECTED_DIGESTS that is not a JSON array raises ConfigError naming it."""
    monkeypatch.setenv("COLLECTOR_PROTECTED_DIGESTS", "sha256:aa,sha256:bb")
    with pytest.raises(ConfigError, match=r"^invalid COLLECTOR_PROTECTED_DIGESTS: not valid JSON"):
        load_settings()


def test_unknown_override_is_refused() -> None:
    """A misspelt override is a programming error, never silently ignored."""
    with pytest.raises(TypeError, match="batchsize"):
        load_settings(batchsize=3)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://gc:pw@db:5432/registry", "postgresql://gc:********@db:5432/registry"),
        ("postgresql://gc:p%40ss:w@db/registry", "postgresql://gc:********@db/registry"),
        ("postgresql://:pw@db/registry", "postgresql://:********@db/registry"),
        ("postgresql://gc@db/registry", "postgresql://gc@db/registry"),
        (
            "postgresql://db/registry?user=gc&password=pw&sslmode=",
            "postgresql://db/registry?user=gc&password=********&sslmode=",
        ),
        ("postgresql://gc:a@b@db/registry", "postgresql://gc:********@db/registry"),
        ("postgresql://u:pa/ss@h/db", "postgresql://u:********@h/db"),
        (
            "postgresql://u:p?a#ss@h/db?sslmode=require",
            "postgresql://u:********@h/db?sslmode=require",
        ),
        (
            "postgresql://h/db?sslpassword=key&Password=x",
            "postgresql://h/db?sslpassword=********&Password=********",
        ),
        ("not a url: secret", "not a url: secret"),
    ],
)
def test_a_url_is_shown_without_its_password(url: str, shown: str) -> None:
    assert mask_url(url) == shown


def test_effective_settings_mask_secrets_and_name_their_source(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COLLECTOR_DATABASE_URL", "postgresql://gc:pw@db/registry")
    monkeypatch.setenv("COLLECTOR_KAFKA_SASL_PASSWORD", "sasl")
    monkeypatch.setenv("COLLECTOR_STORAGE_ROOT", "/srv/blobs")
    rows = {row.name: row for row in effective(load_settings())}

    assert rows["database_url"].value == "postgresql://gc:********@db/registry"
    assert rows["database_url"].source == "environment"
    assert rows["kafka_sasl_password"].value == "********"
    assert rows["batch_size"] == Effective("batch_size", "COLLECTOR_BATCH_SIZE", 500, "default")
    # A path is shown as text: `config show` prints JSON.
    assert rows["storage_root"] == Effective(
        "storage_root", "COLLECTOR_STORAGE_ROOT", "/srv/blobs", "environment"
    )
    assert rows["log_level"] == Effective("log_level", "COLLECTOR_LOG_LEVEL", "info", "default")
    assert set(rows) == set(Settings.model_fields)


def test_unknown_variables_are_named_with_the_closest_known_one() -> None:
    environ = {
        "COLLECTOR_DATABSE_URL": "x",
        "COLLECTOR_BATCH_SIZE": "1",
        "COLLECTOR_LOG_LEVEL": "info",
        "COLLECTOR_STORAGE_ROOT": "/srv/blobs",
        "COLLECTOR_RELAY_BATCH_SIZE": "100",
        "COLLECTOR_TEST_DATABASE": "t",
        "COLLECTOR_WHATEVER": "y",
        "PATH": "/bin",
    }

    assert list(unknown_variables(environ)) == [
        ("COLLECTOR_DATABSE_URL", "COLLECTOR_DATABASE_URL"),
        ("COLLECTOR_WHATEVER", None),
    ]


def test_unknown_variables_are_warned_about_by_name() -> None:
    """Loading the settings logs nothing (logging is not configured yet then): the
    warnings come from warn_unknown_variables, one per unknown variable."""
    environ = {"COLLECTOR_DATABSE_URL": "x", "COLLECTOR_BATCH_SIZE": "1"}

    with structlog.testing.capture_logs() as logs:
        load_settings()
        warn_unknown_variables(environ)

    assert logs == [
        {
            "event": "unknown_variable",
            "log_level": "warning",
            "variable": "COLLECTOR_DATABSE_URL",
            "hint": "not a setting; did you mean COLLECTOR_DATABASE_URL?",
        }
    ]


def test_every_setting_is_in_the_readme_s_configuration_table() -> None:
    """The README's table lists every setting's variable, so that a new one is documented
    where operators look for it."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    table = readme.split("### Configuration", 1)[1].split("\n## ", 1)[0]
    rows = {line.split("|")[1] for line in table.splitlines() if line.startswith("| `")}
    listed = {name.strip(" `") for row in rows for name in row.split(",")}

    assert {f"COLLECTOR_{field.upper()}" for field in Settings.model_fields} <= listed

"""Settings resolve as flags > LIMEDB_* environment > LimeDB aliases > defaults, and bad values
stop the node at start with a message naming the setting."""

from __future__ import annotations

import pytest
from limedb.config import ConfigError, describe, load_config


def test_defaults_advertise_loopback_and_use_the_url_as_node_id():
    config = load_config({}, {})
    assert (config.port, config.vnodes, config.durability) == (8484, 256, "sync")
    assert config.advertise_url == "http://127.0.0.1:8484"
    assert config.node_id == config.advertise_url
    assert config.max_key_bytes == 1024 and config.max_value_bytes == 1024 * 1024


def test_limedb_aliases_are_accepted():
    env = {
        "SERVER_PORT": "9001",
        "NODE_URL": "http://node1:9001",
        "NODE_PEERS": "http://node2:9001, http://node3:9001",
        "VIRTUAL_NODES": "0",
        "DATA_DIR": "/var/lib/lime",
        "OTEL_ENDPOINT": "http://collector:4317",
    }
    config = load_config({}, env)
    assert config.port == 9001
    assert config.advertise_url == config.node_id == "http://node1:9001"
    assert config.seeds == ("http://node2:9001", "http://node3:9001")
    assert config.vnodes == 0
    assert config.data_dir == "/var/lib/lime"


def test_flags_beat_environment_which_beats_aliases():
    env = {"SERVER_PORT": "1111", "LIMEDB_PORT": "2222"}
    assert load_config({}, env).port == 2222
    assert load_config({"port": 3333}, env).port == 3333
    assert load_config({"port": None}, env).sources["port"] == "LIMEDB_PORT"


@pytest.mark.parametrize(
    ("flags", "env", "named"),
    [
        ({}, {"LIMEDB_PORT": "eighty"}, "port"),
        ({}, {"LIMEDB_DURABILITY": "eventually"}, "durability"),
        ({"vnodes": -1}, {}, "vnodes"),
        ({}, {"NODE_URL": "node1:8484"}, "advertise_url"),
        ({}, {"LIMEDB_MAX_VALUE_BYTES": "0"}, "max_value_bytes"),
        ({}, {"LIMEDB_SEEDS": "http://ok:1,ftp://bad"}, "seeds"),
        ({}, {"LIMEDB_WRITE_CONSISTENCY": "most"}, "write_consistency"),
    ],
)
def test_invalid_values_fail_naming_the_setting_and_its_source(flags, env, named):
    with pytest.raises(ConfigError) as error:
        load_config(flags, env)
    assert named in str(error.value)


def test_unknown_limedb_environment_variables_fail_naming_them():
    with pytest.raises(ConfigError, match="LIMEDB_PROT"):
        load_config({}, {"LIMEDB_PROT": "8484"})
    with pytest.raises(ConfigError, match="bogus"):
        load_config({"bogus": 1}, {})


def test_every_setting_is_described():
    rows = describe()
    names = {row[0] for row in rows}
    assert {"port", "data_dir", "seeds", "durability", "cluster_secret", "resp_port"} <= names
    assert all(row[3] for row in rows)

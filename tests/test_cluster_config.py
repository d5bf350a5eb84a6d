"""The [cluster] section (issue 19): its checks, redacted URLs, and a start
that cannot reach an engine failing with one clear line."""

import pytest

from mta.config import parse_config
from mta.config.cluster import redact_url
from mta.runtime.daemon import Daemon
from mta.runtime.startup import StartupError
from tests.support.mtahelpers import config_text, free_port


def errors_of(text: str) -> str:
    with pytest.raises(Exception) as exc:
        parse_config(text, "test")
    return str(exc.value)


def test_single_node_by_default():
    cfg = parse_config("", "test")
    assert cfg.cluster.database is None and cfg.cluster.redis is None


@pytest.mark.parametrize("body, expected", [
    ('database = "postgresql://db/mta"', "set both database and redis"),
    ('redis = "redis://cache/0"', "set both database and redis"),
    ('database = "mysql://db/mta"\nredis = "redis://c/0"\nsecret_file = "/k"',
     "must start with postgresql:// or postgres://"),
    ('database = "postgresql://db/mta"\nredis = "http://c/0"\nsecret_file = "/k"',
     "must start with redis:// or rediss://"),
    ('database = "postgresql:///mta"\nredis = "redis://c/0"\nsecret_file = "/k"',
     "names no host"),
    ('database = "postgresql://db/mta"\nredis = "redis://c/0"', "secret_file: required"),
    ('node = "bad name"', "is not a node name"),
    ('heartbeat = "10s"\nnode_timeout = "15s"', "more than twice cluster.heartbeat"),
])
def test_bad_cluster_sections_are_named(body, expected):
    assert expected in errors_of(f"[cluster]\n{body}\n")


def test_a_password_never_shows_in_an_error():
    text = ('[cluster]\ndatabase = "mysql://mta:s3cret-pw@db/mta"\n'
            'redis = "redis://:other-pw@cache/0"\nsecret_file = "/k"\n')
    err = errors_of(text)
    assert "s3cret-pw" not in err and "***" in err
    assert redact_url("redis://:pw@[::1]:6379/0") == "redis://:***@[::1]:6379/0"
    assert redact_url("postgresql://mta@db/x") == "postgresql://mta@db/x"


async def test_an_unreachable_database_stops_the_start_with_one_line(tmp_path):
    key = tmp_path / "cluster.key"
    key.write_text("0" * 64)
    port = free_port()            # nothing listens there
    text = config_text(tmp_path / "state", free_port()) + (
        f'[cluster]\ndatabase = "postgresql://mta:pw-secret@127.0.0.1:{port}/mta"\n'
        f'redis = "redis://127.0.0.1:{free_port()}/0"\nsecret_file = "{key}"\n'
        'connect_timeout = "1s"\n')
    d = Daemon(parse_config(text, "test"))
    with pytest.raises(StartupError) as exc:
        await d.start()
    await d.stop()
    msg = str(exc.value)
    assert msg.startswith("cluster.database postgresql://mta:***@127.0.0.1:")
    assert "cannot connect" in msg and "pw-secret" not in msg

"""Config: every key typed and bounded, errors name their key path, and the
CLI `mta config check` exits 0/1 accordingly."""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mta.config import (EMBEDDED_DEFAULT, Config, DeliveryConfig, ListenerConfig,
                        load_config, parse_config, render_config)
from mta.config.sections import SECTIONS
from mta.core import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def errors_of(text):
    with pytest.raises(ConfigError) as ei:
        parse_config(text)
    return ei.value.errors


def test_defaults_match_the_documented_ones():
    d = DeliveryConfig()
    assert d.retry_schedule == (300, 600, 1200, 2400, 3600, 7200, 14400)
    assert d.max_queue_lifetime == 5 * 86400
    assert d.concurrency_per_destination == 20
    assert d.delay_warning_after is None
    lst = ListenerConfig()
    assert lst.require_tls_for_auth is True
    assert lst.max_message_size == 25 * 1024 * 1024
    assert lst.max_recipients == 1000


def test_every_key_has_doc_kind_and_default():
    for cls in list(SECTIONS.values()) + [ListenerConfig]:
        for f in dataclasses.fields(cls):
            assert f.metadata["doc"], f"{cls.__name__}.{f.name} has no doc"
            assert f.metadata["kind"] is not None
            assert f.default is not dataclasses.MISSING


def test_short_test_settings_are_allowed():
    cfg = parse_config('[delivery]\nretry_schedule = "1s,2s,3s"\nmax_queue_lifetime = "60s"\n')
    assert cfg.delivery.retry_schedule == (1.0, 2.0, 3.0)
    assert cfg.delivery.max_queue_lifetime == 60.0


@pytest.mark.parametrize("text, expected", [
    ('[delivery]\nretry_schedule = "5x"\n', 'delivery.retry_schedule: "5x" is not a duration'),
    ('[delivery]\nmax_queue_lifetime = 5\n', "delivery.max_queue_lifetime: 5 is not a duration"),
    ('[delivery]\nconcurrency_per_destination = 0\n',
     "delivery.concurrency_per_destination: 0 is below the minimum 1"),
    ('[delivery]\nconcurrency_per_destination = "20"\n',
     'delivery.concurrency_per_destination: "20" is not an integer'),
    ('[delivery]\nbogus = 1\n', "delivery.bogus: unknown key"),
    ('[nosuch]\n', "nosuch: unknown section"),
    ('[server]\nmode = "test"\n', 'server.mode: "test" is not one of'),
    ('[[listeners]]\naddress = "localhost"\n', 'listeners[0].address: "localhost" is not "host:port"'),
    ('[[listeners]]\ntls = "maybe"\n', 'listeners[0].tls: "maybe" is not one of'),
    ('[[listeners]]\nmax_message_size = "lots"\n', 'listeners[0].max_message_size: "lots" is not a size'),
    ('[[listeners]]\ntrusted_networks = ["10.0.0.0/33"]\n', "listeners[0].trusted_networks"),
    ('[dns]\nnameservers = ["dns.example"]\n', 'dns.nameservers: "dns.example" is not a nameserver'),
    ('[routes]\n"example.com" = "nohost"\n', 'routes.example.com: "nohost" is not "host:port"'),
    ('[delivery]\nmax_queue_lifetime = "100d"\n', "delivery.max_queue_lifetime"),
    ('[server]\nhostname = true\n', "server.hostname: true is not a string"),
])
def test_errors_name_the_key_path(text, expected):
    errs = errors_of(text)
    assert any(e.startswith(expected) for e in errs), errs


def test_all_errors_reported_at_once():
    errs = errors_of('[delivery]\nretry_schedule = "5x"\nfoo = 1\n[server]\nmode = 3\n')
    assert len(errs) == 3


def test_listener_cross_checks():
    errs = errors_of('[[listeners]]\nname="a"\naddress="127.0.0.1:1"\ncert="/x"\n'
                     '[[listeners]]\nname="a"\naddress="127.0.0.1:1"\n')
    assert any("set both cert and key" in e for e in errs)
    assert any("used by more than one listener" in e for e in errs)


GOOD_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def _hook(**kw) -> str:
    fields = {"name": "app", "url": "https://hooks.example.com/mta", "secret": GOOD_SECRET,
              **kw}
    return "[[webhooks]]\n" + "".join(
        f"{k} = {v}\n" if k == "events" else f"{k} = {json.dumps(v)}\n"
        for k, v in fields.items() if v is not None)


def test_a_good_webhook_parses():
    cfg = parse_config(_hook(events='["delivered", "bounced"]', timeout="3s", batch_size=None)
                       + _hook(name="all", url="http://user:pw@127.0.0.1:8080/h?x=1"))
    assert [w.name for w in cfg.webhooks] == ["app", "all"]
    assert cfg.webhooks[0].events == ("delivered", "bounced") and cfg.webhooks[0].timeout == 3
    assert cfg.webhooks[1].events == ("*",) and cfg.webhooks[1].batch_size == 1


@pytest.mark.parametrize("text, expected", [
    (_hook(name=None), "webhooks[0].name: required"),
    (_hook() + _hook(), "webhooks[1].name: 'app' is used by more than one webhook"),
    (_hook(url="ftp://x.example/"), "webhooks[0].url: 'ftp://x.example/' is not an http(s) URL"),
    (_hook(url="https:///path"), "webhooks[0].url: 'https:///path' is not a usable URL"),
    (_hook(url="http://x.example:99999/"), "is not a usable URL"),
    (_hook(url="http://x.example:port/"), "is not a usable URL"),
    (_hook(secret="s3cret"), "webhooks[0].secret: must be whsec_<base64>"),
    (_hook(secret="whsec_not*base64"), "webhooks[0].secret: the part after whsec_ is not base64"),
    (_hook(events='["delivered", "opened"]'), "webhooks[0].events: unknown event type(s) opened"),
    (_hook(batch_size=0), "webhooks[0].batch_size"),
])
def test_webhook_errors_name_the_key(text, expected):
    errs = errors_of(text)
    assert any(expected in e for e in errs), errs


def test_routes_and_nameservers_parse():
    cfg = parse_config('[routes]\n"Example.COM" = "127.0.0.1:2526"\n"*" = "[::1]:25"\n'
                       '[dns]\nnameservers = ["127.0.0.53", "127.0.0.1:5353"]\n')
    assert cfg.routes == {"example.com": "127.0.0.1:2526", "*": "[::1]:25"}
    assert cfg.dns.nameservers == ("127.0.0.53", "127.0.0.1:5353")
    with pytest.raises(TypeError):
        cfg.routes["x"] = "y"  # frozen


def test_config_objects_are_frozen():
    cfg = load_config(None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.server.mode = "production"


def test_embedded_default_is_sandbox_on_2525(monkeypatch):
    monkeypatch.delenv("MTA_CONFIG", raising=False)
    monkeypatch.delenv("MTA_STATE_DIR", raising=False)
    cfg = load_config(None)
    assert cfg.server.mode == "sandbox"
    assert cfg.server.state_dir == "./var/mta"
    assert [(l.address, l.tls) for l in cfg.listeners] == [("127.0.0.1:2525", "starttls")]


def test_env_overrides(monkeypatch, tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('[server]\nhostname = "h.example"\nstate_dir = "/nowhere"\n')
    monkeypatch.setenv("MTA_CONFIG", str(f))
    monkeypatch.setenv("MTA_STATE_DIR", str(tmp_path / "state"))
    cfg = load_config(None)
    assert cfg.server.hostname == "h.example"
    assert cfg.server.state_dir == str(tmp_path / "state")


def test_render_roundtrips():
    cfg = parse_config(open(ROOT / "conf" / "mta.toml").read())
    text = render_config(cfg)
    again = parse_config(text.replace("# effective", "# x"))
    assert dataclasses.replace(again, source="") == dataclasses.replace(cfg, source="")


def _mta(*args, env=None):
    e = dict(os.environ)
    e.pop("MTA_CONFIG", None)
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "mta", *args], capture_output=True, text=True,
                          env=e, cwd=ROOT)


def test_cli_config_check_ok_and_config_flag_positions(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('[server]\nhostname = "flag.example"\n')
    for args in (["--config", str(f), "config", "check"], ["config", "check", "--config", str(f)],
                 ["config", "--config", str(f), "check"]):
        r = _mta(*args)
        assert r.returncode == 0, r.stderr
        assert 'hostname = "flag.example"' in r.stdout
    r = _mta("config", "check", "--json", env={"MTA_CONFIG": str(f)})
    assert json.loads(r.stdout)["server"]["hostname"] == "flag.example"


def test_cli_config_check_never_prints_secrets(tmp_path):
    """The admin token and webhook secrets are shown as set, never as values
    (text and --json); the daemon still gets the real ones."""
    f = tmp_path / "c.toml"
    token = "admin-token-never-printed-0123456789"
    f.write_text(f'[admin]\ntoken = "{token}"\n' + _hook())
    for extra in ([], ["--json"]):
        r = _mta("config", "check", "--config", str(f), *extra)
        assert r.returncode == 0, r.stderr
        assert token not in r.stdout and GOOD_SECRET not in r.stdout
        assert GOOD_SECRET[6:] not in r.stdout
        assert r.stdout.count("(set, not shown)") == 2
    cfg = load_config(str(f))
    assert cfg.admin.token == token and cfg.webhooks[0].secret == GOOD_SECRET


def test_cli_config_check_errors_exit_1(tmp_path):
    f = tmp_path / "bad.toml"
    f.write_text('[delivery]\nretry_schedule = "5x"\n')
    r = _mta("config", "check", "--config", str(f))
    assert r.returncode == 1
    assert 'delivery.retry_schedule: "5x" is not a duration' in r.stderr
    r = _mta("config", "check", "--config", str(tmp_path / "missing.toml"))
    assert r.returncode == 1 and "cannot read" in r.stderr


def test_example_config_is_valid():
    cfg = parse_config(open(ROOT / "conf" / "mta.toml").read())
    assert cfg.server.mode == "production"
    assert {l.tls for l in cfg.listeners} == {"starttls", "implicit", "none"}

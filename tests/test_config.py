"""Config: every key typed and bounded, errors name their key path, and the
CLI `mta config check` exits 0/1 accordingly."""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mta.config import (EMBEDDED_DEFAULT, EMBEDDED_SOURCE, Config, DeliveryConfig,
                        ListenerConfig, config_path, file_errors, load_config, parse_config,
                        placeholder_warnings, render_config, with_listen)
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
    (_hook(events='["delivered", "viewed"]'), "webhooks[0].events: unknown event type(s) viewed"),
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


@pytest.fixture(autouse=True)
def no_default_file(monkeypatch, tmp_path):
    """Hermetic: /etc/mta/mta.toml of the machine running the tests is never read."""
    monkeypatch.setenv("MTA_DEFAULT_CONFIG", str(tmp_path / "no-default.toml"))
    monkeypatch.delenv("MTA_LISTEN", raising=False)


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
    e.pop("MTA_LISTEN", None)
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


def test_example_config_ports_do_not_collide_with_the_sandbox(monkeypatch):
    """Issue 10 item 14: the production example used the quick start's
    127.0.0.1:2525 and :8025, so trying one next to the other failed."""
    monkeypatch.delenv("MTA_CONFIG", raising=False)
    monkeypatch.delenv("MTA_STATE_DIR", raising=False)
    sandbox = load_config(None)
    taken = {l.address.rpartition(":")[2] for l in sandbox.listeners}
    taken.add(sandbox.admin.address.rpartition(":")[2])
    assert taken == {"2525", "8025"}
    cfg = parse_config(open(ROOT / "conf" / "mta.toml").read())
    ports = {l.name: l.address.rpartition(":")[2] for l in cfg.listeners}
    assert ports == {"submission": "587", "submissions": "465", "local": "10587",
                     "inbound": "25"}
    assert cfg.admin.address == "127.0.0.1:8587"
    assert not taken & (set(ports.values()) | {"8587"})


# ---- which file (issue 10 item 13) ------------------------------------------

def test_config_path_order(monkeypatch, tmp_path):
    default, env_file, flag = (tmp_path / n for n in ("default.toml", "env.toml", "flag.toml"))
    for f, name in ((default, "default.example"), (env_file, "env.example"),
                    (flag, "flag.example")):
        f.write_text(f'[server]\nhostname = "{name}"\n')
    monkeypatch.setenv("MTA_DEFAULT_CONFIG", str(default))
    monkeypatch.delenv("MTA_CONFIG", raising=False)
    assert config_path(str(flag)) == str(flag)
    assert load_config(str(flag)).server.hostname == "flag.example"
    monkeypatch.setenv("MTA_CONFIG", str(env_file))
    assert load_config(None).server.hostname == "env.example"
    assert load_config(str(flag)).server.hostname == "flag.example"
    monkeypatch.delenv("MTA_CONFIG")
    cfg = load_config(None)                    # the default file, because it exists
    assert (cfg.server.hostname, cfg.source) == ("default.example", str(default))
    default.unlink()
    assert config_path(None) is None
    assert load_config(None).source == EMBEDDED_SOURCE
    monkeypatch.setenv("MTA_DEFAULT_CONFIG", "")  # no default file at all
    assert config_path(None) is None


def test_the_default_path_is_etc_mta(monkeypatch):
    monkeypatch.delenv("MTA_DEFAULT_CONFIG")
    monkeypatch.delenv("MTA_CONFIG", raising=False)
    from mta.config import DEFAULT_CONFIG
    from mta.config.loader import default_config_path
    assert DEFAULT_CONFIG == default_config_path() == "/etc/mta/mta.toml"
    assert config_path(None) == ("/etc/mta/mta.toml" if os.path.exists("/etc/mta/mta.toml")
                                 else None)


def test_an_unreadable_default_file_is_an_error_not_the_sandbox(monkeypatch, tmp_path):
    """Silently falling back to ./var/mta is what made `mta user remove`
    act on another store than the daemon's."""
    monkeypatch.delenv("MTA_CONFIG", raising=False)
    bad = tmp_path / "etc-mta.toml"
    bad.mkdir()                                   # exists, cannot be read (even as root)
    monkeypatch.setenv("MTA_DEFAULT_CONFIG", str(bad))
    with pytest.raises(ConfigError) as ei:
        load_config(None)
    assert ei.value.errors == [f"{bad}: cannot read: Is a directory (the default config file; "
                               "pass --config PATH to use another)"]


def test_non_utf8_config_is_an_error(tmp_path):
    f = tmp_path / "latin1.toml"
    f.write_bytes(b'[server]\nhostname = "caf\xe9.example"\n')
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(str(f))


# ---- --listen / MTA_LISTEN (issue 10 item 14) ---------------------------------

TWO_SUBMISSION = ('[[listeners]]\nname = "a"\naddress = "127.0.0.1:2600"\n'
                  '[[listeners]]\nname = "b"\naddress = "127.0.0.1:2601"\n')


def test_with_listen_replaces_the_only_submission_listener():
    cfg = parse_config('[[listeners]]\nname = "sub"\naddress = "127.0.0.1:2525"\n'
                       '[[listeners]]\nname = "in"\naddress = "127.0.0.1:2526"\n'
                       'role = "inbound"\n')
    moved = with_listen(cfg, "127.0.0.1:2999")
    assert [(l.name, l.address) for l in moved.listeners] == [("sub", "127.0.0.1:2999"),
                                                             ("in", "127.0.0.1:2526")]
    assert cfg.listeners[0].address == "127.0.0.1:2525"          # frozen, not changed
    with pytest.raises(ConfigError, match=r'--listen: "nohost" is not "host:port"'):
        with_listen(cfg, "nohost")
    with pytest.raises(ConfigError, match="used by more than one listener"):
        with_listen(cfg, "127.0.0.1:2526")


@pytest.mark.parametrize("text, have", [
    (TWO_SUBMISSION, "has 2 submission listeners (a, b)"),
    ('[[listeners]]\nname = "in"\nrole = "inbound"\n', "has no submission listener"),
    ("", "has no submission listener"),
])
def test_with_listen_refuses_to_guess(text, have):
    with pytest.raises(ConfigError) as ei:
        with_listen(parse_config(text), "127.0.0.1:2999")
    assert have in ei.value.errors[0] and ei.value.errors[0].startswith("--listen:")


def test_mta_listen_env_is_applied_on_every_load(monkeypatch):
    """`mta serve --listen` passes the override on as MTA_LISTEN, so a reload
    (which calls load_config again) keeps it."""
    monkeypatch.delenv("MTA_CONFIG", raising=False)
    monkeypatch.setenv("MTA_LISTEN", "127.0.0.1:2999")
    assert [l.address for l in load_config(None).listeners] == ["127.0.0.1:2999"]
    monkeypatch.setenv("MTA_LISTEN", "bad")
    with pytest.raises(ConfigError, match="MTA_LISTEN"):
        load_config(None)


# ---- certificate files and placeholders (issue 10 item 12) --------------------

@pytest.fixture(scope="module")
def pem_files(tmp_path_factory):
    import trustme
    from cryptography.hazmat.primitives import serialization
    d = tmp_path_factory.mktemp("pem")
    ca = trustme.CA()
    a, b = ca.issue_cert("mta.test"), ca.issue_cert("other.test")
    a.cert_chain_pems[0].write_to_path(str(d / "cert.pem"))
    a.private_key_pem.write_to_path(str(d / "key.pem"))
    b.private_key_pem.write_to_path(str(d / "other-key.pem"))
    key = serialization.load_pem_private_key(a.private_key_pem.bytes(), None)
    (d / "encrypted-key.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"passphrase")))
    (d / "garbage.pem").write_text("not a certificate\n")
    (d / "adir").mkdir()
    return d


def _listener(cert, key, name="submission", port=2525):
    return (f'[[listeners]]\nname = "{name}"\naddress = "127.0.0.1:{port}"\n'
            f'cert = "{cert}"\nkey = "{key}"\n')


def test_good_cert_and_key_have_no_errors(pem_files):
    d = pem_files
    assert file_errors(parse_config(_listener(d / "cert.pem", d / "key.pem"))) == []


@pytest.mark.parametrize("cert, key, expected", [
    ("missing.pem", "key.pem", "listeners[0].cert: {d}/missing.pem: no such file"),
    ("cert.pem", "missing.pem", "listeners[0].key: {d}/missing.pem: no such file"),
    ("adir", "key.pem", "listeners[0].cert: {d}/adir: is a directory, not a file"),
    ("garbage.pem", "key.pem", "listeners[0].cert/key: {d}/garbage.pem and {d}/key.pem: do "
                               "not load as a PEM certificate chain and its private key"),
    ("cert.pem", "garbage.pem", "listeners[0].cert/key: {d}/cert.pem and {d}/garbage.pem: do "
                                "not load as a PEM certificate chain and its private key"),
    ("cert.pem", "other-key.pem", "listeners[0].cert/key: {d}/cert.pem and {d}/other-key.pem: "
                                  "the private key does not belong to the certificate"),
    ("cert.pem", "encrypted-key.pem", "listeners[0].cert/key: {d}/cert.pem and "
                                      "{d}/encrypted-key.pem: the private key is encrypted"),
])
def test_cert_and_key_errors_name_the_key_path(pem_files, cert, key, expected):
    d = pem_files
    errors = file_errors(parse_config(_listener(d / cert, d / key)))
    assert len(errors) == 1 and errors[0].startswith(expected.format(d=d)), errors


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_key_is_an_error(pem_files, tmp_path):
    key = tmp_path / "key.pem"
    key.write_bytes((pem_files / "key.pem").read_bytes())
    key.chmod(0)
    errors = file_errors(parse_config(_listener(pem_files / "cert.pem", key)))
    assert errors == [f"listeners[0].key: {key}: cannot be read (permission denied for uid "
                      f"{os.getuid()})"]


def test_every_listener_is_checked(pem_files):
    d = pem_files
    cfg = parse_config(_listener(d / "cert.pem", d / "key.pem") +
                       _listener(d / "nope.pem", d / "key.pem", "second", 2526) +
                       '[[listeners]]\nname = "selfsigned"\naddress = "127.0.0.1:2527"\n')
    assert file_errors(cfg) == [f"listeners[1].cert: {d}/nope.pem: no such file"]


def test_shipped_example_warns_about_placeholders():
    cfg = parse_config(open(ROOT / "conf" / "mta.toml").read())
    warnings = placeholder_warnings(cfg)
    assert warnings == [
        "server.hostname: 'mta1.example.com' is a placeholder (example.com is reserved for "
        "documentation by RFC 2606): set a real one",
        "server.public_ips: 192.0.2.10 is a documentation address (192.0.2.0/24): set the "
        "addresses this server really sends from",
        "server.public_ips: 2001:db8::10 is a documentation address (2001:db8::/32): set the "
        "addresses this server really sends from"]
    # and its certificate paths are errors unless this machine has them
    errors = file_errors(cfg)
    if not os.path.exists("/etc/mta/tls/fullchain.pem"):
        assert "listeners[0].cert: /etc/mta/tls/fullchain.pem: no such file" in errors


REAL_SERVER = '[server]\nhostname = "mx1.real-host.net"\npublic_ips = ["8.8.4.4"]\n'


def _server(hostname="mx1.real-host.net", public_ips='["8.8.4.4"]'):
    return f'[server]\nhostname = "{hostname}"\npublic_ips = {public_ips}\n'


@pytest.mark.parametrize("text, expected", [
    (_server("localhost"), "server.hostname: 'localhost' is a placeholder (localhost is not a "
                           "public name)"),
    (_server("mail.example.net"), "example.net is reserved for documentation"),
    (_server("EXAMPLE.ORG."), "example.org is reserved for documentation"),
    (_server("box"), "box is not a fully-qualified domain name"),
    (_server("mx.lab.test"), "mx.lab.test is not a public name"),
    (_server("mx.invalid"), "the top-level domain .invalid is reserved"),
    (_server(public_ips='["198.51.100.7"]'), "198.51.100.7 is a documentation address "
                                            "(198.51.100.0/24)"),
    (_server(public_ips='["8.8.8.8", "203.0.113.1"]'), "203.0.113.1 is a documentation address "
                                                      "(203.0.113.0/24)"),
    (_server(public_ips='["3fff::1"]'), "3fff::1 is a documentation address (3fff::/20)"),
    (_server(public_ips="[]"), "server.public_ips: empty"),
    (REAL_SERVER + '[[listeners]]\naddress = "192.0.2.1:587"\n',
     "listeners[0].address: 192.0.2.1:587 is a documentation address (192.0.2.0/24)"),
    (REAL_SERVER + '[[listeners]]\naddress = "[2001:db8::1]:587"\n',
     "listeners[0].address: [2001:db8::1]:587 is a documentation address (2001:db8::/32)"),
    (REAL_SERVER + '[admin]\naddress = "203.0.113.5:8587"\ntoken = "0123456789abcdef0123"\n',
     "admin.address: 203.0.113.5:8587 is a documentation address"),
    (REAL_SERVER + '[routes]\n"example.org" = "mx.internal.example.org:25"\n',
     "routes.example.org: next hop mx.internal.example.org:25 is a placeholder (example.org"),
    (REAL_SERVER + '[routes]\n"*" = "192.0.2.25:587"\n',
     "routes.*: next hop 192.0.2.25:587 is a documentation"),
    (REAL_SERVER + '[dns]\nnameservers = ["192.0.2.53:5353"]\n',
     "dns.nameservers: 192.0.2.53:5353 is a documentation address"),
    (REAL_SERVER + '[bounces]\ndomain = "bounce.example.net"\n',
     "bounces.domain: 'bounce.example.net' is a placeholder"),
    (REAL_SERVER + '[bounces]\nfeedback_addresses = ["fbl@example.net"]\n',
     "bounces.feedback_addresses: 'fbl@example.net' is a placeholder"),
    (REAL_SERVER + '[domains]\ndmarc_rua = "dmarc-reports@platform.example"\n',
     "domains.dmarc_rua: 'dmarc-reports@platform.example' is a placeholder (the top-level "
     "domain .example"),
    (REAL_SERVER + _hook(url="https://app.example.com/mta-events"),
     "webhooks[0].url: 'https://app.example.com/mta-events' is a placeholder"),
])
def test_placeholder_warnings_name_the_key(text, expected):
    warnings = placeholder_warnings(parse_config(text))
    assert len(warnings) == 1 and expected in warnings[0], warnings


def test_real_values_and_sandbox_mode_give_no_warnings():
    real = ('[server]\nhostname = "mx1.real-host.net"\npublic_ips = ["8.8.4.4", "2a00:1450::1"]\n'
            '[[listeners]]\naddress = "0.0.0.0:587"\n'
            '[[listeners]]\nname = "local"\naddress = "localhost:10587"\n'
            '[routes]\n"corp.net" = "127.0.0.1:2526"\n')
    assert placeholder_warnings(parse_config(real)) == []
    # sandbox: nothing leaves the machine, so localhost and no public_ips are fine
    assert placeholder_warnings(parse_config(EMBEDDED_DEFAULT)) == []


def _write(tmp_path, name, text):
    f = tmp_path / name
    f.write_text(text)
    return f


def test_cli_config_check_fails_on_missing_cert_and_warns(tmp_path):
    """`mta config check` on the shipped example exits 1, naming each missing
    file by key path, and lists the placeholder warnings."""
    shipped = ROOT / "conf" / "mta.toml"
    if os.path.exists("/etc/mta/tls/fullchain.pem"):
        pytest.skip("this machine has /etc/mta/tls/fullchain.pem")
    r = _mta("config", "check", "--config", str(shipped))
    assert r.returncode == 1 and r.stdout == ""
    assert f"configuration errors in {shipped}:" in r.stderr
    for i in (0, 1, 3):                                  # the listeners with cert/key
        assert f"  listeners[{i}].cert: /etc/mta/tls/fullchain.pem: no such file\n" in r.stderr
        assert f"  listeners[{i}].key: /etc/mta/tls/privkey.pem: no such file\n" in r.stderr
    assert "listeners[2]" not in r.stderr                # tls = "none": no files
    assert "warnings:\n  server.hostname: 'mta1.example.com' is a placeholder" in r.stderr
    assert "192.0.2.10 is a documentation address" in r.stderr


def test_cli_config_check_warnings_exit_0_unless_strict(tmp_path, pem_files):
    d = pem_files
    f = _write(tmp_path, "c.toml", '[server]\nhostname = "mta1.example.com"\n'
                                   'public_ips = ["8.8.4.4"]\n' +
               _listener(d / "cert.pem", d / "key.pem"))
    r = _mta("config", "check", "--config", str(f))
    assert r.returncode == 0, r.stderr
    assert 'hostname = "mta1.example.com"' in r.stdout
    assert "warnings:\n  server.hostname: 'mta1.example.com' is a placeholder" in r.stderr
    r = _mta("config", "check", "--strict", "--config", str(f), "--json")
    assert r.returncode == 1 and "--strict" in r.stderr
    assert json.loads(r.stdout)["server"]["hostname"] == "mta1.example.com"
    good = _write(tmp_path, "good.toml", '[server]\nhostname = "mx1.real-host.net"\n'
                                         'public_ips = ["8.8.4.4"]\n' +
                  _listener(d / "cert.pem", d / "key.pem"))
    r = _mta("config", "check", "--strict", "--config", str(good))
    assert r.returncode == 0 and "warnings:" not in r.stderr, r.stderr
    bad = _write(tmp_path, "bad.toml", '[server]\nhostname = "mx1.real-host.net"\n'
                                       'public_ips = ["8.8.4.4"]\n' +
                 _listener(d / "cert.pem", d / "other-key.pem"))
    r = _mta("config", "check", "--config", str(bad))
    assert r.returncode == 1 and r.stdout == ""
    assert "the private key does not belong to the certificate" in r.stderr


def test_live_keys_are_marked_where_they_are_declared():
    """Which keys a reload applies live is read from the declarations (K /
    L in sections.py); this is the table runtime/reload.py kept beside them
    before issue 11, key for key, so moving it changed nothing."""
    from mta.config import ROUTES_LIVE, live_keys
    from mta.config.sections import ARRAYS
    every = {s: {f.name for f in dataclasses.fields(c)} for s, c in {**SECTIONS, **ARRAYS}.items()}
    # since: min_free_space is live (/readyz reads it per request) and
    # listen_backlog is not (the backlog is set when the socket binds)
    old_table = {"delivery": "*", "domains": "*", "policy": "*", "bounces": "*",
                 "server": {"log_level", "shutdown_timeout", "public_ips", "min_free_space"},
                 "suppression": {"on_rcpt"}, "webhooks": "*",
                 # issue 13: the sending API reads these per request
                 "api": {"rate_limit", "max_request_size", "max_recipients",
                         "attachment_hosts"},
                 # issue 14: read at every assessment (runtime/reputation.py)
                 "reputation": "*",
                 # issue 15: a reload re-reads the table and re-plans every queue
                 "shaping": "*", "egress": "*", "egress_pool": "*",
                 # issue 16: the build and the verification routes read these per request
                 "tracking": "*", "verification": "*", "verification_tenant": "*",
                 "broadcast": "*",
                 # issue 17: the delivery reads these per batch
                 "tls": "*"}
    for section, keys in every.items():
        expected = old_table.get(section, set())
        if section == "listeners":      # all but what moves the socket (and the name)
            expected = keys - {"address", "role", "tls", "name", "listen_backlog"}
        assert live_keys(section) == (keys if expected == "*" else expected), section
    assert ROUTES_LIVE is True
    with pytest.raises(KeyError):
        live_keys("nosuch")


def test_reputation_thresholds_are_checked_together():
    """[reputation] (issue 14): warn above pause, or a minimum volume the
    window can never hold, is a config error naming the key."""
    with pytest.raises(ConfigError) as ei:
        parse_config('[reputation]\nbounce_warn = 0.2\nbounce_pause = 0.1\n'
                     'min_volume = 3000\nwindow = 2000\n', "t")
    text = "\n".join(ei.value.errors)
    assert "reputation.bounce_warn: above bounce_pause" in text
    assert "reputation.min_volume: above window" in text
    cfg = parse_config('[reputation]\nlevel = "strict"\ncomplaint_pause = 0.01\n', "t")
    assert cfg.reputation.level == "strict" and cfg.reputation.complaint_pause == 0.01
    with pytest.raises(ConfigError):
        parse_config('[reputation]\nlevel = "lenient"\n', "t")


def test_the_tlsrpt_listener_name_is_reserved():
    """Our own TLS-RPT reports are recognised by their listener (issue 17)."""
    with pytest.raises(ConfigError) as info:
        parse_config('[[listeners]]\nname = "tlsrpt"\naddress = "127.0.0.1:2525"\n'
                     'trusted_networks = ["127.0.0.0/8"]\ntls = "none"\n')
    assert 'listeners[0].name: "tlsrpt" is reserved' in str(info.value)

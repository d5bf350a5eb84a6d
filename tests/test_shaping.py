"""The shaping table (mta/policy/shaping.py, mta/data/shaping.toml): the
shipped file, provider matching, precedence, overlays and every error naming
its file and key path. The shipped rules are also run through
mta.policy.automation with explicit `now` values."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mta.core.reply import Reply
from mta.policy.automation import Automation, Rule
from mta.policy.gcra import RateSpec
from mta.policy.shaping import (DomainShaping, Limits, Provider, ShapingError,
                                ShapingTable, site_name)

T0 = 1_800_000_000.0

GMAIL_MX = ["gmail-smtp-in.l.google.com.", "alt1.gmail-smtp-in.l.google.com.",
            "alt2.gmail-smtp-in.l.google.com."]
YAHOO_MX = ["mta5.am0.yahoodns.net", "mta6.am0.yahoodns.net", "mta7.am0.yahoodns.net"]
HOTMAIL_MX = ["hotmail-com.olc.protection.outlook.com"]
TENANT_MX = ["contoso-com.mail.protection.outlook.com"]

SMALL = """
version = "t1"
[default]
connection_limit = 20
max_deliveries_per_connection = 100
tls = "opportunistic"
connect_timeout = "30s"

[provider.big]
match = [".big.example"]
domains = ["bigmail.example"]
connection_limit = 5
max_message_rate = "100/s"
[provider.big.provider]
connection_limit = 50

[[provider.big.automation]]
match = 'slow down'
action = "connection_limit=1"
duration = "30m"

[site."mx1.other.example"]
connection_limit = 3
max_deliveries_per_connection = 7

[domain."special.example"]
mx_rollup = false
connection_limit = 2

[[automation]]
match = 'too many connections'
action = "connection_limit=2"
duration = "1h"
threshold = "3/10m"
"""


def small() -> ShapingTable:
    return ShapingTable.from_toml(SMALL, "small.toml")


def error(text: str, source: str = "ops.toml") -> str:
    with pytest.raises(ShapingError) as e:
        ShapingTable.from_toml(text, source)
    return str(e.value)


# -- the shipped table ----------------------------------------------------------

def test_the_shipped_table_loads_and_every_provider_is_complete_and_sane():
    table = ShapingTable.builtin()
    assert table.version
    assert table == ShapingTable.load(builtin=True, path=None)
    names = [p.name for p in table.providers]
    assert len(names) == len(set(names))
    assert {"google", "yahoo", "microsoft", "microsoft365", "apple"} <= set(names)
    for p in table.providers:
        assert p.match, p.name
        assert all(s.startswith(".") and s == s.lower() for s in p.match), p.name
        for limits in (p.site, p.total):
            if limits.connection_limit is not None:
                assert 1 <= limits.connection_limit <= 500, p.name
            if limits.max_deliveries_per_connection is not None:
                assert 1 <= limits.max_deliveries_per_connection <= 1000, p.name
            assert limits.tls in (None, "opportunistic", "required")
        assert p.site.connection_limit is not None, p.name
        for rule in p.rules:
            assert rule.duration > 0 or rule.action.kind == "bounce"
            assert rule.duration <= 4 * 3600, rule.name
    # the default leaves connections/deliveries/timeouts to [delivery]
    assert table.default == Limits(tls="opportunistic")
    assert table.sites == {} and table.domains == {}
    assert [r.action.kind for r in table.rules] == ["connection_limit"]


def test_the_shipped_providers_are_found_by_mx_and_by_domain():
    table = ShapingTable.builtin()

    def name(hosts: list[str], domain: str = "customer.example") -> str | None:
        p = table.provider_for(hosts, domain)
        return p.name if p else None

    assert name(GMAIL_MX) == "google"
    assert name(["aspmx.l.google.com", "alt1.aspmx.l.google.com"]) == "google"
    assert name(["smtp.google.com"]) == "google"
    assert name(YAHOO_MX) == "yahoo"
    assert name(["mx-aol.mail.gm0.yahoodns.net"]) == "yahoo"
    assert name(HOTMAIL_MX) == "microsoft"
    assert name(TENANT_MX) == "microsoft365"
    assert name(["contoso-com.o-v1.mx.microsoft"]) == "microsoft365"
    assert name(["mx01.mail.icloud.com", "mx02.mail.icloud.com"]) == "apple"
    assert name(["mx.customer.example"]) is None
    # by domain: no MX needed
    for domain, provider in [("gmail.com", "google"), ("aol.com", "yahoo"),
                             ("hotmail.com", "microsoft"), ("me.com", "apple")]:
        assert name([], domain) == provider


def test_the_shipped_limits_for_gmail_and_an_m365_tenant():
    table = ShapingTable.builtin()
    assert table.limits_for(site=site_name(GMAIL_MX), mx_hosts=GMAIL_MX,
                            domain="gmail.com") == Limits(
        connection_limit=5, max_deliveries_per_connection=50, tls="required")
    assert table.limits_for(site=TENANT_MX[0], mx_hosts=TENANT_MX,
                            domain="contoso.com") == Limits(
        connection_limit=5, max_deliveries_per_connection=50, tls="opportunistic")
    ms = table.provider_for(HOTMAIL_MX, "hotmail.com")
    assert ms is not None and ms.total.connection_limit == 500
    m365 = table.provider_for(TENANT_MX, "contoso.com")
    assert m365 is not None and m365.total == Limits()    # tenants are not pooled
    assert table.rollup("gmail.com") is True


def rules_of(name: str) -> list[Rule]:
    table = ShapingTable.builtin()
    provider = next(p for p in table.providers if p.name == name)
    return list(provider.rules) + list(table.rules)


def observe(auto: Automation, rules: list[Rule], events: list[tuple[float, str]], *,
            site: str, provider: str, tenant: str | None = "acme"
            ) -> list[list[tuple[str, float, float]]]:
    out = []
    for t, reply in events:
        fired = auto.observe(rules, reply=reply, site=site, provider=provider,
                             tenant=tenant, synthetic=False, now=T0 + t)
        out.append([(f.id, f.since - T0, f.until - T0) for f in fired])
    return out


def wire(code: int, lines: list[str]) -> str:
    """A multi-line remote reply as the automation sees it: "CODE ESC TEXT"."""
    return str(Reply.from_remote(code, "\n".join(lines)))


def test_shipped_yahoo_rules_ts04_suspends_at_once_ts02_slows_on_the_third():
    site = site_name(YAHOO_MX)
    ts04 = ("421 4.7.0 [TSS04] Messages from 192.0.2.7 temporarily deferred due to "
            "unexpected volume or user complaints - 4.16.55.1; see "
            "https://postmaster.yahooinc.com/error-codes")
    ts02 = "421 4.7.0 [TS02] Messages from 192.0.2.7 temporarily deferred - 4.16.56.1"
    auto = Automation()
    got = observe(auto, rules_of("yahoo"),
                  [(0, ts02), (60, ts02), (120, "250 2.0.0 ok"), (180, ts02), (200, ts04)],
                  site=site, provider="yahoo")
    assert got == [[], [], [], [(f"site:{site}:message_rate=10/m", 180, 180 + 3600)],
                   [(f"site:{site}:suspend", 200, 200 + 7200)]]
    assert auto.site_suspended(site, T0 + 7199) is not None
    assert auto.site_suspended(site, T0 + 7200 + 200) is None
    assert auto.message_rate(site, T0 + 181) == RateSpec(10, 60.0)


def test_shipped_gmail_rules_tell_an_ip_limit_from_a_sender_domain_limit():
    site = site_name(GMAIL_MX)
    ip = wire(421, ["4.7.28 [192.0.2.7] Our system has detected an unusual rate of",
                    "4.7.28 unsolicited mail originating from your IP address. To protect our",
                    "4.7.28 users from spam, mail sent from your IP address has been",
                    "4.7.28 temporarily rate limited. - gsmtp"])
    dkim = wire(421, ["4.7.28 Gmail has detected an unusual rate of unsolicited email",
                      "4.7.28 originating from your DKIM domain example.com. To protect our",
                      "4.7.28 users from spam, email sent from your domain has been",
                      "4.7.28 temporarily rate limited. - gsmtp"])
    rules = rules_of("google")
    tenant_rule = [r for r in rules if r.action.kind == "suspend_tenant"]
    rate_rules = [r for r in rules if r.action.kind == "message_rate"]
    assert [r.matches(ip) for r in tenant_rule + rate_rules] == [False, True, False]
    assert [r.matches(dkim) for r in tenant_rule + rate_rules] == [True, False, False]
    old = ("421 4.7.0 [192.0.2.7] Our system has detected an unusual rate of "
           "unsolicited mail originating from your IP address.")
    assert [r.matches(old) for r in tenant_rule + rate_rules] == [False, False, True]

    auto = Automation()
    got = observe(auto, rules, [(0, dkim), (10, dkim), (20, ip), (30, dkim), (40, ip),
                                (50, ip)], site=site, provider="google")
    assert got == [[], [], [], [("tenant:acme@google:suspend_tenant", 30, 30 + 3600)],
                   [], [(f"site:{site}:message_rate=30/m", 50, 50 + 3600)]]


def test_shipped_microsoft_rules_650_suspends_500_lowers_connections():
    site = HOTMAIL_MX[0]
    s775 = ("451 4.7.650 The mail server [192.0.2.7] has been temporarily rate limited "
            "due to IP reputation. For e-mail delivery information, see "
            "https://aka.ms/postmaster (S775)")
    busy = ("451 4.7.500 Server busy. Please try again later from [192.0.2.7]. (S77719) "
            "[AM0EUR02FT001.eop-EUR02.prod.protection.outlook.com]")
    rp3 = "421 RP-003 The mail server IP connecting to Outlook.com server has exceeded " \
          "the connection limit allowed."
    auto = Automation()
    got = observe(auto, rules_of("microsoft"),
                  [(0, busy), (1, s775), (2, busy), (3, s775), (4, busy), (5, s775),
                   (6, rp3)], site=site, provider="microsoft")
    assert got == [[], [], [], [],
                   [(f"site:{site}:connection_limit=1", 4, 4 + 1800)],
                   [(f"site:{site}:suspend", 5, 5 + 3600)],
                   [(f"site:{site}:connection_limit=1", 4, 6 + 3600)]]   # extended
    assert auto.connection_limit(site, T0 + 10) == 1


def test_shipped_too_many_connections_rule_applies_to_any_site():
    auto = Automation()
    rules = list(ShapingTable.builtin().rules)
    reply = "421 4.7.0 Too many concurrent SMTP connections from this IP address"
    fr = "421 mwinf5c10 ME Trop de connexions, veuillez verifier votre configuration."
    got = observe(auto, rules, [(0, reply), (100, fr), (200, reply)],
                  site="mx.customer.example", provider="")
    assert got == [[], [], [("site:mx.customer.example:connection_limit=2", 200, 3800)]]


# -- provider_for ---------------------------------------------------------------

def test_provider_for_needs_every_mx_host_to_match_ignoring_case_and_dots():
    t = small()

    def name(hosts: list[str], domain: str = "x.example") -> str | None:
        p = t.provider_for(hosts, domain)
        return p.name if p else None

    assert [name(["mx1.big.example"]),
            name(["MX1.Big.Example.", "mx2.big.example."]),
            name(["mx1.big.example", "backup.other.example"]),   # not all hosts
            name(["big.example"]),                                # the suffix needs a label
            name(["mx1.notbig.example"]),
            name([])] == ["big", "big", None, None, None, None]


def test_provider_for_by_domain_wins_over_the_mx_hosts():
    t = small()
    for domain in ["bigmail.example", "BigMail.Example.", " bigmail.example "]:
        p = t.provider_for(["mx.elsewhere.example"], domain)
        assert p is not None and p.name == "big"
    assert t.provider_for([], "bigmail.example") is not None
    assert t.provider_for([], "x.example") is None


def test_providers_are_tried_in_file_order():
    t = ShapingTable.from_toml("""
[provider.first]
match = [".example.net"]
[provider.second]
match = [".mx.example.net"]
""", "order.toml")
    p = t.provider_for(["a.mx.example.net"], "d.example")
    assert p is not None and p.name == "first"


# -- limits_for / rollup --------------------------------------------------------

def test_limits_for_default_then_provider_then_site_then_domain():
    t = small()
    base = Limits(connection_limit=20, max_deliveries_per_connection=100,
                  tls="opportunistic", connect_timeout=30.0)
    # no provider, no site, no domain entry: the default
    assert t.limits_for(site="mx.x.example", mx_hosts=["mx.x.example"],
                        domain="x.example") == base
    # provider over default
    assert t.limits_for(site="mx1.big.example", mx_hosts=["mx1.big.example"],
                        domain="x.example") == base.over(
        Limits(connection_limit=5, max_message_rate=RateSpec(100, 1.0)))
    # site over default
    assert t.limits_for(site="MX1.other.example.", mx_hosts=["mx1.other.example"],
                        domain="x.example") == base.over(
        Limits(connection_limit=3, max_deliveries_per_connection=7))
    # domain over site over default
    assert t.limits_for(site="mx1.other.example", mx_hosts=["mx1.other.example"],
                        domain="special.example") == base.over(
        Limits(connection_limit=2, max_deliveries_per_connection=7))
    # all four: the domain's connection_limit, the site's deliveries, the
    # provider's rate, the default's tls and timeout
    t2 = small().overlaid(ShapingTable.from_toml(
        '[site."mx1.big.example"]\nmax_deliveries_per_connection = 9\n', "o.toml"))
    assert t2.limits_for(site="mx1.big.example", mx_hosts=["mx1.big.example"],
                         domain="special.example") == Limits(
        connection_limit=2, max_deliveries_per_connection=9,
        max_message_rate=RateSpec(100, 1.0), tls="opportunistic", connect_timeout=30.0)


def test_a_multi_host_site_is_found_however_it_is_written():
    t = ShapingTable.from_toml('[site."b.example.net,A.example.net."]\n'
                               'connection_limit = 4\n', "s.toml")
    assert list(t.sites) == ["a.example.net,b.example.net"]
    for site in ["a.example.net,b.example.net", "b.example.net,a.example.net"]:
        assert t.limits_for(site=site, mx_hosts=[], domain="d.example") == \
            Limits(connection_limit=4)


def test_rollup_is_on_unless_a_domain_opts_out():
    t = small()
    assert [t.rollup("special.example"), t.rollup("Special.Example."),
            t.rollup("x.example")] == [False, False, True]


def test_limits_over_keeps_what_the_other_leaves_unset():
    a = Limits(connection_limit=5, tls="required", command_timeout=300.0)
    b = Limits(connection_limit=1, max_message_rate=RateSpec(10, 60.0))
    assert a.over(b) == Limits(connection_limit=1, tls="required", command_timeout=300.0,
                               max_message_rate=RateSpec(10, 60.0))
    assert a.over(Limits()) is a
    assert Limits().over(a) == a


def test_limits_reject_bad_values_naming_the_field():
    for kwargs, field in [({"connection_limit": 0}, "connection_limit"),
                          ({"max_deliveries_per_connection": True},
                           "max_deliveries_per_connection"),
                          ({"max_message_rate": "10/s"}, "max_message_rate"),
                          ({"tls": "always"}, "tls"),
                          ({"connect_timeout": 0.0}, "connect_timeout"),
                          ({"command_timeout": float("inf")}, "command_timeout")]:
        with pytest.raises(ValueError, match=f"^{field}: "):
            Limits(**kwargs)  # type: ignore[arg-type]


# -- overlays -------------------------------------------------------------------

OPERATOR = """
version = "ops-3"
[provider.google]
connection_limit = 2

[[provider.yahoo.automation]]
match = '\\[TSS?04\\]'
action = "suspend"
duration = "30m"

[provider.corp]
match = [".corp-mx.example"]
connection_limit = 1

[provider.microsoft365]
automation = []
"""


def test_overlay_changes_one_key_adds_a_provider_and_replaces_a_rule_list(tmp_path: Path):
    builtin = ShapingTable.builtin()
    path = tmp_path / "shaping.toml"
    path.write_text(OPERATOR)
    t = ShapingTable.load(builtin=True, path=str(path))
    assert t.version == f"{builtin.version}+ops-3"
    by_name = {p.name: p for p in t.providers}
    shipped = {p.name: p for p in builtin.providers}
    # google: only connection_limit changed
    google = by_name["google"]
    assert google.site == shipped["google"].site.over(Limits(connection_limit=2))
    assert google.site.max_deliveries_per_connection == 50 and google.site.tls == "required"
    assert (google.match, google.domains, google.rules) == (
        shipped["google"].match, shipped["google"].domains, shipped["google"].rules)
    # yahoo: the operator's rule list replaces the shipped one; limits stay
    assert [(r.pattern, str(r.action), r.duration) for r in by_name["yahoo"].rules] == [
        (r"\[TSS?04\]", "suspend", 1800.0)]
    assert by_name["yahoo"].site == shipped["yahoo"].site
    # microsoft365: automation = [] drops the shipped rules, the rest stays
    assert shipped["microsoft365"].rules != ()
    assert by_name["microsoft365"].rules == ()
    assert by_name["microsoft365"].match == shipped["microsoft365"].match
    assert by_name["microsoft365"].site == shipped["microsoft365"].site
    # a new provider is tried first, shipped ones keep their order
    assert [p.name for p in t.providers] == ["corp"] + [p.name for p in builtin.providers]
    assert t.limits_for(site="a.corp-mx.example", mx_hosts=["a.corp-mx.example"],
                        domain="corp.example").connection_limit == 1
    assert t.rules == builtin.rules


def test_overlay_replaces_match_and_keeps_the_rest_of_a_domain(tmp_path: Path):
    base = small()
    over = ShapingTable.from_toml("""
[provider.big]
match = [".big2.example"]
[domain."special.example"]
max_deliveries_per_connection = 4
[domain."new.example"]
mx_rollup = false
[site."mx1.other.example"]
connection_limit = 6
[[automation]]
match = 'go away'
action = "suspend"
duration = "10m"
""", "o.toml")
    t = base.overlaid(over)
    big = t.providers[0]
    assert big.match == (".big2.example",) and big.domains == ("bigmail.example",)
    assert big.site == Limits(connection_limit=5, max_message_rate=RateSpec(100, 1.0))
    assert big.total == Limits(connection_limit=50) and len(big.rules) == 1
    assert t.domains["special.example"] == DomainShaping(
        mx_rollup=False, limits=Limits(connection_limit=2, max_deliveries_per_connection=4))
    assert t.rollup("special.example") is False and t.rollup("new.example") is False
    assert t.sites["mx1.other.example"] == Limits(connection_limit=6,
                                                  max_deliveries_per_connection=7)
    assert [r.pattern for r in t.rules] == ["go away"]
    assert t.version == "t1"
    with pytest.raises(TypeError):
        t.sites["mx9.example"] = Limits()  # type: ignore[index]
    # a domain table that says mx_rollup = true turns rollup back on
    on = t.overlaid(ShapingTable.from_toml('[domain."special.example"]\nmx_rollup = true\n',
                                           "p.toml"))
    assert on.rollup("special.example") is True
    assert on.domains["special.example"].limits.connection_limit == 2


def test_builtin_false_uses_the_operator_file_alone(tmp_path: Path):
    path = tmp_path / "only.toml"
    path.write_text('[provider.corp]\nmatch = [".corp-mx.example"]\nconnection_limit = 1\n')
    t = ShapingTable.load(builtin=False, path=str(path))
    assert [p.name for p in t.providers] == ["corp"]
    assert t.version == "" and t.default == Limits() and t.rules == ()
    assert t.provider_for(GMAIL_MX, "gmail.com") is None


def test_load_problems_name_the_file(tmp_path: Path):
    missing = tmp_path / "nope.toml"
    with pytest.raises(ShapingError, match=f"^{missing}: cannot read: "):
        ShapingTable.load(builtin=True, path=str(missing))
    with pytest.raises(ShapingError, match="needs an operator file"):
        ShapingTable.load(builtin=False, path=None)
    bad = tmp_path / "bad.toml"
    bad.write_text('[provider.corp]\nconnection_limit = 1\n')
    # fine over the shipped table? no: corp is new and has nothing to match
    for builtin in (True, False):
        with pytest.raises(ShapingError, match=f"^{bad}: provider.corp: needs 'match'"):
            ShapingTable.load(builtin=builtin, path=str(bad))
    bad.write_bytes(b'version = "\xff"\n')
    with pytest.raises(ShapingError, match=f"^{bad}: not UTF-8"):
        ShapingTable.load(builtin=True, path=str(bad))


# -- errors ---------------------------------------------------------------------

@pytest.mark.parametrize("text, message", [
    ('[provider.google]\nconection_limit = 5\n',
     "ops.toml: provider.google.conection_limit: unknown key"),
    ('colour = "blue"\n', "ops.toml: colour: unknown key"),
    ('[provider.google.provider]\nmatch = [".x"]\n',
     "ops.toml: provider.google.provider.match: unknown key"),
    ('[site."mx1.example.net"]\nspeed = 1\n',
     'ops.toml: site."mx1.example.net".speed: unknown key'),
    ('[domain."example.com"]\nrollup = false\n',
     'ops.toml: domain."example.com".rollup: unknown key'),
    ('[provider.google]\nmax_message_rate = "fast"\n',
     "ops.toml: provider.google.max_message_rate: bad rate 'fast'"),
    ('[provider.google.provider]\nmax_connection_rate = 10\n',
     "ops.toml: provider.google.provider.max_connection_rate: must be a rate"),
    ('[default]\nconnect_timeout = "soon"\n',
     "ops.toml: default.connect_timeout: must be a duration"),
    ('[default]\ncommand_timeout = "0s"\n',
     "ops.toml: default.command_timeout: must be longer than 0 s"),
    ('[default]\ncommand_timeout = 30\n',
     "ops.toml: default.command_timeout: must be a duration"),
    ('[provider.google]\nconnection_limit = -1\n',
     "ops.toml: provider.google.connection_limit: must be a whole number >= 1 (got -1)"),
    ('[site."mx1.example.net"]\nmax_deliveries_per_connection = 0\n',
     'ops.toml: site."mx1.example.net".max_deliveries_per_connection: must be a whole '
     'number >= 1'),
    ('[default]\nconnection_limit = 2.5\n',
     "ops.toml: default.connection_limit: must be a whole number >= 1"),
    ('[default]\ntls = "always"\n', "ops.toml: default.tls: must be one of"),
    ('[provider.x]\nmatch = ["google.com"]\n',
     "ops.toml: provider.x.match[0]: 'google.com' is not a host suffix"),
    ('[provider.x]\nmatch = ".google.com"\n', "ops.toml: provider.x.match: must be a list"),
    ('[provider.x]\ndomains = ["ok.example", 5]\n',
     "ops.toml: provider.x.domains[1]: must be a string"),
    ('[domain."example.com"]\nmx_rollup = "no"\n',
     'ops.toml: domain."example.com".mx_rollup: must be true or false'),
    ('[domain."bad domain"]\nconnection_limit = 1\n',
     'ops.toml: domain."bad domain": \'bad domain\' is not a domain name'),
    ('[site."a.example"]\nconnection_limit = 1\n[site."A.example."]\nconnection_limit = 2\n',
     'ops.toml: site."A.example.": the same site as another'),
    ('default = 5\n', "ops.toml: default: must be a table"),
    ('[automation]\nmatch = "x"\n', "ops.toml: automation: must be an array of tables"),
    ('[[provider.yahoo.automation]]\nmatch = "x"\naction = "explode"\nduration = "1h"\n',
     "ops.toml: provider.yahoo.automation[0]: action: 'explode' is not an action"),
    ('[[automation]]\nmatch = "x"\naction = "suspend"\nduration = "1h"\n'
     '[[automation]]\nmatch = "("\naction = "suspend"\nduration = "1h"\n',
     "ops.toml: automation[1]: match: '(' is not a valid regular expression"),
    ('[[automation]]\nmatch = "x"\naction = "suspend"\n',
     "ops.toml: automation[0]: missing key 'duration'"),
    ('version = 3\n', "ops.toml: version: must be a string"),
])
def test_errors_name_the_file_and_the_key_path(text: str, message: str):
    assert error(text).startswith(message)


def test_bad_toml_names_the_file_and_the_line():
    message = error('[provider.google]\nconnection_limit = 5\nmatch = .google.com\n')
    assert message.startswith("ops.toml: invalid TOML: ")
    assert "line 3" in message


def test_provider_values_are_checked():
    with pytest.raises(ValueError, match="^match: 'google.com' must be"):
        Provider("g", ("google.com",), (), Limits(), Limits(), ())
    with pytest.raises(ValueError, match="^name: "):
        Provider("", (".google.com",), (), Limits(), Limits(), ())


# -- site_name / describe -------------------------------------------------------

def test_site_name_is_stable_over_order_case_dots_and_repeats():
    assert site_name(["mx1.example.net"]) == "mx1.example.net"
    names = {site_name(hosts) for hosts in [
        ["b.example.net", "a.example.net"],
        ["A.Example.NET.", "b.example.net"],
        ["a.example.net", "b.example.net", "a.example.net."],
        (" b.example.net ", "a.example.net"),
    ]}
    assert names == {"a.example.net,b.example.net"}
    with pytest.raises(ValueError, match="no host names"):
        site_name([])
    with pytest.raises(ValueError, match="empty host name"):
        site_name(["a.example.net", "."])
    with pytest.raises(ValueError, match="sequence of host names"):
        site_name("a.example.net")


def test_describe_is_json_and_says_limits_as_the_file_writes_them():
    described = json.loads(json.dumps(ShapingTable.builtin().describe()))
    assert described["version"] == ShapingTable.builtin().version
    google = next(p for p in described["providers"] if p["name"] == "google")
    assert google["site"] == {"connection_limit": 5, "max_deliveries_per_connection": 50,
                              "tls": "required"}
    assert google["match"] == [".google.com", ".googlemail.com"]
    assert {"name", "match", "action", "duration"} <= set(google["rules"][0])
    small_described = json.loads(json.dumps(small().describe()))
    assert small_described["default"] == {
        "connection_limit": 20, "max_deliveries_per_connection": 100,
        "tls": "opportunistic", "connect_timeout": "30s"}
    big = small_described["providers"][0]
    assert big["site"] == {"connection_limit": 5, "max_message_rate": "100/s"}
    assert big["total"] == {"connection_limit": 50}
    assert big["rules"] == [{"name": "connection_limit=1 on /slow down/",
                             "match": "slow down", "action": "connection_limit=1",
                             "duration": "30m"}]
    assert small_described["sites"] == {"mx1.other.example": {
        "connection_limit": 3, "max_deliveries_per_connection": 7}}
    assert small_described["domains"] == {"special.example": {
        "mx_rollup": False, "connection_limit": 2}}
    assert small_described["rules"][0]["threshold"] == "3/10m"

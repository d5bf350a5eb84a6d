"""Automation on replies (mta/policy/automation.py): whole sequences of
decisions against explicit `now` values."""

from __future__ import annotations

import pytest

from mta.policy.automation import (Action, Automation, Fired, Rule, parse_action,
                                   parse_rule)
from mta.policy.gcra import parse_rate

T0 = 1_800_000_000.0
YAHOO = "mta5.am0.yahoodns.net"
GMAIL = "gmail-smtp-in.l.google.com"
TS04 = "421 4.7.0 [TS04] Messages from 192.0.2.7 temporarily deferred due to unexpected volume"
OK = "250 2.0.0 ok dirdel"


def ts04_rule() -> Rule:
    return parse_rule({"match": r"421 4\.7\.0 \[TS04\]", "action": "suspend",
                       "duration": "1h", "threshold": "3/10m", "name": "yahoo-ts04"},
                      "automation[0]")


def feed(auto: Automation, rules: list[Rule], replies: list[tuple[float, str]], *,
         site: str = YAHOO, provider: str | None = "yahoo", tenant: str | None = None,
         synthetic: bool = False) -> list[list[tuple[str, float, float]]]:
    """(id, since, until) of what each reply fired, relative to T0."""
    out = []
    for t, reply in replies:
        fired = auto.observe(rules, reply=reply, site=site, provider=provider,
                             tenant=tenant, synthetic=synthetic, now=T0 + t)
        out.append([(f.id, f.since - T0, f.until - T0) for f in fired])
    return out


def test_ts04_third_match_within_ten_minutes_suspends_the_site_for_an_hour():
    auto, rules = Automation(), [ts04_rule()]
    sid = f"site:{YAHOO}:suspend"
    # 0 and 300 count; 400 is not a match; at 601 the match at 0 has left the
    # window (601 > 600), so 601 is only the second; 650 is the third of
    # 300, 601, 650
    assert feed(auto, rules, [(0, TS04), (300, TS04), (400, OK), (601, TS04),
                              (650, TS04)]) == [
        [], [], [], [], [(sid, 650, 650 + 3600)]]
    fired = auto.site_suspended(YAHOO, T0 + 650)
    assert fired is not None and fired.rule.name == "yahoo-ts04"
    assert (fired.scope, fired.key, str(fired.action), fired.reason) == (
        "site", YAHOO, "suspend", TS04)
    assert [f.id for f in auto.active(T0 + 650 + 3599)] == [sid]
    assert auto.site_suspended(YAHOO, T0 + 650 + 3599) is not None
    assert auto.expire(T0 + 650 + 3599) == []
    # until is exclusive: at until the site is free and expire reports the end
    assert auto.site_suspended(YAHOO, T0 + 650 + 3600) is None
    assert auto.active(T0 + 650 + 3600) == []
    assert auto.expire(T0 + 650 + 3600) == [fired]
    assert auto.expire(T0 + 650 + 3601) == []


def test_the_window_includes_its_edge_and_firing_clears_the_history():
    auto, rules = Automation(), [ts04_rule()]
    sid = f"site:{YAHOO}:suspend"
    # 0, 300, 600: the span is exactly 10 minutes, it counts
    assert feed(auto, rules, [(0, TS04), (300, TS04), (600, TS04)]) == [
        [], [], [(sid, 600, 4200)]]
    assert auto.held() == 0
    # replies from connections still open: the history starts again from
    # zero; the third real match extends the suspension (since stays)
    assert feed(auto, rules, [(610, TS04), (620, TS04), (630, TS04)]) == [
        [], [], [(sid, 600, 4230)]]
    assert [(f.since - T0, f.until - T0) for f in auto.active(T0 + 700)] == [(600, 4230)]


def test_synthetic_replies_never_count_even_when_they_match():
    auto, rules = Automation(), [ts04_rule()]
    sid = f"site:{YAHOO}:suspend"
    # before any firing: synthetic matches are not recorded at all
    assert feed(auto, rules, [(t, TS04) for t in range(0, 50, 10)],
                synthetic=True) == [[]] * 5
    assert auto.held() == 0
    assert feed(auto, rules, [(60, TS04), (70, TS04), (80, TS04)]) == [
        [], [], [(sid, 80, 3680)]]
    # our own deferral quotes the reason (so the pattern matches it) and is
    # issued for every recipient held while the site is suspended: it never
    # extends the suspension, however many there are
    fired = auto.site_suspended(YAHOO, T0 + 80)
    assert fired is not None
    own = f"451 4.4.5 site suspended until {fired.until:.0f}: {fired.reason}"
    assert ts04_rule().matches(own)
    assert feed(auto, rules, [(t, own) for t in range(100, 3680, 60)],
                synthetic=True) == [[]] * len(range(100, 3680, 60))
    assert auto.held() == 0
    assert auto.site_suspended(YAHOO, T0 + 3679) is fired
    assert auto.site_suspended(YAHOO, T0 + 3680) is None
    assert auto.expire(T0 + 3680) == [fired]


def test_other_sites_are_unaffected_and_counted_apart():
    auto, rules = Automation(), [ts04_rule()]
    other = "mta6.am0.yahoodns.net"
    got = []
    for t, site in [(0, YAHOO), (1, other), (2, YAHOO), (3, other), (4, YAHOO)]:
        got.append([f.id for f in auto.observe(rules, reply=TS04, site=site,
                                               provider="yahoo", tenant=None,
                                               synthetic=False, now=T0 + t)])
    assert got == [[], [], [], [], [f"site:{YAHOO}:suspend"]]
    assert auto.site_suspended(YAHOO, T0 + 5) is not None
    assert auto.site_suspended(other, T0 + 5) is None
    assert auto.site_suspended(GMAIL, T0 + 5) is None
    assert auto.connection_limit(YAHOO, T0 + 5) is None
    assert auto.held() == 2          # the other site's two matches


def test_connection_limit_and_message_rate_the_strictest_in_force_wins():
    rules = [
        parse_rule({"match": r"4\.7\.650", "action": "connection_limit=2",
                    "duration": "30m"}, "automation[0]"),
        parse_rule({"match": r"4\.7\.650 .*throttl", "action": "connection_limit=1",
                    "duration": "10m"}, "automation[1]"),
        parse_rule({"match": r"4\.7\.650", "action": "message_rate=10/m",
                    "duration": "20m"}, "automation[2]"),
        parse_rule({"match": r"throttl", "action": "message_rate=100/h",
                    "duration": "5m"}, "automation[3]"),
    ]
    auto, site = Automation(), "outlook-com.olc.protection.outlook.com"
    soft = "451 4.7.650 The mail server has been temporarily rate limited"
    hard = "451 4.7.650 throttled due to IP reputation"
    got = feed(auto, rules, [(0, soft), (60, hard)], site=site, provider="microsoft")
    # the hard reply matches all four rules: the two fired at 0 are extended
    # (since stays 0), the two stricter ones start
    assert got == [
        [(f"site:{site}:connection_limit=2", 0, 1800),
         (f"site:{site}:message_rate=10/m", 0, 1200)],
        [(f"site:{site}:connection_limit=2", 0, 1860),
         (f"site:{site}:connection_limit=1", 60, 660),
         (f"site:{site}:message_rate=10/m", 0, 1260),
         (f"site:{site}:message_rate=100/h", 60, 360)]]
    seq = [(t, auto.connection_limit(site, T0 + t), auto.message_rate(site, T0 + t))
           for t in (60, 359, 360, 659, 660, 1259, 1260, 1859, 1860)]
    r10m, r100h = parse_rate("10/m"), parse_rate("100/h")
    assert seq == [(60, 1, r100h), (359, 1, r100h), (360, 1, r10m), (659, 1, r10m),
                   (660, 2, r10m), (1259, 2, r10m), (1260, 2, None), (1859, 2, None),
                   (1860, None, None)]
    assert auto.connection_limit(GMAIL, T0 + 60) is None
    assert auto.message_rate(GMAIL, T0 + 60) is None
    assert auto.site_suspended(site, T0 + 60) is None
    assert [f.id for f in auto.expire(T0 + 1260)] == [
        f"site:{site}:message_rate=100/h", f"site:{site}:connection_limit=1",
        f"site:{site}:message_rate=10/m"]


def test_suspend_tenant_keys_by_tenant_and_provider():
    rule = parse_rule({"match": r"5\.7\.1 .*spam", "action": "suspend_tenant",
                       "duration": "2h"}, "automation[0]")
    auto = Automation()
    spam = "421 4.7.1 [TSS09] likely spam from this sender; 5.7.1 spam"
    got = feed(auto, [rule], [(0, spam)], tenant="acme")
    assert got == [[("tenant:acme@yahoo:suspend_tenant", 0, 7200)]]
    assert auto.tenant_suspended("acme", "yahoo", T0 + 1) is not None
    assert auto.tenant_suspended("other", "yahoo", T0 + 1) is None
    assert auto.tenant_suspended("acme", "gmail", T0 + 1) is None
    assert auto.site_suspended(YAHOO, T0 + 1) is None        # the site keeps flowing
    # no provider: keyed by the site
    assert feed(auto, [rule], [(10, spam)], site=GMAIL, provider=None, tenant="acme") == [
        [(f"tenant:acme@{GMAIL}:suspend_tenant", 10, 7210)]]
    assert auto.tenant_suspended("acme", GMAIL, T0 + 11) is not None
    # no tenant: the rule does nothing
    assert feed(auto, [rule], [(20, spam)], tenant=None) == [[]]
    assert len(auto.active(T0 + 20)) == 2
    assert auto.tenant_suspended("acme", "yahoo", T0 + 7200) is None


def test_a_threshold_for_a_tenant_counts_that_tenants_mail_only():
    rule = parse_rule({"match": "TSS09", "action": "suspend_tenant", "duration": "1h",
                       "threshold": "2/1h"}, "automation[0]")
    auto = Automation()
    reply = "421 4.7.1 [TSS09] All messages from 192.0.2.7 will be permanently deferred"
    got = [[f.id for f in auto.observe([rule], reply=reply, site=YAHOO, provider="yahoo",
                                       tenant=tenant, synthetic=False, now=T0 + t)]
           for t, tenant in [(0, "acme"), (1, "bravo"), (2, "acme")]]
    assert got == [[], [], ["tenant:acme@yahoo:suspend_tenant"]]


def test_bounce_fires_but_nothing_stays_in_force():
    rule = parse_rule({"match": r"^4\d\d 4\.7\.1 .*blocked", "action": "bounce"},
                      "automation[0]")
    assert (rule.duration, rule.threshold, rule.window) == (0.0, 1, 0.0)
    auto = Automation()
    reply = "450 4.7.1 Client host rejected: blocked using zen.spamhaus.org"
    assert feed(auto, [rule], [(0, reply), (5, OK), (9, reply)]) == [
        [(f"site:{YAHOO}:bounce", 0, 0)], [], [(f"site:{YAHOO}:bounce", 9, 9)]]
    assert auto.active(T0 + 9) == []
    assert auto.expire(T0 + 9) == []
    assert auto.site_suspended(YAHOO, T0 + 9) is None


def test_a_firing_already_in_force_extends_only_to_a_later_until():
    long = Rule("TS04", Action("suspend"), 3600.0)
    short = Rule("TS04", Action("suspend"), 600.0, name="short")
    auto = Automation()
    sid = f"site:{YAHOO}:suspend"
    assert feed(auto, [long], [(0, TS04), (100, TS04)]) == [
        [(sid, 0, 3600)], [(sid, 0, 3700)]]
    # an earlier until changes nothing and reports nothing
    assert feed(auto, [short], [(200, TS04)]) == [[]]
    fired = auto.site_suspended(YAHOO, T0 + 200)
    assert fired is not None and fired.until == T0 + 3700 and fired.rule == long
    # after it ended, a new match starts a new action
    assert [f.id for f in auto.expire(T0 + 3700)] == [sid]
    assert feed(auto, [short], [(4000, TS04)]) == [[(sid, 4000, 4600)]]


def test_lift_by_id_and_by_key():
    rules = [Rule("TS04", Action("suspend"), 3600.0),
             Rule("TS04", Action("connection_limit", 1), 1800.0),
             Rule("TSS09", Action("suspend_tenant"), 3600.0)]
    auto = Automation()
    feed(auto, rules, [(0, TS04)])
    feed(auto, rules, [(0, TS04)], site=GMAIL, provider="google")
    feed(auto, rules, [(0, "421 [TSS09] deferred")], tenant="acme")
    assert [f.id for f in auto.active(T0)] == [
        f"site:{GMAIL}:connection_limit=1", f"site:{YAHOO}:connection_limit=1",
        f"site:{GMAIL}:suspend", f"site:{YAHOO}:suspend",
        "tenant:acme@yahoo:suspend_tenant"]
    assert [f.id for f in auto.lift(f"site:{YAHOO}:suspend")] == [f"site:{YAHOO}:suspend"]
    assert auto.site_suspended(YAHOO, T0 + 1) is None
    assert auto.connection_limit(YAHOO, T0 + 1) == 1
    assert [f.id for f in auto.lift(GMAIL)] == [
        f"site:{GMAIL}:connection_limit=1", f"site:{GMAIL}:suspend"]
    assert [f.id for f in auto.lift("acme@yahoo")] == ["tenant:acme@yahoo:suspend_tenant"]
    assert auto.lift("nothing-here") == []
    assert [f.id for f in auto.active(T0 + 1)] == [f"site:{YAHOO}:connection_limit=1"]
    left = auto.active(T0)
    assert auto.expire(T0 + 3600) == left


def test_lift_clears_the_history_of_the_lifted_key():
    auto, rules = Automation(), [ts04_rule()]
    feed(auto, rules, [(0, TS04), (1, TS04), (2, TS04), (3, TS04), (4, TS04)])
    assert auto.held() == 2
    assert len(auto.lift(YAHOO)) == 1
    assert auto.held() == 0
    assert feed(auto, rules, [(5, TS04)]) == [[]]


def test_memory_is_bounded_by_the_threshold():
    rule = parse_rule({"match": "TS04", "action": "suspend", "duration": "1h",
                       "threshold": "5/10s"}, "automation[0]")
    auto = Automation()
    fired = 0
    for i in range(10_000):     # every 3 s: at most 4 in any 10 s, never 5
        fired += len(auto.observe([rule], reply=TS04, site=YAHOO, provider="yahoo",
                                  tenant=None, synthetic=False, now=T0 + 3 * i))
        assert auto.held() <= rule.threshold
    assert fired == 0
    assert auto.held() == 4
    # histories that left their window are forgotten by expire
    assert auto.expire(T0 + 3 * 9_999 + 10) == []
    assert auto.held() == 4
    assert auto.expire(T0 + 3 * 9_999 + 11) == []
    assert auto.held() == 0


def test_reason_is_one_clean_line_of_at_most_200_characters():
    auto = Automation()
    reply = "421-4.7.0 [TS04] first line\r\n421 4.7.0 \x00second\x1b[31m line " + "x" * 300
    (fired,) = auto.observe([Rule("TS04", Action("suspend"), 60.0)], reply=reply,
                            site=YAHOO, provider=None, tenant=None, synthetic=False, now=T0)
    assert fired.reason.startswith("421-4.7.0 [TS04] first line  421 4.7.0 second[31m line x")
    assert len(fired.reason) == 200
    assert all(ch.isprintable() for ch in fired.reason)


def test_rule_matching_is_a_case_insensitive_search_and_names_default():
    rule = Rule(r"\[ts04\]", Action("suspend"), 3600.0)
    assert rule.matches(TS04) and not rule.matches(OK)
    assert rule.name == r"suspend on /\[ts04\]/"
    assert Rule("x", Action("connection_limit", 2), 60.0).name == "connection_limit=2 on /x/"
    assert Rule("x", Action("suspend"), 60.0, threshold=1, window=30.0).window == 0.0


def test_parse_action():
    assert parse_action("suspend") == Action("suspend")
    assert parse_action(" suspend_tenant ") == Action("suspend_tenant")
    assert parse_action("bounce") == Action("bounce")
    assert parse_action("connection_limit=3") == Action("connection_limit", 3)
    assert parse_action("connection_limit = 3") == Action("connection_limit", 3)
    rate = parse_action("message_rate=10/m")
    assert rate == Action("message_rate", parse_rate("10/m"))
    assert [str(a) for a in (parse_action("suspend"), parse_action("connection_limit=1"),
                             rate)] == ["suspend", "connection_limit=1", "message_rate=10/m"]


@pytest.mark.parametrize("text", [
    "pause", "", "suspend=1", "connection_limit", "connection_limit=0",
    "connection_limit=-1", "connection_limit=1.5", "connection_limit=x",
    "message_rate", "message_rate=fast", "message_rate=", "Suspend"])
def test_parse_action_rejects(text):
    with pytest.raises(ValueError) as e:
        parse_action(text)
    assert repr(text) in str(e.value)


def test_action_values_are_checked():
    with pytest.raises(ValueError, match="kind: 'pause'"):
        Action("pause")
    with pytest.raises(ValueError, match="connection_limit: must be a whole number"):
        Action("connection_limit", True)
    with pytest.raises(ValueError, match="message_rate: must be a rate"):
        Action("message_rate", 10)
    with pytest.raises(ValueError, match="suspend: takes no value"):
        Action("suspend", 1)


def test_parse_rule_good():
    rule = parse_rule({"match": "TS04", "action": "suspend", "duration": "1h",
                       "threshold": "3/10m"}, "w")
    assert (rule.pattern, rule.action, rule.duration, rule.threshold, rule.window,
            rule.name) == ("TS04", Action("suspend"), 3600.0, 3, 600.0,
                           "suspend on /TS04/")
    # an int threshold counts within the rule's duration
    rule = parse_rule({"match": "x", "action": "message_rate=1/s", "duration": "30m",
                       "threshold": 4}, "w")
    assert (rule.threshold, rule.window) == (4, 1800.0)
    assert parse_rule({"match": "x", "action": "bounce", "duration": "0s"}, "w").duration == 0
    assert parse_rule({"match": "x", "action": "bounce", "threshold": "2/1m"},
                      "w").window == 60.0


@pytest.mark.parametrize("data, message", [
    ({"match": "x", "action": "suspend", "duration": "1h", "when": 1},
     "shaping.toml [[automation]] 2: unknown key 'when'"),
    ({"action": "suspend", "duration": "1h"},
     "shaping.toml [[automation]] 2: missing key 'match'"),
    ({"match": "x", "duration": "1h"},
     "shaping.toml [[automation]] 2: missing key 'action'"),
    ({"match": "x", "action": "suspend"},
     "shaping.toml [[automation]] 2: missing key 'duration'"),
    ({"match": "([", "action": "suspend", "duration": "1h"},
     "shaping.toml [[automation]] 2: match: '([' is not a valid regular expression"),
    ({"match": "", "action": "suspend", "duration": "1h"},
     "shaping.toml [[automation]] 2: match: must be a non-empty"),
    ({"match": "x" * 501, "action": "suspend", "duration": "1h"},
     "shaping.toml [[automation]] 2: match: longer than 500 characters"),
    ({"match": 4, "action": "suspend", "duration": "1h"},
     "shaping.toml [[automation]] 2: match: must be a string"),
    ({"match": "x", "action": "pause", "duration": "1h"},
     "shaping.toml [[automation]] 2: action: 'pause' is not an action"),
    ({"match": "x", "action": "suspend", "duration": 3600},
     "shaping.toml [[automation]] 2: duration: expected a duration like '1h'"),
    ({"match": "x", "action": "suspend", "duration": "soon"},
     "shaping.toml [[automation]] 2: duration: expected a duration"),
    ({"match": "x", "action": "suspend", "duration": "0s"},
     "shaping.toml [[automation]] 2: duration: suspend needs a duration > 0"),
    ({"match": "x", "action": "suspend", "duration": "1h", "threshold": "3"},
     "shaping.toml [[automation]] 2: threshold: expected 'N/duration'"),
    ({"match": "x", "action": "suspend", "duration": "1h", "threshold": "three/10m"},
     "shaping.toml [[automation]] 2: threshold: expected 'N/duration'"),
    ({"match": "x", "action": "suspend", "duration": "1h", "threshold": "3/often"},
     "shaping.toml [[automation]] 2: threshold: expected a duration"),
    ({"match": "x", "action": "suspend", "duration": "1h", "threshold": "3/0s"},
     "shaping.toml [[automation]] 2: threshold: the window must be > 0"),
    ({"match": "x", "action": "suspend", "duration": "1h", "threshold": 0},
     "shaping.toml [[automation]] 2: threshold: the count must be from 1"),
    ({"match": "x", "action": "suspend", "duration": "1h", "threshold": "0/10m"},
     "shaping.toml [[automation]] 2: threshold: the count must be from 1"),
    ({"match": "x", "action": "suspend", "duration": "1h", "threshold": "5000/1h"},
     "shaping.toml [[automation]] 2: threshold: the count must be from 1 to 1000"),
    ({"match": "x", "action": "suspend", "duration": "1h", "threshold": True},
     "shaping.toml [[automation]] 2: threshold: expected"),
    ({"match": "x", "action": "bounce", "threshold": 3},
     "shaping.toml [[automation]] 2: threshold: 3 needs a window"),
    ({"match": "x", "action": "suspend", "duration": "1h", "name": 7},
     "shaping.toml [[automation]] 2: name: must be a string"),
])
def test_parse_rule_rejects_naming_where(data, message):
    with pytest.raises(ValueError) as e:
        parse_rule(data, "shaping.toml [[automation]] 2")
    assert str(e.value).startswith(message), str(e.value)


def test_fired_is_a_frozen_value():
    auto = Automation()
    (fired,) = auto.observe([Rule("TS04", Action("suspend"), 60.0)], reply=TS04,
                            site=YAHOO, provider=None, tenant=None, synthetic=False, now=T0)
    assert isinstance(fired, Fired)
    with pytest.raises(AttributeError):
        fired.until = 0.0       # type: ignore[misc]

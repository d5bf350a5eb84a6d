"""MTA-STS TXT records, policy files and MX patterns (mta.policy.mtasts, RFC 8461)."""

from __future__ import annotations

import pytest

from mta.policy.mtasts import (
    MAX_AGE_MAX,
    MAX_AGE_MIN,
    MAX_POLICY_BYTES,
    StsError,
    StsPolicy,
    mx_matches,
    parse_policy,
    parse_txt,
)

# --- parse_txt ----------------------------------------------------------------

TXT_VALID = [
    (["v=STSv1; id=20160831085700Z;"], "20160831085700Z"),         # RFC 8461 §3.1 example
    (["v=STSv1;id=abc"], "abc"),
    (["v=STSv1 ; id=abc ; ext=val"], "abc"),                       # blanks around ";"
    (["v=STSv1;\tid=Abc1;"], "Abc1"),                              # tab, trailing ";", case kept
    (["v=spf1 -all", "v=STSv1; id=A1", "google-site-verification=x"], "A1"),   # others ignored
    (["v=STSv10; id=x", "v=STSv1; id=y"], "y"),                    # "v=STSv10" is not STSv1
    (["v=STSv1; ext_1.x-y=some:value; id=abc"], "abc"),            # extension before id
    (["v=STSv1; id=" + "a" * 32], "a" * 32),                       # longest id
]

TXT_INVALID = [
    ([], "no v=STSv1"),
    (["v=spf1 -all"], "no v=STSv1"),
    ([" v=STSv1; id=a"], "no v=STSv1"),                            # must start the record
    (["v=STSv1; id=a", "v=STSv1; id=b"], "2 v=STSv1 TXT records"),
    (["v=STSv1"], "id: missing"),
    (["v=STSv1;"], "id: missing"),
    (["v=STSv1; ext=1"], "id: missing"),
    (["v=STSv1; id="], "not name=value"),
    (["v=STSv1; id=" + "a" * 33], "1 to 32"),
    (["v=STSv1; id=ab-c"], "1 to 32"),
    (["v=STSv1; id=a; id=b"], "more than once"),
    (["v=STSv1; id=a; v=STSv1"], "v: appears more than once"),
    (["v=STSv1;; id=a"], "empty"),
    (["v=STSv1; id = a"], "not name=value"),
    (["v=STSv1; id=a; ext=has space"], "not name=value"),
    (["v=STSv1; id=a; =x"], "not name=value"),
    (["v=STSv1; id=a; id2"], "not name=value"),
    (["v=STSv1 x; id=a"], "exactly v=STSv1"),
    (["v=STSv1; id=\u00e4"], "not name=value"),
    (["v=STSv1; id=a\x00"], "not name=value"),
]


@pytest.mark.parametrize(("records", "expected"), TXT_VALID)
def test_parse_txt_valid(records: list[str], expected: str) -> None:
    assert parse_txt(records) == expected


@pytest.mark.parametrize(("records", "fragment"), TXT_INVALID)
def test_parse_txt_invalid(records: list[str], fragment: str) -> None:
    with pytest.raises(StsError) as err:
        parse_txt(records)
    assert fragment in err.value.reason
    assert str(err.value) == err.value.reason
    assert "\n" not in err.value.reason and "\x00" not in err.value.reason


# --- parse_policy ---------------------------------------------------------------

RFC_EXAMPLE = ("version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\n"
               "mx: *.example.net\r\nmx: backupmx.example.com\r\nmax_age: 604800\r\n")

POLICY_VALID = [
    (RFC_EXAMPLE,
     StsPolicy("enforce", ("mail.example.com", "*.example.net", "backupmx.example.com"), 604800)),
    ("version: STSv1\nmode: testing\nmx: mx.example.com\nmax_age: 86400\n",
     StsPolicy("testing", ("mx.example.com",), 86400)),
    # any order, no final line end, no blank after the colon, a tab after another
    ("max_age:100000\nmx:\tmx.example.com\nmode: enforce\nversion: STSv1",
     StsPolicy("enforce", ("mx.example.com",), 100000)),
    # blanks at line ends, empty lines, unknown keys (UTF-8 in their values too)
    ("version: STSv1  \n\nmode: enforce\t\r\nfoo: bar baz\nx_ext.1-a: caf\u00e9\n"
     "mx: mx.example.com\n\n\nmax_age: 604800\n\n",
     StsPolicy("enforce", ("mx.example.com",), 604800)),
    # mode none needs no mx
    ("version: STSv1\nmode: none\nmax_age: 86400\n", StsPolicy("none", (), 86400)),
    # max_age below a day is raised to a day; 0 included; the maximum is accepted
    ("version: STSv1\nmode: none\nmax_age: 0\n", StsPolicy("none", (), MAX_AGE_MIN)),
    ("version: STSv1\nmode: enforce\nmx: a.example\nmax_age: 300\n",
     StsPolicy("enforce", ("a.example",), MAX_AGE_MIN)),
    (f"version: STSv1\nmode: enforce\nmx: a.example\nmax_age: {MAX_AGE_MAX}\n",
     StsPolicy("enforce", ("a.example",), MAX_AGE_MAX)),
    ("version: STSv1\nmode: enforce\nmx: a.example\nmax_age: 0000086401\n",
     StsPolicy("enforce", ("a.example",), 86401)),
    # patterns: lower-cased, trailing dot dropped, duplicates kept once
    ("version: STSv1\nmode: enforce\nmx: MX.Example.COM.\nmx: mx.example.com\n"
     "mx: *.Mail.Example.NET\nmax_age: 86400\n",
     StsPolicy("enforce", ("mx.example.com", "*.mail.example.net"), 86400)),
]

_HEAD = "version: STSv1\nmode: enforce\nmax_age: 86400\n"

POLICY_INVALID = [
    ("version: STSv1\n" + "x: " + "y" * MAX_POLICY_BYTES + "\n", "larger than 65536 bytes"),
    ("mode: enforce\nmx: a.example\nmax_age: 86400\n", "version: missing"),
    ("version: STSv1\nmx: a.example\nmax_age: 86400\n", "mode: missing"),
    ("version: STSv1\nmode: enforce\nmx: a.example\n", "max_age: missing"),
    ("", "version: missing"),
    ("version: STSv2\nmode: none\nmax_age: 1\n", "version: must be STSv1"),
    ("version: stsv1\nmode: none\nmax_age: 1\n", "version: must be STSv1"),
    ("Version: STSv1\nmode: none\nmax_age: 1\n", "version: missing"),     # keys are case-sensitive
    ("version: STSv1\nmode: Enforce\nmx: a.example\nmax_age: 1\n", "mode: must be one of"),
    ("version: STSv1\nmode: strict\nmx: a.example\nmax_age: 1\n", "mode: must be one of"),
    ("version: STSv1\nmode:\nmx: a.example\nmax_age: 1\n", "mode: must be one of"),
    ("version: STSv1\nmode: none\nmax_age: -1\n", "max_age: must be 1 to 10 digits"),
    ("version: STSv1\nmode: none\nmax_age: 1e5\n", "max_age: must be 1 to 10 digits"),
    ("version: STSv1\nmode: none\nmax_age:\n", "max_age: must be 1 to 10 digits"),
    ("version: STSv1\nmode: none\nmax_age: 86400 s\n", "max_age: must be 1 to 10 digits"),
    ("version: STSv1\nmode: none\nmax_age: 12345678901\n", "max_age: must be 1 to 10 digits"),
    (f"version: STSv1\nmode: none\nmax_age: {MAX_AGE_MAX + 1}\n", "over the maximum"),
    ("version: STSv1\nmode: none\nmax_age: 9999999999\n", "over the maximum"),
    ("version: STSv1\nmode: enforce\nmax_age: 86400\n", "mx: missing (required in mode enforce)"),
    ("version: STSv1\nmode: testing\nmax_age: 86400\n", "mx: missing (required in mode testing)"),
    (_HEAD + "mx: *.\n", "mx: not a host name"),
    (_HEAD + "mx: *\n", "mx: not a host name"),
    (_HEAD + "mx:\n", "mx: not a host name"),
    (_HEAD + "mx: mx..example.com\n", "mx: not a host name"),
    (_HEAD + "mx: -mx.example.com\n", "mx: not a host name"),
    (_HEAD + "mx: mx_1.example.com\n", "mx: not a host name"),
    (_HEAD + "mx: a*.example.com\n", "mx: not a host name"),
    (_HEAD + "mx: *.*.example.com\n", "mx: not a host name"),
    (_HEAD + "mx: mx.example.com, mx2.example.com\n", "mx: not a host name"),
    (_HEAD + "mx: " + "a" * 64 + ".example.com\n", "mx: not a host name"),
    (_HEAD + "mx: mx.ex\u00e4mple.com\n", "mx: non-ASCII value"),
    ("version: STSv1\nmode: enf\u00f6rce\nmx: a.example\nmax_age: 1\n", "mode: non-ASCII value"),
    (_HEAD + "mode: testing\nmx: a.example\n", "mode: appears more than once (line 4)"),
    (_HEAD + "version: STSv1\nmx: a.example\n", "version: appears more than once"),
    (_HEAD + "max_age: 86400\nmx: a.example\n", "max_age: appears more than once"),
    (_HEAD + "mx a.example\n", "line 4: not 'key: value'"),
    (_HEAD + " mx: a.example\n", "line 4: bad key"),
    (_HEAD + "mx : a.example\n", "line 4: bad key"),
    (_HEAD + "k" * 33 + ": v\nmx: a.example\n", "line 4: bad key"),
    (_HEAD + "mx: a.example\x00\n", "line 4: control character"),
    (_HEAD + "mx: a.example\rmx: b.example\n", "line 4: control character"),
    (_HEAD + "x: \x1b[31mred\nmx: a.example\n", "line 4: control character"),
]


@pytest.mark.parametrize(("text", "expected"), POLICY_VALID)
def test_parse_policy_valid(text: str, expected: StsPolicy) -> None:
    assert parse_policy(text) == expected


@pytest.mark.parametrize(("text", "fragment"), POLICY_INVALID)
def test_parse_policy_invalid(text: str, fragment: str) -> None:
    with pytest.raises(StsError) as err:
        parse_policy(text)
    assert fragment in err.value.reason
    reason = err.value.reason
    assert len(reason) < 200
    assert not any(ord(c) < 32 for c in reason)        # shown escaped, never raw


def test_policy_size_cap_counts_utf8_bytes() -> None:
    filler = "\u00e9" * ((MAX_POLICY_BYTES - len(RFC_EXAMPLE)) // 2 + 10)   # 2 bytes each
    text = RFC_EXAMPLE + "x: " + filler + "\n"
    assert len(text) < MAX_POLICY_BYTES < len(text.encode())
    with pytest.raises(StsError, match="larger than"):
        parse_policy(text)
    fits = RFC_EXAMPLE + "x: " + "y" * (MAX_POLICY_BYTES - len(RFC_EXAMPLE) - 4) + "\n"
    assert len(fits.encode()) == MAX_POLICY_BYTES
    assert parse_policy(fits).mode == "enforce"


# --- mx_matches and StsPolicy.matches ------------------------------------------------

MX_CASES = [
    ("mx.example.com", "mx.example.com", True),
    ("mx.example.com", "MX.Example.Com", True),
    ("MX.EXAMPLE.COM", "mx.example.com", True),
    ("mx.example.com", "mx.example.com.", True),
    ("mx.example.com.", "mx.example.com", True),
    ("mx.example.com", "mx2.example.com", False),
    ("mx.example.com", "a.mx.example.com", False),
    ("mx.example.com", "example.com", False),
    ("*.example.com", "mx.example.com", True),
    ("*.example.com", "MX.EXAMPLE.COM.", True),
    ("*.Example.Com", "mx.example.com", True),
    ("*.example.com", "a.b.example.com", False),      # one label only
    ("*.example.com", "example.com", False),          # zero labels
    ("*.example.com", ".example.com", False),         # an empty label
    ("*.example.com", "mx.example.net", False),
    ("*.example.com", "mxexample.com", False),
    ("*.example.com", "*.example.com", False),        # a host is never a pattern
    ("*.", "mx.", False),
    ("*", "mx", False),
    ("", "", False),
    ("mx.example.com", "", False),
]


@pytest.mark.parametrize(("pattern", "host", "expected"), MX_CASES)
def test_mx_matches(pattern: str, host: str, expected: bool) -> None:
    assert mx_matches(pattern, host) is expected


def test_policy_matches_any_pattern() -> None:
    policy = parse_policy(RFC_EXAMPLE)
    assert policy.matches("mail.example.com")
    assert policy.matches("mx7.example.net")
    assert policy.matches("BACKUPMX.example.com.")
    assert not policy.matches("evil.example.org")
    assert not policy.matches("a.b.example.net")
    assert not StsPolicy("none", (), 86400).matches("mail.example.com")


def test_policy_id_is_the_callers() -> None:
    policy = parse_policy(RFC_EXAMPLE)
    assert policy.id == ""
    record_id = parse_txt(["v=STSv1; id=20160831085700Z;"])
    assert StsPolicy(policy.mode, policy.mx, policy.max_age, id=record_id).id == record_id


def test_policy_mode_checked_when_built() -> None:
    with pytest.raises(ValueError, match="mode"):
        StsPolicy("strict", ("mx.example.com",), 86400)

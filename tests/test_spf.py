"""SPF check_host() (mta.domains.spf) against RFC 7208's own examples, over a
fake Resolver at the seam (the one place DNS is mocked)."""

import ipaddress

import pytest

from mta.delivery.resolver import DnsTempError, MxRecord, NoRecords, NullMx, NxDomain
from mta.domains.spf import check_host
from mta.domains.spf_record import (MacroContext, SpfSyntaxError, expand, parse_record,
                                    select_record)


class FakeResolver:
    """zone: {name: {"TXT": [...], "A": [...], "AAAA": [...], "MX": [(pref, host)]}}."""

    def __init__(self, zone, servfail=()):
        self.zone = {k.lower(): v for k, v in zone.items()}
        self.servfail = set(servfail)
        self.queries = []

    def _get(self, name, rdtype):
        name = name.rstrip(".").lower()
        self.queries.append((name, rdtype))
        if name in self.servfail:
            raise DnsTempError(f"{rdtype} {name}: SERVFAIL")
        if name not in self.zone:
            raise NxDomain(f"{rdtype} {name}: NXDOMAIN")
        values = self.zone[name].get(rdtype)
        if not values:
            raise NoRecords(f"{rdtype} {name}: no records")
        return values

    async def txt(self, name):
        return list(self._get(name, "TXT"))

    async def mx(self, name):
        recs = [MxRecord(p, h.rstrip(".").lower()) for p, h in self._get(name, "MX")]
        if len(recs) == 1 and recs[0].host in ("", "."):
            raise NullMx(name)
        return recs

    async def addresses(self, name):
        name = name.rstrip(".").lower()
        found, errors = [], []
        for t in ("A", "AAAA"):
            try:
                found += self._get(name, t)
            except NxDomain as e:
                raise e
            except NoRecords as e:
                errors.append(e)
        if found:
            return found
        raise errors[0]


# RFC 7208 Appendix A: the example zone.
ZONE = {
    "example.com": {"A": ["192.0.2.10", "192.0.2.11"],
                    "MX": [(10, "mail-a.example.com"), (20, "mail-b.example.com")]},
    "amy.example.com": {"A": ["192.0.2.65"]},
    "bob.example.com": {"A": ["192.0.2.66"]},
    "mail-a.example.com": {"A": ["192.0.2.129"]},
    "mail-b.example.com": {"A": ["192.0.2.130"]},
    "mail-c.example.org": {"A": ["192.0.2.140"]},
    "example.org": {"MX": [(10, "mail-c.example.org")]},
}


def zone_with(record, **extra):
    z = {k: dict(v) for k, v in ZONE.items()}
    z["example.com"]["TXT"] = [record]
    z.update(extra)
    return z


async def result(record, ip, domain="example.com", **extra):
    return (await check_host(FakeResolver(zone_with(record, **extra)), ip, domain)).result


# Appendix A.1: which addresses each record lets through.
@pytest.mark.parametrize("record, passing, failing", [
    ("v=spf1 +all", ["192.0.2.10", "198.51.100.1"], []),
    ("v=spf1 a -all", ["192.0.2.10", "192.0.2.11"], ["192.0.2.65", "192.0.2.129"]),
    ("v=spf1 a:example.org -all", [], ["192.0.2.10", "192.0.2.140"]),
    ("v=spf1 mx -all", ["192.0.2.129", "192.0.2.130"], ["192.0.2.10", "192.0.2.140"]),
    ("v=spf1 mx:example.org -all", ["192.0.2.140"], ["192.0.2.129"]),
    ("v=spf1 mx mx:example.org -all", ["192.0.2.129", "192.0.2.130", "192.0.2.140"],
     ["192.0.2.10"]),
    ("v=spf1 mx/30 mx:example.org/30 -all",
     ["192.0.2.128", "192.0.2.131", "192.0.2.141", "192.0.2.143"], ["192.0.2.132"]),
    ("v=spf1 ip4:192.0.2.128/28 -all", ["192.0.2.128", "192.0.2.143"],
     ["192.0.2.127", "192.0.2.144"]),
])
async def test_rfc7208_appendix_a1(record, passing, failing):
    for ip in passing:
        assert await result(record, ip) == "pass", ip
    for ip in failing:
        assert await result(record, ip) == "fail", ip


@pytest.mark.parametrize("qualifier, expected", [
    ("-", "fail"), ("~", "softfail"), ("?", "neutral"), ("+", "pass"), ("", "pass")])
async def test_qualifiers(qualifier, expected):
    assert await result(f"v=spf1 ip4:10.0.0.0/8 {qualifier}all", "192.0.2.1") == expected


async def test_no_match_is_neutral_and_no_record_is_none():
    assert await result("v=spf1 ip4:10.0.0.1", "192.0.2.1") == "neutral"
    r = await check_host(FakeResolver(ZONE), "192.0.2.1", "example.com")
    assert r.result == "none"
    r = await check_host(FakeResolver(ZONE), "192.0.2.1", "nowhere.example")
    assert r.result == "none"


async def test_ip6_and_ipv4_mapped_clients():
    rec = "v=spf1 ip6:2001:db8::/32 ip4:192.0.2.0/24 -all"
    assert await result(rec, "2001:db8::cb01") == "pass"
    assert await result(rec, "2001:db9::1") == "fail"
    assert await result(rec, "::ffff:192.0.2.7") == "pass"
    # an IPv6 client never matches ip4, nor an a/mx with only A records
    assert await result("v=spf1 a -all", "2001:db8::1") == "fail"
    z = {"v6.example.com": {"AAAA": ["2001:db8::25"]}}
    assert await result("v=spf1 a:v6.example.com//64 -all", "2001:db8::99", **z) == "pass"


async def test_include_semantics():
    extra = {"inc-pass.example.net": {"TXT": ["v=spf1 ip4:192.0.2.1 -all"]},
             "inc-none.example.net": {"A": ["192.0.2.9"]}}
    assert await result("v=spf1 include:inc-pass.example.net -all", "192.0.2.1", **extra) == "pass"
    # the included record fails for this IP: no match, evaluation goes on
    assert await result("v=spf1 include:inc-pass.example.net ?all", "192.0.2.2",
                        **extra) == "neutral"
    # include of a domain without SPF is a permerror (RFC 7208 5.2)
    assert await result("v=spf1 include:inc-none.example.net -all", "192.0.2.1",
                        **extra) == "permerror"


async def test_redirect():
    extra = {"_spf.example.com": {"TXT": ["v=spf1 ip4:192.0.2.77 -all"]},
             "empty.example.com": {"A": ["192.0.2.1"]}}
    assert await result("v=spf1 redirect=_spf.example.com", "192.0.2.77", **extra) == "pass"
    assert await result("v=spf1 redirect=_spf.example.com", "192.0.2.78", **extra) == "fail"
    # ignored when the record has "all" (RFC 7208 6.1)
    assert await result("v=spf1 ?all redirect=_spf.example.com", "192.0.2.77",
                        **extra) == "neutral"
    assert await result("v=spf1 redirect=empty.example.com", "192.0.2.1",
                        **extra) == "permerror"


def chain(n, final="v=spf1 ip4:192.0.2.1 -all"):
    """n include records, each including the next; the last authorises 192.0.2.1."""
    z = {}
    for i in range(n):
        nxt = f"include:i{i + 1}.example.net -all" if i < n - 1 else final[7:]
        z[f"i{i}.example.net"] = {"TXT": [f"v=spf1 {nxt}"]}
    return z


async def test_ten_lookups_pass_eleven_are_permerror():
    # example.com includes i0; i0..i8 include the next: 10 lookups in all
    r = await check_host(FakeResolver(zone_with("v=spf1 include:i0.example.net -all",
                                                **chain(10))), "192.0.2.1", "example.com")
    assert (r.result, r.lookups) == ("pass", 10)
    r = await check_host(FakeResolver(zone_with("v=spf1 include:i0.example.net -all",
                                                **chain(11))), "192.0.2.1", "example.com")
    assert r.result == "permerror" and "more than 10 DNS lookups" in r.reason
    # eleven flat includes, the same
    flat = {f"f{i}.example.net": {"TXT": ["v=spf1 ip4:10.0.0.1 -all"]} for i in range(11)}
    rec = "v=spf1 " + " ".join(f"include:f{i}.example.net" for i in range(11)) + \
          " ip4:192.0.2.1 -all"
    assert await result(rec, "192.0.2.1", **flat) == "permerror"


async def test_lookups_stop_at_first_match():
    rec = "v=spf1 ip4:192.0.2.1 " + " ".join(f"a:x{i}.example.com" for i in range(20)) + " -all"
    r = await check_host(FakeResolver(zone_with(rec)), "192.0.2.1", "example.com")
    assert (r.result, r.lookups) == ("pass", 0)


async def test_void_lookup_limit():
    two = "v=spf1 a:no1.example.com a:no2.example.com ip4:192.0.2.1 -all"
    assert await result(two, "192.0.2.1") == "pass"
    three = "v=spf1 a:no1.example.com a:no2.example.com mx:no3.example.com ip4:192.0.2.1 -all"
    r = await check_host(FakeResolver(zone_with(three)), "192.0.2.1", "example.com")
    assert r.result == "permerror" and "void" in r.reason


async def test_mx_with_more_than_ten_hosts_is_permerror():
    many = {"big.example.com": {"MX": [(i, f"m{i}.example.com") for i in range(11)]}}
    assert await result("v=spf1 mx:big.example.com -all", "192.0.2.1", **many) == "permerror"


async def test_dns_failure_is_temperror():
    z = zone_with("v=spf1 include:broken.example.net -all")
    r = await check_host(FakeResolver(z, servfail={"broken.example.net"}), "192.0.2.1",
                         "example.com")
    assert r.result == "temperror"
    r = await check_host(FakeResolver(z, servfail={"example.com"}), "192.0.2.1", "example.com")
    assert r.result == "temperror"


async def test_exists_with_macros():
    rec = "v=spf1 exists:%{ir}.%{v}._spf.%{d} -all"
    extra = {"1.2.0.192.in-addr._spf.example.com": {"A": ["127.0.0.2"]}}
    assert await result(rec, "192.0.2.1", **extra) == "pass"
    assert await result(rec, "192.0.2.2", **extra) == "fail"


@pytest.mark.parametrize("record", [
    "v=spf1 foo -all",                       # unknown mechanism
    "v=spf1 ip4:192.0.2.0/33 -all",
    "v=spf1 ip4:2001:db8::1 -all",
    "v=spf1 ip6:2001:db8::/129",
    "v=spf1 redirect=a.example.com redirect=b.example.com",
    "v=spf1 include -all",
    "v=spf1 include:nodot -all",
    "v=spf1 exists:%{q}.example.com -all",   # unknown macro letter
    "v=spf1 a:example.com/24/ -all",
    "v=spf1 all:foo",
])
async def test_syntax_errors_are_permerror(record):
    with pytest.raises(SpfSyntaxError):
        parse_record(record)
    assert await result(record, "192.0.2.1") == "permerror"


async def test_two_spf_records_are_permerror():
    z = zone_with("v=spf1 +all")
    z["example.com"]["TXT"] = ["v=spf1 +all", "v=spf1 -all", "google-site-verification=x"]
    r = await check_host(FakeResolver(z), "192.0.2.1", "example.com")
    assert r.result == "permerror"


def test_select_record_ignores_other_txt():
    assert select_record(["hello", "v=spf10 x", "v=spf1 -all"]) == "v=spf1 -all"
    assert select_record(["v=spf1"]) == "v=spf1"
    assert select_record(["other"]) is None


def test_unknown_modifiers_are_ignored():
    rec = parse_record("v=spf1 ip4:192.0.2.1 moo=cow.example.com exp=explain.%{d} -all")
    assert [d.mechanism for d in rec.directives] == ["ip4", "all"]
    assert rec.exp == "explain.%{d}"


# RFC 7208 7.4: macro expansion examples.
@pytest.mark.parametrize("macro, expansion", [
    ("%{s}", "strong-bad@email.example.com"),
    ("%{o}", "email.example.com"),
    ("%{d}", "email.example.com"),
    ("%{d4}", "email.example.com"),
    ("%{d3}", "email.example.com"),
    ("%{d2}", "example.com"),
    ("%{d1}", "com"),
    ("%{dr}", "com.example.email"),
    ("%{d2r}", "example.email"),
    ("%{l}", "strong-bad"),
    ("%{l-}", "strong.bad"),
    ("%{lr}", "strong-bad"),
    ("%{lr-}", "bad.strong"),
    ("%{l1r-}", "strong"),
    ("%{ir}.%{v}._spf.%{d2}", "3.2.0.192.in-addr._spf.example.com"),
    ("%{lr-}.lp._spf.%{d2}", "bad.strong.lp._spf.example.com"),
    ("%{lr-}.lp.%{ir}.%{v}._spf.%{d2}", "bad.strong.lp.3.2.0.192.in-addr._spf.example.com"),
    ("%{ir}.%{v}.%{l1r-}.lp._spf.%{d2}", "3.2.0.192.in-addr.strong.lp._spf.example.com"),
    ("%{d2}.trusted-domains.example.net", "example.com.trusted-domains.example.net"),
    ("%%%_%-", "% %20"),
])
def test_rfc7208_macro_examples(macro, expansion):
    ctx = MacroContext(ipaddress.ip_address("192.0.2.3"), "strong-bad@email.example.com",
                       "email.example.com")
    assert expand(macro, ctx) == expansion


def test_rfc7208_ipv6_macro_example():
    ctx = MacroContext(ipaddress.ip_address("2001:db8::cb01"), "strong-bad@email.example.com",
                       "email.example.com")
    assert expand("%{ir}.%{v}._spf.%{d2}", ctx) == (
        "1.0.b.c.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6._spf.example.com")

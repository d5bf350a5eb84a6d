"""Declaring config keys once: `key(default, doc, kind=…, bounds…)`.

Each section is a frozen dataclass whose fields are declared with `key()`
(or `live_key()`); the field metadata carries the key's kind (how to parse
it from TOML), its bounds, its one-line doc and whether a reload applies it
live. `loader.py` walks these declarations, so adding
a key is one line here and nowhere else (Postfix VAR_/DEF_ pairs, KumoMTA
`deny_unknown_fields`).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import re
from dataclasses import field
from collections.abc import Callable, Mapping
from typing import Any

from mta.core.durations import DurationError, format_duration, parse_duration
from mta.core.hostport import split_hostport, split_ip_port


class KeyError_(ValueError):
    """A single bad value; the loader prefixes the key path."""


@dataclasses.dataclass(frozen=True)
class Kind:
    name: str                       # shown in docs: "duration", "size", …
    parse: Callable[[Any], Any]     # TOML value → Python value, raises KeyError_
    render: Callable[[Any], Any] = lambda v: v  # Python value → TOML-ish value


def _q(v: Any) -> str:
    """Quote a value as it appears in TOML, so errors read `"5x" is not a duration`."""
    try:
        return json.dumps(v)
    except TypeError:
        return repr(v)


def _expect(value: Any, types: type | tuple[type, ...], what: str) -> Any:
    # bool is an int in Python; a TOML `true` is never a valid integer.
    if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        raise KeyError_(f"{_q(value)} is not {what}")
    if not isinstance(value, types):
        raise KeyError_(f"{_q(value)} is not {what}")
    return value


def _duration(v: Any) -> float:
    if isinstance(v, str):
        try:
            return parse_duration(v)
        except DurationError:
            pass
    raise KeyError_(f"{_q(v)} is not a duration (write e.g. \"30s\", \"5m\", \"1h\", \"5d\")")


def _duration_list(v: Any) -> tuple[float, ...]:
    if isinstance(v, str):
        parts = [p.strip() for p in v.split(",") if p.strip()]
        if parts:
            try:
                return tuple(parse_duration(p) for p in parts)
            except DurationError:
                pass
    raise KeyError_(f"{_q(v)} is not a duration list (write e.g. \"5m,10m,1h\")")


_SIZE_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1024, "m": 1000**2, "mb": 1000**2,
               "mib": 1024**2, "g": 1000**3, "gb": 1000**3, "gib": 1024**3}


def _size(v: Any) -> int:
    if isinstance(v, int) and not isinstance(v, bool):
        return v
    if isinstance(v, str):
        m = re.fullmatch(r"\s*(\d+)\s*([a-zA-Z]*)\s*", v)
        if m and m.group(2).lower() in _SIZE_UNITS:
            return int(m.group(1)) * _SIZE_UNITS[m.group(2).lower()]
    raise KeyError_(f"{_q(v)} is not a size (write bytes as an integer, or e.g. \"25MiB\")")


def _hostport(v: Any) -> str:
    why = "not a string"
    if isinstance(v, str):
        try:
            if split_hostport(v)[1] > 0:
                return v
            why = "port 0"
        except ValueError as exc:
            why = str(exc)
    raise KeyError_(f"{_q(v)} is not \"host:port\" ({why})")


def host_of(hostport: str) -> str:
    """The host of a "host:port" value (HOSTPORT-checked), brackets removed;
    the text itself when it is not one (a Config built in code)."""
    try:
        return split_hostport(hostport)[0]
    except ValueError:
        return hostport


def _nameserver(v: Any) -> str:
    if isinstance(v, str):
        try:
            if split_ip_port(v, 53)[1] > 0:
                return v
        except ValueError:
            pass
    raise KeyError_(f"{_q(v)} is not a nameserver (\"ip\" or \"ip:port\")")


def _cidr(v: Any) -> str:
    if isinstance(v, str):
        try:
            return str(ipaddress.ip_network(v, strict=False))
        except ValueError:
            pass
    raise KeyError_(f"{_q(v)} is not a network in CIDR form (e.g. \"127.0.0.0/8\")")


def _ip(v: Any) -> str:
    if isinstance(v, str):
        try:
            return str(ipaddress.ip_address(v))
        except ValueError:
            pass
    raise KeyError_(f"{_q(v)} is not an IP address (e.g. \"192.0.2.10\" or \"2001:db8::10\")")


def _list_of(item: Kind) -> Kind:
    def parse(v: Any) -> tuple[Any, ...]:
        _expect(v, list, f"a list of {item.name}")
        return tuple(item.parse(x) for x in v)
    return Kind(f"list of {item.name}", parse, lambda v: [item.render(x) for x in v])


def _choice(*choices: str) -> Kind:
    def parse(v: Any) -> str:
        if not isinstance(v, str) or v not in choices:
            raise KeyError_(f"{_q(v)} is not one of {', '.join(repr(c) for c in choices)}")
        return v
    return Kind(" | ".join(repr(c) for c in choices), parse)


STR = Kind("string", lambda v: _expect(v, str, "a string"))
INT = Kind("integer", lambda v: _expect(v, int, "an integer"))
BOOL = Kind("boolean", lambda v: _expect(v, bool, "a boolean (true or false)"))
FLOAT = Kind("number", lambda v: float(_expect(v, (int, float), "a number")))
DURATION = Kind("duration", _duration, format_duration)
DURATION_LIST = Kind("duration list", _duration_list,
                     lambda v: ",".join(format_duration(x) for x in v))
SIZE = Kind("size", _size)
HOSTPORT = Kind("host:port", _hostport)
NAMESERVER = Kind("nameserver", _nameserver)
CIDR = Kind("CIDR", _cidr)
IP = Kind("IP address", _ip)
STR_LIST = _list_of(STR)
NAMESERVER_LIST = _list_of(NAMESERVER)
CIDR_LIST = _list_of(CIDR)
IP_LIST = _list_of(IP)
choice = _choice


def key(default: Any, doc: str, kind: Kind = STR, *, min: float | None = None,
        max: float | None = None, optional: bool = False, live: bool = False) -> Any:
    """Declare one config key. `optional` allows the value None (unset);
    `live` says a reload applies it to the running daemon (else a change
    needs a restart, and a reload says so)."""
    meta = {"kind": kind, "doc": doc, "min": min, "max": max, "optional": optional,
            "live": live}
    if isinstance(default, (list, dict)):
        raise TypeError("use tuples for list defaults")
    return field(default=default, metadata=meta)


def live_key(default: Any, doc: str, kind: Kind = STR, *, min: float | None = None,
             max: float | None = None, optional: bool = False) -> Any:
    """`key(…, live=True)`: a key a reload applies to the running daemon."""
    return key(default, doc, kind, min=min, max=max, optional=optional, live=True)


def check_bounds(value: Any, meta: Mapping[str, Any]) -> None:
    lo, hi = meta["min"], meta["max"]
    if value is None:
        return
    n = len(value) if isinstance(value, tuple) else value
    if isinstance(value, tuple) and value and isinstance(value[0], (int, float)):
        for x in value:
            check_bounds(x, meta)
        return
    if not isinstance(n, (int, float)):
        return
    if lo is not None and n < lo:
        raise KeyError_(f"{_show(value, meta)} is below the minimum {_show(lo, meta)}")
    if hi is not None and n > hi:
        raise KeyError_(f"{_show(value, meta)} is above the maximum {_show(hi, meta)}")


def _show(v: Any, meta: Mapping[str, Any]) -> str:
    kind: Kind = meta["kind"]
    if kind in (DURATION, DURATION_LIST) and isinstance(v, (int, float)):
        return format_duration(v)
    return repr(v)

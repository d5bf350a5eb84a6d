"""Suppression lists as CSV: the console's export and the import it reads back.

One job: turn entries into CSV lines a spreadsheet opens safely, and an
uploaded CSV into checked rows (and the lines it could not use, with why).
Pure: no I/O, no clock (the caller passes `now`).

Public API:
    EXPORT_COLUMNS                  address, reason, origin, created, expires
    MAX_IMPORT_BYTES, MAX_IMPORT_ROWS   1 MiB, 10,000 data rows
    export_lines(entries, header) -> str     entries: the backend's dicts
    parse_import(text, now) -> ImportPlan    (rows, invalid, invalid_count)
    Row = (address, reason, created | None, expires | None)

Export: one line per entry, times in ISO 8601 UTC ("2026-12-07T17:42:19Z",
expires empty = never). A cell starting with = + - @ (or a tab or CR) gets
a leading ' so that a spreadsheet shows it as text instead of running it
as a formula (CSV injection); the import strips that ' again, so an export
imports back unchanged.

Import: "address[,reason]" per line, or any columns of EXPORT_COLUMNS
named by a header row (detected by its first cell being "address"); origin
is ignored (it follows from the reason), created/expires are ISO 8601 or
Unix times (empty: now / never). The reason defaults to "manual" and may be
any of core.envelope.SUPPRESSION_REASONS (an export holds bounce and
complaint entries too). Blank lines are skipped. A line that is not a
usable entry (not an address, an unknown reason, a bad or past time, too
many cells) is reported and skipped; the rest are imported. Refused as a
whole (ValueError, the message naming the line): more than MAX_IMPORT_ROWS
data rows, an unknown or repeated header column, malformed CSV.

Invariants:
- export_lines then parse_import gives back every entry's address, reason,
  created and expires (to the second); no exported cell starts with a
  formula character.
- parse_import keeps at most 10 invalid lines (each cut to 200
  characters) for the page, however many there are; times are finite and
  between 1970 and 9999.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from mta.core.address import AddressError, parse_address
from mta.core.envelope import SUPPRESSION_REASONS

__all__ = ["EXPORT_COLUMNS", "MAX_IMPORT_BYTES", "MAX_IMPORT_ROWS", "ImportPlan", "Row",
           "export_lines", "parse_import"]

EXPORT_COLUMNS = ("address", "reason", "origin", "created", "expires")
MAX_IMPORT_BYTES = 1 << 20
MAX_IMPORT_ROWS = 10_000
_SHOWN_INVALID = 10
_FORMULA = ("=", "+", "-", "@", "\t", "\r")
_LATEST = 253402300799.0                    # 9999-12-31T23:59:59Z

Row = tuple[str, str, float | None, float | None]


@dataclass
class ImportPlan:
    rows: list[Row] = field(default_factory=list)
    invalid: list[tuple[int, str, str]] = field(default_factory=list)  # (line, text, why)
    invalid_count: int = 0


def _iso(t: float | None) -> str:
    if t is None:
        return ""
    return dt.datetime.fromtimestamp(t, dt.UTC).isoformat(timespec="seconds").replace(
        "+00:00", "Z")


def _cell(value: str) -> str:
    return "'" + value if value.startswith(_FORMULA) else value


def _uncell(value: str) -> str:
    return value[1:] if value.startswith("'") and value[1:].startswith(_FORMULA) else value


def export_lines(entries: Iterable[Mapping[str, Any]], header: bool = False) -> str:
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\r\n")
    if header:
        w.writerow(EXPORT_COLUMNS)
    for e in entries:
        w.writerow([_cell(str(e["address"])), _cell(str(e["reason"])), _cell(str(e["origin"])),
                    _iso(e["created"]), _iso(e["expires"])])
    return out.getvalue()


def _time(text: str, what: str) -> float | None:
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        try:
            t = dt.datetime.fromisoformat(text)
        except ValueError:
            raise ValueError(f"{what}: {text[:40]!r} is not an ISO 8601 time") from None
        value = (t if t.tzinfo else t.replace(tzinfo=dt.UTC)).timestamp()
    if not 0 <= value <= _LATEST:          # (also NaN, inf)
        raise ValueError(f"{what}: {text[:40]!r} is out of range")
    return value


def _entry(rec: Mapping[str, str], now: float) -> Row:
    """One data row's entry, or ValueError saying why it is not one."""
    raw = rec.get("address", "")
    if not raw:
        raise ValueError("no address")
    if len(raw) > 320 or any(ord(c) < 32 or ord(c) == 127 for c in raw):
        raise ValueError("not an email address")
    try:
        address = str(parse_address(raw))
    except AddressError:
        raise ValueError(f"{raw[:60]!r} is not an email address") from None
    reason = rec.get("reason") or "manual"
    if reason not in SUPPRESSION_REASONS:
        raise ValueError(f"unknown reason {reason[:40]!r} (one of: "
                         f"{', '.join(SUPPRESSION_REASONS)})")
    created = _time(rec.get("created", ""), "created")
    expires = _time(rec.get("expires", ""), "expires")
    if expires is not None and expires <= now:
        raise ValueError("expires: in the past (the entry would not suppress)")
    return address, reason, created, expires


def _header(cells: list[str], line: int) -> tuple[str, ...]:
    names = tuple(c.lower() for c in cells)
    unknown = [c for c in names if c not in EXPORT_COLUMNS]
    if unknown:
        raise ValueError(f"line {line}: unknown column {unknown[0][:40]!r} "
                         f"(known: {', '.join(EXPORT_COLUMNS)})")
    if len(set(names)) != len(names):
        raise ValueError(f"line {line}: a column is named twice")
    return names


def parse_import(text: str, now: float) -> ImportPlan:
    plan = ImportPlan()
    columns: tuple[str, ...] | None = None
    data_rows = 0
    reader = csv.reader(io.StringIO(text.removeprefix("\ufeff")))
    try:
        for raw_cells in reader:
            line = reader.line_num
            cells = [_uncell(c.strip()) for c in raw_cells]
            if not any(cells):
                continue
            if columns is None and cells[0].lower() == "address":
                columns = _header(cells, line)
                continue
            if columns is None:
                columns = ("address", "reason")
            data_rows += 1
            if data_rows > MAX_IMPORT_ROWS:
                raise ValueError(f"more than {MAX_IMPORT_ROWS:,} rows: split the file")
            try:
                if len(cells) > len(columns):
                    raise ValueError(f"{len(cells)} cells, expected at most {len(columns)} "
                                     f"({','.join(columns)})")
                plan.rows.append(_entry(dict(zip(columns, cells)), now))
            except ValueError as exc:
                plan.invalid_count += 1
                if len(plan.invalid) < _SHOWN_INVALID:
                    plan.invalid.append((line, ",".join(raw_cells)[:200], str(exc)))
    except csv.Error as exc:
        raise ValueError(f"line {reader.line_num}: not valid CSV ({exc})") from None
    return plan

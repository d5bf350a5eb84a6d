#!/usr/bin/env python3
"""Benchmark DKIM signing: mta.mail.dkim (OpenSSL key op) against plain dkimpy.

One job: sign N distinct ~20 KB messages (default 1000) with RSA-2048 through
`mta.mail.dkim.sign` and through `dkim.sign` (dkimpy, pure-Python RSA), and
with Ed25519 through our path; print the median (and p90) milliseconds per
signature for each and the ratio dkimpy / ours. Target (issue 3): ≤ 1 ms
median per 20 KB message for RSA-2048 via our path.

Usage:
    .venv/bin/python scripts/bench_dkim.py [--count N] [--size BYTES] [--seed S]

Invariants: both paths sign the same messages with the same key, the same
canonicalisation (relaxed/relaxed) and the same header list; one signature
from each path is checked with `dkim.verify` before timing counts, so a fast
wrong signature cannot win. Single-threaded, CPU only, no network.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import dkim  # noqa: E402  (dkimpy)

from mta.mail import dkim as mdkim  # noqa: E402

WORDS = ("lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor "
         "incididunt ut labore et dolore magna aliqua ünïcødé").split()


def make_message(i: int, size: int, rng: random.Random) -> bytes:
    head = (f"From: News <news@bench.test>\r\nTo: user{i}@dest.test\r\n"
            f"Subject: Newsletter {i}\r\nDate: Tue, 14 Nov 2023 22:13:20 +0000\r\n"
            f"Message-ID: <{i}.bench@bench.test>\r\nMIME-Version: 1.0\r\n"
            "Content-Type: text/html; charset=utf-8\r\n"
            "List-Unsubscribe: <mailto:unsub@bench.test>\r\n\r\n").encode()
    lines, total = [], len(head)
    while total < size:
        # HTML-ish text: indentation and the odd trailing space, so the body
        # canonicalisation has real work to do
        indent = " " * rng.choice((0, 0, 2, 4, 8))
        text = " ".join(rng.choice(WORDS) for _ in range(rng.randrange(6, 12)))
        line = f"{indent}<p>{text}</p>{' ' if rng.random() < 0.1 else ''}\r\n".encode()
        lines.append(line)
        total += len(line)
    return head + b"".join(lines)


def timed(fn, messages) -> list[float]:
    out = []
    for m in messages:
        t0 = time.perf_counter()
        fn(m)
        out.append((time.perf_counter() - t0) * 1000.0)
    return out


def describe(label: str, ms: list[float]) -> str:
    p90 = statistics.quantiles(ms, n=10)[-1] if len(ms) >= 10 else max(ms)
    return f"{label:<34} median {statistics.median(ms):7.3f} ms   p90 {p90:7.3f} ms   n={len(ms)}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--count", type=int, default=1000)
    ap.add_argument("--size", type=int, default=20 * 1024)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)

    rng = random.Random(args.seed)
    messages = [make_message(i, args.size, rng) for i in range(args.count)]
    rsa_pem, rsa_txt = mdkim.generate_key("rsa-sha256")
    ed_pem, ed_txt = mdkim.generate_key("ed25519-sha256")
    rsa = mdkim.SigningKey("bench.test", "rsa", "rsa-sha256", rsa_pem)
    ed = mdkim.SigningKey("bench.test", "ed", "ed25519-sha256", ed_pem)
    txt = {b"rsa._domainkey.bench.test.": rsa_txt.encode(),
           b"ed._domainkey.bench.test.": ed_txt.encode()}

    def dnsfunc(name, timeout=5):
        return txt.get(name)

    def dkimpy_rsa(message: bytes) -> bytes:
        # the same header list ours signs: each listed field present, From once more
        include = [n.lower() for n, _ in dkim.rfc822_parse(message)[0]
                   if n.lower() in mdkim.SIGNED_HEADERS] + [b"from"]
        return dkim.sign(message, b"rsa", b"bench.test", rsa_pem,
                         canonicalize=(b"relaxed", b"relaxed"), include_headers=include) + message

    checks = {"ours rsa": mdkim.sign(messages[0], [rsa]),
              "ours ed25519": mdkim.sign(messages[0], [ed]),
              "dkimpy rsa": dkimpy_rsa(messages[0])}
    for label, signed in checks.items():
        if label == "ours ed25519":
            try:
                import nacl  # noqa: F401  (dkimpy verifies Ed25519 only with PyNaCl)
            except ImportError:
                print(f"check {label}: skipped (PyNaCl not installed)")
                continue
        if not dkim.verify(signed, dnsfunc=dnsfunc):
            print(f"check {label}: signature does NOT verify", file=sys.stderr)
            return 1
        print(f"check {label}: verifies with dkimpy")

    size = statistics.mean(len(m) for m in messages)
    print(f"\n{args.count} messages, mean {size / 1024:.1f} KB, RSA-2048 and Ed25519, "
          f"relaxed/relaxed, one signature per call")
    ours_rsa = timed(lambda m: mdkim.sign(m, [rsa]), messages)
    ours_ed = timed(lambda m: mdkim.sign(m, [ed]), messages)
    ours_both = timed(lambda m: mdkim.sign(m, [rsa, ed]), messages)
    plain = timed(dkimpy_rsa, messages)
    print(describe("mta.mail.dkim RSA-2048 (OpenSSL)", ours_rsa))
    print(describe("mta.mail.dkim Ed25519", ours_ed))
    print(describe("mta.mail.dkim RSA-2048 + Ed25519", ours_both))
    print(describe("dkimpy RSA-2048 (pure Python)", plain))
    ratio = statistics.median(plain) / statistics.median(ours_rsa)
    print(f"\nratio dkimpy / ours (RSA-2048 median): {ratio:.1f}x")
    target = statistics.median(ours_rsa) <= 1.0
    print(f"target <= 1 ms per 20 KB message (RSA-2048, ours): {'met' if target else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

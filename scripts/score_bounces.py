#!/usr/bin/env python3
"""Score the bounce parser on the labelled corpus, as its README's "Scoring contract" says.

Usage:
    .venv/bin/python scripts/score_bounces.py [CORPUS_DIR] [--verbose] [--command CMD]

Without --command the parser runs in-process (`mta.mail.bounces.parse`);
with it, CMD gets each message on stdin and must print one JSON object.
Prints recipient P/R/F1 (micro-averaged; addresses case-insensitive; a label's
alt_addresses also match; optional entries neither required nor penalised),
hardsoft (class agreement on matched hard/soft recipients), perm (first
digit of status), status (exact, pseudo codes excluded), kind, and parse
speed in messages/s on one core. Exit status 0.

Public API (used by tests/test_bounce_corpus.py):
    load_labels(corpus) -> list[dict]
    score(labels, outputs: dict[file, json]) -> Scores  (.as_dict(), .misses)
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus" / "bounces"


def load_labels(corpus: Path) -> list[dict]:
    with open(corpus / "labels.jsonl", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


@dataclass
class Scores:
    tp: int = 0
    fp: int = 0
    fn: int = 0
    hardsoft: list = field(default_factory=lambda: [0, 0])
    perm: list = field(default_factory=lambda: [0, 0])
    status: list = field(default_factory=lambda: [0, 0])
    kind: list = field(default_factory=lambda: [0, 0])
    misses: list = field(default_factory=list)

    @staticmethod
    def _ratio(pair) -> float:
        return pair[0] / pair[1] if pair[1] else 1.0

    def as_dict(self) -> dict:
        p = self.tp / (self.tp + self.fp) if self.tp + self.fp else 1.0
        r = self.tp / (self.tp + self.fn) if self.tp + self.fn else 1.0
        f1 = 2 * p * r / (p + r) if p + r else 0.0
        return {"f1": f1, "precision": p, "recall": r,
                "hardsoft": self._ratio(self.hardsoft), "perm": self._ratio(self.perm),
                "status": self._ratio(self.status), "kind": self._ratio(self.kind),
                "n_hardsoft": self.hardsoft[1], "n_status": self.status[1],
                "n_messages": self.kind[1]}


def _agree(acc: list, ok: bool) -> None:
    acc[1] += 1
    acc[0] += int(ok)


def score(labels: list[dict], outputs: dict[str, dict]) -> Scores:
    s = Scores()
    for lab in labels:
        name = lab["file"]
        out = outputs.get(name) or {"kind": "", "recipients": []}
        _agree(s.kind, out.get("kind") == lab["kind"])
        if out.get("kind") != lab["kind"]:
            s.misses.append((name, "kind", lab["kind"], out.get("kind")))
        names = []
        for e in lab["recipients"]:
            names.append({a.lower() for a in [e["address"], *e.get("alt_addresses", [])]})
        matched = [False] * len(names)
        for pred in out.get("recipients", []):
            addr = (pred.get("address") or "").lower()
            hit = next((i for i, n in enumerate(names) if addr in n and not matched[i]), None)
            if hit is None:
                if any(addr in n for n in names):
                    continue        # a duplicate of a matched address: not a new error
                s.fp += 1
                s.misses.append((name, "extra", "", addr))
                continue
            matched[hit] = True
            e = lab["recipients"][hit]
            if e.get("optional"):
                continue
            s.tp += 1
            if e["class"] in ("hard", "soft"):
                _agree(s.hardsoft, pred.get("class") == e["class"])
                if pred.get("class") != e["class"]:
                    s.misses.append((name, "class", f"{e['class']}/{e['reason']}",
                                     f"{pred.get('class')}/{pred.get('reason')}"))
            st = pred.get("status") or ""
            if e["status"]:
                _agree(s.perm, st[:1] == e["status"][:1])
                if not e.get("status_pseudo"):
                    _agree(s.status, st == e["status"])
                    if st != e["status"]:
                        s.misses.append((name, "status", e["status"], st))
        for i, e in enumerate(lab["recipients"]):
            if not matched[i] and not e.get("optional"):
                s.fn += 1
                s.misses.append((name, "missing", e["address"], ""))
    return s


def run_inprocess(corpus: Path, labels: list[dict]) -> tuple[dict, float]:
    from mta.mail.bounces import parse
    raws = {lab["file"]: (corpus / lab["file"]).read_bytes() for lab in labels}
    t0 = time.process_time()
    outputs = {name: parse(raw).to_json() for name, raw in raws.items()}
    elapsed = time.process_time() - t0
    return outputs, len(raws) / elapsed if elapsed else float("inf")


def run_command(corpus: Path, labels: list[dict], command: str) -> tuple[dict, float]:
    outputs = {}
    t0 = time.monotonic()
    for lab in labels:
        proc = subprocess.run(shlex.split(command), input=(corpus / lab["file"]).read_bytes(),
                              capture_output=True, timeout=60)
        try:
            outputs[lab["file"]] = json.loads(proc.stdout)
        except ValueError:
            outputs[lab["file"]] = {}
    return outputs, len(labels) / (time.monotonic() - t0)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("corpus", nargs="?", type=Path, default=DEFAULT_CORPUS)
    ap.add_argument("--verbose", "-v", action="store_true", help="list every disagreement")
    ap.add_argument("--command", help="score an external parser reading stdin instead")
    args = ap.parse_args(argv)
    labels = load_labels(args.corpus)
    if args.command:
        outputs, rate = run_command(args.corpus, labels, args.command)
    else:
        outputs, rate = run_inprocess(args.corpus, labels)
    s = score(labels, outputs)
    if args.verbose:
        for miss in s.misses:
            print("  ".join(str(x) for x in miss))
    d = s.as_dict()
    print(f"messages {d['n_messages']}  recipient F1 {d['f1']:.3f} (P {d['precision']:.3f} "
          f"R {d['recall']:.3f})  hardsoft {d['hardsoft']:.3f}  perm {d['perm']:.3f}  "
          f"status {d['status']:.3f}  kind {d['kind']:.3f}")
    print(f"speed {rate:,.0f} messages/s on one core"
          + (" (including process start-up per message)" if args.command else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())

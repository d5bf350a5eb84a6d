#!/usr/bin/env python3
"""Score the bounce parser on the labelled corpus, as its README's "Scoring contract" says.

Usage:
    .venv/bin/python scripts/score_bounces.py [CORPUS_DIR] [--verbose] [--command CMD] [--loso]

Without --command the parser runs in-process (`mta.mail.bounces.parse`);
with it, CMD gets each message on stdin and must print one JSON object.
Prints recipient P/R/F1 (micro-averaged; addresses case-insensitive; a label's
alt_addresses also match; optional entries neither required nor penalised),
hardsoft (class agreement on matched hard/soft recipients), perm (first
digit of status), status (exact, pseudo codes excluded), kind, and parse
speed in messages/s on one core. Exit status 0.

--loso adds a leave-one-source-out evaluation beside the in-corpus figures,
to measure how the parser does on mail from a source it was not tuned on:

  * Rules are data: every row of the text table (`mta.mail.bounces.patterns
    .RULES`: a phrase and the reason it means) and of the remote-host table
    (`rhost.RULES`). Structural parsing (RFC 3464 fields, ARF, vendor
    layouts, where the recipient and its diagnostic are) and the RFC 3463
    status-code meanings are not rules: they come from standards, not from
    the corpus, and stay in every fold.
  * Support: the corpus is parsed once with every rule, tracing for each
    recipient the rows that decided its reason and the rows of its final
    reason that match its text (a phrase that says the same as the status
    code that decided is right there too). A row is supported by a file
    when it is traced on a recipient whose hard/soft class agrees with the
    label.
  * Folds: one per source family (the label's `group`: lhost-postfix,
    rhost-google, rfc3464, err, ...); every family is held out on its own,
    small ones (1-2 files) included, so a rule written for a single odd
    sample is dropped when that sample is scored. A fold keeps a row when
    it has a supporting file outside the family, or no supporting file
    anywhere (it was not tuned on the corpus: it only matters where it
    fires, and then it is scored like any rule); rows supported only by the
    family's own files are dropped, and the family is parsed and scored
    with the rest. Computed automatically, never by hand.
  * Pooled: the folds' counts are summed (micro-average over all files),
    so the LOSO hard/soft is comparable with the in-corpus one.

Public API (used by tests/test_bounce_corpus.py):
    load_labels(corpus) -> list[dict]
    score(labels, outputs: dict[file, json]) -> Scores  (.as_dict(), .misses)
    loso(corpus, labels) -> Loso  (.pooled: Scores, .folds: [Fold(family,
        files, dropped, scores)], .rules, .supported)
    support(labels, reports: dict[file, BounceReport]) -> {rule id: files}
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


def _matching(entries: list[dict], preds: list[dict]) -> list[int | None]:
    """For each predicted recipient, the index of the label entry it matches,
    None for an extra address, -1 for a repeat of an already matched one."""
    names = [{a.lower() for a in [e["address"], *e.get("alt_addresses", [])]} for e in entries]
    matched = [False] * len(names)
    out: list[int | None] = []
    for pred in preds:
        addr = (pred.get("address") or "").lower()
        hit = next((i for i, n in enumerate(names) if addr in n and not matched[i]), None)
        if hit is None:
            out.append(-1 if any(addr in n for n in names) else None)
            continue
        matched[hit] = True
        out.append(hit)
    return out


def score(labels: list[dict], outputs: dict[str, dict]) -> Scores:
    s = Scores()
    for lab in labels:
        name = lab["file"]
        out = outputs.get(name) or {"kind": "", "recipients": []}
        _agree(s.kind, out.get("kind") == lab["kind"])
        if out.get("kind") != lab["kind"]:
            s.misses.append((name, "kind", lab["kind"], out.get("kind")))
        preds = out.get("recipients", [])
        hits = _matching(lab["recipients"], preds)
        for pred, hit in zip(preds, hits):
            if hit == -1:
                continue            # a duplicate of a matched address: not a new error
            if hit is None:
                s.fp += 1
                s.misses.append((name, "extra", "", (pred.get("address") or "").lower()))
                continue
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
            if i not in hits and not e.get("optional"):
                s.fn += 1
                s.misses.append((name, "missing", e["address"], ""))
    return s


def _add(total: Scores, part: Scores) -> None:
    total.tp, total.fp, total.fn = total.tp + part.tp, total.fp + part.fp, total.fn + part.fn
    for key in ("hardsoft", "perm", "status", "kind"):
        acc, more = getattr(total, key), getattr(part, key)
        acc[0] += more[0]
        acc[1] += more[1]
    total.misses.extend(part.misses)


@dataclass
class Fold:
    family: str
    files: int
    dropped: int                # rules supported only by this family's files
    scores: Scores


@dataclass
class Loso:
    pooled: Scores
    folds: list[Fold]
    rules: int                  # rule rows in the tables
    supported: int              # rows with a correct supporting hit somewhere


def support(labels: list[dict], reports: dict) -> dict[str, set[str]]:
    """rule id -> the files where it decided a hard/soft class the label agrees with."""
    found: dict[str, set[str]] = {}
    for lab in labels:
        recips = reports[lab["file"]].recipients
        preds = [r.to_json() for r in recips]
        for r, hit in zip(recips, _matching(lab["recipients"], preds)):
            if hit is None or hit < 0:
                continue
            e = lab["recipients"][hit]
            if e["class"] in ("hard", "soft") and r.class_ == e["class"]:
                for rid in r.rules:
                    found.setdefault(rid, set()).add(lab["file"])
    return found


def loso(corpus: Path, labels: list[dict]) -> Loso:
    """Leave one source family out (module docstring): per `group`, parse its
    files with only the rules that have support outside it."""
    from mta.mail.bounces import parse, rhost
    from mta.mail.bounces.patterns import RULES, ruleset
    raws = {lab["file"]: (corpus / lab["file"]).read_bytes() for lab in labels}
    with ruleset(None, trace=True):
        reports = {name: parse(raw) for name, raw in raws.items()}
    seen = support(labels, reports)
    ids = [r.id for r in RULES] + [rid for rid, _, _ in rhost.RULES]
    families: dict[str, list[dict]] = {}
    for lab in labels:
        families.setdefault(lab["group"], []).append(lab)
    pooled, folds = Scores(), []
    for family, labs in sorted(families.items()):
        files = {lab["file"] for lab in labs}
        allowed = frozenset(rid for rid in ids if not seen.get(rid) or seen[rid] - files)
        with ruleset(allowed):
            outputs = {lab["file"]: parse(raws[lab["file"]]).to_json() for lab in labs}
        s = score(labs, outputs)
        folds.append(Fold(family, len(labs), len(ids) - len(allowed), s))
        _add(pooled, s)
    return Loso(pooled, folds, len(ids), sum(1 for rid in ids if seen.get(rid)))


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
    ap.add_argument("--loso", action="store_true",
                    help="also leave one source family out (in-process parser only)")
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
    if args.loso and not args.command:
        _print_loso(loso(args.corpus, labels), args.verbose)
    return 0


def _print_loso(result: Loso, verbose: bool) -> None:
    print(f"leave-one-source-out: {len(result.folds)} families, {result.rules} rule rows, "
          f"{result.supported} with a correct supporting hit")
    for fold in result.folds:
        d = fold.scores.as_dict()
        hs = fold.scores.hardsoft
        flag = "" if hs[0] == hs[1] else "   <"
        print(f"  {fold.family:24} files {fold.files:3}  rules dropped {fold.dropped:3}  "
              f"hardsoft {hs[0]:3}/{hs[1]:<3} ({d['hardsoft']:.3f})  F1 {d['f1']:.3f}{flag}")
    if verbose:
        for miss in result.pooled.misses:
            if miss[1] == "class":
                print("  loso miss:", "  ".join(str(x) for x in miss))
    d = result.pooled.as_dict()
    print(f"LOSO pooled  recipient F1 {d['f1']:.3f} (P {d['precision']:.3f} "
          f"R {d['recall']:.3f})  hardsoft {d['hardsoft']:.3f} (n {d['n_hardsoft']})  "
          f"perm {d['perm']:.3f}  status {d['status']:.3f}  kind {d['kind']:.3f}")


if __name__ == "__main__":
    sys.exit(main())

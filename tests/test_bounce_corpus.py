"""The bounce parser over every labelled message of ../shared/corpus/bounces/.

Table-driven: one parametrised case per file checks that parsing never
raises and yields a known kind; the summary test scores the whole corpus
with scripts/score_bounces.py (the README's scoring contract), prints the
per-field agreement and asserts the thresholds of issue 4; the
leave-one-source-out test (issue 14) holds out each source family in turn,
parses it with only the rules that have support outside it, and asserts
the pooled hard/soft agreement (and that the held-out parse really ran
with fewer rules, so the measure cannot silently become the in-corpus one).
"""

from __future__ import annotations

import importlib.util
import os
import json
import sys
from pathlib import Path

import pytest

from mta.mail.bounces import KINDS, parse

ROOT = Path(__file__).resolve().parents[1]
# ../shared beside the checkout (as CI clones it), or MTA_BOUNCE_CORPUS.
CORPUS = Path(os.environ.get("MTA_BOUNCE_CORPUS")
              or Path(__file__).resolve().parents[2] / "shared" / "corpus" / "bounces")
pytestmark = pytest.mark.skipif(not (CORPUS / "labels.jsonl").exists(),
                                reason=f"bounce corpus not found at {CORPUS} (clone beside "
                                       f"shared/, or set MTA_BOUNCE_CORPUS)")
THRESHOLDS = {"f1": 0.985, "hardsoft": 0.98, "status": 0.97, "kind": 0.97}


def _scorer():
    spec = importlib.util.spec_from_file_location("score_bounces",
                                                  ROOT / "scripts" / "score_bounces.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("score_bounces", mod)    # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def _labels():
    if not (CORPUS / "labels.jsonl").exists():
        return []
    with open(CORPUS / "labels.jsonl", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


LABELS = _labels()


@pytest.mark.parametrize("label", LABELS, ids=[lab["file"] for lab in LABELS])
def test_each_message_parses(label):
    report = parse((CORPUS / label["file"]).read_bytes()).to_json()
    assert report["kind"] in KINDS
    json.dumps(report)                  # the CLI prints it: must be serialisable
    for r in report["recipients"]:
        assert "@" in r["address"]
        assert r["class"] in ("hard", "soft", "complaint", "unknown")


# Regression floor: what the parser achieves today; it must never drop below.
FLOOR = {"f1": 0.99, "hardsoft": 0.98, "status": 0.99, "kind": 0.995}


def _scores():
    scorer = _scorer()
    labels = scorer.load_labels(CORPUS)
    outputs = {lab["file"]: parse((CORPUS / lab["file"]).read_bytes()).to_json()
               for lab in labels}
    return scorer.score(labels, outputs)


def test_corpus_scores_do_not_regress(report):
    d = _scores().as_dict()
    report("bounce corpus: " + "  ".join(f"{k} {v:.3f}" for k, v in d.items()
                                         if isinstance(v, float)))
    failing = {k: round(d[k], 4) for k, v in FLOOR.items() if d[k] < v}
    assert not failing, f"below the floor {FLOOR}: {failing}"


def test_corpus_scores_meet_the_targets():
    scores = _scores()
    d = scores.as_dict()
    print("\nbounce corpus: " + "  ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                                          for k, v in d.items()))
    for miss in scores.misses:
        print("  disagree:", *miss)
    failing = {k: round(d[k], 4) for k, v in THRESHOLDS.items() if d[k] < v}
    assert not failing, f"below target {THRESHOLDS}: {failing}"


# Issue 14: in-corpus targets, and generalisation measured leave-one-source-out.
TARGETS_14 = {"f1": 0.99, "hardsoft": 0.98}
LOSO_HARDSOFT = 0.97


def test_in_corpus_targets_of_issue_14():
    d = _scores().as_dict()
    failing = {k: round(d[k], 4) for k, v in TARGETS_14.items() if d[k] < v}
    assert not failing, f"below target {TARGETS_14}: {failing}"


def test_leave_one_source_out_hard_soft(report):
    scorer = _scorer()
    labels = scorer.load_labels(CORPUS)
    result = scorer.loso(CORPUS, labels)
    d = result.pooled.as_dict()
    report(f"bounce corpus LOSO: {len(result.folds)} families, hardsoft {d['hardsoft']:.3f} "
           f"(n {d['n_hardsoft']}), F1 {d['f1']:.3f}; {result.supported}/{result.rules} "
           f"rule rows supported")
    for miss in result.pooled.misses:
        if miss[1] == "class":
            print("  loso disagree:", *miss)
    # every file is scored exactly once, and some folds ran without rules
    assert sum(f.files for f in result.folds) == len(labels)
    assert {f.family for f in result.folds} == {lab["group"] for lab in labels}
    assert sum(f.dropped for f in result.folds) > 0
    assert d["n_hardsoft"] == _scores().as_dict()["n_hardsoft"]
    assert d["hardsoft"] >= LOSO_HARDSOFT, f"LOSO hardsoft {d['hardsoft']:.4f} < {LOSO_HARDSOFT}"


def test_a_ruleset_without_some_rows_never_uses_them():
    """The support the LOSO scorer computes names table rows, and a parse under
    ruleset() without the rows that decided a recipient cannot use them."""
    from mta.mail.bounces.patterns import RULES, ruleset
    from mta.mail.bounces.rhost import RULES as RHOST
    scorer = _scorer()
    labels = scorer.load_labels(CORPUS)
    with ruleset(None, trace=True):
        reports = {lab["file"]: parse((CORPUS / lab["file"]).read_bytes()) for lab in labels}
    support = scorer.support(labels, reports)
    ids = {r.id for r in RULES} | {rid for rid, _, _ in RHOST}
    assert support and set(support) <= ids
    traced = [(f, r) for f, rep in sorted(reports.items()) for r in rep.recipients if r.rules]
    assert len(traced) > 100
    changed = 0
    for name, r in traced:
        with ruleset(frozenset(ids - set(r.rules)), trace=True):
            again = parse((CORPUS / name).read_bytes())
        same = next(x for x in again.recipients if x.address == r.address)
        assert not set(same.rules) & set(r.rules), (name, same.rules)
        changed += same.reason != r.reason
    assert changed > 0      # dropping rules does change verdicts

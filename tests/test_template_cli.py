"""`mta template …` through the real entry point (mta.cli.main.main) on a
state directory in tmp_path: create from files and stdin, update, publish,
versions, preview, delete, tenants, and one-line errors with exit 1."""

from __future__ import annotations

import io
import json
import sys

import pytest

from mta.cli.main import main
from mta.spool.templates import SqliteTemplates
from mta.spool.tenants import SqliteTenants

HTML = "<p>Hello {{{NAME}}}</p><p>Code {{{CODE}}}</p>"
VARIABLES = json.dumps([{"key": "NAME", "type": "string", "fallback_value": "friend"},
                        {"key": "CODE", "type": "number"}])


@pytest.fixture
def mta(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MTA_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("MTA_DEFAULT_CONFIG", str(tmp_path / "no-default.toml"))
    monkeypatch.delenv("MTA_CONFIG", raising=False)
    (tmp_path / "t.html").write_text(HTML)

    def run(*args: str, stdin: str | None = None) -> tuple[int, str, str]:
        capsys.readouterr()
        if stdin is not None:
            monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
        code = main(["template", *args])
        out = capsys.readouterr()
        err = "".join(line for line in out.err.splitlines(keepends=True)
                      if not line.startswith("mta: config "))   # which config: every command
        return code, out.out, err
    return run


def test_create_show_update_publish_versions_delete(tmp_path, mta):
    code, out, err = mta("create", "--name", "Welcome", "--alias", "welcome",
                         "--html-file", str(tmp_path / "t.html"), "--subject", "Hi {{{NAME}}}",
                         "--from", "App <app@example.com>", "--variables", VARIABLES, "--json")
    assert code == 0, err
    made = json.loads(out)
    assert (made["alias"], made["status"], made["html"], made["from"]) == (
        "welcome", "draft", HTML, "App <app@example.com>")
    store = SqliteTemplates(tmp_path / "state")
    assert store.get("default", "welcome").id == made["id"]
    code, out, _ = mta("show", "welcome")
    assert code == 0 and made["id"] in out and "never published" in out
    assert "NAME (string), CODE (number)" in out
    code, out, _ = mta("publish", "welcome")
    assert code == 0 and f"published {made['id']} version 1" in out
    code, out, err = mta("update", "welcome", "--text-file", "-", stdin="Hi {{{NAME}}}")
    assert code == 0 and "draft" in out, err
    assert store.get("default", made["id"]).text == "Hi {{{NAME}}}"
    code, out, _ = mta("publish", made["id"])
    assert code == 0 and "version 2" in out
    code, out, _ = mta("versions", "welcome")
    assert code == 0 and out.splitlines()[0].startswith("v2\t") and "-- 2 versions" in out
    versions = json.loads(mta("versions", "welcome", "--json")[1])
    assert [v["version"] for v in versions] == [2, 1] and versions[1]["text"] is None
    code, out, _ = mta("list")
    assert code == 0 and out.splitlines()[0].split("\t")[:5] == [
        made["id"], "Welcome", "welcome", "published", "v2"]
    assert json.loads(mta("list", "--json")[1])[0]["id"] == made["id"]
    code, out, _ = mta("delete", "welcome")
    assert code == 0 and f"deleted {made['id']}" in out
    assert store.get("default", made["id"]) is None
    code, _, err = mta("show", "welcome")
    assert code == 1 and err.strip() == "mta: no template 'welcome' (tenant default)"


def test_preview_lists_missing_and_undeclared(tmp_path, mta):
    (tmp_path / "x.html").write_text("<p>{{{NAME}}} {{{CODE}}} {{{OTHER}}}</p>")
    code, _, err = mta("create", "--name", "P", "--alias", "p", "--subject", "S {{{NAME}}}",
                       "--html-file", str(tmp_path / "x.html"), "--variables", VARIABLES)
    assert code == 0, err
    code, out, err = mta("preview", "p", "--data", '{"NAME": "Ann"}')
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == "subject: S Ann"
    assert "missing: CODE, OTHER" in lines and "undeclared: OTHER" in lines
    code, out, _ = mta("preview", "p", "--data", '{"CODE": 5}', "--json")
    doc = json.loads(out)
    assert doc["object"] == "preview" and "friend 5" in doc["html"] and doc["missing"] == ["OTHER"]
    code, _, err = mta("preview", "p", "--version", "published")
    assert code == 1 and "with that version" in err
    code, _, err = mta("preview", "p", "--data", "[1]")
    assert code == 1 and err.startswith("mta: --data")
    code, _, err = mta("preview", "p", "--version", "zero")
    assert code == 1 and err.startswith("mta: --version")


def test_errors_are_one_line_and_exit_1(tmp_path, mta):
    html = str(tmp_path / "t.html")
    cases = [(("create", "--name", "x", "--html-file", str(tmp_path / "none.html")),
              "mta: --html-file: cannot read"),
             (("create", "--name", "x", "--html-file", html, "--alias", "Bad!"), "mta: alias:"),
             (("create", "--name", "x", "--html-file", html, "--from", "nope"), "mta: from:"),
             (("create", "--name", "x", "--html-file", html, "--variables", "{"),
              "mta: --variables: not valid JSON"),
             (("create", "--name", "x", "--html-file", html, "--variables", '"x"'),
              "mta: variables"),
             (("create", "--name", "x", "--html-file", "-", "--text-file", "-"),
              "mta: --html-file and --text-file cannot both be stdin"),
             (("create", "--name", "x", "--html-file", html, "--tenant", "ghost"),
              "mta: no tenant named 'ghost'"),
             (("publish", "nothing"), "mta: no template 'nothing'"),
             (("update", "nothing", "--name", "y"), "mta: no template 'nothing'")]
    for args, message in cases:
        code, out, err = mta(*args)
        assert code == 1 and err.startswith(message), (args, err)
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert mta("create", "--name", "x", "--html-file", html, "--alias", "a")[0] == 0
    code, _, err = mta("create", "--name", "y", "--html-file", html, "--alias", "a")
    assert code == 1 and "alias" in err and "exists" in err
    assert SqliteTemplates(tmp_path / "state").list("default", 10)[0][0].alias == "a"


def test_tenant_option_scopes_every_command(tmp_path, mta):
    SqliteTenants(tmp_path / "state").add("acme", limits={}, policy={}, now=1.0)
    html = str(tmp_path / "t.html")
    code, out, err = mta("create", "--name", "A", "--alias", "a", "--html-file", html,
                         "--tenant", "acme")
    assert code == 0, err
    tid = out.split()[1]
    assert mta("show", "a")[0] == 1                             # not the default tenant's
    assert mta("list")[1].strip() == "-- 0 templates"
    code, out, _ = mta("list", "--tenant", "acme")
    assert out.startswith(tid) and "-- 1 template" in out
    assert mta("delete", tid)[0] == 1
    assert mta("delete", tid, "--tenant", "acme")[0] == 0

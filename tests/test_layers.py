"""The layer DAG of DESIGN.md §2: lower packages never import higher ones."""

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "mta"

ALLOWED = {
    "core": set(),
    "config": {"core"},
    "policy": {"core", "config"},
    "scheduler": {"core", "policy"},
    "mail": {"core"},
    "spool": {"core"},
    "delivery": {"core", "policy", "mail"},
    "server": {"core", "config", "policy", "mail", "spool"},  # config: ListenerConfig (lower layer)
    "admin": {"core", "spool", "scheduler"},
    # domains: sending-domain state, keys and DNS checks (issue 3); delivery
    # for its Resolver seam only.
    "domains": {"core", "config", "policy", "mail", "delivery"},
    # webhooks: signed webhooks (issue 11 item 6); storage through its own
    # store Protocols, which the spool satisfies (runtime wires them).
    "webhooks": {"core", "config"},
    "runtime": {"core", "config", "policy", "scheduler", "mail", "spool", "delivery",
                "server", "admin", "domains", "webhooks"},
    "cli": {"runtime", "admin", "core", "config", "domains", "mail", "webhooks"},  # config+core: loading and its errors
}


def imports_of(path: Path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield a.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module


def test_layers_form_the_documented_dag():
    bad = []
    for layer, allowed in ALLOWED.items():
        for f in (PKG / layer).rglob("*.py"):
            for mod in imports_of(f):
                parts = mod.split(".")
                if parts[0] != "mta" or len(parts) < 2:
                    continue
                target = parts[1]
                if target != layer and target not in allowed:
                    bad.append(f"{f.relative_to(PKG)} imports {mod}")
    assert not bad, "\n".join(bad)


def test_every_package_is_covered():
    pkgs = {p.name for p in PKG.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert pkgs <= set(ALLOWED), pkgs - set(ALLOWED)

"""What `mta config check` verifies beyond parsing: the files a config names
and the values that are still placeholders.

One job: tell an operator, before the daemon starts, what would stop it or
make it misbehave, each message naming its key path.

API
    file_errors(cfg) -> list[str]
        Errors (the config cannot start). For every listener (and `[admin]`) with `cert` and
        `key`: each path must exist, be a readable file, and the two must
        load as a PEM certificate chain and its matching private key
        (`ssl.SSLContext.load_cert_chain`, as the daemon loads them), e.g.
        ``listeners[0].cert: /etc/mta/tls/fullchain.pem: no such file``.
        An encrypted key is an error (the daemon has nobody to ask for the
        passphrase); the check never prompts.
    placeholder_warnings(cfg) -> list[str]
        Warnings (the config starts, but is not what the operator meant):
        documentation addresses (192.0.2.0/24, 198.51.100.0/24,
        203.0.113.0/24, 2001:db8::/32, 3fff::/20) and reserved names
        (example.com/.net/.org and their subdomains, the TLDs .example and
        .invalid) anywhere an address or name is configured: public_ips,
        listener and admin addresses, routes, nameservers, bounces.domain,
        feedback_addresses, dmarc_rua, webhook URLs. In production mode (not
        in sandbox mode, where nothing leaves the machine) also
        server.hostname when it is not a public fully-qualified name
        (localhost, *.localhost, *.test, no dot) and an empty public_ips.
    is_documentation_ip(text) -> str | None     the documentation network, or None
    placeholder_name(name, public=False) -> str | None   why it is a placeholder, or None

Pure apart from reading the certificate files; never raises for bad values.
"""

from __future__ import annotations

import ipaddress
import os
import ssl
from urllib.parse import urlsplit

from mta.config.schema import host_of
from mta.config.sections import Config

__all__ = ["file_errors", "placeholder_warnings", "is_documentation_ip", "placeholder_name"]

DOCUMENTATION_NETWORKS = tuple(ipaddress.ip_network(n) for n in (
    "192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24",   # RFC 5737
    "2001:db8::/32", "3fff::/20"))                          # RFC 3849, RFC 9637
_EXAMPLE_DOMAINS = ("example.com", "example.net", "example.org")   # RFC 2606 §3
_RESERVED_TLDS = ("example", "invalid")                            # RFC 2606 §2
_LOCAL_TLDS = ("localhost", "test")      # fine for a lab, never a public name


# ---- certificate files ----------------------------------------------------

def _unreadable(path: str) -> str | None:
    """Why `path` cannot be read as a file, or None."""
    try:
        with open(path, "rb") as fh:
            fh.read(1)
    except FileNotFoundError:
        return "no such file"
    except IsADirectoryError:
        return "is a directory, not a file"
    except PermissionError:
        return f"cannot be read (permission denied for uid {os.getuid()})"
    except OSError as exc:
        return f"cannot be read: {exc.strerror or exc}"
    return None


def _pair_error(cert: str, key: str) -> str | None:
    asked = []

    def no_passphrase() -> bytes:     # never let OpenSSL prompt on a terminal
        asked.append(True)
        return b""

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        ctx.load_cert_chain(cert, key, password=no_passphrase)
    except ssl.SSLError as exc:
        if asked:
            return "the private key is encrypted; mta needs it unencrypted (mode 0600)"
        if exc.reason == "KEY_VALUES_MISMATCH":
            return "the private key does not belong to the certificate"
        return ("do not load as a PEM certificate chain and its private key "
                f"({exc.reason or exc})")
    except (OSError, ValueError) as exc:
        return f"cannot be loaded: {exc}"
    return None


def _pair_errors(where: str, cert: str | None, key: str | None) -> list[str]:
    if cert is None or key is None:
        return []              # no files (self-signed), or the parse error says so
    errors = []
    for name, path in (("cert", cert), ("key", key)):
        why = _unreadable(path)
        if why:
            errors.append(f"{where}.{name}: {path}: {why}")
    if not errors:
        why = _pair_error(cert, key)
        if why:
            errors.append(f"{where}.cert/key: {cert} and {key}: {why}")
    return errors


def file_errors(cfg: Config) -> list[str]:
    errors = []
    for i, lst in enumerate(cfg.listeners):
        errors += _pair_errors(f"listeners[{i}]", lst.cert, lst.key)
    errors += _pair_errors("admin", cfg.admin.cert, cfg.admin.key)
    return errors


# ---- placeholders ---------------------------------------------------------

def is_documentation_ip(text: str) -> str | None:
    try:
        ip = ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return None
    for net in DOCUMENTATION_NETWORKS:
        if ip.version == net.version and ip in net:
            return str(net)
    return None


def placeholder_name(name: str, public: bool = False) -> str | None:
    """Why `name` is a placeholder, or None. `public`: it must be a name the
    Internet can resolve to this server (localhost, .test and single labels
    count as placeholders too)."""
    n = name.strip().rstrip(".").lower()
    if not n:
        return None
    for d in _EXAMPLE_DOMAINS:
        if n == d or n.endswith("." + d):
            return f"{d} is reserved for documentation by RFC 2606"
    tld = n.rpartition(".")[2]
    if tld in _RESERVED_TLDS:
        return f"the top-level domain .{tld} is reserved by RFC 2606"
    if public:
        try:
            ipaddress.ip_address(n.strip("[]"))
            return None        # an address literal: is_documentation_ip's business
        except ValueError:
            pass
        if tld in _LOCAL_TLDS:
            return f"{n} is not a public name"
        if "." not in n:
            return f"{n} is not a fully-qualified domain name"
    return None


def _host_warning(where: str, host: str, shown: str, public: bool = False) -> str | None:
    net = is_documentation_ip(host)
    if net:
        return f"{where}: {shown} is a documentation address ({net}): set a real one"
    why = placeholder_name(host, public)
    if why:
        return f"{where}: {shown} is a placeholder ({why}): set a real one"
    return None


def placeholder_warnings(cfg: Config) -> list[str]:
    out: list[str | None] = []
    production = cfg.server.mode == "production"
    if production:
        out.append(_host_warning("server.hostname", cfg.server.hostname,
                                 repr(cfg.server.hostname), public=True))
        if not cfg.server.public_ips:
            out.append("server.public_ips: empty, so the SPF records `mta domain add` prints "
                       "authorise no address: set the addresses this server sends from")
    for ip in cfg.server.public_ips:
        net = is_documentation_ip(ip)
        if net:
            out.append(f"server.public_ips: {ip} is a documentation address ({net}): set the "
                       "addresses this server really sends from")
    for i, lst in enumerate(cfg.listeners):
        out.append(_host_warning(f"listeners[{i}].address", host_of(lst.address),
                                 lst.address))
    out.append(_host_warning("admin.address", host_of(cfg.admin.address),
                             cfg.admin.address))
    for dom, hop in cfg.routes.items():
        out.append(_host_warning(f"routes.{dom}", host_of(hop), f"next hop {hop}"))
    for ns in cfg.dns.nameservers:
        host = ns[1:].partition("]")[0] if ns.startswith("[") else (
            ns.partition(":")[0] if ns.count(":") == 1 else ns)
        out.append(_host_warning("dns.nameservers", host, ns))
    if cfg.bounces.domain:
        out.append(_host_warning("bounces.domain", cfg.bounces.domain,
                                 repr(cfg.bounces.domain)))
    for addr in cfg.bounces.feedback_addresses:
        out.append(_host_warning("bounces.feedback_addresses", addr.rpartition("@")[2],
                                 repr(addr)))
    if cfg.domains.dmarc_rua:
        out.append(_host_warning("domains.dmarc_rua", cfg.domains.dmarc_rua.rpartition("@")[2],
                                 repr(cfg.domains.dmarc_rua)))
    for i, w in enumerate(cfg.webhooks):
        try:
            host = urlsplit(w.url).hostname or ""
        except ValueError:
            continue
        out.append(_host_warning(f"webhooks[{i}].url", host, repr(w.url)))
    return [w for w in out if w]

"""The configuration: one frozen dataclass per TOML section.

Every key is declared exactly once here, with default, kind, bounds, doc
(shown by `mta config check` and documented in conf/mta.toml) and whether a
reload applies it live (`L`) or it needs a restart (`K`); `live_keys(section)`
reads those marks for the reload.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from collections.abc import Mapping

from mta.config.schema import (BOOL, CIDR_LIST, DURATION, DURATION_LIST, FLOAT, HOSTPORT, INT,
                               IP_LIST, NAMESERVER_LIST, SIZE, STR, STR_LIST, choice)
# K declares a key a reload cannot change (it needs a restart), L one a
# reload applies to the running daemon ("a field is named key": hence K).
from mta.config.schema import key as K
from mta.config.schema import live_key as L
from mta.config.tls import TlsConfig
from mta.config.cluster import ClusterConfig
from mta.config.content import (BroadcastConfig, PublicConfig, TrackingConfig,
                                VerificationConfig, VerificationTenantConfig)
from mta.core.envelope import EVENT_TYPES  # what [[webhooks]] events may name

__all__ = ["EVENT_TYPES", "SECTIONS", "ARRAYS", "Config", "ServerConfig", "ListenerConfig",
           "DeliveryConfig", "DnsConfig", "DomainsConfig", "PolicyConfig", "BouncesConfig",
           "SuppressionConfig", "AdminConfig", "ApiConfig", "LedgerConfig", "WebhookConfig", "MiB",
           "ShapingConfig", "EgressConfig", "EgressPoolConfig", "PublicConfig", "BroadcastConfig",
           "TrackingConfig", "VerificationConfig", "TlsConfig", "ClusterConfig",
           "live_keys", "ROUTES_LIVE"]

MiB = 1024 * 1024


@dataclass(frozen=True)
class ServerConfig:
    # gethostname(), not getfqdn(): the latter may query DNS at import time.
    hostname: str = K(socket.gethostname() or "localhost",
                      "name used in EHLO, Received: headers, Message-ID and DSNs "
                      "(default: this machine's host name)")
    state_dir: str = K("./var/mta", "directory for spool, index, keys and credentials "
                         "(MTA_STATE_DIR overrides)")
    mode: str = K("production", "\"production\" delivers to the Internet; \"sandbox\" captures "
                    "every message into state_dir/sandbox (maildir) and delivers nothing",
                    choice("production", "sandbox"))
    shutdown_timeout: float = L(30.0, "on SIGTERM, how long in-flight deliveries may finish",
                                  DURATION, min=0, max=3600)
    log_level: str = L("info", "log level", choice("debug", "info", "warning", "error"))
    public_ips: tuple[str, ...] = L((), "addresses this server sends from; the SPF record "
                                      "`mta domain add` prints authorises exactly these",
                                      IP_LIST, max=64)
    workers: int = K(-1, "receiver processes that run SMTP submission sessions beside the "
                     "process that owns the spool and delivers (ARCHITECTURE §3); -1: one "
                     "per CPU (none on a one-CPU machine); 0: one process does everything",
                     INT, min=-1, max=256)
    min_free_space: int = L(100 * MiB, "/readyz reports not ready (503) when the spool's "
                            "filesystem has less free space than this; 0: no check", SIZE,
                            min=0, max=1024 ** 5)


@dataclass(frozen=True)
class ListenerConfig:
    name: str = K("submission", "name used in logs and metrics")
    address: str = K("127.0.0.1:587", "\"host:port\" to listen on", HOSTPORT)
    role: str = K("submission", "\"submission\": authenticated clients hand in mail; "
                  "\"inbound\": port 25 for bounces, complaints (feedback loops), postmaster@ "
                  "and abuse@ — never a relay, no AUTH", choice("submission", "inbound"))
    tls: str = K("starttls", "\"starttls\", \"implicit\" (TLS from the first byte) or \"none\"",
                   choice("starttls", "implicit", "none"))
    cert: str | None = L(None, "PEM certificate chain path (default: a self-signed "
                           "certificate generated into state_dir/tls)", STR, optional=True)
    key: str | None = L(None, "PEM private key path", STR, optional=True)
    require_tls_for_auth: bool = L(True, "offer and accept AUTH only inside TLS", BOOL)
    max_message_size: int = L(25 * MiB, "largest message accepted, in bytes (SIZE)", SIZE,
                                min=1024, max=1024 * MiB)
    max_recipients: int = L(1000, "most RCPT TO per transaction", INT, min=1, max=100_000)
    trusted_networks: tuple[str, ...] = L((), "CIDRs whose clients may submit without AUTH "
                                            "(like Postfix mynetworks)", CIDR_LIST)
    auth_max_failures: int = L(5, "failed AUTH attempts from one IP before it is locked out",
                                 INT, min=1, max=1000)
    auth_lockout: float = L(300.0, "how long an IP stays locked out after too many failures",
                              DURATION, min=1, max=86400)
    auth_max_failures_per_user: int = L(20, "failed AUTH attempts for one user name (from any "
                                          "IP) before it is locked out; IPs that logged in as "
                                          "that user lately are not locked out", INT,
                                          min=1, max=100_000)
    idle_timeout: float = L(300.0, "close a session idle this long (no command, no DATA bytes)",
                            DURATION, min=1, max=3600)
    max_sessions: int = L(1000, "most simultaneous sessions on this listener; more get 421 "
                          "4.7.0 and are closed", INT, min=1, max=100_000)
    max_sessions_per_ip: int = L(50, "most simultaneous sessions from one client IP "
                                 "(trusted_networks are exempt); more get 421 4.7.0", INT,
                                 min=1, max=100_000)
    transaction_timeout: float = L(1800.0, "longest time from MAIL FROM to the end of DATA; "
                                   "past it the session gets 421 4.4.2 and is closed",
                                   DURATION, min=10, max=86400)
    max_junk_commands: int = L(100, "commands that move no mail (NOOP, RSET, VRFY, HELP, EHLO, "
                               "unknown ones, refused AUTH) before 421 4.7.0 closes the session; "
                               "reset by each accepted message", INT, min=1, max=100_000)
    listen_backlog: int = K(1024, "TCP accept queue length (the kernel caps it at "
                            "net.core.somaxconn)", INT, min=1, max=65535)


@dataclass(frozen=True)
class DeliveryConfig:
    retry_schedule: tuple[float, ...] = L((300.0, 600.0, 1200.0, 2400.0, 3600.0, 7200.0, 14400.0),
                                            "waits between attempts; the last one repeats",
                                            DURATION_LIST, min=1, max=7 * 86400)
    max_queue_lifetime: float = L(5 * 86400.0, "a recipient still deferred after this "
                                    "expires and bounces", DURATION, min=2, max=60 * 86400)
    concurrency_per_destination: int = L(20, "most simultaneous connections per destination",
                                           INT, min=1, max=1000)
    max_messages_per_connection: int = L(100, "messages sent over one SMTP connection "
                                           "before it is closed", INT, min=1, max=100_000)
    max_recipients_per_transaction: int = L(100, "recipients per SMTP transaction", INT,
                                              min=1, max=1000)
    connect_timeout: float = L(30.0, "TCP connect + greeting timeout", DURATION,
                                 min=0.1, max=600)
    command_timeout: float = L(300.0, "timeout for each SMTP command and for DATA",
                                 DURATION, min=0.1, max=3600)
    delay_warning_after: float | None = L(None, "send a delay DSN once a recipient has been "
                                            "deferred this long (unset: never)", DURATION,
                                            optional=True, min=1, max=60 * 86400)
    destination_backoff: tuple[float, ...] = L((1.0, 5.0, 30.0, 60.0, 300.0),
                                                 "pause of a destination after consecutive "
                                                 "connection failures; the last one repeats",
                                                 DURATION_LIST, min=0.1, max=86400)
    batch_size: int = L(500, "due recipients loaded from the index per scheduler pass",
                          INT, min=1, max=100_000)
    smtp_port: int = L(25, "port of remote MX hosts", INT, min=1, max=65535)


@dataclass(frozen=True)
class DnsConfig:
    nameservers: tuple[str, ...] = K((), "\"ip\" or \"ip:port\" resolvers; empty: the system "
                                       "resolver (/etc/resolv.conf)", NAMESERVER_LIST)
    timeout: float = K(5.0, "per-query timeout", DURATION, min=0.1, max=60)


@dataclass(frozen=True)
class DomainsConfig:
    dmarc_rua: str | None = L(None, "address for DMARC aggregate reports in the suggested "
                                "DMARC record (default: dmarc@DOMAIN; an address in another "
                                "domain needs that domain's RFC 7489 7.1 authorisation record)",
                                STR, optional=True)
    bounce_subdomain: str = L("bounce", "label of the return-path domain: LABEL.DOMAIN gets an "
                                "MX to server.hostname and an SPF record (used for VERP bounces)")
    check_schedule: tuple[float, ...] = L((60.0, 300.0, 900.0, 3600.0, 21600.0, 86400.0),
                                            "waits between DNS checks of a domain not yet "
                                            "verified (or failed); the last one repeats",
                                            DURATION_LIST, min=1, max=7 * 86400)
    recheck_verified: float = L(86400.0, "how often a verified domain's DNS is checked again",
                                  DURATION, min=60, max=30 * 86400)
    rotation_grace: float = L(7 * 86400.0, "after a rotation, how long the old DKIM key stays "
                                "published (mail in flight still verifies) before removal",
                                DURATION, min=0, max=365 * 86400)


@dataclass(frozen=True)
class PolicyConfig:
    require_verified_domain: bool = L(True, "accept mail only from sending domains whose DNS "
                                        "verified (`mta domain check`); false for development",
                                        BOOL)


@dataclass(frozen=True)
class BouncesConfig:
    domain: str | None = L(None, "return-path (VERP) domain for mail whose sending domain is not "
                           "set up with `mta domain add` (default: no VERP for such mail)",
                           STR, optional=True)
    feedback_addresses: tuple[str, ...] = L((), "addresses the inbound listener accepts "
                                            "complaint reports (feedback loops) for", STR_LIST)
    capture_dir: str | None = L(None, "where mail to postmaster@ and abuse@ the server "
                                "hostname is kept as a maildir (default state_dir/inbound)",
                                STR, optional=True)
    capture_max_bytes: int = L(256 * MiB, "quota of the postmaster@/abuse@ maildir in bytes "
                               "(tmp/, new/, cur/); over it that mail gets 452 4.3.1", SIZE,
                               min=MiB, max=1 << 40)
    capture_max_messages: int = L(10_000, "quota of the postmaster@/abuse@ maildir in messages",
                                  INT, min=1, max=10_000_000)


@dataclass(frozen=True)
class SuppressionConfig:
    on_rcpt: str = L("reject", "a suppressed recipient at RCPT TO: \"reject\" (550, the "
                     "application learns at once) or \"accept\" (accepted, recorded as "
                     "suppressed, never delivered)", choice("reject", "accept"))
    soft_bounce_limit: int = K(5, "consecutive soft failures (no delivery in between) that "
                               "suppress an address…", INT, min=1, max=1000)
    soft_bounce_span: float = K(3 * 86400.0, "…when they are spread over at least this long",
                                DURATION, min=0, max=365 * 86400)
    hard_bounce_expiry: float | None = K(None, "hard-bounce suppressions expire after this "
                                         "(unset: never)", DURATION, optional=True,
                                         min=3600, max=10 * 365 * 86400)
    soft_bounce_expiry: float | None = K(30 * 86400.0, "soft-bounce suppressions expire after "
                                         "this (unset: never)", DURATION, optional=True,
                                         min=3600, max=10 * 365 * 86400)


@dataclass(frozen=True)
class AdminConfig:
    address: str = K("127.0.0.1:8025", "\"host:port\" of the admin HTTP API and /metrics",
                     HOSTPORT)
    token: str | None = K(None, "bearer token for the admin API (default: generated into "
                          "state_dir/admin-token on first start)", STR, optional=True)
    metrics_require_token: bool = K(False, "require the token for /metrics too", BOOL)
    enabled: bool = K(True, "serve the admin API (the `mta queue` commands need it)", BOOL)
    cert: str | None = K(None, "PEM certificate chain path: serve the admin API and the "
                         "console over HTTPS (the console's cookie is then Secure; `mta` "
                         "commands trust this certificate)", STR, optional=True)
    key: str | None = K(None, "PEM private key path (with cert)", STR, optional=True)
    console: bool = K(True, "serve the web console at /console/ on the admin address "
                      "(log in with the admin token or a tenant's full-access API key)", BOOL)
    console_session_idle: float = K(3600.0, "a console session ends after this long without "
                                    "a request", DURATION, min=60, max=7 * 86400)
    console_session_lifetime: float = K(43200.0, "a console session ends this long after "
                                        "login, used or not", DURATION, min=300,
                                        max=30 * 86400)


@dataclass(frozen=True)
class ApiConfig:
    """The public sending API (Resend-compatible; issue 13)."""
    address: str | None = K(None, "\"host:port\" of the sending HTTP API (unset: off; the "
                            "embedded sandbox default serves it on 127.0.0.1:8080)",
                            HOSTPORT, optional=True)
    cert: str | None = K(None, "PEM certificate chain path: serve the API over HTTPS",
                         STR, optional=True)
    key: str | None = K(None, "PEM private key path (with cert)", STR, optional=True)
    behind_tls_proxy: bool = K(False, "the API sits behind a TLS-terminating proxy: allows a "
                               "non-loopback address without cert/key", BOOL)
    rate_limit: int = L(10, "requests per second per API key (a key may set its own)", INT,
                        min=1, max=1_000_000)
    max_request_size: int = L(40 * MiB, "largest request body (JSON, attachments "
                              "base64-encoded included); larger: 413", SIZE,
                              min=64 * 1024, max=1024 * MiB)
    max_recipients: int = L(50, "to + cc + bcc of one email", INT, min=1, max=1000)
    attachment_hosts: tuple[str, ...] = L((), "hosts an attachment `path` URL may name "
                                          "(fetched over HTTPS; plain HTTP only from a "
                                          "loopback host); empty: remote attachments "
                                          "are refused", STR_LIST, max=64)


@dataclass(frozen=True)
class LedgerConfig:
    retention: float = K(30 * 86400.0, "events older than this are pruned (in small batches)",
                         DURATION, min=3600, max=10 * 365 * 86400)
    idempotency_window: float = K(86400.0, "a repeated Idempotency-Key from the same credential "
                                  "within this window returns the original queue id",
                                  DURATION, min=60, max=30 * 86400)
    webhook_retry_schedule: tuple[float, ...] = K(
        (5.0, 30.0, 120.0, 600.0, 1800.0, 3600.0, 7200.0, 14400.0),
        "waits between webhook delivery attempts; the last one repeats", DURATION_LIST,
        min=0.1, max=86400)
    webhook_failing_after: float = K(3 * 86400.0, "an endpoint failing this long is marked "
                                     "failing (its backlog is kept for replay)", DURATION,
                                     min=1, max=30 * 86400)


@dataclass(frozen=True)
class ReputationConfig:
    level: str = L("standard", "what a tenant's bounce and complaint rates do when its own "
                   "policy does not say: \"none\" (monitor), \"standard\" (warn, then pause "
                   "sending), \"strict\" (pause at the warn levels)",
                   choice("none", "standard", "strict"))
    bounce_warn: float = L(0.05, "list-quality bounce rate that warns", FLOAT, min=0.0001, max=1)
    bounce_pause: float = L(0.10, "list-quality bounce rate that pauses sending", FLOAT,
                            min=0.0001, max=1)
    complaint_warn: float = L(0.001, "complaint rate that warns", FLOAT, min=0.00001, max=1)
    complaint_pause: float = L(0.003, "complaint rate that pauses sending", FLOAT,
                               min=0.00001, max=1)
    window: int = L(2000, "the rates are over a tenant's last N final outcomes…", INT,
                    min=10, max=1_000_000)
    window_span: float = L(7 * 86400.0, "…no older than this", DURATION, min=60,
                           max=365 * 86400)
    min_volume: int = L(500, "fewer outcomes than this in the window: no warning, no pause",
                        INT, min=0, max=1_000_000)


@dataclass(frozen=True)
class ShapingConfig:
    builtin: bool = L(True, "load the shipped provider table (docs/shaping.md: connection "
                      "limits, rates and reply rules per mailbox provider)", BOOL)
    file: str | None = L(None, "an operator's shaping file in the same format, laid over the "
                         "shipped table key by key (alone when builtin = false)", STR,
                         optional=True)
    mx_rollup: bool = L(True, "domains whose MX hosts are the same set share one queue and "
                        "one set of limits (a [domain.NAME] mx_rollup = false in the shaping "
                        "file opts a domain out)", BOOL)


@dataclass(frozen=True)
class EgressConfig:
    name: str = L("", "the source's name, used by pools, `mta warmup status` and the "
                  "ledger (required)")
    address: str = L("", "local IPv4 or IPv6 address outgoing connections bind (required; "
                     "it must be configured on this machine)")
    ehlo: str | None = L(None, "name to greet with from this address (its reverse DNS "
                         "should match; unset: [server] hostname)", STR, optional=True)
    pool: str = L("default", "the pool it belongs to; mail uses the pool its tenant or "
                  "sending domain chooses ([[egress_pool]]), else \"default\"")
    warmup: str | None = L(None, "warm-up schedule by sending day: \"50*1.5\" (day 1: 50, "
                           "then x1.5), \"50*1.5 until 100000\", \"50,100,250,500\" or "
                           "\"standard\"; unset: the address is warm", STR, optional=True)
    cert: str | None = L(None, "PEM client certificate chain this source presents in "
                         "STARTTLS (unset: none)", STR, optional=True)
    key: str | None = L(None, "PEM private key of `cert`", STR, optional=True)


@dataclass(frozen=True)
class EgressPoolConfig:
    name: str = L("", "the pool's name (required)")
    tenants: tuple[str, ...] = L((), "tenants whose mail uses this pool", STR_LIST)
    domains: tuple[str, ...] = L((), "sending domains (of the envelope sender) whose mail "
                                 "uses this pool; a domain wins over a tenant", STR_LIST)
    spill: bool = L(True, "when the pool has sources warming up, may its warm sources take "
                    "what the warming ones may not send today (false: it waits)", BOOL)


@dataclass(frozen=True)
class WebhookConfig:
    name: str = L("", "name used by `mta webhooks` and the admin API (required)")
    url: str = L("", "http(s) URL the events are POSTed to (required)")
    events: tuple[str, ...] = L(("*",), "event types to send, or [\"*\"] for all", STR_LIST)
    secret: str = L("", "Standard Webhooks signing secret, whsec_<base64> "
                    "(`mta webhooks secret` makes one) (required)")
    credential: str | None = L(None, "only events of messages from this credential",
                               STR, optional=True)
    tenant: str | None = L(None, "only events of this tenant (unset: every tenant's)",
                           STR, optional=True)
    timeout: float = L(10.0, "per-request timeout", DURATION, min=0.1, max=300)
    batch_size: int = L(1, "events per request (a JSON array when > 1)", INT, min=1, max=1000)


@dataclass(frozen=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    listeners: tuple[ListenerConfig, ...] = ()
    delivery: DeliveryConfig = field(default_factory=DeliveryConfig)
    dns: DnsConfig = field(default_factory=DnsConfig)
    domains: DomainsConfig = field(default_factory=DomainsConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    bounces: BouncesConfig = field(default_factory=BouncesConfig)
    suppression: SuppressionConfig = field(default_factory=SuppressionConfig)
    admin: AdminConfig = field(default_factory=AdminConfig)
    api: ApiConfig = field(default_factory=ApiConfig)
    ledger: LedgerConfig = field(default_factory=LedgerConfig)
    reputation: ReputationConfig = field(default_factory=ReputationConfig)
    webhooks: tuple[WebhookConfig, ...] = ()
    shaping: ShapingConfig = field(default_factory=ShapingConfig)
    public: PublicConfig = field(default_factory=PublicConfig)
    broadcast: BroadcastConfig = field(default_factory=BroadcastConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    verification: VerificationConfig = field(default_factory=VerificationConfig)
    verification_tenant: tuple[VerificationTenantConfig, ...] = ()
    tls: TlsConfig = field(default_factory=TlsConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    egress: tuple[EgressConfig, ...] = ()
    egress_pool: tuple[EgressPoolConfig, ...] = ()
    # domain → "host:port"; "*" routes every domain (a smarthost)
    routes: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    source: str = "<embedded default>"   # file the config came from (not a key)


# The single-table sections, in the order `mta config check` prints them.
SECTIONS = {"server": ServerConfig, "delivery": DeliveryConfig, "dns": DnsConfig,
            "domains": DomainsConfig, "policy": PolicyConfig, "bounces": BouncesConfig,
            "suppression": SuppressionConfig, "admin": AdminConfig, "api": ApiConfig,
            "ledger": LedgerConfig, "reputation": ReputationConfig, "shaping": ShapingConfig,
            "public": PublicConfig, "broadcast": BroadcastConfig, "tracking": TrackingConfig,
            "verification": VerificationConfig, "tls": TlsConfig, "cluster": ClusterConfig}
# The [[array]] sections: key → the class of each table.
ARRAYS = {"listeners": ListenerConfig, "webhooks": WebhookConfig, "egress": EgressConfig,
          "egress_pool": EgressPoolConfig, "verification_tenant": VerificationTenantConfig}


def live_keys(section: str) -> frozenset[str]:
    """The keys of `section` (a name of SECTIONS or ARRAYS) that a reload
    applies to the running daemon; a change to any other key of it needs a
    restart. A listener is known by its name: a changed name is a listener
    removed and one added. [routes] is not here: it has no declared keys and
    reloads live as a whole (ROUTES_LIVE)."""
    cls = SECTIONS.get(section) or ARRAYS[section]
    return frozenset(f.name for f in fields(cls) if f.metadata.get("live"))


ROUTES_LIVE = True   # [routes]: a reload applies the new table

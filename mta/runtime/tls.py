"""TLS contexts for listeners, and the self-signed certificate for first runs.

`server_context(cert, key)` builds a server SSLContext (TLS ≥ 1.2);
`api_ssl_context(cfg)` the sending API's (`[api] cert`/`key`), or None.
`ensure_self_signed(dir, hostname)` creates `cert.pem`/`key.pem` (mode 0600)
once, so the embedded default can offer STARTTLS with no setup; clients must
not verify it (it is for trying mta out, not for production).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
from pathlib import Path

from mta.config import Config
from mta.core.files import atomic_write


def server_context(cert: str | os.PathLike[str], key: str | os.PathLike[str]) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    # An encrypted key fails at once instead of prompting on a terminal.
    ctx.load_cert_chain(str(cert), str(key), password=lambda: b"")
    return ctx


def api_ssl_context(cfg: Config) -> ssl.SSLContext | None:
    if cfg.api.cert is None or cfg.api.key is None:
        return None
    return server_context(cfg.api.cert, cfg.api.key)


def ensure_self_signed(directory: str | os.PathLike[str], hostname: str) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    d = Path(directory)
    cert_path, key_path = d / "cert.pem", d / "key.pem"
    if cert_path.exists() and key_path.exists():
        return cert_path, key_path
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = datetime.datetime.now(datetime.timezone.utc)
    sans: list[x509.GeneralName] = [x509.DNSName(hostname), x509.DNSName("localhost"),
                                    x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=3650))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .sign(key, hashes.SHA256()))
    atomic_write(key_path, key.private_bytes(serialization.Encoding.PEM,
                                               serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
    atomic_write(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path

"""The submission server: aiosmtpd adapter, session → policy → mail → spool.

Modules (each says its one job at the top):
    listener.py     sockets and session lifecycle (SubmissionListener, SessionGate)
    protocol.py     aiosmtpd SMTP subclass: wire fixes, no policy
    data.py         the DATA stream: block reader, head + spill, checks on the way
    sasl.py         the AUTH exchange on the wire (PLAIN, LOGIN), no decision
    session.py      the submission handler hooks: who may send, what is accepted, enqueue
    authcheck.py    the AUTH decision: throttles, the credential check, logs
    inbound.py      the inbound (port 25) handler and protocol: reports in, no relay
    addresses.py    the MAIL FROM / RCPT TO address check both handlers share (pure)
    seams.py        what the server needs from around it, as Protocols
    replies.py      every reply as a Reply value; ESC for aiosmtpd's built-ins
    hygiene.py      pure bare-CR/LF/NUL check of DATA (SMTP smuggling)
    credentials.py  the credential store's Protocols (CredentialCheck,
                    Credentials) and its embedded default, CredentialStore:
                    scrypt hashes in state_dir/credentials.json
"""

from mta.server.credentials import (
    CredentialCheck,
    CredentialError,
    Credentials,
    CredentialStore,
)
from mta.server.listener import SubmissionListener

__all__ = ["CredentialCheck", "CredentialError", "CredentialStore", "Credentials",
           "SubmissionListener"]

"""The submission server: aiosmtpd adapter, session → policy → mail → spool.

Modules (each says its one job at the top):
    listener.py     sockets and session lifecycle (SubmissionListener)
    protocol.py     aiosmtpd SMTP subclass: wire fixes, AUTH parsing, no policy
    session.py      the handler hooks: who may send, what is accepted, enqueue
    replies.py      every reply as a Reply value; ESC for aiosmtpd's built-ins
    hygiene.py      pure bare-CR/LF/NUL check of DATA (SMTP smuggling)
    credentials.py  CredentialStore: scrypt hashes in state_dir/credentials.json
"""

from mta.server.credentials import CredentialError, CredentialStore
from mta.server.listener import SubmissionListener

__all__ = ["CredentialError", "CredentialStore", "SubmissionListener"]

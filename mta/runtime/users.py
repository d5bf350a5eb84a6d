"""The credential store as the runtime and the CLI reach it (the CLI sits
above runtime only): the one place that chooses its backend.

API
    open_credentials(path) -> Credentials
        the store behind `path` (state_dir/credentials.json, or the state
        directory): today always the embedded default, server.credentials'
        CredentialStore (a JSON file of scrypt hashes). A networked backend
        shared by several nodes would be chosen here, and every caller (the
        daemon, its reload, `mta user …`) keeps working against the Protocol.
        Raises CredentialError when the store cannot be read.
    Credentials, CredentialCheck    the Protocols (server.credentials)
    CredentialError
"""

from __future__ import annotations

import os

from mta.server.credentials import (
    CredentialCheck,
    CredentialError,
    Credentials,
    CredentialStore,
)

__all__ = ["CredentialCheck", "CredentialError", "CredentialStore", "Credentials",
           "open_credentials"]


def open_credentials(path: str | os.PathLike[str]) -> Credentials:
    return CredentialStore(path)

"""The credential store as the CLI reaches it (the CLI sits above runtime only)."""

from mta.server.credentials import CredentialError, CredentialStore

__all__ = ["CredentialError", "CredentialStore"]

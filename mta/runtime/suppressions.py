"""The suppression list as the CLI reaches it (the CLI sits above runtime):
the spool's admin functions, which work while the daemon runs."""

from mta.spool import suppression_admin

__all__ = ["suppression_admin"]

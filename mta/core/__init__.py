"""Values shared by every layer: ids, addresses, replies, outcomes, errors, clock,
and the `Observer` seam (what gets counted; mta.core.observe).

Stdlib only. Nothing here does I/O except `SystemClock` reading the time.
"""

from mta.core.address import Address, AddressError, parse_address, parse_domain
from mta.core.clock import Clock, FakeClock, SystemClock
from mta.core.durations import DurationError, format_duration, parse_duration
from mta.core.envelope import (BOUNCED, DELETED, DELIVERED, EVENT_TYPES, EXPIRED,
                               FAILED_STATES, FINAL_STATES, HELD, PENDING_STATES, QUEUED,
                               SUPPRESSED, SUPPRESSION_REASONS, AddressOutcome, Destination,
                               DsnCandidate, FailedRecipient, LedgerEvent, QueuedRecipient,
                               RecipientUpdate)
from mta.core.errors import (ConfigError, MtaError, PermFailure, Refused, StorageError,
                             TempFailure)
from mta.core.ids import new_queue_id
from mta.core.observe import Observer
from mta.core.outcome import DestinationHealth, RecipientFate, RecipientOutcome
from mta.core.reply import Reply

__all__ = [
    "BOUNCED", "DELETED", "DELIVERED", "EVENT_TYPES", "EXPIRED", "LedgerEvent", "FAILED_STATES",
    "FINAL_STATES", "HELD",
    "PENDING_STATES", "QUEUED",
    "SUPPRESSED", "SUPPRESSION_REASONS", "AddressOutcome",
    "Destination", "DsnCandidate", "FailedRecipient", "QueuedRecipient", "RecipientUpdate",
    "Address", "AddressError", "parse_address", "parse_domain",
    "Clock", "FakeClock", "SystemClock",
    "DurationError", "format_duration", "parse_duration",
    "ConfigError", "MtaError", "PermFailure", "Refused", "StorageError", "TempFailure",
    "new_queue_id",
    "Observer",
    "DestinationHealth", "RecipientFate", "RecipientOutcome",
    "Reply",
]

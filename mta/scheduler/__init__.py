"""Pure delivery scheduling: per-destination queues, windows and health.

See scheduler.py (the Scheduler) and state.py (the destination-health state
machine, on mta.core.statemachine: an illegal move raises its
IllegalTransition).
"""

from mta.scheduler.scheduler import (Batch, DeliverySettings, Idle, Scheduler, SchedulerConfig,
                                     Sleep, Work)
from mta.scheduler.state import DESTINATION, DestState

__all__ = ["DESTINATION", "Batch", "DeliverySettings", "DestState", "Idle", "Scheduler",
           "SchedulerConfig", "Sleep", "Work"]

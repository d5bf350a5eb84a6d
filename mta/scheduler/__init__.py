"""Pure delivery scheduling: per-destination queues, windows and health.

See scheduler.py (the Scheduler) and state.py (destination state machine).
"""

from mta.scheduler.scheduler import Batch, Idle, Scheduler, Sleep, Work
from mta.scheduler.state import DestState, IllegalTransition

__all__ = ["Batch", "DestState", "Idle", "IllegalTransition", "Scheduler", "Sleep", "Work"]

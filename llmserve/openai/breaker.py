"""When an engine stops getting traffic, and when it gets it back (outlier ejection).

One failed stats read or connect is not enough to stop routing to an engine: it is
ejected after ``EJECT_AFTER_FAILURES`` consecutive failures, taken back only once a
probe (its next stats read) succeeds, and the last routable engine of a model is never
ejected (Envoy's outlier detection with ``max_ejection_percent`` below 100): with every
engine failing, requests still reach one and get its error, not a blanket 503.
"""

from __future__ import annotations

EJECT_AFTER_FAILURES = 3


def should_eject(consecutive_failures: int, other_routable: int) -> bool:
    return consecutive_failures >= EJECT_AFTER_FAILURES and other_routable > 0


def is_failing(consecutive_failures: int) -> bool:
    """Counted down on ``/health`` (whether or not it is still routed to)."""
    return consecutive_failures >= EJECT_AFTER_FAILURES

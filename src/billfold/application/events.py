"""Import every domain so each has subscribed its handlers to the events below it.

Topics live in the lower domain (see `billfold.events`); handlers subscribe on import of
the higher one. Importing this module is what makes the wiring complete; the container
(`build_services`) does it, so every front end and job runs with all handlers in place.
"""

from __future__ import annotations

from billfold import events
from billfold.checkout import service as checkout
from billfold.coupons import service as coupons
from billfold.subscriptions import start as subscriptions

WIRED = (checkout, coupons, subscriptions)

__all__ = ["WIRED", "events"]

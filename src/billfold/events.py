"""In-process, transactional events: how a lower domain lets a higher one react.

Layers point one way (core ← domains ← application ← front ends), and domains point one
way among themselves. When something a lower domain records must cause work in a higher
one (a payment-link charge that starts a subscription, a coupon purchase that earns its
bonus), the lower domain declares a `Topic` and publishes to it inside the transaction
that records the outcome; the higher domain subscribes its handler when it is imported.
The application layer imports every domain (`billfold.application.events`), so the
handlers are in place before any use case runs. The handler runs in the publisher's
session: its effect commits or rolls back with the outcome (Kill Bill's bus, in-process).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from sqlalchemy.orm import Session

E = TypeVar("E")
R = TypeVar("R")


class Topic(Generic[E, R]):
    """A named event with its subscribers; `single` topics need exactly one handler."""

    def __init__(self, name: str, *, single: bool = False) -> None:
        self.name = name
        self.single = single
        self._handlers: list[Callable[[Session, E], R]] = []

    def subscribe(self, handler: Callable[[Session, E], R]) -> Callable[[Session, E], R]:
        """Register `handler` (usable as a decorator); registering it again is a no-op."""
        if handler not in self._handlers:
            if self.single and self._handlers:
                raise RuntimeError(f"{self.name} already has a handler")
            self._handlers.append(handler)
        return handler

    def publish(self, session: Session, event: E) -> list[R]:
        """Run every handler in `session`, in registration order; their results."""
        if self.single and not self._handlers:
            raise RuntimeError(f"no handler for {self.name}: is its domain imported?")
        return [handler(session, event) for handler in self._handlers]

    def call(self, session: Session, event: E) -> R:
        """A `single` topic's handler's result."""
        assert self.single, self.name
        return self.publish(session, event)[0]

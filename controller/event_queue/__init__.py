"""Durable asynchronous invocations: the queue interface, its two backends, and the workers."""

from __future__ import annotations

from collections.abc import Callable

from controller.event_queue.interface import (DeadLetter, Delivery, EventQueue, FunctionDepth, Outcome, QueueDepth,
                                              QueuedEvent)

__all__ = ["DeadLetter", "Delivery", "EventQueue", "FunctionDepth", "Outcome", "QueueDepth", "QueuedEvent",
           "open_event_queue"]


def open_event_queue(location: str, state_dir: str, *, max_queued_per_function: int, max_queued: int,
                     record_ttl: float, max_records: int, ack_wait: float = 30.0,
                     busy: Callable[[], bool] | None = None) -> EventQueue:
    """The backend ``--event-queue`` names: ``nats://…`` for JetStream, else SQLite in ``state_dir``.

    ``busy``: whether the pod is busy with synchronous calls now; SQLite then paces its commits
    (``sqlite_backend.py``). JetStream's acknowledgements are the server's own: it has no use for it.
    """
    if location.startswith(("nats://", "tls://")):
        from controller.event_queue.nats_backend import NatsEventQueue

        return NatsEventQueue(location, max_queued_per_function=max_queued_per_function, max_queued=max_queued,
                              record_ttl=record_ttl, ack_wait=ack_wait)
    from controller.event_queue.sqlite_backend import SQLiteEventQueue

    directory = location[len("sqlite://"):] if location.startswith("sqlite://") else state_dir
    return SQLiteEventQueue(directory, max_queued_per_function=max_queued_per_function, max_queued=max_queued,
                            record_ttl=record_ttl, max_records=max_records, busy=busy)

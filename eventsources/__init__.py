"""Event sources: what turns something outside the pod (a clock, an MQTT topic) into asynchronous
invocations through the controller's durable intake.

One :class:`~eventsources.source.EventSource` per trigger ``Type`` (``cron``:
:mod:`eventsources.schedules`, ``mqtt``: :mod:`eventsources.mqtt`); the
:class:`~eventsources.supervisor.EventSourceSupervisor` follows stubs' trigger change feed and
tells each source which of its triggers were added, changed or removed. Everything runs in the
controller process (:mod:`eventsources.service` is its lifetime), so no daemon is added.
"""

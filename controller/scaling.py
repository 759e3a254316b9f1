"""A function's scaling policy: what the pool may do for it, from its record and the operator's file.

``FunctionPolicy`` holds the OpenFaaS scaling labels (``com.openfaas.scale.min|max|zero|zero-duration``)
and Lambda's ``ReservedConcurrentExecutions``; :func:`parse_scaling` checks the controller's
``--function-scaling`` overrides. Plain data and parsers, outside ``controller.pool`` so that
``controller.options`` can check the overrides without importing the pool.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import structlog

from easyfaas.config import parse_bool, parse_duration
from easyfaas.models import FunctionRecord

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class FunctionPolicy:
    """Per-function scaling and concurrency knobs.

    ``min_warm``: warm sandboxes kept (not cooled down, topped up after a loss) once the function
    has been invoked; ``max_sandboxes``: most sandboxes it may occupy (0: no limit); ``max_idle``:
    its own idle time before cooldown (None: the pool's); ``reserved_concurrency``: most requests
    of the function (all its versions) in flight at once (None: no limit, 0: throttled).
    """

    min_warm: int = 0
    max_sandboxes: int = 0
    max_idle: float | None = None
    reserved_concurrency: int | None = None

    LABEL_MIN = "com.openfaas.scale.min"
    LABEL_MAX = "com.openfaas.scale.max"
    LABEL_ZERO = "com.openfaas.scale.zero"
    LABEL_ZERO_DURATION = "com.openfaas.scale.zero-duration"

    @classmethod
    def of(cls, record: FunctionRecord) -> FunctionPolicy:
        """The policy a registry record asks for: its scaling labels (Tags) and reserved concurrency."""
        knobs = knobs_from_labels(record.Tags)
        reserved = record.Concurrency.ReservedConcurrentExecutions
        if reserved is not None and reserved >= 0:
            knobs["reserved_concurrency"] = reserved
        return cls(**knobs)


def knobs_from_labels(labels: Mapping[str, str]) -> dict[str, Any]:
    """FunctionPolicy fields from OpenFaaS scaling labels; a malformed label is logged and ignored."""
    knobs: dict[str, Any] = {}
    try:
        if FunctionPolicy.LABEL_MIN in labels:
            knobs["min_warm"] = _non_negative(int(labels[FunctionPolicy.LABEL_MIN]))
        if FunctionPolicy.LABEL_MAX in labels:
            knobs["max_sandboxes"] = _non_negative(int(labels[FunctionPolicy.LABEL_MAX]))
        if FunctionPolicy.LABEL_ZERO_DURATION in labels:
            knobs["max_idle"] = parse_duration(labels[FunctionPolicy.LABEL_ZERO_DURATION])
        if FunctionPolicy.LABEL_ZERO in labels and not parse_bool(labels[FunctionPolicy.LABEL_ZERO]):
            knobs["min_warm"] = max(1, knobs.get("min_warm", 0))
    except (TypeError, ValueError) as exc:
        log.warning("scaling_label_ignored", error=str(exc))
    return knobs


_SCALING_KEYS = {"min": ("min_warm", int), "max": ("max_sandboxes", int), "zero-duration": ("max_idle", parse_duration),
                 "reserved-concurrency": ("reserved_concurrency", int), "zero": ("zero", parse_bool)}


def parse_scaling(data: Any) -> dict[str, dict[str, Any]]:
    """The controller's per-function overrides: {function name or BRN: {min, max, zero, zero-duration,
    reserved-concurrency}} → FunctionPolicy fields per key. Raises ValueError naming the bad entry."""
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError("function scaling must map function names (or BRNs) to their knobs")
    out: dict[str, dict[str, Any]] = {}
    for name, knobs in data.items():
        if not isinstance(knobs, dict):
            raise ValueError(f"{name}: expected a mapping of knobs, got {type(knobs).__name__}")
        fields: dict[str, Any] = {}
        for key, raw in knobs.items():
            key = str(key).replace("_", "-")
            if key not in _SCALING_KEYS:
                raise ValueError(f"{name}: unknown knob {key!r} (known: {', '.join(sorted(_SCALING_KEYS))})")
            attr, conv = _SCALING_KEYS[key]
            try:
                value = conv(raw)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"{name}.{key}: {exc}") from None
            if isinstance(value, (int, float)) and not isinstance(value, bool) and value < 0:
                raise ValueError(f"{name}.{key}: must not be negative")
            fields[attr] = value
        if fields.pop("zero", True) is False:
            fields["min_warm"] = max(1, fields.get("min_warm", 0))
        out[str(name)] = fields
    return out


def _non_negative(value: int) -> int:
    if value < 0:
        raise ValueError(f"{value} is negative")
    return value

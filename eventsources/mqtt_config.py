"""The ``mqtt`` trigger's Config: broker URL, topic filter, QoS, client id, credentials and the
reply topic template, checked field by field (:class:`~eventsources.source.ConfigError` names it).

``ReplyTopic`` may name the message topic's levels: ``{0}`` is the first level, ``{1}`` the
second, ..., ``{topic}`` the whole topic (``replies/{1}`` for ``sensors/kitchen/temp`` is
``replies/kitchen``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from eventsources.source import ConfigError

MQTT_TRIGGER_TYPE = "mqtt"
_FIELDS = frozenset({"Broker", "Topic", "Qos", "ClientId", "Username", "Password", "ReplyTopic"})
_SCHEMES = {"mqtt": 1883, "mqtts": 8883}
_CLIENT_ID_RE = re.compile(r"^[0-9A-Za-z_-]{1,64}$")
_REPLY_FIELD_RE = re.compile(r"\{([^{}]*)\}")
MAX_TOPIC_BYTES = 65535


@dataclass(frozen=True)
class MqttConfig:
    broker: str
    host: str
    port: int
    tls: bool
    topic: str
    qos: int
    client_id: str
    username: str
    password: str
    reply_topic: str

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"Broker": self.broker, "Topic": self.topic, "Qos": self.qos}
        for key, value in (("ClientId", self.client_id), ("Username", self.username), ("Password", self.password),
                           ("ReplyTopic", self.reply_topic)):
            if value:
                body[key] = value
        return body


def check_topic_filter(topic: Any) -> str:
    """An MQTT topic filter: ``+`` fills a whole level, ``#`` only as the whole last level."""
    if not isinstance(topic, str) or not topic:
        raise ValueError("expected a topic filter such as sensors/+/temp")
    if len(topic.encode()) > MAX_TOPIC_BYTES or "\x00" in topic:
        raise ValueError("a topic filter is at most 65535 bytes of UTF-8 without NUL")
    levels = topic.split("/")
    start = 2 if levels[0] == "$share" else 0
    if start and (len(levels) < 3 or not levels[1] or "+" in levels[1] or "#" in levels[1]):
        raise ValueError("a shared subscription is $share/<group>/<filter>")
    for i, level in enumerate(levels[start:], start):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            raise ValueError(f"'#' must be the whole last level ({topic!r})")
        if "+" in level and level != "+":
            raise ValueError(f"'+' must fill a whole level ({topic!r})")
    return topic


def check_reply_topic(template: Any) -> str:
    if not isinstance(template, str) or not template:
        raise ValueError("expected a topic name, may use {0}, {1}, ... and {topic}")
    for name in _REPLY_FIELD_RE.findall(template):
        if name != "topic" and not (name.isascii() and name.isdigit()):
            raise ValueError(f"{{{name}}}: only {{topic}} and level numbers {{0}}, {{1}}, ... may be used")
    bare = _REPLY_FIELD_RE.sub("x", template)
    if "+" in bare or "#" in bare or "{" in bare or "}" in bare or "\x00" in bare:
        raise ValueError("a reply topic is a topic name: no + or #, braces only around {topic} or {N}")
    return template


def reply_topic_for(template: str, topic: str) -> str | None:
    """The reply topic of a message on ``topic``; None when the template names a level it lacks."""
    levels = topic.split("/")

    def level(m: re.Match[str]) -> str:
        name = m.group(1)
        if name == "topic":
            return topic
        index = int(name)
        if index >= len(levels):
            raise IndexError(index)
        return levels[index]

    try:
        return _REPLY_FIELD_RE.sub(level, template)
    except IndexError:
        return None


def check_broker(url: Any) -> tuple[str, int, bool]:
    """``mqtt://host[:port]`` or ``mqtts://host[:port]`` → (host, port, tls)."""
    if not isinstance(url, str) or not url:
        raise ValueError("expected mqtt://host:1883 or mqtts://host:8883")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"{url!r} is not a valid URL: {exc}") from None
    if parts.scheme not in _SCHEMES:
        raise ValueError(f"{url!r}: the scheme must be mqtt or mqtts")
    if not parts.hostname:
        raise ValueError(f"{url!r}: no host")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username or parts.password:
        raise ValueError(f"{url!r}: only scheme, host and port (credentials go in Username and Password)")
    return unquote(parts.hostname), port or _SCHEMES[parts.scheme], parts.scheme == "mqtts"


def _optional_text(config: dict[str, Any], key: str) -> str:
    value = config.get(key, "")
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ConfigError(f"Config.{key}", "expected a string")
    return value


def parse_mqtt_config(config: Any) -> MqttConfig:
    if not isinstance(config, dict):
        raise ConfigError("Config", "expected an object with Broker, Topic, Qos, ClientId, Username, Password, "
                                    "ReplyTopic")
    unknown = sorted(set(config) - _FIELDS)
    if unknown:
        raise ConfigError(f"Config.{unknown[0]}", f"unknown field; known: {', '.join(sorted(_FIELDS))}")
    try:
        host, port, tls = check_broker(config.get("Broker"))
    except ValueError as exc:
        raise ConfigError("Config.Broker", str(exc)) from None
    try:
        topic = check_topic_filter(config.get("Topic"))
    except ValueError as exc:
        raise ConfigError("Config.Topic", str(exc)) from None
    qos = config.get("Qos", 1)
    if isinstance(qos, bool) or qos not in (0, 1):
        raise ConfigError("Config.Qos", f"{qos!r} is not 0 or 1")
    client_id = _optional_text(config, "ClientId")
    if client_id and not _CLIENT_ID_RE.match(client_id):
        raise ConfigError("Config.ClientId", "expected 1-64 characters [0-9A-Za-z_-] (brokers must accept 23)")
    username = _optional_text(config, "Username")
    password = _optional_text(config, "Password")
    if password and not username:
        raise ConfigError("Config.Password", "a password needs a Username")
    reply = _optional_text(config, "ReplyTopic")
    if reply:
        try:
            check_reply_topic(reply)
        except ValueError as exc:
            raise ConfigError("Config.ReplyTopic", str(exc)) from None
    return MqttConfig(config["Broker"], host, port, tls, topic, qos, client_id, username, password, reply)


def validate_mqtt_config(config: Any) -> dict[str, Any]:
    """The normalised Config stubs stores (the trigger registry's validator of ``mqtt``)."""
    return parse_mqtt_config(config).to_dict()

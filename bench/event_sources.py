"""Event sources: MQTT QoS 1 messages end to end and a schedule's firing delay, on a real
Mosquitto (loopback, its own config) and the bench pod.

* ``mqtt_msgs_per_s``: QoS 1 messages published back to back on a trigger's topic, from the first
  publish to the last function finished; ``mqtt_p50_ms``/``mqtt_p99_ms``: published → function
  finished (the function stamps its finish time; one host clock) — in that burst mostly the wait
  behind the backlog; ``mqtt_paced_*``: the same delay with messages paced at ``paced_rate``/s;
* ``schedule_p99_ms`` (target ≤ 100 ms): an ``@every 1s`` schedule's due time → its event
  durably enqueued (the record's ``EnqueuedAt``), over ``schedule_fires`` due times.

``python -m bench.event_sources [--messages N] [--fires N]`` runs only this scenario on a pod of its own.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Sequence

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from bench.mosquitto import Mosquitto
from bench.pod import ACCOUNT_HEADER, BenchError, BenchPod, Function, run_standalone
from bench.stats import percentile
from easyfaas.function_code import ACCOUNT

PY_STAMP = ("import json, time\n"
            "def handler(event, context):\n"
            "    sent = json.loads(event['payload'])['sent'] if 'payload' in event else None\n"
            "    return {'sent': sent, 'finished': time.time(), 'time': event.get('time')}\n")
HEADERS = {ACCOUNT_HEADER: ACCOUNT, "Content-Type": "application/json"}


def _trigger(pod: BenchPod, fn: Function, kind: str, config: dict[str, Any]) -> str:
    body = {"Type": kind, "Qualifier": "1", "Config": config}
    status, text = pod.request("stubs", "POST", f"/v1/functions/{fn.name}/triggers", json.dumps(body).encode(),
                               HEADERS)
    if status != 201:
        raise BenchError(f"creating the {kind} trigger: HTTP {status}: {text[:300]!r}")
    return str(json.loads(text)["TriggerId"])


def _delete_trigger(pod: BenchPod, fn: Function, trigger_id: str) -> None:
    pod.request("stubs", "DELETE", f"/v1/functions/{fn.name}/triggers/{trigger_id}", None, HEADERS)


def _status(pod: BenchPod, trigger_id: str) -> dict[str, Any] | None:
    status, text = pod.request("controller", "GET", f"/v1/event-sources/{trigger_id}", None, HEADERS)
    return json.loads(text) if status == 200 else None


def _succeeded(pod: BenchPod, fn: Function) -> list[dict[str, Any]]:
    status, text = pod.request("controller", "GET", f"/v1/invocations?FunctionName={fn.name}&Limit=1000",
                               None, HEADERS)
    if status != 200:
        raise BenchError(f"listing records: HTTP {status}: {text[:300]!r}")
    return [r for r in json.loads(text)["Invocations"] if r["Status"] == "succeeded"]


def _wait(what: str, check: Any, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise BenchError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _result(record: dict[str, Any]) -> dict[str, Any]:
    result = record["Result"]
    return json.loads(result) if isinstance(result, str) else result


def mqtt_end_to_end(pod: BenchPod, broker: Mosquitto, messages: int, *, name: str = "bmqtt",
                    rate: float = 0.0) -> dict[str, Any]:
    """``messages`` QoS 1 messages, back to back (``rate`` 0) or ``rate`` per second."""
    fn = pod.create_function(name, "python3", {"index.py": PY_STAMP}, quota=8)
    pod.invoke(fn, b"{}")
    tid = _trigger(pod, fn, "mqtt", {"Broker": broker.url, "Topic": "bench/+", "Qos": 1, "ClientId": name})
    _wait("the MQTT connection", lambda: (_status(pod, tid) or {}).get("Connected"), 30)
    time.sleep(0.2)
    pub = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"{name}pub")
    pub.max_inflight_messages_set(1000)
    pub.connect("127.0.0.1", broker.port)
    pub.loop_start()
    try:
        infos = []
        started = time.time()
        for n in range(messages):
            if rate:
                time.sleep(max(0.0, started + n / rate - time.time()))
            infos.append(pub.publish(f"bench/{n % 16}", json.dumps({"sent": time.time(), "n": n}), qos=1))
        for info in infos:
            info.wait_for_publish(30)
        done = _wait(f"{messages} invocations", lambda: (lambda r: r if len(r) >= messages else None)(
            _succeeded(pod, fn)), 300)
    finally:
        pub.disconnect()
        pub.loop_stop()
        _delete_trigger(pod, fn, tid)
    results = [_result(r) for r in done]
    delays = [(r["finished"] - r["sent"]) * 1000 for r in results if r.get("sent")]
    last = max(r["finished"] for r in results)
    return {"mqtt_messages": messages, "mqtt_msgs_per_s": round(messages / (last - started), 1),
            "mqtt_p50_ms": round(percentile(delays, 50), 1), "mqtt_p99_ms": round(percentile(delays, 99), 1)}


def schedule_delay(pod: BenchPod, fires: int) -> dict[str, Any]:
    fn = pod.create_function("bcron", "python3", {"index.py": PY_STAMP}, quota=2)
    pod.invoke(fn, b"{}")
    tid = _trigger(pod, fn, "cron", {"Schedule": "@every 1s"})
    try:
        done = _wait(f"{fires} scheduled invocations", lambda: (lambda r: r if len(r) >= fires else None)(
            _succeeded(pod, fn)), fires * 2 + 30)
    finally:
        _delete_trigger(pod, fn, tid)
    delays = []
    for record in done:
        due = datetime.fromisoformat(_result(record)["time"].replace("Z", "+00:00")).timestamp()
        enqueued = datetime.fromisoformat(record["EnqueuedAt"].replace("Z", "+00:00")).timestamp()
        delays.append((enqueued - due) * 1000)
    return {"schedule_fires": len(delays), "schedule_p50_ms": round(percentile(delays, 50), 1),
            "schedule_p99_ms": round(percentile(delays, 99), 1), "schedule_target_ms": 100}


def event_sources(pod: BenchPod, messages: int = 500, fires: int = 20, paced_rate: float = 50.0) -> dict[str, Any]:
    """Both figures, with a Mosquitto of its own for the run."""
    if shutil.which("mosquitto") is None:
        return {"skipped": "mosquitto is not installed (make install)"}
    with tempfile.TemporaryDirectory(prefix="efbench-mqtt-") as tmp:
        broker = Mosquitto(Path(tmp))
        broker.start()
        try:
            result = mqtt_end_to_end(pod, broker, messages)
            paced = mqtt_end_to_end(pod, broker, max(10, messages // 2), name="bmqttpaced", rate=paced_rate)
            result.update({"paced_rate": paced_rate, "mqtt_paced_p50_ms": paced["mqtt_p50_ms"],
                           "mqtt_paced_p99_ms": paced["mqtt_p99_ms"]})
        finally:
            broker.stop()
    result.update(schedule_delay(pod, fires))
    return result


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.event_sources", description=__doc__)
    p.add_argument("--messages", type=int, default=500, help="MQTT QoS 1 messages (at most 1000)")
    p.add_argument("--fires", type=int, default=20, help="due times of the @every 1s schedule")
    a = p.parse_args(argv)
    return run_standalone(lambda pod: event_sources(pod, min(a.messages, 1000), a.fires))


if __name__ == "__main__":
    raise SystemExit(main())

"""Event sources: MQTT QoS 1 messages end to end and a schedule's firing delay, on a real
Mosquitto (loopback, its own config) and the bench pod.

* ``mqtt_msgs_per_s``: QoS 1 messages published back to back on a trigger's topic, from the first
  publish to the last function finished; ``mqtt_p50_ms``/``mqtt_p99_ms``: published → function
  finished (the function stamps its finish time; one host clock) — in that burst mostly the wait
  behind the backlog; ``mqtt_paced_*``: the same delay with messages paced at ``paced_rate``/s;
* ``schedule_p99_ms`` (target ≤ 100 ms): an ``@every 1s`` schedule's due time → its event
  durably enqueued (the record's ``EnqueuedAt``), over ``schedule_fires`` due times;
* ``sync_beside_sources`` (target: unchanged, ±5 %): the warm sync path (c=64 req/s, c=1 p50) of a
  trivial function with no trigger, without the sources and with an ``@every 1s`` schedule and
  ``paced_rate`` QoS 1 MQTT messages/s on two other functions, in many short phases off and on in
  turn (each on phase against the off phases either side of it; the median of those ratios), with
  what the stream alone costs the pod (CPU seconds per second, no sync load).

``python -m bench.event_sources [--messages N] [--fires N]`` runs only this scenario on a pod of its own.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import statistics
import subprocess
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Sequence

import paho.mqtt.client as paho
import psutil
from paho.mqtt.enums import CallbackAPIVersion

from bench.mosquitto import Mosquitto
from bench.pod import ACCOUNT_HEADER, BenchError, BenchPod, Function, run_standalone
from bench.scenarios import HEADERS as INVOKE_HEADERS
from bench.scenarios import PY_TRIVIAL
from bench.stats import median, percentile
from bench.wrk import WrkResult, run_wrk
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


class PacedPublisher:
    """``count`` QoS 1 messages at ``rate`` per second: ``mosquitto_pub --repeat`` (C, Debian's
    mosquitto-clients), which paces them itself, one process and one thread.

    The load generator must not take the pod's CPU: a paho client here (its network thread, a
    Python PUBLISH and PUBACK per message) cost the sync path ~3 % on its own, with no trigger
    subscribed, which measured the bench rather than the pod; lines fed to ``mosquitto_pub -l``
    from a pacing thread still woke two processes and three threads per message. The messages carry
    no send time: this stream's figure is the sync path beside it, not its latency.
    """

    PAYLOAD = '{"sent": null}'

    def __init__(self, broker: Mosquitto, topic: str, rate: float, client_id: str, count: int) -> None:
        binary = shutil.which("mosquitto_pub")
        if binary is None:
            raise BenchError("mosquitto_pub is not installed (make install: mosquitto-clients)")
        self.count = count
        self._proc = subprocess.Popen([binary, "-h", "127.0.0.1", "-p", str(broker.port), "-t", topic, "-q", "1",
                                       "-i", client_id, "-m", self.PAYLOAD, "--repeat", str(count),
                                       "--repeat-delay", f"{1 / rate:.6f}"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def stop(self) -> int:
        """Wait for the last message; the number the broker took (mosquitto_pub exits once each QoS 1
        message is acknowledged)."""
        try:
            _, err = self._proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.communicate()
            raise BenchError("mosquitto_pub did not finish its messages within 30 s") from None
        if self._proc.returncode != 0:
            raise BenchError(f"mosquitto_pub exited with {self._proc.returncode}: {err.decode(errors='replace')[-300:]}")
        return self.count

    def kill(self) -> None:
        """Stop at once (the run failed): what it sent is not counted."""
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.communicate()


def _pod_processes(pod: BenchPod) -> list[psutil.Process]:
    procs = []
    for pid in [*pod.daemon_pids().values(), *pod._descendants()]:
        with contextlib.suppress(psutil.Error):
            procs.append(psutil.Process(pid))
    return procs


def _cpu_seconds(procs: list[psutil.Process]) -> float:
    total = 0.0
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            times = proc.cpu_times()
            total += times.user + times.system
    return total


def _drained(pod: BenchPod, trigger_id: str, sent: int) -> bool:
    status = _status(pod, trigger_id) or {}
    if status.get("Received", 0) < sent:
        return False
    depth = pod.get_json("controller", "/v1/event-queue")
    return depth.get("Total") == 0 and depth.get("InFlight") == 0


def sync_beside_sources(pod: BenchPod, broker: Mosquitto, *, seconds: float = 2.0, pairs: int = 12,
                        rate: float = 50.0) -> dict[str, Any]:
    """The warm sync path with and without a schedule and a paced MQTT stream beside it.

    Short phases, many of them, off and on in turn: on this VM the same c=64 run swings by 10-15 %
    from one second to the next (the host), so a few long phases measured the host's drift rather
    than the stream. Each on phase is compared with the mean of the off phases either side of it,
    and the figure is the median of those ratios. The MQTT trigger stays subscribed throughout
    (an idle subscription costs a keepalive every 30 s); an on phase starts the publisher and
    creates the schedule, and the next off phase starts once the stream's backlog is drained.
    """
    warm = pod.create_function("bsyncw", "python3", {"index.py": PY_TRIVIAL}, quota=32)
    cron_fn = pod.create_function("bsyncron", "python3", {"index.py": PY_STAMP}, quota=1)
    mqtt_fn = pod.create_function("bsyncmq", "python3", {"index.py": PY_STAMP}, quota=4)
    for fn in (warm, cron_fn, mqtt_fn):
        pod.invoke(fn, b"{}")
    controller = psutil.Process(pod.daemon_pids()["controller"])

    def wrk(connections: int, duration: float) -> tuple[WrkResult, float]:
        """The run and the controller's CPU seconds over it."""
        before = _cpu_seconds([controller])
        result = run_wrk(pod.controller_url, [warm.path], connections=connections, seconds=duration,
                         headers=INVOKE_HEADERS)
        if result.errors:
            raise BenchError(f"wrk saw {result.errors} errors against {warm.name} (c={connections})")
        return result, _cpu_seconds([controller]) - before

    mqtt_id = _trigger(pod, mqtt_fn, "mqtt", {"Broker": broker.url, "Topic": "paced", "Qos": 1, "ClientId": "bsyncmq"})
    _wait("the MQTT connection", lambda: (_status(pod, mqtt_id) or {}).get("Connected"), 30)
    sent_total = 0
    try:
        # What the stream and the schedule cost on their own: CPU of the pod's processes.
        cron_id = _trigger(pod, cron_fn, "cron", {"Schedule": "@every 1s"})
        alone = max(2.0, seconds)
        publisher = PacedPublisher(broker, "paced", rate, "bsyncpub0", round(rate * (1.0 + alone)))
        time.sleep(1.0)
        procs = _pod_processes(pod)
        mosquitto = [psutil.Process(broker.proc.pid)] if broker.proc is not None else []
        groups = {"pod": procs, "controller": [controller], "broker": mosquitto}
        before, t0 = {k: _cpu_seconds(v) for k, v in groups.items()}, time.monotonic()
        time.sleep(alone)
        elapsed = time.monotonic() - t0
        stream = {f"{k}_cpu_s_per_s": round((_cpu_seconds(v) - before[k]) / elapsed, 3) for k, v in groups.items()}
        sent_total += publisher.stop()
        _delete_trigger(pod, cron_fn, cron_id)
        _wait("the stream's backlog", lambda: _drained(pod, mqtt_id, sent_total), 120)

        wrk(64, seconds)  # every sandbox c=64 needs, warm before measuring
        phases: dict[str, list[dict[str, Any]]] = {"off": [], "on": []}
        for n in range(2 * pairs + 1):
            on = n % 2 == 1
            if on:
                cron_id = _trigger(pod, cron_fn, "cron", {"Schedule": "@every 1s"})
                # For the whole phase: 0.3 s of lead, then the c=64 run and the c=1 run.
                publisher = PacedPublisher(broker, "paced", rate, f"bsyncpub{n}", round(rate * (0.3 + 2 * seconds)))
                time.sleep(0.3)  # the stream under way
            try:
                c64, cpu64 = wrk(64, seconds)
                c1, _ = wrk(1, seconds)
            except BaseException:
                if on:
                    publisher.kill()
                    _delete_trigger(pod, cron_fn, cron_id)
                raise
            else:
                if on:
                    sent = publisher.stop()
                    sent_total += sent
                    _delete_trigger(pod, cron_fn, cron_id)
                    # The next phase starts with nothing of the stream left in the queue.
                    _wait("the stream's backlog", lambda: _drained(pod, mqtt_id, sent_total), 120)
            row = {"c64_rps": c64.rps, "c64_cpu_us_per_req": round(cpu64 / max(1, c64.requests) * 1e6, 1),
                   "c1_p50_ms": c1.p50_ms}
            if on:
                row["stream_sent"] = sent
            phases["on" if on else "off"].append(row)
    finally:
        _delete_trigger(pod, mqtt_fn, mqtt_id)

    def neighbours(key: str) -> list[float]:
        """Each on phase against the mean of the off phases either side of it: like with like."""
        off = phases["off"]
        return [round(row[key] / ((off[i][key] + off[i + 1][key]) / 2), 3) for i, row in enumerate(phases["on"])]

    out: dict[str, Any] = {"seconds": seconds, "pairs": pairs, "paced_rate": rate, "phases": phases, "stream": stream}
    for key in ("c64_rps", "c64_cpu_us_per_req", "c1_p50_ms"):
        out[f"{key}_off"] = round(median(p[key] for p in phases["off"]), 3)
        out[f"{key}_on"] = round(median(p[key] for p in phases["on"]), 3)
    for key, name in (("c64_rps", "ratio_c64_rps"), ("c1_p50_ms", "ratio_c1_p50")):
        ratios = neighbours(key)
        out[f"{name}_neighbours"] = ratios
        out[name] = round(median(ratios), 3)
        out[f"{name}_quartiles"] = [percentile(ratios, 25), percentile(ratios, 75)]
        # The host's speed swings from one second to the next: the mean and its standard error say
        # how far the median can be trusted.
        out[f"{name}_mean"] = round(sum(ratios) / len(ratios), 3)
        out[f"{name}_se"] = round(statistics.stdev(ratios) / len(ratios) ** 0.5, 3) if len(ratios) > 1 else None
    return out


def event_sources(pod: BenchPod, messages: int = 500, fires: int = 20, paced_rate: float = 50.0, *,
                  sync_seconds: float = 1.0, sync_pairs: int = 40) -> dict[str, Any]:
    """Every figure, with a Mosquitto of its own for the run."""
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
            result["sync_beside_sources"] = sync_beside_sources(pod, broker, seconds=sync_seconds, pairs=sync_pairs,
                                                                rate=paced_rate)
        finally:
            broker.stop()
    result.update(schedule_delay(pod, fires))
    return result


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.event_sources", description=__doc__)
    p.add_argument("--messages", type=int, default=500, help="MQTT QoS 1 messages (at most 1000)")
    p.add_argument("--fires", type=int, default=20, help="due times of the @every 1s schedule")
    p.add_argument("--only-sync", action="store_true", help="only the warm sync path beside the sources")
    p.add_argument("--seconds", type=float, default=1.0, help="each wrk run of the sync path")
    p.add_argument("--pairs", type=int, default=40, help="with/without pairs of the sync path")
    a = p.parse_args(argv)
    if a.only_sync:
        return run_standalone(lambda pod: _with_broker(
            lambda broker: sync_beside_sources(pod, broker, seconds=a.seconds, pairs=a.pairs)), sandboxes=8)
    return run_standalone(lambda pod: event_sources(pod, min(a.messages, 1000), a.fires, sync_seconds=a.seconds,
                                                    sync_pairs=a.pairs), sandboxes=8)


def _with_broker(measure: Any) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="efbench-mqtt-") as tmp:
        broker = Mosquitto(Path(tmp))
        broker.start()
        try:
            return dict(measure(broker))
        finally:
            broker.stop()


if __name__ == "__main__":
    raise SystemExit(main())

"""Micro-benchmark of the transport bridge's own ceiling: messages/s drained from the broker through
``transport.bridge.Bridge`` into a no-op hand-off, next to bare paho QoS 1 subscribers, in one run.

Each contender gets the same backlog: it registers its persistent session (a shared subscription to
``devices/+/telemetry``) and disconnects, a raw-socket publisher queues ``--count`` QoS 1 messages
from ``--devices`` devices into that session, then the contender connects and is timed from its
CONNECT until the last message is taken (the bridge: handed off; its PUBACKs are queued by then).
Measuring a drain keeps the publishers out of the way: on a small machine they would compete with
the subscriber for the CPU. Everything runs against a private Mosquitto on 127.0.0.1
(tests/brokers.py), in this process.

Contenders: bare paho MQTT 5 and 3.1.1 subscribers (automatic acks, paho's own loop), the bridge
over MQTT 5 without its paho fast paths, bare paho MQTT 5 with the bridge's fast PUBLISH decode,
the bridge over MQTT 5 with its fast paths (the default), and the bridge over MQTT 3.1.1. The
broker runs with ``max_inflight_messages 0``: Mosquitto's default of 20 would cap 3.1.1 batches.

    .venv/bin/python bench/bridge_throughput.py [--count 100000] [--devices 100] [--rounds 1]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import secrets
import socket
import statistics
import struct
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "fluxiot.settings")
os.environ.setdefault("SECRET_KEY", secrets.token_urlsafe(50))
os.environ.setdefault("FLUXIOT_VAR_DIR", "/tmp/fluxiot-bench-bridge")

import paho.mqtt.client as mqtt  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402
from paho.mqtt.packettypes import PacketTypes  # noqa: E402
from paho.mqtt.properties import Properties  # noqa: E402

from tests.brokers import mosquitto  # noqa: E402
from transport.bridge import Bridge, _install_fast_publish_decode  # noqa: E402

TIMEOUT = 300.0


# --- Backlog --------------------------------------------------------------------------------------------


def _remaining_length(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def publish_backlog(host: str, port: int, count: int, devices: int) -> float:
    """Publish ``count`` QoS 1 telemetry messages over a raw MQTT 3.1.1 socket (far faster than a
    Python client); returns messages/s once all PUBACKs are in."""
    client_id = f"bench-pub-{secrets.token_hex(4)}".encode()
    body = b"\x00\x04MQTT\x04\x02\x00\x3c" + struct.pack(">H", len(client_id)) + client_id
    sock = socket.create_connection((host, port))
    sock.sendall(b"\x10" + _remaining_length(len(body)) + body)
    connack = sock.recv(4)
    assert connack[:2] == b"\x20\x02" and connack[3] == 0, connack
    acked = [0]
    window = threading.Semaphore(20000)

    def read_acks() -> None:
        buffer = b""
        while acked[0] < count:
            chunk = sock.recv(65536)
            if not chunk:
                return
            buffer += chunk
            n = len(buffer) // 4  # PUBACKs only: 4 bytes each
            buffer = buffer[n * 4 :]
            acked[0] += n
            for _ in range(n):
                window.release()

    reader = threading.Thread(target=read_acks, daemon=True)
    started = time.perf_counter()
    reader.start()
    base_ms = int(time.time() * 1000)
    chunk: list[bytes] = []
    for i in range(count):
        topic = f"devices/bench-{i % devices:05d}/telemetry".encode()
        payload = json.dumps({"temperature": 20 + i % 13 / 10, "humidity": 40 + i % 7, "ts": base_ms + i}).encode()
        mid = i % 65535 + 1
        variable = struct.pack(">H", len(topic)) + topic + struct.pack(">H", mid) + payload
        chunk.append(b"\x32" + _remaining_length(len(variable)) + variable)
        window.acquire()
        if len(chunk) >= 500:
            sock.sendall(b"".join(chunk))
            chunk.clear()
    if chunk:
        sock.sendall(b"".join(chunk))
    reader.join(TIMEOUT)
    elapsed = time.perf_counter() - started
    sock.sendall(b"\xe0\x00")
    sock.close()
    assert acked[0] == count, f"only {acked[0]} of {count} publishes acknowledged"
    return count / elapsed


# --- Contenders ----------------------------------------------------------------------------------------


def bare(broker: Any, count: int, devices: int, protocol: int, fast_decode: bool = False) -> float:
    """A bare paho subscriber: on_message counts, paho acknowledges. ``fast_decode``: with the
    bridge's MQTT 5 PUBLISH decode installed (process-wide from then on)."""
    if fast_decode:
        assert _install_fast_publish_decode()
    client_id, group = f"bench-bare{protocol}-{secrets.token_hex(3)}", f"bare{secrets.token_hex(3)}"
    topic = f"$share/{group}/devices/+/telemetry"

    def make() -> mqtt.Client:
        if protocol == 5:
            client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        else:
            client = mqtt.Client(
                CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311, clean_session=False
            )
        return client

    def connect(client: mqtt.Client) -> None:
        if protocol == 5:
            properties = Properties(PacketTypes.CONNECT)
            properties.SessionExpiryInterval = 3600
            properties.ReceiveMaximum = 20000
            client.connect(broker.host, broker.port, clean_start=False, properties=properties)
        else:
            client.connect(broker.host, broker.port)

    client = make()
    subscribed = threading.Event()
    client.on_subscribe = lambda *args: subscribed.set()
    connect(client)
    client.loop_start()
    client.subscribe(topic, qos=1)
    assert subscribed.wait(10), "no SUBACK"
    client.disconnect()
    client.loop_stop()

    publish_backlog(broker.host, broker.port, count, devices)

    client = make()
    got = [0]
    done = threading.Event()

    def on_message(client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        got[0] += 1
        if got[0] >= count:
            done.set()

    client.on_message = on_message
    started = time.perf_counter()
    connect(client)
    client.loop_start()
    finished = done.wait(TIMEOUT)
    elapsed = time.perf_counter() - started
    client.disconnect()
    client.loop_stop()
    assert finished, f"bare subscriber got {got[0]} of {count}"
    return count / elapsed


def bridge(broker: Any, count: int, devices: int, protocol: str, fast_paths: bool) -> float:
    """The bridge into a no-op hand-off, batches of 1,000 / 50 ms, receive maximum 20,000."""
    client_id, group = f"bench-bridge-{secrets.token_hex(3)}", f"bridge{secrets.token_hex(3)}"
    done = threading.Event()
    got = [0]

    def handoff(items: list[list[Any]]) -> None:
        got[0] += len(items)
        if got[0] >= count:
            done.set()

    def make() -> Bridge:
        return Bridge(
            host=broker.host,
            port=broker.port,
            client_id=client_id,
            share_group=group,
            topics=("devices/+/telemetry",),
            handoff=handoff,
            protocol=protocol,
            batch_size=1000,
            batch_ms=50,
            receive_maximum=20000,
            fast_paths=fast_paths,
        )

    first = make()
    first.start()
    assert first.wait_ready(10), "bridge did not subscribe"
    first.stop()

    publish_backlog(broker.host, broker.port, count, devices)

    second = make()
    started = time.perf_counter()
    second.start()
    finished = done.wait(TIMEOUT)
    elapsed = time.perf_counter() - started
    second.stop()
    assert finished, f"bridge handed off {got[0]} of {count}"
    return count / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=100_000, help="backlog per contender")
    parser.add_argument("--devices", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=1, help="runs per contender (the median is printed)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    contenders: list[tuple[str, Callable[[Any], float]]] = [
        ("bare paho, MQTT 5, auto acks", lambda b: bare(b, args.count, args.devices, 5)),
        ("bare paho, MQTT 3.1.1, auto acks", lambda b: bare(b, args.count, args.devices, 4)),
        # paho as is first: the fast MQTT 5 decode, once installed, stays for the process.
        ("bridge, MQTT 5, paho as is", lambda b: bridge(b, args.count, args.devices, "5", False)),
        ("bare paho, MQTT 5, fast decode", lambda b: bare(b, args.count, args.devices, 5, fast_decode=True)),
        ("bridge, MQTT 5, fast paths (default)", lambda b: bridge(b, args.count, args.devices, "5", True)),
        ("bridge, MQTT 3.1.1, fast paths", lambda b: bridge(b, args.count, args.devices, "3.1.1", True)),
    ]
    print(f"backlog of {args.count:,} QoS 1 messages per contender, {args.devices} devices, {os.cpu_count()} CPUs")
    with mosquitto(dynsec=False, max_queued_messages=0, max_inflight_messages=0) as broker:
        rate = publish_backlog(broker.host, broker.port, 10_000, args.devices)  # warm up; nobody subscribed
        print(f"{'raw publisher (backlog fill)':40s} {rate:>10,.0f} msg/s")
        for name, run in contenders:
            rates = [run(broker) for _ in range(args.rounds)]
            spread = f"  (min {min(rates):,.0f}, max {max(rates):,.0f})" if len(rates) > 1 else ""
            print(f"{name:40s} {statistics.median(rates):>10,.0f} msg/s{spread}", flush=True)


if __name__ == "__main__":
    main()

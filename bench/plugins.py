"""Wasm plugin host benchmark: rules.plugins.host.run_plugin with pooled instances, in one process.

Figures:

1. Batches: µs per message for batches of 1, 10, 100 and 1000 messages per call through the frame
   decoder (sdk/plugins/examples/frame_decoder.c: a 12-byte frame in, a 5-key telemetry object
   out), the whole call: JSON and base64 encoding, the wasm calls, JSON decoding and checking of
   the results. Warm pool; p50 of the calls, per message. Target: ≤ 20 µs per message (batched: a
   call has a fixed cost of a few tens of µs, four calls into the module and the JSON around them,
   which one message per call pays alone). The same for the unit converter (a JSON payload in,
   converted telemetry out) at 100 per call.
2. Single message: the full round trip of one message (p50 / p99 / max of the calls).
3. Concurrency: 4 threads calling with batches of 100 through one pool: messages per second.
4. Stopping an endless loop (sdk/plugins/examples/endless_loop.wat): the time run_plugin takes to
   return (the interrupt, and a fresh instance each time since the failed one is discarded), over
   ``--loops`` runs; the fuel (PLUGIN_FUEL) and the deadline (PLUGIN_TIMEOUT_MS) both stop such a
   loop, whichever comes first. Target: max ≤ 50 ms.

The limits are the defaults (Limits()), not the settings. The C examples are built with
sdk/plugins/build.sh (clang and lld) into a temporary directory.

    .venv/bin/python bench/plugins.py [--seconds 1.5] [--loops 20]
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import wasmtime  # noqa: E402

from rules.plugins import host  # noqa: E402

SDK = ROOT / "sdk" / "plugins"
LIMITS = host.Limits()
BATCH_TARGET_US = 20.0
STOP_TARGET_MS = 50.0

logger = logging.getLogger("bench.plugins")


def build_examples(out: Path) -> dict[str, bytes]:
    subprocess.run(["bash", str(SDK / "build.sh"), "-o", str(out)], check=True, capture_output=True, text=True)
    modules = {path.stem: path.read_bytes() for path in out.glob("*.wasm")}
    modules["endless_loop"] = wasmtime.wat2wasm((SDK / "examples" / "endless_loop.wat").read_text())
    return modules


def frame(ts: int, temperature: int, humidity: int, battery: int, status: int) -> bytes:
    body = struct.pack(">IhHHB", ts, temperature, humidity, battery, status)
    checksum = 0
    for byte in body:
        checksum ^= byte
    return body + bytes([checksum])


def frames(count: int) -> list[dict[str, Any]]:
    return [
        {
            "device": f"dev-{i:05d}",
            "topic": f"devices/dev-{i:05d}/telemetry",
            "payload": frame(1_700_000_000 + i, 2150 + i % 100, 4500 + i % 50, 3000 - i % 200, i % 16),
        }
        for i in range(count)
    ]


def readings(count: int) -> list[dict[str, Any]]:
    return [
        {
            "device": f"dev-{i:05d}",
            "topic": f"devices/dev-{i:05d}/telemetry",
            "payload": f'{{"temperature_f": {70 + i % 20}.5, "wind_mph": {i % 30}, "door_open": false}}'.encode(),
        }
        for i in range(count)
    ]


def timed_calls(run: Callable[[], list[Any]], seconds: float, min_calls: int = 20) -> list[float]:
    """Seconds per call, calling for about ``seconds`` (at least ``min_calls`` times)."""
    for _ in range(5):  # warm-up
        run()
    times: list[float] = []
    deadline = time.perf_counter() + seconds
    while len(times) < min_calls or time.perf_counter() < deadline:
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return times


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def call(plugin_id: int, module: bytes, messages: list[dict[str, Any]], config: dict[str, Any]) -> list[Any]:
    return host.run_plugin(
        plugin_id,
        hashlib.sha256(module).hexdigest(),
        module,
        config,
        messages,
        name=f"bench-{plugin_id}",
        limits=LIMITS,
    )


def figure_batches(modules: dict[str, bytes], seconds: float) -> list[str]:
    lines = ["Batches (frame decoder), µs per message (p50 of the calls; mean in brackets):"]
    decoder = modules["frame_decoder"]
    for size in (1, 10, 100, 1000):
        batch = frames(size)
        results = call(1, decoder, batch, {})
        assert len(results) == size and all(isinstance(r, dict) for r in results), results[:3]
        times = timed_calls(lambda batch=batch: call(1, decoder, batch, {}), seconds)
        p50 = statistics.median(times) / size * 1e6
        mean = statistics.fmean(times) / size * 1e6
        verdict = "ok" if p50 <= BATCH_TARGET_US else "over"
        lines.append(
            f"  {size:>5} per call: {p50:7.2f} µs/message  [{mean:7.2f}]  {len(times):>6} calls  "
            f"(target ≤ {BATCH_TARGET_US:.0f} µs: {verdict})"
        )
    lines.append("  (one message per call pays the call's fixed cost alone: batch for throughput)")
    converter = modules["unit_convert"]
    batch = readings(100)
    results = call(2, converter, batch, {})
    assert all(isinstance(r, dict) for r in results), results[:3]
    times = timed_calls(lambda: call(2, converter, batch, {}), seconds)
    lines.append(f"  unit converter, 100 per call: {statistics.median(times) / 100 * 1e6:7.2f} µs/message")
    return lines


def figure_single(modules: dict[str, bytes], seconds: float) -> list[str]:
    decoder = modules["frame_decoder"]
    batch = frames(1)
    times = timed_calls(lambda: call(3, decoder, batch, {}), seconds)
    micro = [t * 1e6 for t in times]
    return [
        "Single message, full round trip (frame decoder):",
        f"  p50 {statistics.median(micro):.1f} µs, p99 {percentile(micro, 0.99):.1f} µs, max {max(micro):.1f} µs "
        f"over {len(micro)} calls",
    ]


def figure_threads(modules: dict[str, bytes], seconds: float, threads: int = 4) -> list[str]:
    decoder = modules["frame_decoder"]
    batch = frames(100)
    call(4, decoder, batch, {})
    counts = [0] * threads
    stop = time.perf_counter() + seconds

    def work(index: int) -> None:
        while time.perf_counter() < stop:
            call(4, decoder, batch, {})
            counts[index] += len(batch)

    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    started = time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    elapsed = time.perf_counter() - started
    stats = host.pool_stats(4) or {}
    return [
        f"Concurrency: {threads} threads, batches of 100, one pool:",
        f"  {sum(counts) / elapsed:,.0f} messages/s in total ({stats.get('instances_created')} instances created)",
    ]


def figure_endless_loop(modules: dict[str, bytes], runs: int) -> list[str]:
    module = modules["endless_loop"]
    batch = frames(1)
    times: list[float] = []
    reasons: dict[str, int] = {}
    for _ in range(runs):
        started = time.perf_counter()
        [error] = call(5, module, batch, {})
        times.append((time.perf_counter() - started) * 1000)
        assert isinstance(error, host.PluginError), error
        reasons[error.reason] = reasons.get(error.reason, 0) + 1
    unfuelled = host.Limits(fuel=10**12)
    deadline_only: list[float] = []
    for _ in range(runs):
        started = time.perf_counter()
        [error] = host.run_plugin(6, hashlib.sha256(module).hexdigest(), module, {}, batch, limits=unfuelled)
        deadline_only.append((time.perf_counter() - started) * 1000)
        assert isinstance(error, host.PluginError) and error.reason == "timeout", error
    verdict = "ok" if max(times + deadline_only) <= STOP_TARGET_MS else "over"
    stopped_by = ", ".join(f"{reason} {count}" for reason, count in sorted(reasons.items()))
    return [
        f"Endless loop, time until run_plugin returns ({runs} runs each):",
        f"  default limits (fuel {LIMITS.fuel:,}, timeout {LIMITS.timeout_ms} ms): max {max(times):.1f} ms, "
        f"median {statistics.median(times):.1f} ms, min {min(times):.1f} ms (stopped by: {stopped_by})",
        f"  deadline alone (fuel unlimited): max {max(deadline_only):.1f} ms, "
        f"median {statistics.median(deadline_only):.1f} ms, min {min(deadline_only):.1f} ms",
        f"  target ≤ {STOP_TARGET_MS:.0f} ms: {verdict}",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.5, help="time per batch figure")
    parser.add_argument("--loops", type=int, default=20, help="endless-loop runs")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("rules.plugins").setLevel(logging.ERROR)  # the endless loop's failures

    with tempfile.TemporaryDirectory(prefix="fluxiot-bench-plugins-") as tmp:
        logger.info("building the examples")
        modules = build_examples(Path(tmp))
    lines: list[str] = []
    lines += figure_batches(modules, args.seconds)
    lines += figure_single(modules, args.seconds)
    lines += figure_threads(modules, args.seconds)
    lines += figure_endless_loop(modules, args.loops)
    print("\n".join(lines))


if __name__ == "__main__":
    main()

"""The WebAssembly plugin host (rules.plugins.host) with real modules: the SDK's C examples, compiled
from source with clang and lld, and WAT modules for the failure paths (compiled with wat2wasm)."""

import base64
import hashlib
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import wasmtime
from prometheus_client import REGISTRY

from rules.plugins import host
from rules.plugins.host import Limits, PluginError, forget, pool_stats, run_plugin, validate_module
from tests.wasm import sensor_frame

ROOT = Path(__file__).resolve().parents[2]
SDK = ROOT / "sdk" / "plugins"
LIMITS = Limits()  # the defaults, whatever the settings say
# Fuel for minutes: the deadline stops loops (with the default fuel, a tight loop may run out of
# fuel about when the deadline comes, and either may stop it first).
UNFUELLED = Limits(fuel=10**12)


@pytest.fixture(scope="session")
def examples(plugin_examples):
    """The SDK's C examples (tests.wasm.py builds them): {name: wasm bytes}."""
    return plugin_examples


@pytest.fixture(autouse=True)
def fresh_pools():
    host.forget_all()
    yield
    host.forget_all()


def sha(module: bytes) -> str:
    return hashlib.sha256(module).hexdigest()


def call(plugin_id, module, messages, config=None, limits=LIMITS, name=None):
    return run_plugin(plugin_id, sha(module), module, config or {}, messages, name=name, limits=limits)


def message(payload: bytes, device="dev-1"):
    return {"device": device, "topic": f"devices/{device}/telemetry", "payload": payload}


frame = sensor_frame


def sample(name, **labels):
    return REGISTRY.get_sample_value(name, labels) or 0.0


# --- WAT test modules ---------------------------------------------------------------------------
#
# A plugin of the ABI with a bump allocator that frees the latest block (the host frees the output,
# then the input), and a dealloc that logs "free <len>" so the tests can count what the host frees.
# `process` answers {"results":[{"x":1}]} (one message) for a short input; for an input over 300
# bytes (a message with a long payload) it runs `bad` instead: so a failing call and a working one
# can go to the same module, and the working one shows the failed instance was replaced.

OK_OUTPUT = b'{"results":[{"x":1}]}'
DATA = {
    16: OK_OUTPUT,
    64: b"\xff\xfe not utf-8",
    96: b"not json",
    128: b'{"results":[]}',
    160: b'{"results":[{"error":"no good"}]}',
    208: b'{"results":[5]}',
    240: b"free",
    256: b"\xc3\xa9t\xc3\xa9" * 1100,  # 5,500 bytes of UTF-8, over the 4,096 a log message keeps
}


def packed(ptr: int, length: int) -> str:
    return f"(i64.const {(ptr << 32) | length})"


def wat_string(data: bytes) -> str:
    return "".join(f"\\{byte:02x}" for byte in data)


def plugin_wat(bad: str = "", *, memory: int = 1, imports: str = "", exports: str = "", good: str = "") -> bytes:
    data = "\n".join(f'(data (i32.const {ptr}) "{wat_string(text)}")' for ptr, text in DATA.items())
    good = good or packed(16, len(OK_OUTPUT))
    bad = bad or good
    return wasmtime.wat2wasm(f"""
(module
  (import "env" "log" (func $log (param i32 i32 i32)))
  {imports}
  (memory (export "memory") {memory})
  (global $top (mut i32) (i32.const 8192))
  (global $base i32 (i32.const 8192))
  {data}
  (func (export "alloc") (param $n i32) (result i32) (local $p i32)
    (local.set $p (global.get $top))
    (global.set $top (i32.add (global.get $top) (local.get $n)))
    (if (i32.gt_u (global.get $top) (i32.mul (memory.size) (i32.const 65536)))
      (then
        (if (i32.eq (memory.grow (i32.add (i32.shr_u (i32.sub (global.get $top)
                                                              (i32.mul (memory.size) (i32.const 65536)))
                                                     (i32.const 16))
                                          (i32.const 1)))
                    (i32.const -1))
          (then (global.set $top (local.get $p)) (return (i32.const 0))))))
    (local.get $p))
  (func (export "dealloc") (param $p i32) (param $n i32)
    (call $log (i32.const 2) (i32.const 240) (i32.const 4))
    (if (i32.eq (i32.add (local.get $p) (local.get $n)) (global.get $top))
      (then (global.set $top (local.get $p)))))
  (func (export "live_bytes") (result i32) (i32.sub (global.get $top) (global.get $base)))
  (func (export "process") (param $p i32) (param $n i32) (result i64)
    (if (i32.gt_u (local.get $n) (i32.const 300)) (then (return (block (result i64) {bad}))))
    {good})
  {exports})
""")


SHORT = [message(b"x")]  # input under 300 bytes: the module's good path
LONG = [message(b"y" * 400)]  # over 300 bytes: its bad path

FAILURES = {
    # name: (bad path, reason, detail fragment)
    "endless loop": ("(loop $l (br $l)) (i64.const 0)", "timeout", "interrupted"),
    "memory grab": (
        "(loop $l (br_if $l (i32.ne (memory.grow (i32.const 1)) (i32.const -1)))) unreachable",
        "memory",
        "16777216",
    ),
    "trap": ("unreachable", "trap", "unreachable"),
    "division by zero": (
        "(drop (i32.div_u (i32.const 1) (i32.sub (local.get $n) (local.get $n)))) (i64.const 0)",
        "trap",
        "divide by zero",
    ),
    "log pointer out of bounds": (
        f"(call $log (i32.const 2) (i32.const 65000) (i32.const 1000)) {packed(16, len(OK_OUTPUT))}",
        "log",
        "outside the memory",
    ),
    "negative log length": (
        f"(call $log (i32.const 2) (i32.const 16) (i32.const -1)) {packed(16, len(OK_OUTPUT))}",
        "log",
        "outside the memory",
    ),
    "not json": (packed(96, 8), "bad_output", "not JSON"),
    "wrong result count": (packed(128, 14), "bad_output", "0 results for 2 messages"),
    "no output": ("(i64.const 0)", "bad_output", "no output"),
    "output outside memory": (packed(60000, 10000), "abi", "outside the memory"),
}


@pytest.mark.parametrize("case", FAILURES)
def test_a_failing_call_fails_with_its_reason_and_the_next_call_works(case):
    bad, reason, detail = FAILURES[case]
    module = plugin_wat(bad)
    assert validate_module(module) == []
    assert call(1, module, SHORT) == [{"x": 1}]
    first = pool_stats(1)["idle"][0]["serial"]
    failures = sample("fluxiot_plugin_failures_total", plugin="1", reason=reason)

    started = time.monotonic()
    results = call(1, module, LONG + LONG, limits=UNFUELLED)
    assert time.monotonic() - started < 1.0
    assert len(results) == 2 and results[0] is results[1]  # one error for the whole batch
    error = results[0]
    assert isinstance(error, PluginError)
    assert (error.reason, case) == (reason, case)
    assert detail in error.detail
    assert sample("fluxiot_plugin_failures_total", plugin="1", reason=reason) == failures + 1

    # The failed instance was discarded: the next call gets a new one and works.
    assert pool_stats(1)["idle"] == []
    assert call(1, module, SHORT) == [{"x": 1}]
    stats = pool_stats(1)
    assert stats["idle"][0]["serial"] != first
    assert stats["instances_created"] == 2


def test_fuel_runs_out_before_a_long_deadline():
    module = plugin_wat("(loop $l (br $l)) (i64.const 0)")
    started = time.monotonic()
    [error] = call(2, module, LONG, limits=Limits(fuel=1_000_000, timeout_ms=10_000))
    assert time.monotonic() - started < 1.0
    assert error.reason == "fuel"
    assert call(2, module, SHORT) == [{"x": 1}]


def test_an_endless_loop_is_stopped_by_the_deadline():
    module = plugin_wat("(loop $l (br $l)) (i64.const 0)")
    call(3, module, SHORT)  # compiled and instantiated
    times = []
    for _ in range(3):
        started = time.monotonic()
        [error] = call(3, module, LONG, limits=UNFUELLED)
        times.append(time.monotonic() - started)
        assert error.reason == "timeout"
    assert max(times) < 1.0  # the target (PLUGIN_TIMEOUT_MS, 50 ms) is measured by bench/plugins.py
    assert min(times) > 0.02


def test_an_oversize_output_fails_and_both_buffers_are_freed(caplog):
    module = plugin_wat(packed(0, 1_572_864), memory=32)  # 1.5 MiB of output, over the 1 MiB cap
    caplog.set_level(logging.INFO, logger="rules.plugins.big")
    [error] = call(4, module, LONG, name="big")
    assert error.reason == "output_too_large"
    assert "1572864 bytes" in error.detail
    assert [r.message for r in caplog.records if r.name == "rules.plugins.big"] == ["free", "free"]
    assert call(4, module, SHORT, limits=Limits(max_output_bytes=len(OK_OUTPUT))) == [{"x": 1}]
    [error] = call(4, module, SHORT, limits=Limits(max_output_bytes=len(OK_OUTPUT) - 1))
    assert error.reason == "output_too_large"


@pytest.mark.parametrize(
    ("bad", "frees"),
    [
        (packed(16, len(OK_OUTPUT)), 2),  # success: the output, then the input
        (packed(96, 8), 2),  # not JSON
        (packed(128, 14), 2),  # wrong count
        (packed(60000, 10000), 1),  # the output is outside the memory: only the input is freed
    ],
)
def test_the_host_frees_what_it_allocates(bad, frees, caplog):
    module = plugin_wat(bad)
    caplog.set_level(logging.INFO, logger="rules.plugins.frees")
    call(5, module, LONG, name="frees")
    assert [r.message for r in caplog.records if r.name == "rules.plugins.frees"] == ["free"] * frees


def test_no_memory_for_the_input():
    module = plugin_wat()
    [error] = call(6, module, [message(b"z" * 2_000_000)], limits=Limits(memory_bytes=1024 * 1024))
    assert error.reason == "memory"
    assert "alloc(" in error.detail


def test_per_message_errors_and_bad_results():
    rejected = plugin_wat(packed(160, len(DATA[160])))
    [error] = call(7, rejected, LONG, name="rejecter")
    assert (error.reason, error.detail) == ("rejected", "no good")
    assert call(7, rejected, SHORT) == [{"x": 1}]
    assert pool_stats(7)["instances_created"] == 1  # a rejected message is no failure of the instance

    not_telemetry = plugin_wat(packed(208, len(DATA[208])))
    [error] = call(8, not_telemetry, LONG)
    assert error.reason == "bad_output"
    assert "result 0" in error.detail


def test_env_log_levels_utf8_and_caps(caplog):
    logs = "".join(f"(call $log (i32.const {level}) (i32.const 16) (i32.const 5))" for level in (0, 1, 2, 3, 4, 9))
    module = plugin_wat(
        logs
        + f"(call $log (i32.const 2) (i32.const 64) (i32.const {len(DATA[64])}))"  # not UTF-8
        + f"(call $log (i32.const 2) (i32.const 256) (i32.const {len(DATA[256])}))"  # too long
        + packed(16, len(OK_OUTPUT))
    )
    caplog.set_level(1, logger="rules.plugins.logger")
    faults = sample("fluxiot_plugin_failures_total", plugin="logger", reason="log")
    assert call(9, module, LONG, name="logger") == [{"x": 1}]  # log faults do not fail the call
    records = [r for r in caplog.records if r.name == "rules.plugins.logger" and r.message != "free"]
    assert [(r.levelno, r.message) for r in records[:5]] == [
        (5, '{"res'),
        (logging.DEBUG, '{"res'),
        (logging.INFO, '{"res'),
        (logging.WARNING, '{"res'),
        (logging.ERROR, '{"res'),
    ]
    assert records[5].levelno == logging.WARNING and "unknown log level 9" in records[5].message
    assert "not UTF-8" in records[6].message
    long = records[7].message
    assert long.startswith("été") and long.endswith("[cut: 5500 bytes]")
    assert len(long.split(" [cut")[0].encode()) <= 4096
    assert sample("fluxiot_plugin_failures_total", plugin="logger", reason="log") == faults + 2


def test_env_log_records_per_call_are_capped(caplog):
    module = plugin_wat(
        "(loop $l (call $log (i32.const 2) (i32.const 16) (i32.const 5))"
        " (global.set $i (i32.add (global.get $i) (i32.const 1)))"
        " (br_if $l (i32.lt_u (global.get $i) (i32.const 1000))))" + packed(16, len(OK_OUTPUT)),
        exports="(global $i (mut i32) (i32.const 0))",
    )
    caplog.set_level(logging.INFO, logger="rules.plugins.chatty")
    assert call(10, module, LONG, name="chatty") == [{"x": 1}]
    messages = [r.message for r in caplog.records if r.name == "rules.plugins.chatty"]
    assert messages.count('{"res') == host.LOG_MAX_RECORDS
    assert f"{1000 + 2 - host.LOG_MAX_RECORDS} more log records of this call dropped" in messages


# --- The C examples -----------------------------------------------------------------------------


def test_frame_decoder(examples, caplog):
    module = examples["frame_decoder"]
    assert validate_module(module) == []
    caplog.set_level(logging.INFO, logger="rules.plugins.frames")
    results = call(
        20,
        module,
        [
            message(frame(status=0b1011)),
            message(frame(ts=0, temperature=-32768, humidity=0xFFFF, battery=2900, status=2)),
            message(frame(temperature=-1234, humidity=10000)),
            message(frame()[:11]),
            message(frame(checksum=0x00)),
            message(frame(humidity=10001)),
            message(b""),
        ],
        config={"flags": True},
        name="frames",
    )
    assert results[0] == {
        "ts": 1_700_000_000,
        "temperature": 21.5,
        "humidity": 45.12,
        "battery_mv": 3000,
        "status": 11,
        "alarm": True,
        "low_battery": True,
        "tamper": False,
        "button": True,
    }
    assert results[1] == {
        "battery_mv": 2900,
        "status": 2,
        "alarm": False,
        "low_battery": True,
        "tamper": False,
        "button": False,
    }
    assert results[2]["temperature"] == -12.34 and results[2]["humidity"] == 100
    errors = [(r.reason, r.detail) for r in results[3:]]
    assert errors == [
        ("rejected", "frame is 11 bytes, expected 12"),
        ("rejected", f"checksum mismatch: frame says 0x00, bytes give 0x{frame()[11]:02x}"),
        ("rejected", "humidity over 100 %"),
        ("rejected", "frame is 0 bytes, expected 12"),
    ]
    # The first bad frame of the call is logged (warn), the others are not.
    logged = [(r.levelno, r.message) for r in caplog.records if r.name == "rules.plugins.frames"]
    assert logged == [(logging.WARNING, "bad frame: wrong length")]
    # Without the config, no flag booleans.
    assert call(20, module, [message(frame(status=1))]) == [
        {"ts": 1_700_000_000, "temperature": 21.5, "humidity": 45.12, "battery_mv": 3000, "status": 1}
    ]


def test_frame_decoder_batches(examples):
    module = examples["frame_decoder"]
    for size in (1, 10, 100, 1000):
        batch = [
            message(frame(ts=1_700_000_000 + i, temperature=i) if i % 7 else b"short", device=f"dev-{i}")
            for i in range(size)
        ]
        results = call(21, module, batch)
        assert len(results) == size
        for i, result in enumerate(results):
            if i % 7:
                assert result["ts"] == 1_700_000_000 + i and result["temperature"] == i / 100
            else:
                assert isinstance(result, PluginError) and result.reason == "rejected"


def test_unit_convert(examples):
    module = examples["unit_convert"]
    assert validate_module(module) == []
    payloads = [
        b'{"temperature_f": 98.6, "wind_mph": 10, "pressure_psi": 14.7, "ts": 1700000000, "label": "a\\"b", '
        b'"door_open": true, "nested": {"x_f": 1}, "cold_k": 273.15, "rain_in": 1, "p_inhg": 29.92}',
        b'[{"temperature_f": 32}, {"temperature_f": -40, "n": null}]',
        b'{"temperature": 21.5}',
        b"not json",
        b'{"a": 1} trailing',
        b"[]",
        b"[1, 2]",
    ]
    results = call(30, module, [message(p) for p in payloads])
    assert results[0] == {
        "temperature": 37,
        "wind_kmh": 16.09,
        "pressure_kpa": 101.35,
        "ts": 1_700_000_000,
        "label": 'a"b',
        "door_open": True,
        "nested": {"x_f": 1},
        "cold": 0,
        "rain_mm": 25.4,
        "p_hpa": 1013.21,
    }
    assert results[1] == [{"temperature": 0}, {"temperature": -40, "n": None}]
    assert results[2] == {"temperature": 21.5}
    for error in results[3:]:
        assert isinstance(error, PluginError) and error.reason == "rejected"
        assert error.detail == "payload is not a JSON object or a list of objects"

    # Named keys in a given unit, rounding, suffixes off.
    config = {"from": "fahrenheit", "keys": ["temperature", "t2"], "decimals": 0, "suffixes": False}
    [result] = call(30, module, [message(b'{"temperature": 212, "t2": 100, "t3": 100, "x_f": 50}')], config)
    assert result == {"temperature": 100, "t2": 38, "t3": 100, "x_f": 50}
    [result] = call(30, module, [message(b'{"temperature": 300}')], {"from": "kelvin"})
    assert result == {"temperature": 26.85}
    # A bad configuration is an error for every message of the call.
    results = call(30, module, [message(b"{}"), message(b"{}")], {"from": "rankine"})
    assert [r.reason for r in results] == ["rejected", "rejected"]
    assert "fahrenheit" in results[0].detail


def test_the_c_allocator_frees_everything_and_memory_stays_put(examples):
    for plugin_id, (name, payload) in enumerate(
        [("frame_decoder", frame()), ("unit_convert", b'{"temperature_f": 70, "label": "x"}')], start=40
    ):
        module = examples[name]
        batch = [message(payload, device=f"dev-{i}") for i in range(10)] + [message(b"bad")]
        call(plugin_id, module, batch)
        [before] = pool_stats(plugin_id)["idle"]
        assert before["live_allocations"] == 0
        for _ in range(1000):
            call(plugin_id, module, batch)
        [after] = pool_stats(plugin_id)["idle"]
        assert after["serial"] == before["serial"] and after["calls"] == 1001
        assert after["live_allocations"] == 0
        assert after["memory_bytes"] == before["memory_bytes"]


# --- Pools, validation, threads -----------------------------------------------------------------


def test_instances_are_pooled_and_a_new_version_replaces_the_pool(examples):
    decoder, converter = examples["frame_decoder"], examples["unit_convert"]
    call(50, decoder, [message(frame())])
    call(50, decoder, [message(frame())])
    stats = pool_stats(50)
    assert stats["sha256"] == sha(decoder)
    assert stats["instances_created"] == 1 and len(stats["idle"]) == 1
    assert stats["idle"][0]["calls"] == 2

    # The plugin's new version (another module, another sha256) replaces the pool.
    assert call(50, converter, [message(b'{"t_f": 32}')]) == [{"t": 0}]
    stats = pool_stats(50)
    assert stats["sha256"] == sha(converter) and stats["instances_created"] == 1
    assert stats["idle"][0]["calls"] == 1

    forget(50)
    assert pool_stats(50) is None
    assert call(50, converter, [message(b'{"t_f": 32}')]) == [{"t": 0}]


def test_threads_share_a_pool_safely(examples):
    decoder = examples["frame_decoder"]
    pool_of_4 = Limits(pool_size=4)  # as many idle instances as threads: none is dropped
    looping = plugin_wat("(loop $l (br $l)) (i64.const 0)")

    def decode(worker):
        for round_ in range(30):
            ts = 1_700_000_000 + worker * 1000 + round_
            batch = [message(frame(ts=ts, battery=i), device=f"dev-{worker}-{i}") for i in range(20)]
            results = call(60, decoder, batch, limits=pool_of_4)
            assert [(r["ts"], r["battery_mv"]) for r in results] == [(ts, i) for i in range(20)]

    def loop():
        return [call(61, looping, LONG, limits=UNFUELLED)[0].reason for _ in range(3)]

    with ThreadPoolExecutor(max_workers=5) as pool:
        decoders = [pool.submit(decode, worker) for worker in range(4)]
        looper = pool.submit(loop)
        for future in decoders:
            future.result(timeout=30)  # re-raises a worker's failure
        assert looper.result(timeout=30) == ["timeout"] * 3
    stats = pool_stats(60)
    assert 1 <= stats["instances_created"] <= 4  # one per thread at most, each reused
    assert len(stats["idle"]) == stats["instances_created"]
    assert sum(i["calls"] for i in stats["idle"]) == 120
    assert all(i["live_allocations"] == 0 for i in stats["idle"])


def test_validate_module(examples, settings):
    assert validate_module(examples["frame_decoder"]) == []
    assert validate_module(b"\x00asm\x01\x00\x00\x00garbage")[0].startswith("the module does not compile:")
    assert validate_module(b"not wasm at all")[0].startswith("the module does not compile:")

    settings.PLUGIN_MAX_MODULE_BYTES = 1000
    assert validate_module(examples["frame_decoder"]) == [
        f"the module is {len(examples['frame_decoder'])} bytes, over the limit of 1000 bytes"
    ]
    del settings.PLUGIN_MAX_MODULE_BYTES

    problems = validate_module(
        wasmtime.wat2wasm("""
        (module
          (import "env" "now" (func (result i64)))
          (import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32 i32 i32) (result i32)))
          (import "env" "log" (func (param i32)))
          (memory (export "memory") 300)
          (func (export "alloc") (param i64) (result i32) (i32.const 0))
          (global (export "process") i32 (i32.const 0)))
        """)
    )
    assert problems == [
        "imports env.now: the only import a plugin may have is env.log",
        "imports wasi_snapshot_preview1.fd_write: WASI is not available to plugins",
        "imports env.log with the wrong type: it is a function (i32, i32, i32) -> ()",
        "the memory's initial size (19660800 bytes) is over the plugin memory limit (16777216 bytes)",
        "export alloc is a function (i64) -> i32, expected (i32) -> i32",
        "missing export: dealloc, a function (i32, i32) -> ()",
        "export process is not a function: it must be a function (i32, i32) -> i64",
    ]
    assert validate_module(wasmtime.wat2wasm("(module)")) == [
        "missing export: memory (the module's linear memory)",
        "missing export: alloc, a function (i32) -> i32",
        "missing export: dealloc, a function (i32, i32) -> ()",
        "missing export: process, a function (i32, i32) -> i64",
    ]
    # The memory limit of the settings counts.
    settings.PLUGIN_MEMORY_BYTES = 32 * 1024
    assert validate_module(plugin_wat()) == [
        "the memory's initial size (65536 bytes) is over the plugin memory limit (32768 bytes)"
    ]


def test_unusable_modules_fail_every_message_with_reason_module():
    unknown_import = plugin_wat(imports='(import "env" "now" (func $now (result i64)))')
    results = call(70, unknown_import, SHORT + SHORT)
    assert [r.reason for r in results] == ["module", "module"]
    assert "env.now" in results[0].detail

    wasi = plugin_wat(imports='(import "wasi_snapshot_preview1" "proc_exit" (func (param i32)))')
    [error] = call(71, wasi, SHORT)
    assert error.reason == "module" and "WASI" in error.detail

    missing_process = wasmtime.wat2wasm(
        '(module (memory (export "memory") 1) (func (export "alloc") (param i32) (result i32) (i32.const 8))'
        ' (func (export "dealloc") (param i32 i32)))'
    )
    [error] = call(72, missing_process, SHORT)
    assert error.reason == "module" and "missing export: process" in error.detail

    [error] = run_plugin(73, "0" * 64, plugin_wat(), {}, SHORT, limits=LIMITS)
    assert error.reason == "module" and "sha256" in error.detail

    [error] = call(74, b"\x00asm\x01\x00\x00\x00", SHORT)
    assert error.reason == "module"


def test_a_trap_in_the_start_function_fails_instantiation():
    module = plugin_wat(exports="(func $start unreachable) (start $start)")
    [error] = call(75, module, SHORT)
    assert error.reason == "trap"
    module = plugin_wat(exports="(func $start (loop $l (br $l))) (start $start)")
    [error] = call(76, module, SHORT, limits=UNFUELLED)
    assert error.reason == "timeout"


def test_input_encoding_and_edge_cases():
    # The module's input, as the host encodes it.
    assert json.loads(
        host._encode_input({"k": "v"}, [{"device": "d", "topic": "t", "payload": b"\x00\xff"}, {"payload": "é"}])
    ) == {
        "config": {"k": "v"},
        "messages": [
            {"device": "d", "topic": "t", "payload": base64.b64encode(b"\x00\xff").decode()},
            {"device": "", "topic": "", "payload": base64.b64encode("é".encode()).decode()},
        ],
    }
    assert run_plugin(80, "", b"", {}, []) == []  # no messages, no call


def test_limits_come_from_the_settings(settings):
    settings.PLUGIN_TIMEOUT_MS = 20
    settings.PLUGIN_FUEL = 1234
    settings.PLUGIN_POOL_SIZE = 5
    limits = Limits.from_settings()
    assert (limits.timeout_ms, limits.fuel, limits.pool_size) == (20, 1234, 5)
    assert limits.deadline_ticks == 5  # interrupted 8-10 ms into the call
    assert Limits().deadline_ticks * host.TICK_MS == 40


def test_metrics_count_calls_and_messages(examples):
    calls = sample("fluxiot_plugin_calls_total", plugin="metered")
    msgs = sample("fluxiot_plugin_messages_total", plugin="metered")
    rejected = sample("fluxiot_plugin_failures_total", plugin="metered", reason="rejected")
    seconds = sample("fluxiot_plugin_call_seconds_count")
    call(90, examples["frame_decoder"], [message(frame()), message(b"bad"), message(b"bad")], name="metered")
    assert sample("fluxiot_plugin_calls_total", plugin="metered") == calls + 1
    assert sample("fluxiot_plugin_messages_total", plugin="metered") == msgs + 3
    assert sample("fluxiot_plugin_failures_total", plugin="metered", reason="rejected") == rejected + 2
    assert sample("fluxiot_plugin_call_seconds_count") == seconds + 1

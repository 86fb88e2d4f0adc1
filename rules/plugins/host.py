"""The WebAssembly plugin host: runs plugin modules (docs/PLUGIN_DEV.md) in wasmtime, sandboxed.

A call hands a plugin its configuration and a batch of messages as JSON and gets one result per
message back. The sandbox: no WASI and one import (``env.log``); per call a fuel budget and an epoch
deadline (a ticker thread advances the engine's epoch every ``TICK_MS`` while calls run); per
instance a memory ceiling and one memory, one table, one instance; an output size cap. A call that
fails (trap, timeout, fuel, memory, bad output) fails every message of the batch with the same
:class:`PluginError`, and its instance is discarded (the next call gets a fresh one).

Instances are pooled per plugin id and module sha256 (a few idle ones kept per process, each used by
one thread at a time); a module with another sha256 for the same plugin id replaces the pool.

Hot paths talk to wasmtime's C API through ``wasmtime._ffi`` (pinned: wasmtime==50.0.1): calls
through ``wasmtime.Func.__call__`` cost ~30 µs each against ~4 µs, and the host function ``env.log``
must return its trap to wasmtime itself (wasmtime-py passes a Python exception raised in a host
function through a process-wide slot, which concurrent calls in other threads could pick up).
"""

from __future__ import annotations

import atexit
import base64
import codecs
import ctypes
import hashlib
import itertools
import json
import logging
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import wasmtime
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from wasmtime import _bindings
from wasmtime import _ffi as ffi

from rules.plugins import metrics

logger = logging.getLogger("rules.plugins")

MiB = 1024 * 1024

# Why a call or a message failed (PluginError.reason).
TRAP = "trap"  # the module trapped (unreachable, out-of-bounds access, stack overflow, ...)
TIMEOUT = "timeout"  # the epoch deadline passed (PLUGIN_TIMEOUT_MS)
FUEL = "fuel"  # the fuel budget ran out (PLUGIN_FUEL)
MEMORY = "memory"  # the memory ceiling was hit (PLUGIN_MEMORY_BYTES)
BAD_OUTPUT = "bad_output"  # the output is not the expected JSON, or a result is not telemetry
OUTPUT_TOO_LARGE = "output_too_large"  # the output is over PLUGIN_MAX_OUTPUT_BYTES
ABI = "abi"  # the module broke the ABI at run time (pointers outside its memory, ...)
LOG = "log"  # env.log with a pointer/length outside the memory (fails the call) or bad UTF-8 (counted)
MODULE = "module"  # the module cannot be used: too large, does not compile, wrong imports or exports
REJECTED = "rejected"  # the plugin answered {"error": "..."} for the message (that message only)
REASONS = (TRAP, TIMEOUT, FUEL, MEMORY, BAD_OUTPUT, OUTPUT_TOO_LARGE, ABI, LOG, MODULE, REJECTED)

TICK_MS = 2  # the epoch ticker's period
DEADLINE_MARGIN_MS = 10  # see Limits.deadline_ticks
LOG_MAX_BYTES = 4096  # of one env.log message (longer ones are cut)
LOG_MAX_RECORDS = 100  # env.log records kept per call (the others are counted and dropped)
DETAIL_MAX_CHARS = 500
TABLE_ELEMENTS = 10_000
TRACE = 5  # the logging level of env.log level 0
_LOG_LEVELS = (TRACE, logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR)
_MASK32 = 0xFFFF_FFFF
_MASK64 = 0xFFFF_FFFF_FFFF_FFFF
_PAGE = 65536

if logging.getLevelName(TRACE) == f"Level {TRACE}":
    logging.addLevelName(TRACE, "TRACE")


class PluginError(Exception):
    """A plugin call (or one message of it) failed: ``reason`` is one of ``REASONS``."""

    def __init__(self, reason: str, detail: str = "") -> None:
        detail = detail[:DETAIL_MAX_CHARS]
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Limits:
    """The sandbox's limits; ``from_settings`` reads the PLUGIN_* settings."""

    max_module_bytes: int = 2 * MiB  # PLUGIN_MAX_MODULE_BYTES
    memory_bytes: int = 16 * MiB  # PLUGIN_MEMORY_BYTES: linear memory per instance
    timeout_ms: int = 50  # PLUGIN_TIMEOUT_MS: wall time per call (a whole batch)
    fuel: int = 50_000_000  # PLUGIN_FUEL: per call (a whole batch), roughly wasm instructions
    max_output_bytes: int = 1 * MiB  # PLUGIN_MAX_OUTPUT_BYTES
    pool_size: int = 2  # PLUGIN_POOL_SIZE: idle instances kept per plugin and process

    @classmethod
    def from_settings(cls) -> Limits:
        """The limits of the settings (defaults where unset, or when Django is not configured)."""
        try:
            return cls(
                max_module_bytes=int(getattr(settings, "PLUGIN_MAX_MODULE_BYTES", cls.max_module_bytes)),
                memory_bytes=int(getattr(settings, "PLUGIN_MEMORY_BYTES", cls.memory_bytes)),
                timeout_ms=int(getattr(settings, "PLUGIN_TIMEOUT_MS", cls.timeout_ms)),
                fuel=int(getattr(settings, "PLUGIN_FUEL", cls.fuel)),
                max_output_bytes=int(getattr(settings, "PLUGIN_MAX_OUTPUT_BYTES", cls.max_output_bytes)),
                pool_size=int(getattr(settings, "PLUGIN_POOL_SIZE", cls.pool_size)),
            )
        except ImproperlyConfigured:
            return cls()

    @property
    def deadline_ticks(self) -> int:
        """Epoch ticks per call. The module is interrupted between ``timeout_ms - 12`` and
        ``timeout_ms - 10`` ms after the call starts (38-40 ms of 50): the margin absorbs a late
        wake-up of the ticker thread on a busy machine (several ms with every CPU taken) and the
        host's own work, so that a runaway call returns within ``timeout_ms``."""
        return max(2, (self.timeout_ms - DEADLINE_MARGIN_MS) // TICK_MS)


# --- Engine and epoch ticker ---------------------------------------------------------------------

_engine_lock = threading.Lock()
_engine_instance: wasmtime.Engine | None = None


def _engine() -> wasmtime.Engine:
    global _engine_instance
    if _engine_instance is None:
        with _engine_lock:
            if _engine_instance is None:
                config = wasmtime.Config()
                config.consume_fuel = True
                config.epoch_interruption = True
                config.cranelift_opt_level = "speed"
                config.wasm_threads = False
                config.wasm_memory64 = False
                config.wasm_multi_memory = False
                # No compilation thread pool: worker processes fork (Celery prefork), and a pool's
                # threads would not survive the fork.
                config.parallel_compilation = False
                _engine_instance = wasmtime.Engine(config)
    return _engine_instance


class _EpochTicker:
    """Advances the engine's epoch every TICK_MS while at least one call runs (idle otherwise).

    The epoch follows a fixed schedule from the moment the ticker starts ticking: sleeps that
    overshoot do not add up, and ticks missed while the thread waited to be scheduled (a busy
    machine) are made up at once, so a running call is interrupted on time. A call that starts while
    the ticker is behind gets its deadline extended by what the ticker owes (``enter``), so the
    make-up ticks do not cut it short."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._active = 0
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        self._period = TICK_MS / 1000
        self._anchor: float | None = None  # when the current run of ticks started
        self._ticks = 0  # epoch increments in the current run

    def enter(self, ticks: int) -> int:
        """A call starts: returns its epoch deadline (``ticks`` from now, in ticker time)."""
        with self._cond:
            self._active += 1
            if self._thread is None or self._pid != os.getpid():
                self._pid = os.getpid()
                self._anchor = None
                self._thread = threading.Thread(target=self._run, name="fluxiot-plugin-epoch", daemon=True)
                self._thread.start()
            elif self._active == 1:
                self._cond.notify()
            if self._anchor is None:
                return ticks
            owed = int((time.monotonic() - self._anchor) / self._period) - self._ticks
            return ticks + max(0, owed)

    def leave(self) -> None:
        with self._cond:
            self._active -= 1

    def _run(self) -> None:
        engine = _engine()
        period = self._period
        while True:
            with self._cond:
                while not self._active:
                    self._anchor = None
                    self._cond.wait()
                self._anchor = time.monotonic()
                self._ticks = 0
            anchor = self._anchor
            while self._active:  # (an int read: no lock needed)
                delay = anchor + (self._ticks + 1) * period - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                engine.increment_epoch()
                self._ticks += 1


_ticker = _EpochTicker()


# --- env.log ------------------------------------------------------------------------------------


class _LogState:
    """What env.log needs of one instance: its logger, and the current call's faults."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.logger = logging.getLogger(f"rules.plugins.{label}")
        self.fault: PluginError | None = None
        self.records = 0

    def begin_call(self, label: str) -> None:
        if label != self.label:
            self.label = label
            self.logger = logging.getLogger(f"rules.plugins.{label}")
        self.fault = None
        self.records = 0

    def end_call(self) -> None:
        if self.records > LOG_MAX_RECORDS:
            self.logger.warning("%d more log records of this call dropped", self.records - LOG_MAX_RECORDS)

    def log(self, caller: Any, level: int, ptr: int, length: int) -> bytes | None:
        """Log a message of the plugin; returns a trap message if the call must stop."""
        ptr &= _MASK32
        length &= _MASK32
        item = ffi.wasmtime_extern_t()
        found = ffi.wasmtime_caller_export_get(caller, _MEMORY_NAME, 6, ctypes.byref(item))
        if not found or item.kind != ffi.WASMTIME_EXTERN_MEMORY.value:
            self.fault = PluginError(LOG, "env.log called by a module without an exported memory")
            return b"fluxiot: env.log without a memory"
        context = ffi.wasmtime_caller_context(caller)
        memory = item.of.memory
        size = ffi.wasmtime_memory_data_size(context, ctypes.byref(memory))
        if ptr + length > size:
            self.fault = PluginError(LOG, f"env.log: {length} bytes at {ptr} are outside the memory ({size} bytes)")
            return b"fluxiot: env.log pointer out of bounds"
        self.records += 1
        if self.records > LOG_MAX_RECORDS:
            return None
        base = ctypes.addressof(ffi.wasmtime_memory_data(context, ctypes.byref(memory)).contents)
        raw = ctypes.string_at(base + ptr, min(length, LOG_MAX_BYTES))
        try:
            # A message cut at LOG_MAX_BYTES may end inside a character: not final, so that is fine.
            text = codecs.getincrementaldecoder("utf-8")().decode(raw, final=length <= LOG_MAX_BYTES)
        except UnicodeDecodeError as exc:
            metrics.FAILURES.labels(plugin=self.label, reason=LOG).inc()
            self.logger.warning("log message is not UTF-8 (%s): %r", exc.reason, raw[:80])
            return None
        if length > LOG_MAX_BYTES:
            text += f" [cut: {length} bytes]"
        if 0 <= level < len(_LOG_LEVELS):
            self.logger.log(_LOG_LEVELS[level], "%s", text)
        else:
            metrics.FAILURES.labels(plugin=self.label, reason=LOG).inc()
            self.logger.warning("[unknown log level %d] %s", level, text)
        return None


_MEMORY_NAME = ctypes.create_string_buffer(b"memory", 6)
_LOG_TYPE = wasmtime.FuncType([wasmtime.ValType.i32()] * 3, [])
_log_states: dict[int, _LogState] = {}
_log_keys = itertools.count(1)


def _new_trap(message: bytes) -> int:
    trap = ffi.wasmtime_trap_new(ctypes.create_string_buffer(message, len(message)), len(message))
    return ctypes.cast(trap, ctypes.c_void_p).value or 0


@ffi.wasmtime_func_callback_t
def _log_callback(env, caller, params, nparams, results, nresults):  # noqa: ANN001, ANN202
    # Called by wasmtime (C): returns 0, or a trap that stops the call. Nothing may escape.
    try:
        state = _log_states.get(env or 0)
        if state is None or nparams != 3:
            return _new_trap(b"fluxiot: env.log has no host state")
        problem = state.log(caller, params[0].of.i32, params[1].of.i32, params[2].of.i32)
        return 0 if problem is None else _new_trap(problem)
    except Exception:  # an exception cannot cross into C: the call traps instead
        logger.exception("env.log failed")
        return _new_trap(b"fluxiot: host error in env.log")


@ctypes.CFUNCTYPE(None, ctypes.c_void_p)
def _log_finalizer(env, _states=_log_states):  # noqa: ANN001, ANN202
    _states.pop(env or 0, None)


def _log_func(store: wasmtime.Store, state: _LogState) -> wasmtime.Func:
    key = next(_log_keys)
    _log_states[key] = state
    raw = ffi.wasmtime_func_t()
    ffi.wasmtime_func_new(store._context(), _LOG_TYPE.ptr(), _log_callback, key, _log_finalizer, ctypes.byref(raw))
    return wasmtime.Func._from_raw(raw)


# --- Instances ----------------------------------------------------------------------------------


class _RawFunc:
    """A wasm function of i32 parameters called straight through the C API (per instance, so one
    thread at a time; the argument and result buffers are reused)."""

    def __init__(self, store: wasmtime.Store, func: wasmtime.Func, nparams: int, result_kind: int | None) -> None:
        self._context = store._context()
        self._func = func._func
        self._func_ref = ctypes.byref(self._func)
        self._nparams = nparams
        self._params = (ffi.wasmtime_val_t * max(nparams, 1))()
        for i in range(nparams):
            self._params[i].kind = ffi.WASMTIME_I32.value
        self._nresults = 0 if result_kind is None else 1
        self._results = (ffi.wasmtime_val_t * 1)()
        self._result_kind = result_kind
        self._new_trap_slot()

    def _new_trap_slot(self) -> None:
        self._trap = ctypes.POINTER(ffi.wasm_trap_t)()
        self._trap_ref = ctypes.byref(self._trap)

    def __call__(self, *args: int) -> int:
        params = self._params
        for i, arg in enumerate(args):
            params[i].of.i32 = arg  # wraps to i32
        error = _func_call(
            self._context, self._func_ref, params, self._nparams, self._results, self._nresults, self._trap_ref
        )
        if error:
            raise wasmtime.WasmtimeError._from_ptr(error)
        if self._trap:
            trap = self._trap
            self._new_trap_slot()
            raise wasmtime.Trap._from_ptr(trap)
        if self._result_kind is None:
            return 0
        if self._result_kind == _I64:
            return self._results[0].of.i64 & _MASK64
        return self._results[0].of.i32 & _MASK32


_func_call = _bindings._wasmtime_func_call  # the ctypes function itself (its Python wrapper costs a call)
_memory_data = _bindings._wasmtime_memory_data
_memory_data_size = _bindings._wasmtime_memory_data_size
_I32 = ffi.WASMTIME_I32.value
_I64 = ffi.WASMTIME_I64.value
_serials = itertools.count(1)


class _Instance:
    """One instantiated module in its own store."""

    def __init__(self, pool: _Pool, limits: Limits) -> None:
        self.serial = next(_serials)
        self.calls = 0
        self.memory_limit = limits.memory_bytes
        self.state = _LogState(pool.label)
        store = wasmtime.Store(_engine())
        store.set_limits(
            memory_size=limits.memory_bytes, table_elements=TABLE_ELEMENTS, instances=1, tables=1, memories=1
        )
        store.set_fuel(limits.fuel)
        self.store = store
        imports = [_log_func(store, self.state)] if pool.imports_log else []
        store.set_epoch_deadline(_ticker.enter(limits.deadline_ticks))
        try:
            instance = wasmtime.Instance(store, pool.module, imports)
        except wasmtime.Trap as trap:
            error = self._trap_error(trap, limits, None)
            store.close()
            raise error from None
        except wasmtime.WasmtimeError as exc:
            store.close()
            if self.state.fault is not None:  # env.log failed in the start function
                raise self.state.fault from None
            message = _first_line(str(exc))
            reason = MEMORY if "memory" in message and ("limit" in message or "size" in message) else MODULE
            raise PluginError(reason, f"instantiation failed: {message}") from None
        finally:
            _ticker.leave()
        exports = instance.exports(store)
        memory = exports["memory"]
        assert isinstance(memory, wasmtime.Memory)
        self.memory = memory
        self.instance = instance
        self._context = store._context()
        self._memory_ref = ctypes.byref(memory._memory)
        self._alloc = _RawFunc(store, _func(exports, "alloc"), 1, _I32)
        self._dealloc = _RawFunc(store, _func(exports, "dealloc"), 2, None)
        self._process = _RawFunc(store, _func(exports, "process"), 2, _I64)
        live = exports.get("fx_live_allocations")
        self._live = live if isinstance(live, wasmtime.Func) else None

    def close(self) -> None:
        self.store.close()

    # Memory access, bounds-checked.
    def _memory_size(self) -> int:
        return _memory_data_size(self._context, self._memory_ref)

    def _base(self) -> int:
        return ctypes.addressof(_memory_data(self._context, self._memory_ref).contents)

    def _at_memory_ceiling(self) -> bool:
        return self._memory_size() + _PAGE > self.memory_limit

    def call(self, payload: bytes, limits: Limits, label: str) -> bytes:
        """The module's output for one input (a failure raises PluginError)."""
        self.state.begin_call(label)
        store = self.store
        store.set_fuel(limits.fuel)
        size = len(payload)
        started = time.monotonic()
        store.set_epoch_deadline(_ticker.enter(limits.deadline_ticks))
        try:
            in_ptr = self._alloc(size)
            if in_ptr == 0:
                raise PluginError(MEMORY, f"alloc({size}) returned 0: no memory for the input")
            if in_ptr + size > self._memory_size():
                raise PluginError(ABI, f"alloc({size}) returned {in_ptr}, outside the memory")
            ctypes.memmove(self._base() + in_ptr, payload, size)
            packed = self._process(in_ptr, size)
            out_ptr, out_len = packed >> 32, packed & _MASK32
            memory_size = self._memory_size()
            if out_len == 0:
                self._free_quietly(in_ptr, size)
                raise PluginError(BAD_OUTPUT, "process returned no output (length 0)")
            if out_ptr + out_len > memory_size:
                self._free_quietly(in_ptr, size)
                raise PluginError(
                    ABI, f"process returned {out_len} bytes at {out_ptr}, outside the memory ({memory_size} bytes)"
                )
            if out_len > limits.max_output_bytes:
                self._free_quietly(out_ptr, out_len)
                self._free_quietly(in_ptr, size)
                raise PluginError(
                    OUTPUT_TOO_LARGE, f"{out_len} bytes of output, over the limit of {limits.max_output_bytes}"
                )
            output = ctypes.string_at(self._base() + out_ptr, out_len)
            self._dealloc(out_ptr, out_len)
            self._dealloc(in_ptr, size)
        except wasmtime.Trap as trap:
            raise self._trap_error(trap, limits, time.monotonic() - started) from None
        except wasmtime.WasmtimeError as exc:  # a trap raised by env.log arrives as an error
            raise self.state.fault or PluginError(ABI, _first_line(str(exc))) from None
        finally:
            _ticker.leave()
            self.state.end_call()
        self.calls += 1
        return output

    def _free_quietly(self, ptr: int, length: int) -> None:
        """Free a buffer on a failure path (the instance is discarded after it anyway)."""
        try:
            self._dealloc(ptr, length)
        except (wasmtime.Trap, wasmtime.WasmtimeError):
            logger.debug("dealloc(%d, %d) failed on a failure path", ptr, length)

    def _trap_error(self, trap: wasmtime.Trap, limits: Limits, elapsed: float | None) -> PluginError:
        if self.state.fault is not None:
            return self.state.fault
        code = trap.trap_code
        if code == wasmtime.TrapCode.INTERRUPT:
            took = f" after {elapsed * 1000:.1f} ms" if elapsed is not None else ""
            error = PluginError(TIMEOUT, f"interrupted{took} (limit {limits.timeout_ms} ms)")
        elif code == wasmtime.TrapCode.OUT_OF_FUEL:
            error = PluginError(FUEL, f"used up its fuel ({limits.fuel} units)")
        else:
            error = PluginError(TRAP, _first_line(trap.message))
        if hasattr(self, "memory") and self._at_memory_ceiling():
            return PluginError(MEMORY, f"memory limit of {limits.memory_bytes} bytes reached ({error})")
        return error

    def live_allocations(self, limits: Limits) -> int | None:
        """What the module's ``fx_live_allocations`` export says (None without one)."""
        if self._live is None:
            return None
        self.store.set_fuel(limits.fuel)
        self.store.set_epoch_deadline(_ticker.enter(limits.deadline_ticks))
        try:
            value = self._live(self.store)
        except (wasmtime.Trap, wasmtime.WasmtimeError):
            return None
        finally:
            _ticker.leave()
        return value if isinstance(value, int) else None


def _func(exports: Any, name: str) -> wasmtime.Func:
    func = exports[name]
    assert isinstance(func, wasmtime.Func)
    return func


def _first_line(message: str) -> str:
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    if not lines:
        return "unknown error"
    # wasmtime: "error while executing at wasm backtrace: ... Caused by: <the reason>"
    for index, line in enumerate(lines):
        if line.startswith("Caused by:") and index + 1 < len(lines):
            return f"{lines[index + 1]} ({lines[0]})" if not lines[0].startswith("error while") else lines[index + 1]
    return lines[0]


# --- Module checks ------------------------------------------------------------------------------

_EXPECTED_EXPORTS = {
    "alloc": (("i32",), ("i32",)),
    "dealloc": (("i32", "i32"), ()),
    "process": (("i32", "i32"), ("i64",)),
}
_LOG_SIGNATURE = (("i32", "i32", "i32"), ())


def _signature(func_type: wasmtime.FuncType) -> tuple[tuple[str, ...], tuple[str, ...]]:
    return tuple(str(p) for p in func_type.params), tuple(str(r) for r in func_type.results)


def _describe(signature: tuple[tuple[str, ...], tuple[str, ...]]) -> str:
    params, results = signature
    result = results[0] if len(results) == 1 else f"({', '.join(results)})"
    return f"({', '.join(params)}) -> {result}"


def _check_compiled(module: wasmtime.Module, limits: Limits) -> tuple[list[str], bool]:
    """Problems with a compiled module's imports and exports, and whether it imports env.log."""
    problems: list[str] = []
    imports_log = False
    for item in module.imports:
        where = f"{item.module}.{item.name}"
        if item.module.startswith("wasi"):
            problems.append(f"imports {where}: WASI is not available to plugins")
        elif (item.module, item.name) != ("env", "log"):
            problems.append(f"imports {where}: the only import a plugin may have is env.log")
        elif not isinstance(item.type, wasmtime.FuncType) or _signature(item.type) != _LOG_SIGNATURE:
            problems.append(f"imports env.log with the wrong type: it is a function {_describe(_LOG_SIGNATURE)}")
        else:
            imports_log = True
    exports = {item.name: item.type for item in module.exports}
    memory = exports.get("memory")
    if memory is None:
        problems.append("missing export: memory (the module's linear memory)")
    elif not isinstance(memory, wasmtime.MemoryType):
        problems.append("export memory is not a memory")
    else:
        if memory.is_64 or memory.is_shared:
            problems.append("export memory must be a plain 32-bit memory (not memory64, not shared)")
        initial = memory.limits.min * _PAGE
        if initial > limits.memory_bytes:
            problems.append(
                f"the memory's initial size ({initial} bytes) is over the plugin memory limit "
                f"({limits.memory_bytes} bytes)"
            )
    for name, expected in _EXPECTED_EXPORTS.items():
        found = exports.get(name)
        if found is None:
            problems.append(f"missing export: {name}, a function {_describe(expected)}")
        elif not isinstance(found, wasmtime.FuncType):
            problems.append(f"export {name} is not a function: it must be a function {_describe(expected)}")
        elif _signature(found) != expected:
            problems.append(
                f"export {name} is a function {_describe(_signature(found))}, expected {_describe(expected)}"
            )
    return problems, imports_log


def _compile(module: bytes, limits: Limits) -> tuple[wasmtime.Module | None, list[str], bool]:
    if len(module) > limits.max_module_bytes:
        return None, [f"the module is {len(module)} bytes, over the limit of {limits.max_module_bytes} bytes"], False
    try:
        compiled = wasmtime.Module(_engine(), bytes(module))
    except wasmtime.WasmtimeError as exc:
        return None, [f"the module does not compile: {_first_line(str(exc))}"], False
    problems, imports_log = _check_compiled(compiled, limits)
    return compiled, problems, imports_log


def validate_module(module: bytes) -> list[str]:
    """Readable problems that keep a module from being a plugin (empty when there are none): over
    the size limit, does not compile, missing or wrongly typed exports, imports other than env.log
    (WASI among them), an initial memory over the memory limit."""
    _compiled, problems, _imports_log = _compile(module, Limits.from_settings())
    return problems


# --- Pools --------------------------------------------------------------------------------------


class _Pool:
    """The compiled module of one plugin version and its idle instances."""

    def __init__(self, plugin_id: int, sha256: str, module: bytes, limits: Limits, label: str) -> None:
        self.plugin_id = plugin_id
        self.sha256 = sha256
        self.label = label
        self.lock = threading.Lock()
        self.idle: list[_Instance] = []
        self.created = 0
        self.closed = False
        self.error: PluginError | None = None
        self.module: wasmtime.Module | None = None
        self.imports_log = False
        actual = hashlib.sha256(module).hexdigest()
        if actual != sha256.lower():
            self.error = PluginError(MODULE, f"the module's sha256 is {actual}, not {sha256}")
            return
        compiled, problems, self.imports_log = _compile(module, limits)
        if problems:
            self.error = PluginError(MODULE, "; ".join(problems))
        self.module = compiled

    def checkout(self, limits: Limits) -> _Instance:
        if self.error is not None:
            raise self.error
        with self.lock:
            if self.idle:
                return self.idle.pop()
        instance = _Instance(self, limits)
        with self.lock:
            self.created += 1
        return instance

    def checkin(self, instance: _Instance, limits: Limits) -> None:
        with self.lock:
            if not self.closed and len(self.idle) < limits.pool_size:
                self.idle.append(instance)
                return
        instance.close()

    def close(self) -> None:
        with self.lock:
            self.closed = True
            idle, self.idle = self.idle, []
        for instance in idle:
            instance.close()


_pools: dict[int, _Pool] = {}
_pools_lock = threading.Lock()


def _pool(plugin_id: int, sha256: str, module: bytes, limits: Limits, label: str) -> _Pool:
    pool = _pools.get(plugin_id)
    if pool is not None and pool.sha256 == sha256:
        pool.label = label
        return pool
    fresh = _Pool(plugin_id, sha256, module, limits, label)  # compiles: outside the lock
    with _pools_lock:
        pool = _pools.get(plugin_id)
        if pool is not None and pool.sha256 == sha256:
            return pool  # another thread got there first
        _pools[plugin_id] = fresh
    if pool is not None:
        logger.info("plugin %s: module %s replaces %s", label, sha256[:12], pool.sha256[:12])
        pool.close()
    return fresh


def forget(plugin_id: int) -> None:
    """Drop a plugin's pool (e.g. when the plugin is deleted or disabled)."""
    with _pools_lock:
        pool = _pools.pop(plugin_id, None)
    if pool is not None:
        pool.close()


def forget_all() -> None:
    """Drop every pool."""
    with _pools_lock:
        pools = list(_pools.values())
        _pools.clear()
    for pool in pools:
        pool.close()


def pool_stats(plugin_id: int) -> dict[str, Any] | None:
    """A plugin's pool: its sha256, how many instances it created, and its idle instances (serial,
    calls, memory bytes, live allocations as the module's ``fx_live_allocations`` export reports)."""
    pool = _pools.get(plugin_id)
    if pool is None:
        return None
    limits = Limits.from_settings()
    with pool.lock:
        idle = [
            {
                "serial": instance.serial,
                "calls": instance.calls,
                "memory_bytes": instance._memory_size(),
                "live_allocations": instance.live_allocations(limits),
            }
            for instance in pool.idle
        ]
        return {"sha256": pool.sha256, "instances_created": pool.created, "idle": idle, "error": pool.error}


def _after_fork_in_child() -> None:
    global _pools, _pools_lock, _ticker
    # The parent's pools and ticker thread belong to the parent: start afresh (their stores are
    # dropped without being closed, the parent still uses them).
    _pools = {}
    _pools_lock = threading.Lock()
    _ticker = _EpochTicker()


os.register_at_fork(after_in_child=_after_fork_in_child)
# Stores are closed while the interpreter is whole: closing one runs _log_finalizer, which must not
# run once the interpreter has started tearing this module down.
atexit.register(forget_all)


# --- Calls --------------------------------------------------------------------------------------


def _encode_input(config: dict[str, Any] | None, messages: Sequence[dict[str, Any]]) -> bytes:
    b64 = base64.b64encode
    items = []
    for message in messages:
        payload = message.get("payload") or b""
        if isinstance(payload, str):
            payload = payload.encode()
        items.append(
            {
                "device": str(message.get("device", "")),
                "topic": str(message.get("topic", "")),
                "payload": b64(payload).decode(),
            }
        )
    return json.dumps({"config": config or {}, "messages": items}, separators=(",", ":")).encode()


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _decode_output(output: bytes, count: int) -> list[dict[str, Any] | list[Any] | PluginError]:
    try:
        data = json.loads(output, parse_constant=_no_constants)
    except (ValueError, RecursionError) as exc:
        raise PluginError(BAD_OUTPUT, f"the output is not JSON: {exc}") from None
    results = data.get("results") if type(data) is dict else None
    if type(results) is not list:
        raise PluginError(BAD_OUTPUT, 'the output is not an object with a "results" list')
    if len(results) != count:
        raise PluginError(BAD_OUTPUT, f"{len(results)} results for {count} messages")
    decoded: list[dict[str, Any] | list[Any] | PluginError] = []
    for index, result in enumerate(results):
        if type(result) is dict:
            if len(result) == 1 and type(result.get("error")) is str:
                decoded.append(PluginError(REJECTED, result["error"]))
            else:
                decoded.append(result)
        elif type(result) is list and result and all(type(item) is dict for item in result):
            decoded.append(result)
        else:
            decoded.append(
                PluginError(
                    BAD_OUTPUT, f"result {index} is not a telemetry object, a list of them or an error: {result!r:.80}"
                )
            )
    return decoded


_counter_children: dict[str, tuple[Any, Any]] = {}


def _counters(label: str) -> tuple[Any, Any]:
    children = _counter_children.get(label)
    if children is None:
        children = (metrics.CALLS.labels(plugin=label), metrics.MESSAGES.labels(plugin=label))
        _counter_children[label] = children
    return children


def run_plugin(
    plugin_id: int,
    sha256: str,
    module: bytes,
    config: dict[str, Any],
    messages: list[dict[str, Any]],
    *,
    name: str | None = None,
    limits: Limits | None = None,
) -> list[dict[str, Any] | list[Any] | PluginError]:
    """Run a batch of messages (``{"device", "topic", "payload": bytes}``) through a plugin.

    Returns one entry per message: its telemetry (an object, or a list of them), or a PluginError
    (``rejected`` when the plugin answered ``{"error": ...}``). When the call as a whole fails
    (trap, timeout, fuel, memory, bad output, ...), every entry is the same PluginError. ``name``
    (the plugin's name) names its logger (``rules.plugins.<name>``) and metrics label; ``limits``
    defaults to the settings'.
    """
    if not messages:
        return []
    limits = limits or Limits.from_settings()
    label = name or str(plugin_id)
    started = time.perf_counter()
    calls, messages_total = _counters(label)
    calls.inc()
    messages_total.inc(len(messages))
    try:
        payload = _encode_input(config, messages)
        pool = _pool(plugin_id, sha256, module, limits, label)
        instance = pool.checkout(limits)
        try:
            output = instance.call(payload, limits, label)
            results = _decode_output(output, len(messages))
        except BaseException:
            instance.close()  # a failed instance is not reused
            raise
        pool.checkin(instance, limits)
    except PluginError as error:
        metrics.FAILURES.labels(plugin=label, reason=error.reason).inc()
        logger.warning("plugin %s failed on a batch of %d: %s", label, len(messages), error)
        return [error] * len(messages)
    finally:
        metrics.CALL_SECONDS.observe(time.perf_counter() - started)
    failed: dict[str, int] = {}
    for result in results:
        if type(result) is PluginError:
            failed[result.reason] = failed.get(result.reason, 0) + 1
    for reason, count in failed.items():
        metrics.FAILURES.labels(plugin=label, reason=reason).inc(count)
    return results

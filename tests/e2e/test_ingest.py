"""The ingest path end to end, and its faults, with every part real: a private Mosquitto with dynamic
security, the bridge (`manage.py run_bridge`) and a Celery worker as processes, PostgreSQL and
Redis, and devices as paho clients logging in with the secrets the registry issued."""

from __future__ import annotations

import threading
import time

import psycopg
import pytest
from django.db import connection

from devices.models import Device
from telemetry.models import DeadLetter, LatestValue, TelemetryPoint
from tests.e2e.platform import DeviceClient, device, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True), pytest.mark.timeout(240)]


def stored_seqs(device_id: str) -> list[int]:
    return sorted(
        int(v)
        for v in TelemetryPoint.objects.filter(device_id=device_id, key="seq").values_list("value_num", flat=True)
    )


def publish_in_background(dev: DeviceClient, total: int, base: int) -> threading.Thread:
    thread = threading.Thread(target=dev.telemetry, args=(total, base, 0.002), daemon=True)
    thread.start()
    return thread


def test_telemetry_status_and_last_will(platform):
    base = int(time.time() * 1000) - 60_000
    with device(platform.broker, "e2e-dev") as dev:
        dev.publish("attributes", {"firmware": "1.2.3"}).wait_for_publish(10)
        dev.telemetry(50, base)
        wait_for(lambda: len(stored_seqs("e2e-dev")) == 50, 30, "50 points")
        assert LatestValue.objects.get(device_id="e2e-dev", key="seq").value == 49
        wait_for(lambda: Device.objects.get(pk="e2e-dev").status == "online", 10, "online")
        wait_for(lambda: Device.objects.get(pk="e2e-dev").attributes == {"firmware": "1.2.3"}, 10, "attributes")
        dev.kill()
        wait_for(lambda: Device.objects.get(pk="e2e-dev").status == "offline", 20, "offline by last will")
    change = Device.objects.get(pk="e2e-dev").status_changes.first()
    assert change.new_status == "offline" and "reported offline" in change.reason


def test_bad_messages_are_dead_lettered_and_the_bridge_lives_on(platform):
    with device(platform.broker, "e2e-bad") as dev:
        for payload in [b"{broken", b"[1, 2]", b'{"t": null}', b"x" * 5000, b"\xff\xfe\xfd"]:
            dev.publish("telemetry", payload).wait_for_publish(10)
        dev.publish("status", "dancing").wait_for_publish(10)
        dev.telemetry(1, int(time.time() * 1000))
        wait_for(lambda: stored_seqs("e2e-bad") == [0], 30, "the good message after the bad ones")
    reasons = sorted(DeadLetter.objects.filter(device_id="e2e-bad").values_list("reason", flat=True))
    assert reasons == sorted(
        ["malformed_json", "not_an_object", "unsupported_value", "payload_too_large", "malformed_json", "bad_status"]
    )
    assert platform.procs["bridge"].poll() is None


def test_kill_9_the_bridge_mid_stream_loses_nothing_and_stores_nothing_twice(platform):
    total = 3000
    base = int(time.time() * 1000) - 120_000
    with device(platform.broker, "e2e-crash") as dev:
        publisher = publish_in_background(dev, total, base)
        wait_for(lambda: len(stored_seqs("e2e-crash")) > 300, 30, "the stream to start")
        platform.kill("bridge")  # unacked messages stay queued in its persistent session
        publisher.join(60)
        platform.start("bridge")
        wait_for(lambda: len(stored_seqs("e2e-crash")) == total, 60, f"all {total} messages")
    seqs = stored_seqs("e2e-crash")
    assert seqs == list(range(total))  # each exactly once


def test_a_worker_killed_mid_batch_has_its_batch_redone(platform):
    base = int(time.time() * 1000) - 30_000
    with device(platform.broker, "e2e-worker") as dev:
        dev.telemetry(5, base)
        wait_for(lambda: len(stored_seqs("e2e-worker")) == 5, 30, "first points")
        # Hold the device row: the next batch blocks on it inside the worker, mid-transaction.
        db = connection.settings_dict
        with psycopg.connect(host=db["HOST"], port=db["PORT"], user=db["USER"], dbname=db["NAME"]) as locker:
            locker.execute("SELECT 1 FROM devices_device WHERE id = 'e2e-worker' FOR UPDATE")
            dev.telemetry(20, base + 1000)
            time.sleep(2)  # the batch has been taken and is waiting on the lock
            assert len(stored_seqs("e2e-worker")) == 5
            platform.kill("worker")
            locker.rollback()
        time.sleep(5)  # past the visibility timeout (4 s here): the taken batch is up for redelivery
        platform.start("worker")
        wait_for(lambda: len(stored_seqs("e2e-worker")) == 25, 60, "the killed batch, redone")


def test_a_database_outage_under_load_is_caught_up(platform, request):
    # This process's own pool loses its other connections in the outage and backs off reconnecting
    # (later tests would wait on it): the next test starts with a fresh pool.
    request.addfinalizer(connection.close_pool)
    total = 1500
    base = int(time.time() * 1000) - 90_000
    db_name = connection.settings_dict["NAME"]
    with device(platform.broker, "e2e-outage") as dev:
        publisher = publish_in_background(dev, total, base)
        wait_for(lambda: len(stored_seqs("e2e-outage")) > 100, 30, "the stream to start")
        db = connection.settings_dict
        # The database goes away for the platform's processes: no new connections, and the open
        # ones are cut (this test's own connection is spared). Done from the maintenance database.
        with psycopg.connect(
            host=db["HOST"], port=db["PORT"], user=db["USER"], dbname="postgres", autocommit=True
        ) as admin:
            admin.execute(f'ALTER DATABASE "{db_name}" WITH ALLOW_CONNECTIONS false')
            try:
                admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> %s",
                    [db_name, connection.connection.info.backend_pid],
                )
                time.sleep(4)
            finally:
                admin.execute(f'ALTER DATABASE "{db_name}" WITH ALLOW_CONNECTIONS true')
        publisher.join(60)
        wait_for(lambda: len(stored_seqs("e2e-outage")) == total, 90, f"all {total} messages after the outage")
    assert stored_seqs("e2e-outage") == list(range(total))


def test_the_worker_keeps_its_database_sessions_across_batches(platform):
    # Celery's Django fixup would close a prefork worker's whole connection pool around every task:
    # a new PostgreSQL session (a forked backend) per batch. fluxiot.celery hands the connection
    # back to the pool instead. Sessions are counted by PostgreSQL itself.
    db = connection.settings_dict
    with psycopg.connect(
        host=db["HOST"], port=db["PORT"], user=db["USER"], dbname="postgres", autocommit=True
    ) as stats:

        def sessions() -> int:
            stats.execute("SELECT pg_stat_clear_snapshot()")
            return stats.execute("SELECT sessions FROM pg_stat_database WHERE datname = %s", [db["NAME"]]).fetchone()[0]

        base = int(time.time() * 1000) - 30_000
        with device(platform.broker, "e2e-sessions") as dev:
            dev.telemetry(1, base)
            wait_for(lambda: len(stored_seqs("e2e-sessions")) == 1, 30, "the first batch")
            before = sessions()
            dev.telemetry(20, base + 1, pace=0.15)  # about one batch each (the bridge cuts at 50 ms)
            wait_for(lambda: len(stored_seqs("e2e-sessions")) == 21, 30, "twenty more batches")
            time.sleep(1.5)  # sessions that ended have reported
            opened = sessions() - before
    assert opened <= 5, f"{opened} database sessions opened for 20 batches"

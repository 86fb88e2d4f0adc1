"""Device logins and ACLs at a real Mosquitto 2.0 with dynamic security, kept in step with the registry.

Each test runs its own Mosquitto (tests/brokers.py) on a free port, configured with only the admin and
bridge accounts; the registry's hooks (devices.services → transport.broker) create the devices'
accounts as the tests activate, rotate, disable and delete devices.

What Mosquitto 2.0.11 does, and these tests pin down:
- a refused login gets CONNACK "not authorized" (0x87 on MQTT 5, 5 on 3.1.1: paho reports 135);
- a refused subscription gets SUBACK 0x87 (MQTT 5) or 0x80 (3.1.1);
- a refused publish gets PUBACK 0x87 (MQTT 5, QoS 1) or a plain PUBACK (3.1.1), and then the broker
  closes the connection in both cases;
- changing an account's password, disabling or deleting it drops its open sessions.
"""

import json
import logging
import subprocess

import pytest
from django.core.management import CommandError, call_command

from devices import services
from devices.models import DeviceCredential
from tests.brokers import Account, MosquittoBroker, MqttProbe, initial_dynsec_config, mosquitto
from tests.factories import DeviceFactory
from transport.broker import BrokerAddress, DynsecClient, build_dynsec_config, device_acls

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(60)]

NOT_AUTHORIZED = 135
SUBSCRIBE_FAILURE_V311 = 0x80


@pytest.fixture
def broker(dynsec_settings: MosquittoBroker) -> MosquittoBroker:
    return dynsec_settings


def admin(broker: MosquittoBroker) -> DynsecClient:
    return DynsecClient(BrokerAddress(broker.host, broker.port), broker.admin.username, broker.admin.password)


def probe(broker: MosquittoBroker, username, password, **kwargs) -> MqttProbe:
    return MqttProbe(broker.host, broker.port, username, password, **kwargs)


def login(broker: MosquittoBroker, username, password, **kwargs) -> int | None:
    """The CONNACK reason code of a login attempt."""
    with probe(broker, username, password, **kwargs) as client:
        reason = client.connect()
        return None if reason is None else reason.value


def activated(device_id: str) -> str:
    return services.activate_device(DeviceFactory(id=device_id), actor=None)


@pytest.mark.parametrize("protocol", [5, 4])
def test_activated_device_logs_in_and_talks_under_its_own_prefix(broker, protocol):
    secret = activated("dev-a")
    with (
        probe(broker, broker.bridge.username, broker.bridge.password) as bridge,
        probe(broker, "dev-a", secret, protocol=protocol) as device,
    ):
        assert bridge.connect().value == 0
        assert bridge.subscribe("$share/fluxiot/devices/+/telemetry") == [1]
        assert device.connect().value == 0
        assert device.subscribe("devices/dev-a/commands/+") == [1]

        assert device.publish("devices/dev-a/telemetry", '{"t": 1}') == 0
        message = bridge.message()
        assert (message.topic, message.payload) == ("devices/dev-a/telemetry", b'{"t": 1}')

        assert bridge.publish("devices/dev-a/commands/c1", b'{"type": "reboot"}') == 0
        command = device.message()
        assert (command.topic, command.payload) == ("devices/dev-a/commands/c1", b'{"type": "reboot"}')
        assert device.connected


@pytest.mark.parametrize("protocol", [5, 4])
def test_wrong_or_unknown_credentials_are_not_authorized(broker, protocol):
    secret = activated("dev-a")
    assert login(broker, "dev-a", "not-the-secret", protocol=protocol) == NOT_AUTHORIZED
    assert login(broker, "dev-b", secret, protocol=protocol) == NOT_AUTHORIZED
    assert login(broker, "dev-a", secret, protocol=protocol) == 0
    # A registered device that was never activated has no account.
    DeviceFactory(id="dev-registered")
    assert login(broker, "dev-registered", "anything", protocol=protocol) == NOT_AUTHORIZED


def test_mqtt5_other_devices_topics_are_not_authorized(broker):
    secret_a, secret_b = activated("dev-a"), activated("dev-b")
    with probe(broker, "dev-b", secret_b) as victim, probe(broker, "dev-a", secret_a) as device:
        assert victim.connect().value == 0
        assert victim.subscribe("devices/dev-b/#") == [1]
        assert device.connect().value == 0
        assert device.subscribe("devices/dev-b/#") == [NOT_AUTHORIZED]
        assert device.subscribe("devices/+/commands/#") == [NOT_AUTHORIZED]
        assert device.subscribe("devices/#") == [NOT_AUTHORIZED]
        assert device.subscribe("#") == [NOT_AUTHORIZED]
        assert device.subscribe("$share/g/devices/dev-b/#") == [NOT_AUTHORIZED]
        assert device.connected
        # Mosquitto answers a refused publish with PUBACK "not authorized", then drops the connection.
        assert device.publish("devices/dev-b/commands/x", b"spoofed") == NOT_AUTHORIZED
        assert device.wait_disconnected()
        assert victim.message(timeout=0.5) is None


def test_mqtt311_other_devices_topics_are_refused(broker):
    secret_a, secret_b = activated("dev-a"), activated("dev-b")
    with probe(broker, "dev-b", secret_b, protocol=4) as victim, probe(broker, "dev-a", secret_a, protocol=4) as device:
        assert victim.connect().value == 0
        assert victim.subscribe("devices/dev-b/#") == [1]
        assert device.connect().value == 0
        assert device.subscribe("devices/dev-b/#") == [SUBSCRIBE_FAILURE_V311]
        assert device.subscribe("devices/#") == [SUBSCRIBE_FAILURE_V311]
        # 3.1.1 has no way to say "refused": a plain PUBACK, the message dropped, the connection closed.
        assert device.publish("devices/dev-b/telemetry", b"spoofed") == 0
        assert device.wait_disconnected()
        assert victim.message(timeout=0.5) is None


def test_devices_cannot_use_the_bridges_or_system_topics(broker):
    secret = activated("dev-a")
    with probe(broker, "dev-a", secret) as device:
        assert device.connect().value == 0
        assert device.subscribe("$CONTROL/dynamic-security/#") == [NOT_AUTHORIZED]
        assert device.subscribe("$SYS/#") == [NOT_AUTHORIZED]
        assert device.publish("$CONTROL/dynamic-security/v1", b'{"commands": []}') == NOT_AUTHORIZED
    with probe(broker, broker.bridge.username, broker.bridge.password) as bridge:
        assert bridge.connect().value == 0
        assert bridge.subscribe("$CONTROL/dynamic-security/#") == [NOT_AUTHORIZED]
        assert bridge.subscribe("other/#") == [NOT_AUTHORIZED]


def test_rotation_drops_old_sessions_and_only_the_new_secret_works(broker):
    old = activated("dev-a")
    with probe(broker, "dev-a", old) as session:
        assert session.connect().value == 0
        new = services.rotate_credentials("dev-a", actor=None)
        assert session.wait_disconnected(), "the session opened with the old secret must be dropped"
    assert login(broker, "dev-a", old) == NOT_AUTHORIZED
    assert login(broker, "dev-a", new) == 0


def test_disable_drops_the_device_and_reactivation_lets_it_back(broker):
    secret = activated("dev-a")
    with probe(broker, "dev-a", secret) as session:
        assert session.connect().value == 0
        assert services.disable_device("dev-a", actor=None)
        assert session.wait_disconnected()
    assert login(broker, "dev-a", secret) == NOT_AUTHORIZED
    fresh = services.activate_device("dev-a", actor=None)
    assert login(broker, "dev-a", secret) == NOT_AUTHORIZED
    assert login(broker, "dev-a", fresh) == 0


def test_delete_removes_the_account_and_its_role(broker):
    secret = activated("dev-a")
    device = DeviceFactory.build(id="dev-a")
    with probe(broker, "dev-a", secret) as session:
        assert session.connect().value == 0
        services.delete_device(device, actor=None)
        assert session.wait_disconnected()
    assert login(broker, "dev-a", secret) == NOT_AUTHORIZED
    with admin(broker) as client:
        assert "dev-a" not in {c["username"] for c in client.list_clients()}
        assert "device:dev-a" not in {r["rolename"] for r in client.list_roles()}


def test_a_device_cannot_take_over_the_bridge_account(broker):
    """A device whose id is the bridge's username gets no broker account at all."""
    services.activate_device(DeviceFactory(id=broker.bridge.username), actor=None)
    assert login(broker, broker.bridge.username, broker.bridge.password) == 0
    with admin(broker) as client:
        (bridge,) = [c for c in client.list_clients() if c["username"] == broker.bridge.username]
        assert [r["rolename"] for r in bridge["roles"]] == ["fluxiot-bridge"]


def test_broker_down_does_not_fail_the_registry(broker, caplog):
    broker.stop()
    caplog.set_level(logging.ERROR, logger="devices.services")
    secret = services.activate_device(DeviceFactory(id="dev-a"), actor=None)
    assert services.verify_device_secret("dev-a", secret)
    assert any("dev-a" in r.getMessage() and r.exc_info for r in caplog.records)


def test_stored_broker_hash_is_mosquittos_format(broker):
    secret = activated("dev-a")
    credential = DeviceCredential.objects.get(device_id="dev-a")
    assert credential.broker_salt and credential.broker_hash
    # Rebuild the broker from the stored hash alone: the secret still logs in.
    config = initial_dynsec_config(broker.admin, broker.bridge)
    config["clients"].append(
        {
            "username": "dev-a",
            "password": credential.broker_hash,
            "salt": credential.broker_salt,
            "iterations": 101,
            "roles": [{"rolename": "device:dev-a"}],
        }
    )
    config["roles"].append({"rolename": "device:dev-a", "acls": device_acls("dev-a")})
    broker.restart(config)
    assert login(broker, "dev-a", secret) == 0


def test_write_config_rebuilds_the_broker_from_the_registry(broker, tmp_path):
    secret_a, secret_b = activated("dev-a"), activated("dev-b")
    services.disable_device("dev-b", actor=None)
    DeviceFactory(id="dev-never-activated")
    path = tmp_path / "dynamic-security.json"

    call_command("sync_broker", "--write-config", str(path))

    assert path.stat().st_mode & 0o777 == 0o600
    config = json.loads(path.read_text())
    assert {c["username"] for c in config["clients"]} == {broker.admin.username, broker.bridge.username, "dev-a"}
    # A fresh broker started from this file: nothing else but what the registry says.
    broker.restart(config)
    assert login(broker, "dev-a", secret_a) == 0
    assert login(broker, "dev-b", secret_b) == NOT_AUTHORIZED
    assert login(broker, broker.bridge.username, broker.bridge.password) == 0
    with probe(broker, "dev-a", secret_a) as device:
        assert device.connect().value == 0
        assert device.subscribe("devices/dev-a/#") == [1]
        assert device.subscribe("devices/#") == [NOT_AUTHORIZED]
    with admin(broker) as client:
        assert {c["username"] for c in client.list_clients()} == {
            broker.admin.username,
            broker.bridge.username,
            "dev-a",
        }


def test_write_config_to_stdout_and_without_passwords(broker, settings, capsys):
    call_command("sync_broker", "--write-config", "-")
    config = json.loads(capsys.readouterr().out)
    assert config["defaultACLAccess"] == {
        "publishClientSend": False,
        "publishClientReceive": False,
        "subscribe": False,
        "unsubscribe": False,
    }
    settings.MQTT_BRIDGE_PASSWORD = ""
    with pytest.raises(CommandError, match="bridge"):
        call_command("sync_broker", "--write-config", "-")


def test_online_sync_repairs_a_broker_changed_behind_the_platforms_back(broker, capsys):
    secrets_ = {device_id: activated(device_id) for device_id in ("dev-a", "dev-b", "dev-c", "dev-d", "dev-e")}
    services.disable_device("dev-e", actor=None)
    with admin(broker) as client:
        client.run(
            [
                {"command": "disableClient", "username": "dev-a"},  # an active device disabled
                {"command": "removeClientRole", "username": "dev-b", "rolename": "device:dev-b"},
                {"command": "deleteRole", "rolename": "device:dev-b"},  # an active device's role gone
                # An active device's role widened to every device.
                {"command": "removeRoleACL", "rolename": "device:dev-c", "acltype": "subscribePattern",
                 "topic": "devices/dev-c/#"},
                {"command": "addRoleACL", "rolename": "device:dev-c", "acltype": "subscribePattern",
                 "topic": "devices/#", "allow": True},
                {"command": "deleteClient", "username": "dev-d"},  # an active device's account gone
                {"command": "enableClient", "username": "dev-e"},  # a disabled device let back in
                # A device the registry never heard of, and an operator's own account.
                {"command": "createRole", "rolename": "device:ghost", "acls": device_acls("ghost")},
                {"command": "createClient", "username": "ghost", "password": "boo",
                 "roles": [{"rolename": "device:ghost"}]},
                {"command": "createClient", "username": "monitoring", "password": "m"},
                {"command": "setDefaultACLAccess", "acls": [{"acltype": "publishClientReceive", "allow": True}]},
            ]
        )  # fmt: skip
    assert login(broker, "dev-a", secrets_["dev-a"]) == NOT_AUTHORIZED
    assert login(broker, "ghost", "boo") == 0

    call_command("sync_broker", "--dry-run")
    dry = capsys.readouterr()
    assert "dry run" in dry.out.lower()
    assert login(broker, "ghost", "boo") == 0, "a dry run changes nothing"

    call_command("sync_broker")
    out, err = capsys.readouterr()
    assert "Broker reconciled" in out
    assert "dev-d" in err and "--write-config" in err  # its secret cannot be re-sent

    assert login(broker, "dev-a", secrets_["dev-a"]) == 0
    with probe(broker, "dev-b", secrets_["dev-b"]) as device:
        assert device.connect().value == 0
        assert device.subscribe("devices/dev-b/#") == [1]
    with probe(broker, "dev-c", secrets_["dev-c"]) as device:
        assert device.connect().value == 0
        assert device.subscribe("devices/#") == [NOT_AUTHORIZED]
        assert device.subscribe("devices/dev-c/#") == [1]
    assert login(broker, "dev-d", secrets_["dev-d"]) == NOT_AUTHORIZED
    assert login(broker, "dev-e", secrets_["dev-e"]) == NOT_AUTHORIZED
    assert login(broker, "ghost", "boo") == NOT_AUTHORIZED
    assert login(broker, "monitoring", "m") == 0, "accounts that are not devices are left alone"
    with admin(broker) as client:
        roles = {r["rolename"] for r in client.list_roles()}
        assert "device:ghost" not in roles and "device:dev-e" not in roles
        (default,) = client.run([{"command": "getDefaultACLAccess"}])
        assert not any(acl["allow"] for acl in default["data"]["acls"])

    # A second run finds nothing to change but still reports the device it cannot restore.
    call_command("sync_broker")
    out, err = capsys.readouterr()
    assert "already matches" in out
    assert "dev-d" in err

    # Rotating the missing device's credentials gives it an account again.
    fresh = services.rotate_credentials("dev-d", actor=None)
    assert login(broker, "dev-d", fresh) == 0


def test_online_sync_creates_a_missing_bridge_account(broker, capsys):
    with admin(broker) as client:
        client.run([{"command": "deleteClient", "username": broker.bridge.username}])
    assert login(broker, broker.bridge.username, broker.bridge.password) == NOT_AUTHORIZED
    call_command("sync_broker")
    assert "created" in capsys.readouterr().out
    assert login(broker, broker.bridge.username, broker.bridge.password) == 0


def test_online_sync_fails_clearly_when_the_broker_is_unreachable(broker):
    broker.stop()
    with pytest.raises(CommandError, match="cannot reach the MQTT broker"):
        call_command("sync_broker", "--timeout", "2")


def test_online_sync_fails_clearly_with_wrong_admin_credentials(broker, settings):
    settings.MQTT_DYNSEC_PASSWORD = "wrong"
    with pytest.raises(CommandError, match="refused the dynsec admin"):
        call_command("sync_broker", "--timeout", "2")


def test_nothing_is_sent_when_dynsec_is_disabled(broker, settings):
    settings.MQTT_DYNSEC_ENABLED = False
    secret = activated("dev-a")
    assert login(broker, "dev-a", secret) == NOT_AUTHORIZED


def test_build_dynsec_config_lists_only_active_devices_with_hashes(broker):
    activated("dev-a")
    activated("dev-old")
    DeviceCredential.objects.filter(device_id="dev-old").update(broker_salt="", broker_hash="")
    skipped: list[str] = []
    config = build_dynsec_config(skipped=skipped)
    assert skipped == ["dev-old"]
    assert [c["username"] for c in config["clients"]][2:] == ["dev-a"]
    assert {r["rolename"] for r in config["roles"]} == {"fluxiot-dynsec-admin", "fluxiot-bridge", "device:dev-a"}


def test_sync_broker_completes_a_broker_set_up_with_mosquitto_ctrl(settings, tmp_path, capsys):
    """The documented alternative first install: `mosquitto_ctrl dynsec init`, then `sync_broker`."""
    admin_account = Account("fluxiot-admin", "admin-pw")
    bridge_account = Account("fluxiot-bridge", "bridge-pw")
    path = tmp_path / "init.json"
    subprocess.run(
        ["mosquitto_ctrl", "dynsec", "init", str(path), admin_account.username, admin_account.password],
        check=True,
        capture_output=True,
        timeout=10,
    )
    secret = activated("dev-a")  # before the broker exists: the hook is off
    with mosquitto(dynsec_config=json.loads(path.read_text()), admin=admin_account, bridge=bridge_account) as b:
        settings.MQTT_URL = b.url
        settings.MQTT_DYNSEC_ENABLED = True
        settings.MQTT_DYNSEC_USERNAME, settings.MQTT_DYNSEC_PASSWORD = admin_account.username, admin_account.password
        settings.MQTT_BRIDGE_USERNAME, settings.MQTT_BRIDGE_PASSWORD = bridge_account.username, bridge_account.password
        assert login(b, bridge_account.username, bridge_account.password) == NOT_AUTHORIZED

        call_command("sync_broker")
        out, err = capsys.readouterr()
        assert "bridge account 'fluxiot-bridge': created" in out
        assert "default ACL access" in out
        assert "dev-a" in err  # activated before the broker existed: rotate it or rebuild

        with probe(b, bridge_account.username, bridge_account.password) as bridge:
            assert bridge.connect().value == 0
            assert bridge.subscribe("$share/fluxiot/devices/+/telemetry") == [1]
        fresh = services.rotate_credentials("dev-a", actor=None)
        assert login(b, "dev-a", fresh) == 0
        assert login(b, "dev-a", secret) == NOT_AUTHORIZED


def test_plain_test_broker_takes_anonymous_clients_and_its_limits():
    with mosquitto(dynsec=False, max_queued_messages=5, max_inflight_messages=2) as plain:
        config = plain.config_path.read_text()
        assert "max_queued_messages 5" in config and "max_inflight_messages 2" in config
        assert "allow_anonymous true" in config and "dynamic_security" not in config
        with MqttProbe(plain.host, plain.port) as client:
            assert client.connect().value == 0
            assert client.subscribe("anything/#") == [1]
    assert plain.process is None

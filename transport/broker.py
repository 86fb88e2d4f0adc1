"""Device accounts at the MQTT broker: Mosquitto's dynamic security plugin kept in step with the registry.

A device logs in with its id as username and its secret as password, and may publish, receive and
subscribe only under ``devices/{id}/``. Mosquitto 2.0's dynamic security has no ``%u`` substitution
in role ACLs, so every device gets a role of its own, ``device:{id}``. The bridge has its own account
(``MQTT_BRIDGE_USERNAME``) with a role over ``devices/#``, and the platform administers the plugin
with a third account (``MQTT_DYNSEC_USERNAME``) that may only talk to ``$CONTROL/dynamic-security``.

- ``on_credentials_changed`` is the registry's hook (``devices.hooks.credentials_changed``): it
  creates, re-keys, disables or deletes the device's account as the device is activated, rotated,
  disabled or deleted. It does nothing unless ``MQTT_DYNSEC_ENABLED``.
- ``build_dynsec_config`` writes the plugin's whole configuration file from the registry (for an
  offline rebuild: the registry keeps each secret hashed the way the plugin does).
- ``DynsecClient`` is the small admin client both use, over paho-mqtt (MQTT 5).
"""

from __future__ import annotations

import itertools
import json
import logging
import secrets
import ssl
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from django.conf import settings
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from devices.choices import ActivationState
from devices.models import DeviceCredential
from devices.services import broker_password_hash

logger = logging.getLogger(__name__)

CONTROL_TOPIC = "$CONTROL/dynamic-security/v1"
RESPONSE_TOPIC = f"{CONTROL_TOPIC}/response"
DEVICE_ROLE_PREFIX = "device:"
BRIDGE_ROLE = "fluxiot-bridge"
ADMIN_ROLE = "fluxiot-dynsec-admin"
# Commands per control message; every response comes back in one message, so keep both bounded.
BATCH_SIZE = 500

# Everything is refused unless a role allows it.
DEFAULT_ACL_ACCESS = {
    "publishClientSend": False,
    "publishClientReceive": False,
    "subscribe": False,
    "unsubscribe": False,
}

# Errors of idempotent commands that mean "already as wanted" (Mosquitto 2.0 wording).
ALREADY_EXISTS = ("already exists",)
NOT_FOUND = ("not found",)


class BrokerError(Exception):
    """The broker could not be reached or refused a command."""


class BrokerUnavailable(BrokerError):
    """No connection to the broker, the admin login was refused, or it did not answer in time."""


class BrokerCommandError(BrokerError):
    """The dynamic security plugin answered a command with an error."""

    def __init__(self, command: dict[str, Any], error: str) -> None:
        super().__init__(f"{command.get('command')} {_subject(command)}: {error}")
        self.command = command
        self.error = error


def _subject(command: dict[str, Any]) -> str:
    return str(command.get("username") or command.get("rolename") or command.get("groupname") or "")


# --- Names and ACLs ---------------------------------------------------------------------------------


def device_role(device_id: str) -> str:
    return f"{DEVICE_ROLE_PREFIX}{device_id}"


def device_id_of_role(rolename: str) -> str | None:
    return rolename[len(DEVICE_ROLE_PREFIX) :] if rolename.startswith(DEVICE_ROLE_PREFIX) else None


def _acl(acltype: str, topic: str) -> dict[str, Any]:
    return {"acltype": acltype, "topic": topic, "priority": 0, "allow": True}


def device_acls(device_id: str) -> list[dict[str, Any]]:
    prefix = f"devices/{device_id}/#"
    return [
        _acl("publishClientSend", prefix),
        _acl("publishClientReceive", prefix),
        _acl("subscribePattern", prefix),
        _acl("unsubscribePattern", prefix),
    ]


def bridge_acls() -> list[dict[str, Any]]:
    """The bridge reads every device's messages (through shared subscriptions) and publishes
    commands and configuration to them."""
    return [
        _acl("subscribePattern", "$share/+/devices/#"),
        _acl("subscribePattern", "devices/#"),
        _acl("unsubscribePattern", "$share/+/devices/#"),
        _acl("unsubscribePattern", "devices/#"),
        _acl("publishClientReceive", "devices/#"),
        _acl("publishClientSend", "devices/#"),
    ]


def admin_acls() -> list[dict[str, Any]]:
    topic = "$CONTROL/dynamic-security/#"
    return [
        _acl("publishClientSend", topic),
        _acl("publishClientReceive", topic),
        _acl("subscribePattern", topic),
        _acl("unsubscribePattern", topic),
    ]


def reserved_usernames() -> set[str]:
    """Broker accounts that are not devices: a device with one of these ids never gets an account
    (it would take over the bridge's or the administrator's)."""
    return {name for name in (settings.MQTT_BRIDGE_USERNAME, settings.MQTT_DYNSEC_USERNAME) if name}


# --- The admin client ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class BrokerAddress:
    host: str
    port: int
    tls: bool = False


def broker_address(url: str | None = None) -> BrokerAddress:
    """``mqtt://host:1883`` or ``mqtts://host:8883`` (``MQTT_URL`` by default)."""
    url = url if url is not None else settings.MQTT_URL
    if not url:
        raise BrokerUnavailable("MQTT_URL is not set: there is no external broker to administer.")
    parts = urlsplit(url if "://" in url else f"mqtt://{url}")
    tls = parts.scheme in {"mqtts", "ssl", "tls", "mqtt+ssl"}
    if parts.scheme not in {"mqtt", "tcp", "mqtts", "ssl", "tls", "mqtt+ssl"} or not parts.hostname:
        raise BrokerUnavailable(f"MQTT_URL {url!r} is not mqtt://host:port or mqtts://host:port.")
    return BrokerAddress(parts.hostname, parts.port or (8883 if tls else 1883), tls)


def _check(commands: Sequence[dict[str, Any]], responses: Sequence[dict[str, Any]], *tolerate: str) -> None:
    tolerated = [t.lower() for t in tolerate]
    failures = [
        BrokerCommandError(command, str(response["error"]))
        for command, response in zip(commands, responses, strict=True)
        if response.get("error") and not any(t in str(response["error"]).lower() for t in tolerated)
    ]
    for failure in failures:
        logger.warning("dynsec: %s", failure)
    if failures:
        raise failures[0]


class DynsecClient:
    """A synchronous client of the dynamic security plugin's control topic.

    ``execute`` sends commands, many per message, and returns one response per command, in order::

        with DynsecClient.from_settings() as client:
            client.execute([{"command": "listClients"}])

    Each response is the plugin's own dict: ``{"command": …, "error": "…"}`` on failure, possibly
    with ``"data"``. ``run`` raises ``BrokerCommandError`` for errors instead."""

    def __init__(
        self,
        address: BrokerAddress,
        username: str,
        password: str,
        *,
        timeout: float = 10.0,
        client_id: str | None = None,
        batch_size: int = BATCH_SIZE,
    ) -> None:
        self.address = address
        self.batch_size = batch_size
        self.username = username
        self.password = password
        self.timeout = timeout
        self.client_id = client_id or f"fluxiot-dynsec-{secrets.token_hex(6)}"
        self._client: mqtt.Client | None = None
        self._lock = threading.Lock()
        self._connected = threading.Event()
        self._subscribed = threading.Event()
        self._connect_reason: ReasonCode | None = None
        self._waiting: dict[str, dict[str, Any] | None] = {}
        self._arrived = threading.Condition(self._lock)
        self._counter = itertools.count(1)
        self._prefix = secrets.token_hex(4)
        self._lost: str | None = None

    @classmethod
    def from_settings(cls, *, timeout: float | None = None, batch_size: int = BATCH_SIZE) -> DynsecClient:
        if not settings.MQTT_DYNSEC_PASSWORD:
            raise BrokerUnavailable(
                "MQTT_DYNSEC_PASSWORD is not set: cannot log in to the broker as its administrator."
            )
        return cls(
            broker_address(),
            settings.MQTT_DYNSEC_USERNAME,
            settings.MQTT_DYNSEC_PASSWORD,
            timeout=timeout if timeout is not None else settings.MQTT_DYNSEC_TIMEOUT,
            batch_size=batch_size,
        )

    def __enter__(self) -> DynsecClient:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # Connection ------------------------------------------------------------------------------

    def connect(self) -> None:
        where = f"{self.address.host}:{self.address.port}"
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=mqtt.MQTTv5, reconnect_on_failure=False
        )
        client.username_pw_set(self.username, self.password)
        if self.address.tls:
            client.tls_set_context(ssl.create_default_context())
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        client.on_disconnect = self._on_disconnect
        self._client = client
        try:
            client.connect(self.address.host, self.address.port, keepalive=30)
        except (OSError, ssl.SSLError) as exc:
            self._client = None
            raise BrokerUnavailable(f"cannot reach the MQTT broker at {where}: {exc}") from exc
        client.loop_start()
        try:
            if not self._connected.wait(self.timeout):
                raise BrokerUnavailable(f"the MQTT broker at {where} did not answer CONNECT in {self.timeout:g}s")
            if self._connect_reason is None or self._connect_reason.is_failure:
                raise BrokerUnavailable(
                    f"the MQTT broker at {where} refused the dynsec admin {self.username!r}: {self._connect_reason}"
                )
            client.subscribe(RESPONSE_TOPIC, qos=1)
            if not self._subscribed.wait(self.timeout):
                raise BrokerUnavailable(f"the MQTT broker at {where} did not answer SUBSCRIBE in {self.timeout:g}s")
            if self._lost:
                raise BrokerUnavailable(f"the MQTT broker at {where}: {self._lost}")
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        try:
            client.disconnect()
        finally:
            client.loop_stop()

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode, properties: Properties | None
    ) -> None:
        self._connect_reason = reason
        self._connected.set()

    def _on_subscribe(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reasons: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        if any(reason.is_failure for reason in reasons):
            self._lost = f"subscription to {RESPONSE_TOPIC} refused ({', '.join(map(str, reasons))})"
        self._subscribed.set()

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode, properties: Properties | None
    ) -> None:
        with self._arrived:
            self._lost = f"connection lost ({reason})"
            self._arrived.notify_all()
        self._connected.set()
        self._subscribed.set()

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        try:
            responses = json.loads(message.payload)["responses"]
        except (ValueError, KeyError, TypeError):
            logger.warning("dynsec: unreadable response %r", message.payload[:200])
            return
        with self._arrived:
            for response in responses:
                key = response.get("correlationData") if isinstance(response, dict) else None
                if key in self._waiting:
                    self._waiting[key] = response
            self._arrived.notify_all()

    # Commands --------------------------------------------------------------------------------

    def execute(self, commands: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """Send ``commands`` (``batch_size`` per message) and return their responses, in order."""
        responses: list[dict[str, Any]] = []
        for start in range(0, len(commands), self.batch_size):
            responses.extend(self._execute_batch(commands[start : start + self.batch_size]))
        return responses

    def _execute_batch(self, commands: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        client = self._client
        if client is None:
            raise BrokerUnavailable("the dynsec client is not connected")
        keys = [f"{self._prefix}-{next(self._counter)}" for _ in commands]
        payload = json.dumps({"commands": [{**c, "correlationData": k} for c, k in zip(commands, keys, strict=True)]})
        with self._arrived:
            for key in keys:
                self._waiting[key] = None
        try:
            info = client.publish(CONTROL_TOPIC, payload, qos=1)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                raise BrokerUnavailable(f"could not send dynsec commands: {mqtt.error_string(info.rc)}")
            # The plugin handles a message in one go, saving its file after every change: allow for that.
            deadline = time.monotonic() + self.timeout + len(commands) * 0.02
            with self._arrived:
                while any(self._waiting[key] is None for key in keys):
                    if self._lost:
                        raise BrokerUnavailable(f"dynsec: {self._lost}")
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        missing = sum(1 for key in keys if self._waiting[key] is None)
                        raise BrokerUnavailable(
                            f"dynsec: no response to {missing} of {len(keys)} commands within {self.timeout:g}s "
                            "(is the dynamic security plugin loaded, and may this account use $CONTROL?)"
                        )
                    self._arrived.wait(remaining)
                return [self._waiting[key] or {} for key in keys]
        finally:
            with self._arrived:
                for key in keys:
                    self._waiting.pop(key, None)

    def run(self, commands: Sequence[dict[str, Any]], *, tolerate: Iterable[str] = ()) -> list[dict[str, Any]]:
        """``execute``; then, if any command failed with an error whose text contains none of
        ``tolerate`` (case-insensitive), raise ``BrokerCommandError`` for the first (all commands
        have been sent by then; every failure is logged)."""
        responses = self.execute(commands)
        _check(commands, responses, *tolerate)
        return responses

    # Queries -------------------------------------------------------------------------------------

    def _list(self, command: str, key: str, page: int = 1000) -> Iterator[dict[str, Any]]:
        offset = 0
        while True:
            (response,) = self.run([{"command": command, "verbose": True, "count": page, "offset": offset}])
            items = (response.get("data") or {}).get(key) or []
            yield from items
            total = (response.get("data") or {}).get("totalCount", 0)
            offset += len(items)
            if not items or offset >= total:
                return

    def list_clients(self) -> list[dict[str, Any]]:
        """Every client, verbose: ``{"username", "disabled", "roles": [{"rolename"…}], …}``."""
        return list(self._list("listClients", "clients"))

    def list_roles(self) -> list[dict[str, Any]]:
        """Every role, verbose: ``{"rolename", "acls": [{"acltype", "topic", "allow", "priority"}]}``."""
        return list(self._list("listRoles", "roles"))


# --- The registry's hook ------------------------------------------------------------------------------


def apply_device_change(client: DynsecClient, device_id: str, secret: str | None, action: str) -> None:
    """Bring one device's broker account in line with a registry change:

    - ``activated`` / ``rotated``: make sure the device's role exists, then create the account with
      the secret, or (it exists) set the new password, give it its role back if it lost it, and
      enable it. A rotation also disables the account for a moment: that drops every session that
      logged in with the old secret.
    - ``disabled``: disable the account (dropping its sessions); ``deleted``: delete account and role.

    Roles or groups an operator added to the account by hand are kept."""
    username, role = device_id, device_role(device_id)
    if action in {"activated", "rotated"}:
        if not secret:
            raise ValueError(f"{action} needs the new secret")
        first = [
            {"command": "createRole", "rolename": role, "acls": device_acls(device_id)},
            {"command": "getClient", "username": username},
        ]
        created_role, found = client.execute(first)
        _check(first[:1], [created_role], *ALREADY_EXISTS)
        if found.get("error"):
            _check(first[1:], [found], *NOT_FOUND)
            client.run(
                [{"command": "createClient", "username": username, "password": secret, "roles": [{"rolename": role}]}]
            )
            return
        roles = {r.get("rolename") for r in ((found.get("data") or {}).get("client") or {}).get("roles") or []}
        commands: list[dict[str, Any]] = [{"command": "setClientPassword", "username": username, "password": secret}]
        if role not in roles:
            commands.append({"command": "addClientRole", "username": username, "rolename": role})
        if action == "rotated":
            commands.append({"command": "disableClient", "username": username})
        commands.append({"command": "enableClient", "username": username})
        client.run(commands)
    elif action == "disabled":
        client.run([{"command": "disableClient", "username": username}], tolerate=NOT_FOUND)
    elif action == "deleted":
        client.run(
            [{"command": "deleteClient", "username": username}, {"command": "deleteRole", "rolename": role}],
            tolerate=NOT_FOUND,
        )
    else:
        raise ValueError(f"unknown credentials action {action!r}")


def on_credentials_changed(device_id: str, secret: str | None, action: str) -> None:
    """Mirror a registry change at the broker (``devices.hooks.credentials_changed``). Raises
    ``BrokerError`` when the broker cannot be told; the registry logs it and ``sync_broker``
    repairs the broker later."""
    if not settings.MQTT_DYNSEC_ENABLED:
        return
    if device_id in reserved_usernames():
        logger.error("dynsec: device id %r is a reserved broker account; it gets no MQTT login", device_id)
        return
    started = time.monotonic()
    with DynsecClient.from_settings() as client:
        apply_device_change(client, device_id, secret, action)
    logger.info("dynsec: device %s %s at the broker in %.0f ms", device_id, action, (time.monotonic() - started) * 1000)


# --- Offline rebuild -------------------------------------------------------------------------------


def _client_entry(username: str, salt: str, password_hash: str, iterations: int, role: str) -> dict[str, Any]:
    return {
        "username": username,
        "password": password_hash,
        "salt": salt,
        "iterations": iterations,
        "roles": [{"rolename": role}],
    }


def _account(username: str, password: str, role: str, what: str) -> dict[str, Any]:
    if not username or not password:
        raise BrokerError(f"the {what} account needs a username and a password (see docs/DEPLOYMENT.md)")
    iterations = settings.MQTT_DYNSEC_ITERATIONS
    salt, password_hash = broker_password_hash(password, iterations=iterations)
    return _client_entry(username, salt, password_hash, iterations, role)


def active_device_hashes() -> Iterator[tuple[str, str, str]]:
    """``(device id, broker salt, broker hash)`` of every active device, in id order (those whose
    credentials predate the broker hash have empty strings)."""
    rows = (
        DeviceCredential.objects.filter(device__activation_state=ActivationState.ACTIVE)
        .order_by("device_id")
        .values_list("device_id", "broker_salt", "broker_hash")
    )
    yield from rows.iterator(chunk_size=5000)


def build_dynsec_config(
    *,
    admin_username: str | None = None,
    admin_password: str | None = None,
    bridge_username: str | None = None,
    bridge_password: str | None = None,
    skipped: list[str] | None = None,
) -> dict[str, Any]:
    """The dynamic security plugin's complete configuration (its ``dynamic-security.json``) from the
    registry: the admin and bridge accounts (settings unless given) and every active device with the
    hash of its current secret. Active devices without a stored broker hash (credentials issued
    before the broker hash existed) and devices with a reserved id are left out and appended to
    ``skipped``: rotate their credentials to give them an account."""
    admin = _account(
        admin_username if admin_username is not None else settings.MQTT_DYNSEC_USERNAME,
        admin_password if admin_password is not None else settings.MQTT_DYNSEC_PASSWORD,
        ADMIN_ROLE,
        "dynsec admin",
    )
    bridge = _account(
        bridge_username if bridge_username is not None else settings.MQTT_BRIDGE_USERNAME,
        bridge_password if bridge_password is not None else settings.MQTT_BRIDGE_PASSWORD,
        BRIDGE_ROLE,
        "bridge",
    )
    if admin["username"] == bridge["username"]:
        raise BrokerError("the bridge and the dynsec admin need different usernames")
    reserved = {admin["username"], bridge["username"]}
    clients = [admin, bridge]
    roles = [
        {"rolename": ADMIN_ROLE, "textname": "FluxIoT: administers dynamic security", "acls": admin_acls()},
        {"rolename": BRIDGE_ROLE, "textname": "FluxIoT: the MQTT bridge", "acls": bridge_acls()},
    ]
    for device_id, salt, password_hash in active_device_hashes():
        if not salt or not password_hash or device_id in reserved:
            if skipped is not None:
                skipped.append(device_id)
            continue
        role = device_role(device_id)
        clients.append(_client_entry(device_id, salt, password_hash, settings.MQTT_DYNSEC_ITERATIONS, role))
        roles.append({"rolename": role, "acls": device_acls(device_id)})
    return {"clients": clients, "groups": [], "roles": roles, "defaultACLAccess": dict(DEFAULT_ACL_ACCESS)}


# --- Online reconciliation -----------------------------------------------------------------------------


def _acl_key(acl: dict[str, Any]) -> tuple[str, str, bool, int]:
    return (str(acl.get("acltype")), str(acl.get("topic")), bool(acl.get("allow")), int(acl.get("priority") or 0))


def _role_names(client: dict[str, Any]) -> set[str]:
    return {str(r.get("rolename")) for r in client.get("roles") or [] if r.get("rolename")}


@dataclass
class SyncReport:
    """What ``sync_broker`` found and did (or, in a dry run, would do). Lists hold usernames or
    device ids."""

    clients_at_broker: int = 0
    roles_at_broker: int = 0
    active_devices: int = 0
    default_acl_reset: bool = False
    roles_created: list[str] = field(default_factory=list)
    roles_repaired: list[str] = field(default_factory=list)
    roles_deleted: list[str] = field(default_factory=list)
    clients_enabled: list[str] = field(default_factory=list)
    clients_role_added: list[str] = field(default_factory=list)
    clients_roles_removed: list[str] = field(default_factory=list)
    clients_deleted: list[str] = field(default_factory=list)
    bridge: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    others: list[str] = field(default_factory=list)
    commands: list[dict[str, Any]] = field(default_factory=list)


def _role_fix(rolename: str, have: list[dict[str, Any]], want: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Commands that turn a role's ACLs from ``have`` into ``want`` (empty when equal)."""
    have_keys, want_keys = {_acl_key(a) for a in have}, {_acl_key(a) for a in want}
    if have_keys == want_keys:
        return []
    commands: list[dict[str, Any]] = []
    for acltype, topic, _allow, _priority in sorted(have_keys - want_keys):
        commands.append({"command": "removeRoleACL", "rolename": rolename, "acltype": acltype, "topic": topic})
    for acltype, topic, allow, priority in sorted(want_keys - have_keys):
        commands.append(
            {
                "command": "addRoleACL",
                "rolename": rolename,
                "acltype": acltype,
                "topic": topic,
                "priority": priority,
                "allow": allow,
            }
        )
    return commands


def _registered_ids(candidates: Iterable[str]) -> set[str]:
    from devices.models import Device

    found: set[str] = set()
    pending = list(candidates)
    for start in range(0, len(pending), 5000):
        chunk = pending[start : start + 5000]
        found.update(Device.objects.filter(pk__in=chunk).values_list("pk", flat=True))
    return found


def plan_sync(client: DynsecClient) -> SyncReport:
    """Compare the broker's accounts with the registry and list the commands that reconcile them.

    - default ACL access: everything denied unless a role allows it;
    - the bridge's role and account (created with ``MQTT_BRIDGE_PASSWORD`` when missing), enabled;
    - every active device: its role with the right ACLs, its account enabled, holding its role and
      no other device's role. An active device without an account is reported in ``missing``: its
      secret is not known, so only ``--write-config`` and a restart, or a rotation, can restore it;
    - accounts of devices that are not active or not in the registry are deleted, and the roles of
      such devices too. Accounts that are not devices (the admin, other operators' accounts) are left
      alone."""
    report = SyncReport()
    (default_acl,) = client.run([{"command": "getDefaultACLAccess"}])
    clients = client.list_clients()
    roles = {str(r.get("rolename")): r for r in client.list_roles()}
    report.clients_at_broker, report.roles_at_broker = len(clients), len(roles)
    active = {device_id for device_id, _salt, _hash in active_device_hashes()}
    reserved = reserved_usernames()
    active -= reserved
    report.active_devices = len(active)
    commands = report.commands

    have_default = {a.get("acltype"): bool(a.get("allow")) for a in (default_acl.get("data") or {}).get("acls") or []}
    if any(have_default.get(kind) is not False for kind in DEFAULT_ACL_ACCESS):
        report.default_acl_reset = True
        commands.append(
            {
                "command": "setDefaultACLAccess",
                "acls": [{"acltype": kind, "allow": allow} for kind, allow in DEFAULT_ACL_ACCESS.items()],
            }
        )

    # Roles: the bridge's and one per active device, with exactly the platform's ACLs.
    wanted_roles = {BRIDGE_ROLE: bridge_acls(), **{device_role(d): device_acls(d) for d in sorted(active)}}
    for rolename, acls in wanted_roles.items():
        subject = device_id_of_role(rolename) or rolename
        if rolename not in roles:
            commands.append({"command": "createRole", "rolename": rolename, "acls": acls})
            report.roles_created.append(subject)
        else:
            fix = _role_fix(rolename, roles[rolename].get("acls") or [], acls)
            if fix:
                commands.extend(fix)
                report.roles_repaired.append(subject)
    doomed_roles = sorted(r for r in roles if device_id_of_role(r) is not None and device_id_of_role(r) not in active)

    # Accounts.
    by_name = {str(c.get("username")): c for c in clients}
    unclaimed = [
        name
        for name, c in by_name.items()
        if name not in active and name not in reserved and device_role(name) not in _role_names(c)
    ]
    registered = _registered_ids(unclaimed)
    deleted: set[str] = set()
    for name in sorted(by_name):
        account = by_name[name]
        held = _role_names(account)
        if name == settings.MQTT_BRIDGE_USERNAME:
            if account.get("disabled"):
                commands.append({"command": "enableClient", "username": name})
                report.bridge.append("enabled")
            if BRIDGE_ROLE not in held:
                commands.append({"command": "addClientRole", "username": name, "rolename": BRIDGE_ROLE})
                report.bridge.append(f"given the {BRIDGE_ROLE} role")
            continue
        if name in reserved:
            continue
        if name in active:
            foreign = sorted(r for r in held if device_id_of_role(r) is not None and r != device_role(name))
            for rolename in foreign:
                commands.append({"command": "removeClientRole", "username": name, "rolename": rolename})
            if foreign:
                report.clients_roles_removed.append(name)
            if device_role(name) not in held:
                commands.append({"command": "addClientRole", "username": name, "rolename": device_role(name)})
                report.clients_role_added.append(name)
            if account.get("disabled"):
                commands.append({"command": "enableClient", "username": name})
                report.clients_enabled.append(name)
        elif device_role(name) in held or name in registered:
            commands.append({"command": "deleteClient", "username": name})
            report.clients_deleted.append(name)
            deleted.add(name)
        else:
            report.others.append(name)
    if settings.MQTT_BRIDGE_USERNAME not in by_name:
        if settings.MQTT_BRIDGE_PASSWORD:
            commands.append(
                {
                    "command": "createClient",
                    "username": settings.MQTT_BRIDGE_USERNAME,
                    "password": settings.MQTT_BRIDGE_PASSWORD,
                    "roles": [{"rolename": BRIDGE_ROLE}],
                }
            )
            report.bridge.append("created")
        else:
            report.bridge.append("missing, and MQTT_BRIDGE_PASSWORD is not set to create it")

    # A role still held by a remaining account is taken from it first: Mosquitto 2.0.11 leaves a
    # dangling reference in the account when a role it holds is deleted.
    for rolename in doomed_roles:
        for name in sorted(by_name):
            if name not in deleted and rolename in _role_names(by_name[name]):
                commands.append({"command": "removeClientRole", "username": name, "rolename": rolename})
        commands.append({"command": "deleteRole", "rolename": rolename})
        report.roles_deleted.append(device_id_of_role(rolename) or rolename)
    report.missing = sorted(active - set(by_name))
    return report


def sync_broker(client: DynsecClient, *, dry_run: bool = False) -> SyncReport:
    """Reconcile the running broker with the registry (see ``plan_sync``); ``dry_run`` only plans."""
    report = plan_sync(client)
    if report.commands and not dry_run:
        client.run(report.commands)
    logger.info(
        "dynsec sync%s: %d commands, %d active devices missing at the broker",
        " (dry run)" if dry_run else "",
        len(report.commands),
        len(report.missing),
    )
    return report

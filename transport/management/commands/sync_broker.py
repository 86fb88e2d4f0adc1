"""Bring Mosquitto's dynamic security plugin in line with the device registry.

manage.py sync_broker                       reconcile the running broker through its control API
manage.py sync_broker --dry-run             only say what would change
manage.py sync_broker --write-config PATH   write the plugin's whole file, for a broker restart
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from transport.broker import (
    BrokerError,
    DynsecClient,
    SyncReport,
    broker_address,
    build_dynsec_config,
    sync_broker,
)

SHOWN = 20  # ids listed per line; -v 2 lists them all


class Command(BaseCommand):
    help = (
        "Reconcile the MQTT broker's device accounts (Mosquitto dynamic security) with the registry, "
        "or with --write-config write the plugin's complete configuration file for a broker restart."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--write-config",
            metavar="PATH",
            help="Write the complete dynamic-security.json (admin, bridge, every active device) to PATH "
            "('-' for standard output) instead of talking to the broker.",
        )
        parser.add_argument("--dry-run", action="store_true", help="Report what would change; change nothing.")
        parser.add_argument(
            "--timeout",
            type=float,
            default=30.0,
            help="Seconds to wait for the broker's answers (default 30; a broker with many accounts saves "
            "its file after every change).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["write_config"]:
            self._write_config(options["write_config"])
        else:
            self._sync(dry_run=options["dry_run"], timeout=options["timeout"], verbosity=options["verbosity"])

    # --write-config ------------------------------------------------------------------------------

    def _write_config(self, path: str) -> None:
        skipped: list[str] = []
        try:
            config = build_dynsec_config(skipped=skipped)
        except BrokerError as exc:
            raise CommandError(str(exc)) from exc
        text = json.dumps(config, indent=1) + "\n"
        devices = len(config["clients"]) - 2
        if path == "-":
            self.stdout.write(text, ending="")
        else:
            target = Path(path)
            # Atomically, readable by its owner only (it holds password hashes).
            fd, tmp = tempfile.mkstemp(dir=target.parent or Path("."), prefix=f".{target.name}.")
            try:
                with os.fdopen(fd, "w") as handle:
                    handle.write(text)
                os.chmod(tmp, 0o600)
                os.replace(tmp, target)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
            self.stdout.write(
                f"Wrote {target}: {devices} device accounts, the bridge account "
                f"{settings.MQTT_BRIDGE_USERNAME!r} and the admin account {settings.MQTT_DYNSEC_USERNAME!r}."
            )
            self.stdout.write(
                "Stop the broker, install this file as its plugin_opt_config_file (owned by the user "
                "Mosquitto runs as), then start the broker: the running plugin rewrites its file on every "
                "change, so replacing it under a running broker has no effect."
            )
        if skipped:
            self.stderr.write(
                self.style.WARNING(
                    f"{self._count(skipped, 'active device was', 'active devices were')} left out (no broker "
                    f"hash stored, or a reserved username): {self._ids(skipped, 2)}. Rotate their credentials "
                    "to give them an account."
                )
            )

    # online sync -----------------------------------------------------------------------------------

    def _sync(self, *, dry_run: bool, timeout: float, verbosity: int) -> None:
        try:
            address = broker_address()
            with DynsecClient.from_settings(timeout=timeout, batch_size=100) as client:
                report = sync_broker(client, dry_run=dry_run)
        except BrokerError as exc:
            raise CommandError(f"broker sync failed: {exc}") from exc
        self._report(report, f"{address.host}:{address.port}", dry_run, verbosity)

    @staticmethod
    def _count(ids: list[str], one: str, many: str) -> str:
        return f"{len(ids)} {one if len(ids) == 1 else many}"

    def _ids(self, ids: list[str], verbosity: int) -> str:
        if verbosity >= 2 or len(ids) <= SHOWN:
            return ", ".join(ids)
        return f"{', '.join(ids[:SHOWN])} … and {len(ids) - SHOWN} more"

    def _report(self, report: SyncReport, where: str, dry_run: bool, verbosity: int) -> None:
        write = self.stdout.write
        write(
            f"Broker {where}: {report.clients_at_broker} accounts, {report.roles_at_broker} roles; "
            f"registry: {report.active_devices} active devices."
        )
        lines = [
            ("device roles to create", report.roles_created),
            ("roles whose ACLs to repair", report.roles_repaired),
            ("device accounts to enable", report.clients_enabled),
            ("device accounts to give their role back", report.clients_role_added),
            ("device accounts to strip of other devices' roles", report.clients_roles_removed),
            ("accounts of inactive or unknown devices to delete", report.clients_deleted),
            ("roles of inactive or unknown devices to delete", report.roles_deleted),
        ]
        if report.others and verbosity >= 1:
            write(f"Accounts that are not devices, left alone: {self._ids(report.others, verbosity)}")
        if report.commands:
            write("Changes (dry run, not applied):" if dry_run else "Changes:")
        if report.default_acl_reset:
            write("  default ACL access to reset: deny everything roles do not allow")
        for label, ids in lines:
            if ids:
                write(f"  {label}: {len(ids)} ({self._ids(ids, verbosity)})")
        for note in report.bridge:
            line = f"  bridge account {settings.MQTT_BRIDGE_USERNAME!r}: {note}"
            if note.startswith("missing"):
                self.stderr.write(self.style.WARNING(line.strip()))
            else:
                write(line)
        if not report.commands:
            write(self.style.SUCCESS("The broker already matches the registry."))
        elif dry_run:
            write(f"Dry run: {len(report.commands)} commands would be sent; nothing was changed.")
            if verbosity >= 2:
                for command in report.commands:
                    shown = {k: ("*****" if k == "password" else v) for k, v in command.items()}
                    write(f"    {json.dumps(shown)}")
        else:
            write(self.style.SUCCESS(f"Broker reconciled: {len(report.commands)} commands applied."))
        if report.missing:
            self.stderr.write(
                self.style.WARNING(
                    f"{self._count(report.missing, 'active device has', 'active devices have')} no account at "
                    "the broker, and secrets are not kept, so no account can be made for them here: "
                    f"{self._ids(report.missing, verbosity)}.\n"
                    "Either rebuild the broker from the registry (`manage.py sync_broker --write-config PATH`, "
                    "then restart Mosquitto with that file), or rotate these devices' credentials."
                )
            )

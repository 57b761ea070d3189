"""A thin asyncio connection to systemd's manager over D-Bus (dbus-fast, 1.84 and 5.x).

Only the low-level API both versions share: ``Message``, ``MessageBus.call``
and ``send``, ``add_message_handler``, ``Variant``. ``call`` returns error
replies instead of raising; :meth:`SystemdBus.call` turns them into
:class:`SystemdError` with systemd's error name, so callers can tell
``NoSuchUnit`` from ``UnitExists``.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dbus_fast import BusType, Message, MessageFlag, MessageType, Variant
from dbus_fast.aio import MessageBus

SYSTEMD = "org.freedesktop.systemd1"
SYSTEMD_PATH = "/org/freedesktop/systemd1"
MANAGER = "org.freedesktop.systemd1.Manager"
UNIT = "org.freedesktop.systemd1.Unit"
SERVICE = "org.freedesktop.systemd1.Service"
PROPERTIES = "org.freedesktop.DBus.Properties"
DBUS = "org.freedesktop.DBus"

NO_SUCH_UNIT = "org.freedesktop.systemd1.NoSuchUnit"
UNIT_EXISTS = "org.freedesktop.systemd1.UnitExists"
TIMEOUT_ERROR = "org.freedesktop.DBus.Error.Timeout"
DISCONNECTED = "org.freedesktop.DBus.Error.Disconnected"

CALL_TIMEOUT = 10.0
"""Every call is bounded: systemd answers a job request at once (the job runs on)."""

MANAGER_MATCH = f"type='signal',sender='{SYSTEMD}',path='{SYSTEMD_PATH}',interface='{MANAGER}'"


def unit_match(path: str) -> str:
    """The match rule for one unit's PropertiesChanged (not every unit's on the machine)."""
    return (
        f"type='signal',sender='{SYSTEMD}',path='{path}',"
        f"interface='{PROPERTIES}',member='PropertiesChanged'"
    )


class SystemdError(Exception):
    """systemd (or the bus) answered a call with an error."""

    def __init__(self, name: str, text: str):
        super().__init__(f"{name}: {text}")
        self.name = name
        self.text = text


def marshals_unicode() -> bool:
    """True when this dbus-fast writes a string's length in UTF-8 bytes.

    dbus-fast 1.84 (Debian 12) writes the number of characters, and the bus
    drops a connection that sends such a message; a self-test on the real
    marshaller beats guessing from version numbers.
    """
    try:
        message = Message(
            destination=DBUS, path="/", interface=DBUS, member="X", signature="s", body=["\u00fc"]
        )
        return b"\x02\x00\x00\x00\xc3\xbc\x00" in bytes(message._marshall(False))
    except Exception:  # noqa: BLE001 - a private API changed: assume the worst
        return False


def user_bus_address() -> str | None:
    """The user's bus (for the user manager), from the environment or $XDG_RUNTIME_DIR."""
    if address := os.environ.get("DBUS_SESSION_BUS_ADDRESS"):
        return address
    runtime = os.environ.get("XDG_RUNTIME_DIR") or f"/run/user/{os.geteuid()}"
    path = Path(runtime) / "bus"
    return f"unix:path={path}" if path.exists() else None


class SystemdBus:
    """One connection to systemd's manager (the system one for root, the user's otherwise)."""

    def __init__(self, bus: MessageBus, user: bool):
        self.bus = bus
        self.user = user

    @classmethod
    async def connect(cls, user: bool) -> SystemdBus:
        """Connect; OSError (or a dbus-fast error) when the bus is not there."""
        if user:
            address = user_bus_address()
            if address is None:
                raise ConnectionError("no user bus ($DBUS_SESSION_BUS_ADDRESS, $XDG_RUNTIME_DIR)")
            bus = MessageBus(bus_address=address)
        else:
            bus = MessageBus(bus_type=BusType.SYSTEM)
        await bus.connect()
        return cls(bus, user)

    def on_message(self, handler: Callable[[Message], Any]) -> None:
        self.bus.add_message_handler(handler)

    async def call(
        self,
        member: str,
        signature: str = "",
        body: list[Any] | None = None,
        path: str = SYSTEMD_PATH,
        interface: str = MANAGER,
        destination: str = SYSTEMD,
    ) -> list[Any]:
        message = Message(
            destination=destination,
            path=path,
            interface=interface,
            member=member,
            signature=signature,
            body=body or [],
        )
        try:
            reply = await asyncio.wait_for(self.bus.call(message), CALL_TIMEOUT)
        except TimeoutError:
            raise SystemdError(
                TIMEOUT_ERROR, f"no answer to {member} in {CALL_TIMEOUT:g} s"
            ) from None
        except EOFError as exc:  # the connection is gone (dbus-fast's way of saying it)
            raise SystemdError(DISCONNECTED, f"{member}: the bus connection is lost") from exc
        if reply is None:
            raise SystemdError("org.freedesktop.DBus.Error.NoReply", f"no reply to {member}")
        if reply.message_type == MessageType.ERROR:
            text = reply.body[0] if reply.body else ""
            raise SystemdError(reply.error_name or "unknown", str(text))
        return list(reply.body)

    def send(
        self,
        member: str,
        signature: str = "",
        body: list[Any] | None = None,
        path: str = SYSTEMD_PATH,
        interface: str = MANAGER,
        destination: str = SYSTEMD,
    ) -> None:
        """Send without waiting for (or wanting) an answer: for callers that cannot await."""
        self.bus.send(
            Message(
                destination=destination,
                path=path,
                interface=interface,
                member=member,
                signature=signature,
                body=body or [],
                flags=MessageFlag.NO_REPLY_EXPECTED,
            )
        )

    async def add_match(self, rule: str) -> None:
        await self.call(
            "AddMatch", "s", [rule], path="/org/freedesktop/DBus", interface=DBUS, destination=DBUS
        )

    def add_match_nowait(self, rule: str) -> None:
        """AddMatch queued on the connection: the bus applies it before any later message."""
        self.send(
            "AddMatch", "s", [rule], path="/org/freedesktop/DBus", interface=DBUS, destination=DBUS
        )

    def remove_match_nowait(self, rule: str) -> None:
        self.send(
            "RemoveMatch",
            "s",
            [rule],
            path="/org/freedesktop/DBus",
            interface=DBUS,
            destination=DBUS,
        )

    async def get_all(self, path: str, interface: str) -> dict[str, Any]:
        body = await self.call("GetAll", "s", [interface], path=path, interface=PROPERTIES)
        return dict(body[0])

    def disconnect(self) -> None:
        self.bus.disconnect()


def variant(signature: str, value: Any) -> Variant:
    return Variant(signature, value)

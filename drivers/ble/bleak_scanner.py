"""The local radio: bleak's BlueZ backend scanning one adapter, watched by a watchdog.

- Passive scanning when BlueZ offers it: an advertisement monitor whose or_patterns match
  Eddystone (service data FEAA) and iBeacon (Apple manufacturer data 02 15). A BlueZ without
  --experimental refuses the monitor; the source then logs it once and scans actively for good.
- Each advert becomes a `Sighting` at once: the frame decoded, the address turned into the day's
  device key. The address itself is kept, logged and raised nowhere.
- The watchdog: a scanner silent for `watchdog_s` is stopped and started again; after
  `resets_after` such restarts in a row without an advert, the adapter is power-cycled through
  BlueZ (Adapter1.Powered off, on) before scanning starts again. Real controllers do wedge
  this way: discovery still "on", nothing reported.
- BlueZ and D-Bus errors become log lines and `BleError`s with any address scrubbed; an adapter
  that can't scan (gone, say) makes `run` raise, and the supervisor restarts it with backoff.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Literal

import structlog
from bleak import BleakScanner
from bleak.args.bluez import BlueZScannerArgs, OrPattern
from bleak.assigned_numbers import AdvertisementDataType
from bleak.backends.bluezdbus.utils import get_dbus_authenticator
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData
from bleak.exc import BleakDBusError, BleakError
from dbus_fast import AuthError, BusType, DBusError, Message, MessageType, Variant
from dbus_fast.aio import MessageBus

from gateway.ble.frames import decode_advert
from gateway.ble.keys import DeviceKeys
from gateway.ble.scanners import ScannerStats
from gateway.ble.sighting import Sighting
from gateway.runtime.clock import Clock
from gateway.runtime.logs import scrub_addresses
from gateway.runtime.supervisor import Handle

__all__ = ["BleError", "BleakSource"]

log = structlog.get_logger("gateway.ble")

_OR_PATTERNS = [
    OrPattern(0, AdvertisementDataType.SERVICE_DATA_UUID16, b"\xaa\xfe"),  # Eddystone
    OrPattern(0, AdvertisementDataType.MANUFACTURER_SPECIFIC_DATA, b"\x4c\x00\x02\x15"),  # iBeacon
]
# What a BlueZ without advertisement monitors answers RegisterMonitor with.
_NO_MONITORS = {
    "org.freedesktop.DBus.Error.UnknownMethod",
    "org.freedesktop.DBus.Error.UnknownInterface",
    "org.bluez.Error.NotSupported",
}
_ERRORS = (BleakError, DBusError, AuthError, OSError, EOFError, TimeoutError)
_OP_TIMEOUT_S = 10.0  # a bluetoothd that doesn't answer is as broken as one that refuses
_NO_RSSI = -127  # bleak's RSSI for a property update that is not an advert


class BleError(RuntimeError):
    """The radio can't scan; the message names the adapter and never a device address."""


def _scrub(exc: BaseException) -> str:
    """An error for logs and health details (BleError reaches /healthz): no device address."""
    return scrub_addresses(f"{type(exc).__name__}: {exc}")


def _monitors_unsupported(exc: BleakError) -> bool:
    if isinstance(exc, BleakDBusError):
        return exc.dbus_error in _NO_MONITORS
    return "passive scanning" in str(exc)  # bleak's own words for UnknownMethod


class BleakSource:
    """A supervisor component: scans `adapter` and hands each advert to `on_sighting`."""

    def __init__(
        self,
        adapter: str,
        keys: DeviceKeys,
        stats: ScannerStats,
        on_sighting: Callable[[Sighting], None],
        clock: Clock,
        *,
        passive: bool = True,
        watchdog_s: float = 90.0,
        resets_after: int = 3,
    ) -> None:
        self.name = f"ble-{adapter}"
        self.requires: tuple[str, ...] = ()
        self._adapter = adapter
        self._keys = keys
        self._stats = stats
        self._on_sighting = on_sighting
        self._clock = clock
        self._passive = passive
        self._watchdog_s = watchdog_s
        self._resets_after = resets_after
        self._scanner: BleakScanner | None = None
        self.mode: Literal["passive", "active"] | None = None  # what runs now
        self._started_at = 0.0  # monotonic time scanning last (re)started
        self._heard = 0  # adverts since the source was made

    async def run(self, handle: Handle) -> None:
        try:
            await self._start()
            handle.ready(self._detail())
            await self._watch(handle)
        except _ERRORS as exc:
            detail = _scrub(exc)
            log.error("ble scanning failed", scanner=self._adapter, error=detail)
            raise BleError(f"{self._adapter}: {detail}") from None
        finally:
            await self._stop()

    def _detail(self) -> str:
        return f"{self.mode} scan on {self._adapter}"

    async def _watch(self, handle: Handle) -> None:
        quiet_restarts = 0  # restarts in a row that heard nothing
        heard = self._heard
        degraded = False
        tick = min(self._watchdog_s / 4, 5.0)
        while True:
            await asyncio.sleep(tick)
            if self._heard != heard:
                heard, quiet_restarts = self._heard, 0
                if degraded:
                    degraded = False
                    handle.ready(self._detail())
            now = self._clock.monotonic()
            # silent_for counts from the last advert ever heard; a restart starts a new wait.
            silent = min(self._stats.silent_for(self._adapter, now), now - self._started_at)
            if silent <= self._watchdog_s:
                continue
            degraded = True
            reset = quiet_restarts >= self._resets_after
            if reset:
                handle.degraded(f"no adverts for {silent:.0f}s; power-cycling {self._adapter}")
                log.warning("ble still silent, power-cycling the adapter", scanner=self._adapter)
            else:
                handle.degraded(f"no adverts for {silent:.0f}s; restarting the scan")
                log.warning(
                    "ble silent, restarting the scan",
                    scanner=self._adapter,
                    silent_s=round(silent, 1),
                )
            await self._stop()
            if reset:
                await self._power_cycle()
                self._stats.adapter_reset(self._adapter)
                quiet_restarts = 0
                if self.mode == "passive":
                    # A BlueZ may accept the monitor and never activate it (no controller
                    # support): silent through restarts and a power cycle, scan actively.
                    self._passive = False
                    log.warning("ble passive scan stayed silent, scanning actively")
            else:
                self._stats.restarted(self._adapter, now)
                quiet_restarts += 1
            await self._start()
            heard = self._heard

    async def _start(self) -> None:
        if self._passive:
            try:
                await self._open("passive")
                return
            except BleakError as exc:
                if not _monitors_unsupported(exc):
                    raise
                self._passive = False  # for good: BlueZ won't grow the feature while we run
                log.warning(
                    "ble passive scanning unavailable, scanning actively",
                    scanner=self._adapter,
                    error=_scrub(exc),
                )
        await self._open("active")

    async def _open(self, mode: Literal["passive", "active"]) -> None:
        bluez: BlueZScannerArgs = {"adapter": self._adapter}
        if mode == "passive":
            bluez["or_patterns"] = list(_OR_PATTERNS)
        scanner = BleakScanner(self._on_advert, scanning_mode=mode, bluez=bluez)
        async with asyncio.timeout(_OP_TIMEOUT_S):
            await scanner.start()
        self._scanner, self.mode = scanner, mode
        self._started_at = now = self._clock.monotonic()
        self._stats.started(self._adapter, now)
        log.info("ble scan started", scanner=self._adapter, mode=mode)

    async def _stop(self) -> None:
        scanner, self._scanner = self._scanner, None
        if scanner is None:
            return
        try:
            async with asyncio.timeout(_OP_TIMEOUT_S):
                await scanner.stop()
        except _ERRORS as exc:  # the scan is abandoned either way
            log.warning("ble scan stop failed", scanner=self._adapter, error=_scrub(exc))

    async def _power_cycle(self) -> None:
        """Adapter1.Powered off then on, on the system bus (DBUS_SYSTEM_BUS_ADDRESS honoured)."""
        bus = MessageBus(bus_type=BusType.SYSTEM, auth=get_dbus_authenticator())
        async with asyncio.timeout(_OP_TIMEOUT_S):
            await bus.connect()
            try:
                for on in (False, True):
                    reply = await bus.call(
                        Message(
                            destination="org.bluez",
                            path=f"/org/bluez/{self._adapter}",
                            interface="org.freedesktop.DBus.Properties",
                            member="Set",
                            signature="ssv",
                            body=["org.bluez.Adapter1", "Powered", Variant("b", on)],
                        )
                    )
                    if reply.message_type == MessageType.ERROR:
                        text = str(reply.body[0]) if reply.body else ""
                        raise DBusError(reply.error_name or "unknown", text)
            finally:
                bus.disconnect()
                await bus.wait_for_disconnect()  # type: ignore[no-untyped-call]

    def _on_advert(self, device: BLEDevice, adv: AdvertisementData) -> None:
        if adv.rssi == _NO_RSSI:
            return
        now = self._clock.now()
        key = self._keys.key(device.address, now)
        self._heard += 1
        self._stats.advert(self._adapter, self._clock.monotonic())
        sighting = Sighting(
            scanner=self._adapter,
            device=key,
            frame=decode_advert(adv.manufacturer_data, adv.service_data, adv.service_uuids),
            rssi=float(adv.rssi),
            at=now,
        )
        try:
            self._on_sighting(sighting)
        except Exception:  # a bug downstream must not stop bleak's signal dispatch
            log.exception("ble sighting handler failed", scanner=self._adapter)

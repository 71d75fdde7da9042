"""A fake bluetoothd on a private D-Bus bus: the radio no test machine (or laptop demo) has.

It speaks the real BlueZ D-Bus API, as much of it as a scanner uses, so bleak's real BlueZ backend
runs against it unchanged (DBUS_SYSTEM_BUS_ADDRESS points bleak at the private bus):

- the ObjectManager at `/`: GetManagedObjects, InterfacesAdded / InterfacesRemoved;
- `/org/bluez/hci0` with `org.bluez.Adapter1`: Powered (settable; powering off ends discovery
  and drops the temporary devices, like bluetoothd's adapter_stop), Discovering, StartDiscovery /
  StopDiscovery as per-client sessions, SetDiscoveryFilter / GetDiscoveryFilters, RemoveDevice;
- `org.bluez.AdvertisementMonitorManager1` (passive scanning, only if `passive_supported`; a
  BlueZ without --experimental doesn't export it, and a call gets UnknownMethod): a client
  registers a root path, exports `org.bluez.AdvertisementMonitor1` objects under it, and gets
  Activate, then DeviceFound for each device whose advert matches its or_patterns;
- devices `/org/bluez/hci0/dev_XX_..` with `org.bluez.Device1`, announced by InterfacesAdded
  and updated by PropertiesChanged under bluetoothd's rules (RSSI on every advert in filtered
  discovery, else on an 8 dBm change; ManufacturerData / ServiceData merged and sent when
  changed, or on every advert with DuplicateData; RSSI / TxPower invalidated when discovery
  stops), and removed (InterfacesRemoved) once unheard for `temporary_timeout_s` (main.conf's
  TemporaryTimeout, 30 s by default), as bluetoothd removes temporary devices.

`FakeBluez` starts its own `dbus-daemon` (a generated config that allows everything), owns
`org.bluez` on it, and lets a test `advertise(...)` as a beacon would, `go_quiet()` as a wedged
controller does, and watch `powered_cycles` and `discovery_starts`.
"""

# No `from __future__ import annotations`: dbus-fast reads the D-Bus signatures from the
# annotations, and a postponed "-> None" would read as a signature.
import asyncio
import contextlib
import re
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Annotated, Any, Self

from dbus_fast import (
    BusType,
    DBusError,
    Message,
    MessageType,
    PropertyAccess,
    RequestNameReply,
    Variant,
    unpack_variants,
)
from dbus_fast.aio import MessageBus
from dbus_fast.annotations import (
    DBusBool,
    DBusDict,
    DBusInt16,
    DBusObjectPath,
    DBusSignature,
    DBusStr,
    DBusUInt32,
)
from dbus_fast.service import ServiceInterface, dbus_method, dbus_property

from gateway.ble.frames import BASE_UUID_TAIL, ad_structures

__all__ = ["ADAPTER_INTERFACE", "BLUEZ", "DEVICE_INTERFACE", "FakeBluez", "device_path"]

BLUEZ = "org.bluez"
ADAPTER_INTERFACE = "org.bluez.Adapter1"
DEVICE_INTERFACE = "org.bluez.Device1"
MONITOR_MANAGER_INTERFACE = "org.bluez.AdvertisementMonitorManager1"
MONITOR_INTERFACE = "org.bluez.AdvertisementMonitor1"
OBJECT_MANAGER = "org.freedesktop.DBus.ObjectManager"
_ERR = "org.bluez.Error"

_BUS_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
  </policy>
</busconfig>
"""
_MAC = re.compile(r"^[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}$")
_RSSI_THRESHOLD = 8  # dBm: bluetoothd's threshold for RSSI updates outside filtered discovery
_AD_MAX = 31  # bytes of legacy advertising data
_FILTERS = {  # SetDiscoveryFilter keys and their D-Bus signatures (GetDiscoveryFilters order)
    "UUIDs": "as",
    "RSSI": "n",
    "Pathloss": "q",
    "Transport": "s",
    "DuplicateData": "b",
    "Discoverable": "b",
    "Pattern": "s",
}
# bluetoothd lists the standard interfaces of each object in InterfacesAdded too.
_STANDARD_INTERFACES: dict[str, dict[str, Variant]] = {
    "org.freedesktop.DBus.Introspectable": {},
    "org.freedesktop.DBus.Properties": {},
}


def device_path(adapter_path: str, address: str) -> str:
    return f"{adapter_path}/dev_{address.upper().replace(':', '_')}"


def _uuid128(uuid: str) -> str:
    """BlueZ names every UUID in full: "feaa" -> "0000feaa-0000-1000-8000-00805f9b34fb"."""
    uuid = uuid.lower()
    if len(uuid) == 4:
        return f"0000{uuid}{BASE_UUID_TAIL}"
    if len(uuid) == 8:
        return f"{uuid}{BASE_UUID_TAIL}"
    return uuid


def _error(name: str, text: str) -> DBusError:
    return DBusError(f"{_ERR}.{name}", text)


@dataclass(frozen=True, slots=True)
class _Advert:
    address: str
    address_type: str
    rssi: int
    manufacturer_data: dict[int, bytes]
    service_data: dict[str, bytes]
    uuids: list[str]
    tx_power: int | None
    name: str | None

    def ad_structures(self) -> list[tuple[int, bytes]]:
        """The AD structures (type, data) a beacon puts on air, for or_pattern matching: the
        codec's, with the advertised UUID list, the name and the TX power."""
        short = [
            int(u[4:8], 16) for u in self.uuids if u.endswith(BASE_UUID_TAIL) and u[:4] == "0000"
        ]
        ads = ad_structures(self.manufacturer_data, self.service_data, uuids16=short)
        if self.name is not None:
            ads.append((0x09, self.name.encode()))  # complete local name
        if self.tx_power is not None:
            ads.append((0x0A, (self.tx_power & 0xFF).to_bytes(1, "little")))  # TX power level
        return ads


Pattern = tuple[int, int, bytes]  # (start position, AD type, content), as in or_patterns


def _pattern_matches(patterns: Sequence[Pattern], ads: Sequence[tuple[int, bytes]]) -> bool:
    """adv_monitor.c: any pattern whose content sits at its offset in an AD of its type."""
    return any(
        ad_type == kind and data[start : start + len(content)] == content
        for start, ad_type, content in patterns
        for kind, data in ads
    )


def _valid_patterns(value: object) -> list[Pattern] | None:
    if not isinstance(value, list) or not value:
        return None
    patterns: list[Pattern] = []
    try:
        for start, ad_type, raw in value:
            content = bytes(raw)
            if not content or not 0 <= int(start) <= _AD_MAX - len(content):
                return None
            patterns.append((int(start), int(ad_type), content))
    except (TypeError, ValueError):  # not a(yyay): bluetoothd rejects the monitor
        return None
    return patterns


class _Device(ServiceInterface):
    """org.bluez.Device1 of a device heard advertising (never paired, so "temporary")."""

    def __init__(self, adapter_path: str, advert: _Advert) -> None:
        super().__init__(DEVICE_INTERFACE)
        self.adapter_path = adapter_path
        self.address = advert.address
        self.path = device_path(adapter_path, advert.address)
        self.address_type = advert.address_type
        self.rssi = advert.rssi  # 0: none (bluetoothd's "invalid", after discovery stops)
        self.tx_power = advert.tx_power
        self.local_name = advert.name  # `name` is the D-Bus interface name
        self.manufacturer_data = dict(advert.manufacturer_data)
        self.service_data = dict(advert.service_data)
        self.uuids = list(advert.uuids)
        self.monitors_notified: set[tuple[str, str]] = set()

    @dbus_property(PropertyAccess.READ)
    def Address(self) -> DBusStr:
        return self.address

    @dbus_property(PropertyAccess.READ)
    def AddressType(self) -> DBusStr:
        return self.address_type

    @dbus_property(PropertyAccess.READ)
    def Alias(self) -> DBusStr:
        # bluetoothd's alias for a device without a name: its address with dashes
        return self.local_name if self.local_name is not None else self.address.replace(":", "-")

    @dbus_property(PropertyAccess.READ)
    def Paired(self) -> DBusBool:
        return False

    @dbus_property(PropertyAccess.READ)
    def Bonded(self) -> DBusBool:
        return False

    @dbus_property(PropertyAccess.READ)
    def Trusted(self) -> DBusBool:
        return False

    @dbus_property(PropertyAccess.READ)
    def Blocked(self) -> DBusBool:
        return False

    @dbus_property(PropertyAccess.READ)
    def LegacyPairing(self) -> DBusBool:
        return False

    @dbus_property(PropertyAccess.READ)
    def Connected(self) -> DBusBool:
        return False

    @dbus_property(PropertyAccess.READ)
    def ServicesResolved(self) -> DBusBool:
        return False

    @dbus_property(PropertyAccess.READ)
    def Adapter(self) -> DBusObjectPath:
        return self.adapter_path

    @dbus_property(PropertyAccess.READ)
    def RSSI(self) -> DBusInt16:
        return self.rssi

    @dbus_property(PropertyAccess.READ)
    def UUIDs(self) -> Annotated[list[str], DBusSignature("as")]:
        return self.uuids

    @dbus_property(PropertyAccess.READ)
    def ManufacturerData(self) -> Annotated[dict[int, Variant], DBusSignature("a{qv}")]:
        return {k: Variant("ay", v) for k, v in self.manufacturer_data.items()}

    @dbus_property(PropertyAccess.READ)
    def ServiceData(self) -> DBusDict:
        return {k: Variant("ay", v) for k, v in self.service_data.items()}


class _DeviceWithTxPower(_Device):
    """bluetoothd has TxPower only for a device that advertises it (a property can't come and go
    on one dbus-fast class, hence the subclass)."""

    @dbus_property(PropertyAccess.READ)
    def TxPower(self) -> DBusInt16:
        return self.tx_power if self.tx_power is not None else 0


class _Adapter(ServiceInterface):
    def __init__(self, radio: "FakeBluez") -> None:
        super().__init__(ADAPTER_INTERFACE)
        self._radio = radio

    @dbus_property(PropertyAccess.READ)
    def Address(self) -> DBusStr:
        return self._radio.adapter_address

    @dbus_property(PropertyAccess.READ)
    def AddressType(self) -> DBusStr:
        return "public"

    @dbus_property(PropertyAccess.READ)
    def Name(self) -> DBusStr:
        return "store-gateway-fake"

    @dbus_property(PropertyAccess.READ)
    def Alias(self) -> DBusStr:
        return "store-gateway-fake"

    @dbus_property(PropertyAccess.READ)
    def Class(self) -> DBusUInt32:
        return 0

    @dbus_property()
    def Powered(self) -> DBusBool:
        return self._radio.powered

    @Powered.setter  # type: ignore[no-redef]
    def Powered(self, value: DBusBool) -> None:
        self._radio.set_powered(value)

    @dbus_property(PropertyAccess.READ)
    def PowerState(self) -> DBusStr:
        return "on" if self._radio.powered else "off"

    @dbus_property(PropertyAccess.READ)
    def Discoverable(self) -> DBusBool:
        return False

    @dbus_property(PropertyAccess.READ)
    def DiscoverableTimeout(self) -> DBusUInt32:
        return 180

    @dbus_property(PropertyAccess.READ)
    def Pairable(self) -> DBusBool:
        return False

    @dbus_property(PropertyAccess.READ)
    def PairableTimeout(self) -> DBusUInt32:
        return 0

    @dbus_property(PropertyAccess.READ)
    def Discovering(self) -> DBusBool:
        return self._radio.discovering

    @dbus_property(PropertyAccess.READ)
    def UUIDs(self) -> Annotated[list[str], DBusSignature("as")]:
        return []

    @dbus_property(PropertyAccess.READ)
    def Modalias(self) -> DBusStr:
        return "usb:v1D6Bp0246d054F"

    @dbus_property(PropertyAccess.READ)
    def Roles(self) -> Annotated[list[str], DBusSignature("as")]:
        return ["central", "peripheral"]

    @dbus_method()
    def StartDiscovery(self) -> None:
        self._radio.start_discovery(self._radio._caller)

    @dbus_method()
    def StopDiscovery(self) -> None:
        self._radio.stop_discovery(self._radio._caller)

    @dbus_method()
    def SetDiscoveryFilter(self, properties: DBusDict) -> None:
        self._radio.set_discovery_filter(self._radio._caller, properties)

    @dbus_method()
    def GetDiscoveryFilters(self) -> Annotated[list[str], DBusSignature("as")]:
        return list(_FILTERS)

    @dbus_method()
    def RemoveDevice(self, device: DBusObjectPath) -> None:
        self._radio.remove_device(device)


class _MonitorManager(ServiceInterface):
    def __init__(self, radio: "FakeBluez") -> None:
        super().__init__(MONITOR_MANAGER_INTERFACE)
        self._radio = radio

    @dbus_method()
    def RegisterMonitor(self, application: DBusObjectPath) -> None:
        self._radio.register_monitor_app(self._radio._caller, application)

    @dbus_method()
    def UnregisterMonitor(self, application: DBusObjectPath) -> None:
        self._radio.unregister_monitor_app(self._radio._caller, application)

    @dbus_property(PropertyAccess.READ)
    def SupportedMonitorTypes(self) -> Annotated[list[str], DBusSignature("as")]:
        return ["or_patterns"]

    @dbus_property(PropertyAccess.READ)
    def SupportedFeatures(self) -> Annotated[list[str], DBusSignature("as")]:
        return []  # no controller offloading: bluetoothd matches the patterns in software


@dataclass(slots=True)
class _Monitor:
    patterns: list[Pattern]
    active: bool = False


@dataclass(slots=True)
class _Session:
    """A client's discovery filter, and whether it holds a discovery session."""

    discovering: bool = False
    filter: dict[str, Any] = field(default_factory=dict)


class _BluezBus(MessageBus):
    """bluetoothd's ObjectManager is `/`: its InterfacesAdded / InterfacesRemoved come from there
    (dbus-fast sends them from the exported object's own path)."""

    def _emit_interface_added(self, path: str, interface: ServiceInterface) -> None:
        if self._disconnected:
            return

        def send(_: ServiceInterface, values: Any, __: Any, err: Exception | None) -> None:
            if err is None:
                body = {**_STANDARD_INTERFACES, interface.name: values}
                self.send(
                    Message.new_signal(
                        "/", OBJECT_MANAGER, "InterfacesAdded", "oa{sa{sv}}", [path, body]
                    )
                )

        ServiceInterface._get_all_property_values(interface, send)

    def _emit_interface_removed(self, path: str, removed_interfaces: list[str]) -> None:
        if self._disconnected:
            return
        names = [*removed_interfaces, *_STANDARD_INTERFACES]
        self.send(
            Message.new_signal("/", OBJECT_MANAGER, "InterfacesRemoved", "oas", [path, names])
        )


class FakeBluez:
    """bluetoothd with one adapter, on a private bus; `async with FakeBluez() as bluez:`."""

    def __init__(
        self,
        *,
        passive_supported: bool = True,
        adapter: str = "hci0",
        adapter_address: str = "00:1A:7D:DA:71:13",
        temporary_timeout_s: float = 30.0,
    ) -> None:
        self.passive_supported = passive_supported
        self.temporary_timeout_s = temporary_timeout_s  # 0: temporary devices are kept
        self.adapter = adapter
        self.adapter_path = f"/org/bluez/{adapter}"
        self.adapter_address = adapter_address
        self.address = ""  # the bus address, for DBUS_SYSTEM_BUS_ADDRESS
        self.powered = True
        self.discovering = False
        self.powered_cycles = 0  # Powered False -> True
        self.discovery_starts = 0  # StartDiscovery calls that started a session
        self._caller = ""  # unique bus name of the client whose method call is being served
        self._quiet = False
        self._present = False
        self._clients: dict[str, _Session] = {}
        self._apps: set[tuple[str, str]] = set()  # (client, root path) of monitor apps
        self._monitors: dict[tuple[str, str], _Monitor] = {}  # (client, object path)
        self._devices: dict[str, _Device] = {}
        self._heard: dict[str, float] = {}  # device path -> loop time last heard, oldest first
        self._tasks: set[asyncio.Task[None]] = set()
        self._dir: Path | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._bus: _BluezBus | None = None
        self._adapter_iface = _Adapter(self)
        self._manager_iface = _MonitorManager(self)

    # -- lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        try:
            await self._start()
        except BaseException:
            await self._stop()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._stop()

    async def _start(self) -> None:
        binary = shutil.which("dbus-daemon") or "/usr/bin/dbus-daemon"
        self._dir = Path(tempfile.mkdtemp(prefix="fake-bluez-"))
        config = self._dir / "bus.conf"
        config.write_text(_BUS_CONFIG.format(socket=self._dir / "bus"))
        with (self._dir / "dbus-daemon.log").open("wb") as log:
            self._proc = await asyncio.create_subprocess_exec(
                binary,
                f"--config-file={config}",
                "--nofork",
                "--print-address",
                stdout=asyncio.subprocess.PIPE,
                stderr=log,
                start_new_session=True,
            )
        assert self._proc.stdout is not None
        # The daemon prints its address once it listens.
        line = await asyncio.wait_for(self._proc.stdout.readline(), 10)
        if not line.strip():
            text = (self._dir / "dbus-daemon.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"dbus-daemon did not start: {text}")
        self.address = line.decode().strip()

        bus = self._bus = _BluezBus(bus_address=self.address, bus_type=BusType.SYSTEM)
        await bus.connect()
        bus.add_message_handler(self._on_message)
        for rule in (
            # monitors appear and go under the registered roots, like GDBusClient watches them
            f"type='signal',interface='{OBJECT_MANAGER}',member='InterfacesAdded'",
            f"type='signal',interface='{OBJECT_MANAGER}',member='InterfacesRemoved'",
            # a client that leaves the bus loses its sessions and monitors
            "type='signal',sender='org.freedesktop.DBus',member='NameOwnerChanged'",
        ):
            bus_ = "org.freedesktop.DBus"
            await self._call(
                bus_, "/org/freedesktop/DBus", bus_, "AddMatch", signature="s", body=[rule]
            )
        self._export_adapter()
        reply = await bus.request_name(BLUEZ)
        if reply != RequestNameReply.PRIMARY_OWNER:
            raise RuntimeError(f"could not own {BLUEZ}: {reply}")
        if self.temporary_timeout_s > 0:
            self._spawn(self._remove_unheard())

    async def _stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks)
        if self._bus is not None:
            self._bus.disconnect()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._bus.wait_for_disconnect(), 2)  # type: ignore[no-untyped-call]
            self._bus = None
        if self._proc is not None:
            proc, self._proc = self._proc, None
            if proc.returncode is None:
                proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 5)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def _export_adapter(self) -> None:
        bus = self._require_bus()
        bus.export(self.adapter_path, self._adapter_iface)
        if self.passive_supported:
            bus.export(self.adapter_path, self._manager_iface)
        self._present = True

    # -- the test's controls -----------------------------------------------------------------

    async def advertise(
        self,
        address: str,
        rssi: int,
        manufacturer_data: Mapping[int, bytes] | None = None,
        service_data: Mapping[str, bytes] | None = None,
        *,
        tx_power: int | None = None,
        uuids: Sequence[str] | None = None,
        name: str | None = None,
        address_type: str = "public",
    ) -> bool:
        """One advert heard by the controller; True if bluetoothd passed it on to anyone.

        `uuids` (the advertised service UUID list) defaults to the service data's UUIDs, as an
        Eddystone beacon lists FEAA next to its service data.
        """
        if not _MAC.match(address):
            raise ValueError("address must look like AA:BB:CC:DD:EE:FF")
        if not -127 <= rssi < 0:
            raise ValueError("rssi must be in -127..-1 dBm")
        services = {_uuid128(k): bytes(v) for k, v in (service_data or {}).items()}
        advert = _Advert(
            address=address.upper(),
            address_type=address_type,
            rssi=rssi,
            manufacturer_data={k: bytes(v) for k, v in (manufacturer_data or {}).items()},
            service_data=services,
            uuids=[_uuid128(u) for u in (uuids if uuids is not None else list(services))],
            tx_power=tx_power,
            name=name,
        )
        if self._quiet or not self.powered or not self._present:
            return False
        ads = advert.ad_structures()
        monitors = [
            key
            for key, m in self._monitors.items()
            if m.active and _pattern_matches(m.patterns, ads)
        ]
        if not (self._discovery_wants(advert) or monitors):
            return False
        device = self._update_device(advert)
        for client, path in monitors:
            if (client, path) not in device.monitors_notified:
                device.monitors_notified.add((client, path))
                await self._call_client(client, path, "DeviceFound", "o", [device.path])
        return True

    def go_quiet(self) -> None:
        """The controller stops reporting adverts while discovery stays on (a wedged radio)."""
        self._quiet = True

    def resume(self) -> None:
        self._quiet = False

    def remove_adapter(self) -> None:
        """The adapter goes away (a USB dongle unplugged): its objects are removed."""
        bus = self._require_bus()
        for path in list(self._devices):
            self._drop_device(path)
        bus.unexport(self.adapter_path)
        self._present = False
        self._clients.clear()
        self.discovering = False

    @property
    def active_monitors(self) -> int:
        return sum(1 for m in self._monitors.values() if m.active)

    # -- org.bluez.Adapter1 ----------------------------------------------------------------

    def set_powered(self, on: bool) -> None:
        if on == self.powered:
            return
        self.powered = on
        if on:
            self.powered_cycles += 1
        else:
            # adapter_stop(): discovery sessions go, temporary devices are removed at once
            self._clients.clear()
            self._set_discovering(False)
            for path in list(self._devices):
                self._drop_device(path)
        self._adapter_iface.emit_properties_changed(
            {"Powered": on, "PowerState": "on" if on else "off"}
        )

    def start_discovery(self, client: str) -> None:
        if not self.powered:
            raise _error("NotReady", "Resource Not Ready")
        session = self._clients.setdefault(client, _Session())
        if session.discovering:
            raise _error("InProgress", "Operation already in progress")
        session.discovering = True
        self.discovery_starts += 1
        self._set_discovering(True)

    def stop_discovery(self, client: str) -> None:
        if not self.powered:
            raise _error("NotReady", "Resource Not Ready")
        session = self._clients.get(client)
        if session is None or not session.discovering:
            raise _error("Failed", "No discovery started")
        session.discovering = False
        self._discovery_changed()

    def set_discovery_filter(self, client: str, properties: dict[str, Variant]) -> None:
        if not self.powered:
            raise _error("NotReady", "Resource Not Ready")
        parsed: dict[str, Any] = {}
        for key, variant in properties.items():
            if _FILTERS.get(key) != variant.signature:
                raise _error("InvalidArguments", "Invalid arguments in method call")
            parsed[key] = variant.value
        if parsed.get("Transport", "auto") not in ("auto", "bredr", "le") or (
            "RSSI" in parsed and "Pathloss" in parsed
        ):
            raise _error("InvalidArguments", "Invalid arguments in method call")
        if "UUIDs" in parsed:
            parsed["UUIDs"] = {_uuid128(u) for u in parsed["UUIDs"]}
        self._clients.setdefault(client, _Session()).filter = parsed

    def remove_device(self, path: str) -> None:
        if path not in self._devices:
            raise _error("DoesNotExist", "Does Not Exist")
        self._drop_device(path)

    def _set_discovering(self, on: bool) -> None:
        if on != self.discovering:
            self.discovering = on
            self._adapter_iface.emit_properties_changed({"Discovering": on})

    def _discovery_changed(self) -> None:
        if any(s.discovering for s in self._clients.values()):
            return
        self._set_discovering(False)
        # device_set_rssi(0) / tx power 127 on every device: the values are no longer current
        for device in self._devices.values():
            if device.rssi != 0:
                device.rssi = 0
                gone = ["RSSI", "TxPower"] if device.tx_power is not None else ["RSSI"]
                device.emit_properties_changed({}, gone)

    def _discovery_wants(self, advert: _Advert) -> bool:
        sessions = [s for s in self._clients.values() if s.discovering]
        return any(self._filter_passes(s.filter, advert) for s in sessions)

    @staticmethod
    def _filter_passes(flt: Mapping[str, Any], advert: _Advert) -> bool:
        if flt.get("Transport") == "bredr":
            return False
        if "RSSI" in flt and advert.rssi < flt["RSSI"]:
            return False
        wanted: set[str] = flt.get("UUIDs", set())
        if wanted and not wanted.intersection([*advert.uuids, *advert.service_data]):
            return False
        pattern: str = flt.get("Pattern", "")
        return (
            not pattern
            or advert.address.startswith(pattern.upper())
            or (advert.name is not None and advert.name.startswith(pattern))
        )

    # -- devices -------------------------------------------------------------------------------

    def _update_device(self, advert: _Advert) -> _Device:
        path = device_path(self.adapter_path, advert.address)
        self._heard.pop(path, None)
        self._heard[path] = asyncio.get_running_loop().time()
        device = self._devices.get(path)
        if device is None:
            kind = _DeviceWithTxPower if advert.tx_power is not None else _Device
            device = self._devices[path] = kind(self.adapter_path, advert)
            self._require_bus().export(path, device)
            return device
        discovering = [s for s in self._clients.values() if s.discovering]
        # filtered discovery: every client asked for a filter (bleak always does)
        filtered = bool(discovering) and all(s.filter for s in discovering)
        duplicates = filtered and any(s.filter.get("DuplicateData", False) for s in discovering)
        changed: dict[str, Any] = {}
        if filtered or device.rssi == 0 or abs(device.rssi - advert.rssi) >= _RSSI_THRESHOLD:
            device.rssi = changed["RSSI"] = advert.rssi
        if advert.tx_power is not None and advert.tx_power != device.tx_power:
            device.tx_power = changed["TxPower"] = advert.tx_power
        merged_md = {**device.manufacturer_data, **advert.manufacturer_data}
        if advert.manufacturer_data and (duplicates or merged_md != device.manufacturer_data):
            device.manufacturer_data = merged_md
            changed["ManufacturerData"] = {k: Variant("ay", v) for k, v in merged_md.items()}
        merged_sd = {**device.service_data, **advert.service_data}
        if advert.service_data and (duplicates or merged_sd != device.service_data):
            device.service_data = merged_sd
            changed["ServiceData"] = {k: Variant("ay", v) for k, v in merged_sd.items()}
        uuids = device.uuids + [u for u in advert.uuids if u not in device.uuids]
        if uuids != device.uuids:
            device.uuids = changed["UUIDs"] = uuids
        if changed:
            device.emit_properties_changed(changed)
        return device

    def _drop_device(self, path: str) -> None:
        device = self._devices.pop(path)
        self._heard.pop(path, None)
        self._require_bus().unexport(path, device)

    async def _remove_unheard(self) -> None:
        """bluetoothd's temporary timer: a device unheard for TemporaryTimeout is removed,
        discovery or not (so a scanner's view of a crowd with churning addresses stays bounded)."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(min(1.0, self.temporary_timeout_s / 4))
            horizon = loop.time() - self.temporary_timeout_s
            while self._heard:
                path, heard = next(iter(self._heard.items()))
                if heard > horizon:
                    break
                if path in self._devices:
                    self._drop_device(path)
                else:
                    del self._heard[path]

    # -- org.bluez.AdvertisementMonitorManager1 ----------------------------------------------

    def register_monitor_app(self, client: str, root: str) -> None:
        if (client, root) in self._apps:
            raise _error("AlreadyExists", "Already Exists")
        self._apps.add((client, root))
        # Like GDBusClient: monitors already exported under the root count too.
        self._spawn(self._adopt_existing_monitors(client, root))

    def unregister_monitor_app(self, client: str, root: str) -> None:
        if (client, root) not in self._apps:
            raise _error("DoesNotExist", "Does Not Exist")
        self._apps.discard((client, root))
        for key in [k for k in self._monitors if k[0] == client and _under(k[1], root)]:
            self._monitors.pop(key)
            self._spawn(self._call_client(client, key[1], "Release"))

    async def _adopt_existing_monitors(self, client: str, root: str) -> None:
        reply = await self._call(client, root, OBJECT_MANAGER, "GetManagedObjects")
        if reply.message_type == MessageType.METHOD_RETURN:
            for path, interfaces in reply.body[0].items():
                self._monitor_added(client, path, interfaces)

    def _monitor_added(self, client: str, path: str, interfaces: dict[str, Any]) -> None:
        props = interfaces.get(MONITOR_INTERFACE)
        roots = [root for c, root in self._apps if c == client and _under(path, root)]
        if props is None or not roots or (client, path) in self._monitors:
            return
        values = unpack_variants(props)
        patterns = _valid_patterns(values.get("Patterns"))
        if values.get("Type") != "or_patterns" or patterns is None:
            self._spawn(self._call_client(client, path, "Release"))  # bluetoothd rejects it
            return
        monitor = self._monitors[(client, path)] = _Monitor(patterns)
        self._spawn(self._activate(client, path, monitor))

    async def _activate(self, client: str, path: str, monitor: _Monitor) -> None:
        reply = await self._call_client(client, path, "Activate")
        monitor.active = reply is not None and reply.message_type == MessageType.METHOD_RETURN

    def _forget_client(self, client: str) -> None:
        self._apps = {app for app in self._apps if app[0] != client}
        self._monitors = {k: m for k, m in self._monitors.items() if k[0] != client}
        if self._clients.pop(client, None) is not None:
            self._discovery_changed()
        for device in self._devices.values():
            device.monitors_notified = {k for k in device.monitors_notified if k[0] != client}

    # -- bus plumbing --------------------------------------------------------------------------

    def _on_message(self, msg: Message) -> None:
        if msg.message_type == MessageType.METHOD_CALL:
            # dbus-fast's service methods don't see the caller; sessions are per caller.
            self._caller = msg.sender or ""
            return
        if msg.message_type != MessageType.SIGNAL or msg.sender is None:
            return
        if msg.member == "NameOwnerChanged" and msg.sender == "org.freedesktop.DBus":
            name, _old, new = msg.body
            if name.startswith(":") and not new:
                self._forget_client(name)
        elif msg.interface == OBJECT_MANAGER and msg.member == "InterfacesAdded":
            self._monitor_added(msg.sender, msg.body[0], msg.body[1])
        elif msg.interface == OBJECT_MANAGER and msg.member == "InterfacesRemoved":
            path, interfaces = msg.body
            if MONITOR_INTERFACE in interfaces:
                self._monitors.pop((msg.sender, path), None)

    def _require_bus(self) -> _BluezBus:
        if self._bus is None:
            raise RuntimeError("FakeBluez is not running (use `async with`)")
        return self._bus

    async def _call(
        self,
        destination: str,
        path: str,
        interface: str,
        member: str,
        *,
        signature: str = "",
        body: list[Any] | None = None,
    ) -> Message:
        msg = Message(
            destination=destination,
            path=path,
            interface=interface,
            member=member,
            signature=signature,
            body=body or [],
        )
        return await self._require_bus().call(msg)

    async def _call_client(
        self,
        client: str,
        path: str,
        member: str,
        signature: str = "",
        body: list[Any] | None = None,
    ) -> Message | None:
        """Call a client's monitor object; a client that went away is not our failure."""
        try:
            return await self._call(
                client, path, MONITOR_INTERFACE, member, signature=signature, body=body
            )
        except (DBusError, OSError, EOFError):
            return None

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")

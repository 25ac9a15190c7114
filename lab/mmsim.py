"""A ModemManager simulator on a private D-Bus: the modem, SIMs and carriers failoverd's tests drive.

`python -m lab.mmsim --bus ADDRESS --config FILE` (JSON, see ConfigAtEdge); `--own-bus DIR` instead of
`--bus` starts a private bus first, with its socket at DIR/bus (the lab's modem node).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import subprocess
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import Any
from xml.sax.saxutils import quoteattr

from dbus_fast import BusType, Message, MessageType, Variant
from dbus_fast.aio import MessageBus
from pydantic import BaseModel, ConfigDict, Field, model_validator

# Theory of operation. The simulator owns `org.freedesktop.ModemManager1` and speaks the part of
# ModemManager 1.20's API that failoverd uses, with the names, signatures and enum values of ModemManager's
# introspection/*.xml and include/ModemManager-enums.h at tag 1.20.4 (what Debian 12 ships). Every object
# is a table of interfaces → properties (D-Bus Variants); a change goes through `_set`, which emits
# PropertiesChanged per interface as ModemManager's GDBus skeletons do. As in ModemManager, modems are
# listed by the ObjectManager and SIM and bearer objects are only exported. Registration, connection and
# SIM-slot switches take configurable times; a slot switch removes the modem (InterfacesRemoved) and adds
# it again under the next Modem/N, as ModemManager's re-probe does. Faults come from the test-only
# interface net.failoverd.MmSim.Control on /net/failoverd/MmSim, per MCCMNC: CarrierOutage(s, b) (the
# radio network is gone: registration drops to searching, or roams to a partner in automatic mode),
# Reject(s, s) (the network refuses registration with a reject cause: denied) and DataStop(s, b)
# (registered, but the network releases the bearer and refuses new ones).
MM = "org.freedesktop.ModemManager1"
MM_PATH = "/org/freedesktop/ModemManager1"
MODEM = f"{MM}.Modem"
M3GPP = f"{MM}.Modem.Modem3gpp"
SIMPLE = f"{MM}.Modem.Simple"
SIM = f"{MM}.Sim"
BEARER = f"{MM}.Bearer"
PROPS = "org.freedesktop.DBus.Properties"
OBJMGR = "org.freedesktop.DBus.ObjectManager"
INTROSPECTABLE = "org.freedesktop.DBus.Introspectable"
PEER = "org.freedesktop.DBus.Peer"
CONTROL = "net.failoverd.MmSim.Control"
CONTROL_PATH = "/net/failoverd/MmSim"
ERROR = f"{MM}.Error"


class ModemState(IntEnum):
    """MMModemState."""

    FAILED = -1
    UNKNOWN = 0
    INITIALIZING = 1
    LOCKED = 2
    DISABLED = 3
    DISABLING = 4
    ENABLING = 5
    ENABLED = 6
    SEARCHING = 7
    REGISTERED = 8
    DISCONNECTING = 9
    CONNECTING = 10
    CONNECTED = 11


class Registration(IntEnum):
    """MMModem3gppRegistrationState (the values this simulator reaches)."""

    IDLE = 0
    HOME = 1
    SEARCHING = 2
    DENIED = 3
    UNKNOWN = 4
    ROAMING = 5


class ChangeReason(IntEnum):
    """MMModemStateChangeReason."""

    UNKNOWN = 0
    USER_REQUESTED = 1
    SUSPEND = 2
    FAILURE = 3


ACCESS_TECH_LTE = 1 << 14  # MMModemAccessTechnology
ACCESS_TECH_5GNR = 1 << 15
CAPABILITY_GSM_UMTS_LTE = (1 << 2) | (1 << 3)  # MMModemCapability
MODE_3G_4G_5G = (1 << 2) | (1 << 3) | (1 << 4)  # MMModemMode
MODE_4G = 1 << 3
LOCK_NONE = 1  # MMModemLock
POWER_ON = 3  # MMModemPowerState
IP_FAMILY_IPV4V6 = (1 << 0) | (1 << 1) | (1 << 2)  # MMBearerIpFamily
IP_METHOD_STATIC = 2  # MMBearerIpMethod
BEARER_TYPE_DEFAULT = 1  # MMBearerType
SIM_TYPE_PHYSICAL = 1  # MMSimType
SIM_TYPE_ESIM = 2
ESIM_STATUS_WITH_PROFILES = 2  # MMSimEsimStatus
REMOVABLE, NOT_REMOVABLE = 1, 2  # MMSimRemovability
PORT_NET, PORT_AT = 2, 3  # MMModemPortType
PACKET_ATTACHED, PACKET_DETACHED = 2, 1  # MMModem3gppPacketServiceState

# Registration rejects Reject() may give: MMMobileEquipmentError nicks (include/ModemManager-errors.h) for the
# 3GPP reject causes of TS 24.301 / 24.008 (cause = value - 100: PlmnNotAllowed is cause #11).
REJECT_CAUSES = frozenset({
    "ImsiUnknownInHss", "IllegalUe", "IllegalMe", "PsServicesNotAllowed", "PsAndNonPsServicesNotAllowed",
    "PlmnNotAllowed", "AreaNotAllowed", "RoamingNotAllowedInArea", "PsServicesNotAllowedInPlmn", "NoCellsInArea",
    "NetworkFailureAttach", "Congestion", "NetworkNotAllowed",
})  # fmt: skip

# A bearer's Ip4Config/Ip6Config when it has none: method UNKNOWN, as mm_bearer_ip_config_get_dictionary(NULL).
NO_IP = Variant("a{sv}", {"method": Variant("u", 0)})

# Signatures, from introspection/*.xml at 1.20.4. Methods: name → (in, out).
PROPERTY_TYPES: dict[str, dict[str, str]] = {
    MM: {"Version": "s"},
    MODEM: {
        "Sim": "o",
        "SimSlots": "ao",
        "PrimarySimSlot": "u",
        "Bearers": "ao",
        "SupportedCapabilities": "au",
        "CurrentCapabilities": "u",
        "MaxBearers": "u",
        "MaxActiveBearers": "u",
        "MaxActiveMultiplexedBearers": "u",
        "Manufacturer": "s",
        "Model": "s",
        "Revision": "s",
        "CarrierConfiguration": "s",
        "CarrierConfigurationRevision": "s",
        "HardwareRevision": "s",
        "DeviceIdentifier": "s",
        "Device": "s",
        "Drivers": "as",
        "Plugin": "s",
        "PrimaryPort": "s",
        "Ports": "a(su)",
        "EquipmentIdentifier": "s",
        "UnlockRequired": "u",
        "UnlockRetries": "a{uu}",
        "State": "i",
        "StateFailedReason": "u",
        "AccessTechnologies": "u",
        "SignalQuality": "(ub)",
        "OwnNumbers": "as",
        "PowerState": "u",
        "SupportedModes": "a(uu)",
        "CurrentModes": "(uu)",
        "SupportedBands": "au",
        "CurrentBands": "au",
        "SupportedIpFamilies": "u",
    },
    M3GPP: {
        "Imei": "s",
        "RegistrationState": "u",
        "OperatorCode": "s",
        "OperatorName": "s",
        "EnabledFacilityLocks": "u",
        "SubscriptionState": "u",
        "EpsUeModeOperation": "u",
        "Pco": "a(ubay)",
        "InitialEpsBearer": "o",
        "InitialEpsBearerSettings": "a{sv}",
        "PacketServiceState": "u",
        "Nr5gRegistrationSettings": "a{sv}",
    },
    SIMPLE: {},
    SIM: {
        "Active": "b",
        "SimIdentifier": "s",
        "Imsi": "s",
        "Eid": "s",
        "OperatorIdentifier": "s",
        "OperatorName": "s",
        "EmergencyNumbers": "as",
        "PreferredNetworks": "a(su)",
        "Gid1": "ay",
        "Gid2": "ay",
        "SimType": "u",
        "EsimStatus": "u",
        "Removability": "u",
    },
    BEARER: {
        "Interface": "s",
        "Connected": "b",
        "ConnectionError": "(ss)",
        "Suspended": "b",
        "Multiplexed": "b",
        "Ip4Config": "a{sv}",
        "Ip6Config": "a{sv}",
        "Stats": "a{sv}",
        "ReloadStatsSupported": "b",
        "IpTimeout": "u",
        "BearerType": "u",
        "ProfileId": "i",
        "Properties": "a{sv}",
    },
    CONTROL: {},
}
METHOD_TYPES: dict[str, dict[str, tuple[str, str]]] = {
    MM: {"ScanDevices": ("", ""), "SetLogging": ("s", ""), "ReportKernelEvent": ("a{sv}", ""),
         "InhibitDevice": ("sb", "")},
    MODEM: {"Enable": ("b", ""), "ListBearers": ("", "ao"), "SetPrimarySimSlot": ("u", "")},
    M3GPP: {"Register": ("s", ""), "Scan": ("", "aa{sv}")},
    SIMPLE: {"Connect": ("a{sv}", "o"), "Disconnect": ("o", ""), "GetStatus": ("", "a{sv}")},
    SIM: {},
    BEARER: {},
    CONTROL: {"CarrierOutage": ("sb", ""), "Reject": ("ss", ""), "DataStop": ("sb", ""), "RejectSim": ("ss", ""),
              "Reset": ("", "")},
}  # fmt: skip
SIGNAL_TYPES: dict[str, dict[str, str]] = {MODEM: {"StateChanged": "iiu"}}
# The polkit action ModemManager 1.20 checks before each method that changes something (its
# mm-base-manager.c, mm-iface-modem*.c: MM_AUTHORIZATION_*); methods not listed need none.
MANAGER_CONTROL, DEVICE_CONTROL = f"{MM}.Control", f"{MM}.Device.Control"
AUTHORIZATION: dict[tuple[str, str], str] = {
    **{(MM, m): MANAGER_CONTROL for m in ("ScanDevices", "SetLogging", "ReportKernelEvent", "InhibitDevice")},
    **{(MODEM, m): DEVICE_CONTROL for m in ("Enable", "SetPrimarySimSlot")},
    **{(M3GPP, m): DEVICE_CONTROL for m in ("Register", "Scan")},
    **{(SIMPLE, m): DEVICE_CONTROL for m in ("Connect", "Disconnect")},
}
POLKIT = "org.freedesktop.PolicyKit1"
POLKIT_PATH = "/org/freedesktop/PolicyKit1/Authority"
POLKIT_ALLOW_USER_INTERACTION = 1


class SimAtEdge(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    imsi: str
    iccid: str
    home: str = Field(pattern=r"^[0-9]{5,6}$", description="MCCMNC of the subscription's home network")
    operator_name: str
    apn: str
    roaming: list[str] = Field(default_factory=list, description="partner PLMNs this SIM may register on")
    # An eUICC in this slot, `iccid` its enabled eSIM profile (ModemManager 1.20 can read, not change, which).
    esim: bool = False
    eid: str = ""


class NetworkAtEdge(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    code: str = Field(pattern=r"^[0-9]{5,6}$")
    name: str
    signal: int = Field(default=70, ge=0, le=100)
    access: str = Field(default="lte", pattern="^(lte|5gnr)$")


class TimingAtEdge(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    enable_s: float = 0.5
    register_s: float = 3.0
    connect_s: float = 1.0
    slot_switch_s: float = 20.0
    register_timeout_s: float = 10.0


class ConfigAtEdge(BaseModel):
    """The simulator's JSON config: one modem, its SIM slots (null for an empty slot), the radio networks."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    equipment_id: str = "350000000000001"
    manufacturer: str = "failoverd"
    model: str = "mmsim"
    interface: str = "wwan0"
    primary_slot: int = Field(default=1, ge=1)
    enabled: bool = True
    slots: list[SimAtEdge | None]
    networks: list[NetworkAtEdge]
    timing: TimingAtEdge = TimingAtEdge()
    # The lab's radio side: MCCMNC → the next hop into that network from the node the simulator runs in
    # (or a list: one of each family, for a dual-stack bearer). While a bearer is connected on a network
    # named here, that node's default route goes there; otherwise it is a blackhole (no bearer, no
    # data), as through a real modem.
    data_path: dict[str, str | list[str]] = Field(default_factory=dict)
    polkit: bool = Field(
        default=False, description="ask polkitd on the bus before each method ModemManager guards, as it does"
    )

    @model_validator(mode="after")
    def _consistent(self) -> ConfigAtEdge:
        if not self.slots:
            raise ValueError("slots: at least one SIM slot (null for an empty one)")
        if self.primary_slot > len(self.slots):
            raise ValueError(f"primary_slot {self.primary_slot}: there are {len(self.slots)} slots")
        codes = [n.code for n in self.networks]
        if len(set(codes)) != len(codes):
            raise ValueError(f"networks: a code given twice in {codes}")
        return self


class DBusFailure(Exception):
    """A method's D-Bus error reply: ModemManager's error name and a message."""

    def __init__(self, name: str, text: str) -> None:
        super().__init__(text)
        self.name = name


@dataclass
class DBusObject:
    path: str
    interfaces: dict[str, dict[str, Variant]]
    managed: bool  # listed by GetManagedObjects (modems), or only exported (SIMs, bearers)


@dataclass
class Carrier:
    """A radio network's condition, as the control interface sets it."""

    network: NetworkAtEdge
    down: bool = False
    reject: str = ""  # MobileEquipment error nick; "" when the network accepts
    data_stopped: bool = False


@dataclass
class ModemRun:
    """The modem object's life between probes: a slot switch ends it and starts the next."""

    index: int
    path: str
    sim_paths: list[str]
    bearers: list[str] = field(default_factory=list)
    manual: str = ""  # MCCMNC of a manual registration; "" is automatic
    registered_on: str = ""
    task: asyncio.Task[None] | None = None


def next_hops(value: str | list[str]) -> tuple[str, ...]:
    return (value,) if isinstance(value, str) else tuple(value)


class DataPath:
    """The lab node's default routes, following the modem: one `ip route replace` per family and change,
    in order. Only the families the configuration names are touched."""

    def __init__(self, config: dict[str, str | list[str]]) -> None:
        self.enabled = bool(config)
        hops = [h for v in config.values() for h in next_hops(v)]
        self.families = [f for f, v6 in (("-4", False), ("-6", True)) if any((":" in h) == v6 for h in hops)]
        self.wanted: tuple[str, ...] = ()  # next hops, or none for no data (blackhole)
        self.applied: tuple[str, ...] | None = None
        self.kick = asyncio.Event()

    def want(self, via: tuple[str, ...]) -> None:
        if self.enabled and via != self.wanted:
            self.wanted = via
            self.kick.set()

    def start(self, spawn: Callable[[Coroutine[Any, Any, None]], asyncio.Task[None]]) -> None:
        if self.enabled:
            self.kick.set()
            spawn(self._follow())

    async def _follow(self) -> None:
        while True:
            await self.kick.wait()
            self.kick.clear()
            via = self.wanted
            if via == self.applied:
                continue
            ok = True
            for family in self.families:
                hop = next((h for h in via if (":" in h) == (family == "-6")), None)
                route = ["default", "via", hop] if hop else ["blackhole", "default"]
                proc = await asyncio.create_subprocess_exec("ip", family, "route", "replace", *route)
                ok = await proc.wait() == 0 and ok
            if ok:
                self.applied = via
            else:
                await asyncio.sleep(0.5)
                self.kick.set()


def bus_config(socket_path: Path) -> str:
    """A dbus-daemon config for a private "system"-like bus at socket_path, open to everyone on it."""
    return f"""<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={socket_path}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
  </policy>
</busconfig>
"""


class ModemSimulator:
    """The objects on the bus and the modem's behaviour; one instance per bus connection."""

    def __init__(self, bus: MessageBus, config: ConfigAtEdge) -> None:
        self.bus = bus
        self.config = config
        self.timing = config.timing
        self.carriers = {n.code: Carrier(n) for n in config.networks}
        self.objects: dict[str, DBusObject] = {}
        self.primary_slot = config.primary_slot
        self.modem_counter = 0
        self.sim_counter = 0
        self.bearer_counter = 0
        self.run: ModemRun | None = None
        self.sim_rejects: dict[str, str] = {}  # IMSI → reject cause: the subscription is refused everywhere
        self.reprobe: asyncio.Task[None] | None = None
        self.route = DataPath(config.data_path)
        self.tasks: set[asyncio.Task[Any]] = set()
        self.changed = asyncio.Event()  # set on every state change; waiters re-check their condition
        manager = {MM: {"Version": Variant("s", "1.20.4")}}
        self.objects[MM_PATH] = DBusObject(MM_PATH, manager, managed=False)
        self.objects[CONTROL_PATH] = DBusObject(CONTROL_PATH, {CONTROL: {}}, managed=False)

    # -- the object table and its signals

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    def _signal(self, path: str, interface: str, member: str, signature: str, body: list[Any]) -> None:
        self.bus.send(Message.new_signal(path=path, interface=interface, member=member, signature=signature, body=body))

    def _set(self, path: str, interface: str, **values: Variant) -> None:
        obj = self.objects.get(path)
        if obj is None:
            return
        props = obj.interfaces[interface]
        changed = {k: v for k, v in values.items() if k not in props or props[k] != v}
        if not changed:
            return
        props.update(changed)
        self._signal(path, PROPS, "PropertiesChanged", "sa{sv}as", [interface, changed, []])
        self.changed.set()
        self._follow_data_path()

    def _add(self, obj: DBusObject) -> None:
        self.objects[obj.path] = obj
        if obj.managed:
            self._signal(MM_PATH, OBJMGR, "InterfacesAdded", "oa{sa{sv}}", [obj.path, obj.interfaces])

    def _remove(self, path: str) -> None:
        obj = self.objects.pop(path, None)
        if obj is not None and obj.managed:
            self._signal(MM_PATH, OBJMGR, "InterfacesRemoved", "oas", [path, list(obj.interfaces)])

    def _modem_props(self, interface: str) -> dict[str, Variant]:
        assert self.run is not None
        return self.objects[self.run.path].interfaces[interface]

    def _state(self) -> ModemState:
        return ModemState(self._modem_props(MODEM)["State"].value)

    def _set_state(self, new: ModemState, reason: ChangeReason = ChangeReason.UNKNOWN) -> None:
        assert self.run is not None
        old = self._state()
        if old == new:
            return
        self._set(self.run.path, MODEM, State=Variant("i", int(new)))
        self._signal(self.run.path, MODEM, "StateChanged", "iiu", [int(old), int(new), int(reason)])

    # -- the modem's life

    def start(self) -> None:
        self._probe()
        self.route.start(self._spawn)

    def _follow_data_path(self) -> None:
        run = self.run
        via: tuple[str, ...] = ()
        if run is not None and run.registered_on and not self.carriers[run.registered_on].data_stopped:
            connected = (self.objects.get(p) for p in run.bearers)
            if any(b is not None and b.interfaces[BEARER]["Connected"].value for b in connected):
                via = next_hops(self.config.data_path.get(run.registered_on, []))
        self.route.want(via)

    def reset(self) -> None:
        """Net.failoverd.MmSim.Control.Reset: every fault cleared and the modem re-probed at once on its
        configured slot, in automatic registration with no bearer (what a lab scenario starts from)."""
        for carrier in self.carriers.values():
            carrier.down, carrier.reject, carrier.data_stopped = False, "", False
        self.sim_rejects.clear()
        if self.reprobe is not None:
            self.reprobe.cancel()
        run = self.run
        if run is not None:
            if run.task is not None:
                run.task.cancel()
            self._remove(run.path)
            for path in [*run.bearers, *run.sim_paths]:
                self._remove(path)
        self.run = None
        self.primary_slot = self.config.primary_slot
        self._probe()
        self._follow_data_path()

    def _probe(self) -> None:
        """Export a modem object as ModemManager does after probing: its SIMs first, then the modem."""
        index = self.modem_counter
        self.modem_counter += 1
        path = f"{MM_PATH}/Modem/{index}"
        sim_paths: list[str] = []
        for slot, sim in enumerate(self.config.slots, start=1):
            if sim is None:
                sim_paths.append("/")
                continue
            sim_path = f"{MM_PATH}/SIM/{self.sim_counter}"
            self.sim_counter += 1
            sim_paths.append(sim_path)
            self.objects[sim_path] = DBusObject(sim_path, {SIM: self._sim_props(sim, slot)}, managed=False)
        primary = sim_paths[self.primary_slot - 1]
        self.run = ModemRun(index=index, path=path, sim_paths=sim_paths)
        self._add(DBusObject(path, self._modem_interfaces(primary, sim_paths), managed=True))
        if self.config.enabled:
            self.run.task = self._spawn(self._enable(self.run))

    def _sim_props(self, sim: SimAtEdge, slot: int) -> dict[str, Variant]:
        return {
            "Active": Variant("b", slot == self.primary_slot),
            "SimIdentifier": Variant("s", sim.iccid),
            "Imsi": Variant("s", sim.imsi),
            "Eid": Variant("s", sim.eid),
            "OperatorIdentifier": Variant("s", sim.home),
            "OperatorName": Variant("s", sim.operator_name),
            "EmergencyNumbers": Variant("as", ["112", "911"]),
            "PreferredNetworks": Variant("a(su)", []),
            "Gid1": Variant("ay", b""),
            "Gid2": Variant("ay", b""),
            "SimType": Variant("u", SIM_TYPE_ESIM if sim.esim else SIM_TYPE_PHYSICAL),
            "EsimStatus": Variant("u", ESIM_STATUS_WITH_PROFILES if sim.esim else 0),
            "Removability": Variant("u", NOT_REMOVABLE if sim.esim else REMOVABLE),
        }

    def _modem_interfaces(self, primary: str, sim_paths: list[str]) -> dict[str, dict[str, Variant]]:
        c = self.config
        sim_present = primary != "/"
        modem = {
            "Sim": Variant("o", primary),
            "SimSlots": Variant("ao", sim_paths),
            "PrimarySimSlot": Variant("u", self.primary_slot if len(sim_paths) > 1 else 0),
            "Bearers": Variant("ao", []),
            "SupportedCapabilities": Variant("au", [CAPABILITY_GSM_UMTS_LTE]),
            "CurrentCapabilities": Variant("u", CAPABILITY_GSM_UMTS_LTE),
            "MaxBearers": Variant("u", 1),
            "MaxActiveBearers": Variant("u", 1),
            "MaxActiveMultiplexedBearers": Variant("u", 0),
            "Manufacturer": Variant("s", c.manufacturer),
            "Model": Variant("s", c.model),
            "Revision": Variant("s", "mmsim-1"),
            "CarrierConfiguration": Variant("s", ""),
            "CarrierConfigurationRevision": Variant("s", ""),
            "HardwareRevision": Variant("s", ""),
            "DeviceIdentifier": Variant("s", f"mmsim-{c.equipment_id}"),
            "Device": Variant("s", "/sys/devices/mmsim"),
            "Drivers": Variant("as", ["mmsim"]),
            "Plugin": Variant("s", "generic"),
            "PrimaryPort": Variant("s", "cdc-wdm0"),
            "Ports": Variant("a(su)", [["cdc-wdm0", PORT_AT], [c.interface, PORT_NET]]),
            "EquipmentIdentifier": Variant("s", c.equipment_id),
            "UnlockRequired": Variant("u", LOCK_NONE),
            "UnlockRetries": Variant("a{uu}", {}),
            "State": Variant("i", int(ModemState.DISABLED if sim_present else ModemState.FAILED)),
            # MMModemStateFailedReason: NONE = 0, SIM_MISSING = 2.
            "StateFailedReason": Variant("u", 0 if sim_present else 2),
            "AccessTechnologies": Variant("u", 0),
            "SignalQuality": Variant("(ub)", [0, False]),
            "OwnNumbers": Variant("as", []),
            "PowerState": Variant("u", POWER_ON),
            "SupportedModes": Variant("a(uu)", [[MODE_3G_4G_5G, MODE_4G]]),
            "CurrentModes": Variant("(uu)", [MODE_3G_4G_5G, MODE_4G]),
            "SupportedBands": Variant("au", [33, 37, 50]),  # MMModemBand EUTRAN 3, 7, 20
            "CurrentBands": Variant("au", [33, 37, 50]),
            "SupportedIpFamilies": Variant("u", IP_FAMILY_IPV4V6),
        }
        interfaces: dict[str, dict[str, Variant]] = {MODEM: modem, SIMPLE: {}}
        if sim_present:
            # Like ModemManager, the 3GPP interface appears only with a usable SIM.
            interfaces[M3GPP] = {
                "Imei": Variant("s", c.equipment_id),
                "RegistrationState": Variant("u", int(Registration.IDLE)),
                "OperatorCode": Variant("s", ""),
                "OperatorName": Variant("s", ""),
                "EnabledFacilityLocks": Variant("u", 0),
                "SubscriptionState": Variant("u", 0),
                "EpsUeModeOperation": Variant("u", 0),
                "Pco": Variant("a(ubay)", []),
                "InitialEpsBearer": Variant("o", "/"),
                "InitialEpsBearerSettings": Variant("a{sv}", {}),
                "PacketServiceState": Variant("u", 0),
                "Nr5gRegistrationSettings": Variant("a{sv}", {}),
            }
        return interfaces

    def _sim(self) -> SimAtEdge | None:
        return self.config.slots[self.primary_slot - 1]

    async def _enable(self, run: ModemRun) -> None:
        if self._state() != ModemState.DISABLED:
            return
        self._set_state(ModemState.ENABLING, ChangeReason.USER_REQUESTED)
        await asyncio.sleep(self.timing.enable_s)
        self._set_state(ModemState.ENABLED, ChangeReason.USER_REQUESTED)
        await self._register_loop(run)

    def _target(self, run: ModemRun) -> tuple[str, str]:
        """The PLMN to register on now, and the reason nick if registration fails ("" when it can succeed)."""
        sim = self._sim()
        assert sim is not None
        if sim.imsi in self.sim_rejects:
            return run.manual or sim.home, self.sim_rejects[sim.imsi]
        if run.manual:
            carrier = self.carriers.get(run.manual)
            if carrier is None or carrier.down:
                return run.manual, "NoNetwork"
            if carrier.reject:
                return run.manual, carrier.reject
            if run.manual != sim.home and run.manual not in sim.roaming:
                return run.manual, "PlmnNotAllowed"
            return run.manual, ""
        # Automatic: the home network, else the first partner network that is up and accepts us.
        for code in [sim.home, *sim.roaming]:
            carrier = self.carriers.get(code)
            if carrier is not None and not carrier.down and not carrier.reject:
                return code, ""
        home = self.carriers.get(sim.home)
        if home is not None and not home.down and home.reject:
            return sim.home, home.reject
        return sim.home, "NoNetwork"

    async def _register_loop(self, run: ModemRun) -> None:
        """Keep the modem registered as the networks allow: search, register after register_s, follow faults.

        A network's reject (PlmnNotAllowed, …) leaves the modem denied until something changes, as a modem
        stops retrying a PLMN that rejected it (3GPP TS 24.301 5.5.1.2.5); a missing network is searched for
        again every register_s."""
        while self.run is run and self._state() >= ModemState.ENABLED:
            code, failure = self._target(run)
            if run.registered_on:
                current = self.carriers[run.registered_on]
                if current.down:
                    self._deregister(run, "NoNetwork")
                elif current.reject:
                    self._deregister(run, current.reject)
                elif (sim := self._sim()) is not None and sim.imsi in self.sim_rejects:
                    self._deregister(run, self.sim_rejects[sim.imsi])
                elif run.registered_on != code:
                    self._deregister(run, "")
            rejected = bool(failure) and failure != "NoNetwork" and self._denied()
            if not run.registered_on and not rejected:
                self._set(run.path, M3GPP, RegistrationState=Variant("u", int(Registration.SEARCHING)))
                self._set_state(ModemState.SEARCHING)
                await asyncio.sleep(self.timing.register_s)
                if self.run is not run or self._state() < ModemState.ENABLED:
                    return
                code, failure = self._target(run)
                if not failure:
                    self._registered(run, code)
                else:
                    self._deregister(run, failure)
                    if failure == "NoNetwork":
                        await self._wait_change(self.timing.register_s)
                        continue
            self.changed.clear()
            await self._wait_change(None)

    async def _wait_change(self, timeout: float | None) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.changed.wait(), timeout)
        self.changed.clear()

    def _registered(self, run: ModemRun, code: str) -> None:
        sim = self._sim()
        assert sim is not None
        net = self.carriers[code].network
        run.registered_on = code
        reg = Registration.HOME if code == sim.home else Registration.ROAMING
        access = ACCESS_TECH_5GNR if net.access == "5gnr" else ACCESS_TECH_LTE
        self._set(
            run.path,
            M3GPP,
            RegistrationState=Variant("u", int(reg)),
            OperatorCode=Variant("s", code),
            OperatorName=Variant("s", net.name),
            PacketServiceState=Variant("u", PACKET_ATTACHED),
        )
        self._set(
            run.path,
            MODEM,
            AccessTechnologies=Variant("u", access),
            SignalQuality=Variant("(ub)", [net.signal, True]),
        )
        self._set_state(ModemState.REGISTERED)

    def _deregister(self, run: ModemRun, failure: str) -> None:
        run.registered_on = ""
        self._disconnect_all(run, "org.freedesktop.ModemManager1.Error.MobileEquipment.NoNetwork")
        reg = Registration.SEARCHING if failure in ("", "NoNetwork") else Registration.DENIED
        self._set(
            run.path,
            M3GPP,
            RegistrationState=Variant("u", int(reg)),
            OperatorCode=Variant("s", ""),
            OperatorName=Variant("s", ""),
            PacketServiceState=Variant("u", PACKET_DETACHED),
        )
        self._set(run.path, MODEM, AccessTechnologies=Variant("u", 0), SignalQuality=Variant("(ub)", [0, True]))
        self._set_state(ModemState.SEARCHING if reg == Registration.SEARCHING else ModemState.ENABLED)

    def _disconnect_all(self, run: ModemRun, error: str) -> None:
        for path in run.bearers:
            bearer = self.objects.get(path)
            if bearer is not None and bearer.interfaces[BEARER]["Connected"].value:
                self._set(
                    path,
                    BEARER,
                    Connected=Variant("b", False),
                    ConnectionError=Variant("(ss)", [error, "the network released the bearer"]),
                    Ip4Config=NO_IP,
                )
        if self._state() == ModemState.CONNECTED:
            self._set_state(ModemState.REGISTERED, ChangeReason.FAILURE)

    # -- methods

    async def enable(self, on: bool) -> None:
        run = self._require_run()
        if self._state() == ModemState.FAILED:
            raise DBusFailure(f"{ERROR}.Core.WrongState", "the modem is in failed state")
        if on:
            if run.task is None or run.task.done():
                run.task = self._spawn(self._enable(run))
            return
        if run.task is not None:
            run.task.cancel()
        self._disconnect_all(run, "")
        run.registered_on = ""
        self._set_state(ModemState.DISABLING, ChangeReason.USER_REQUESTED)
        self._set(run.path, M3GPP, RegistrationState=Variant("u", 0), OperatorCode=Variant("s", ""),
                  OperatorName=Variant("s", ""))  # fmt: skip
        self._set(run.path, MODEM, AccessTechnologies=Variant("u", 0), SignalQuality=Variant("(ub)", [0, False]))
        self._set_state(ModemState.DISABLED, ChangeReason.USER_REQUESTED)

    def _require_run(self) -> ModemRun:
        if self.run is None:
            raise DBusFailure(f"{ERROR}.Core.WrongState", "the modem is being re-probed")
        return self.run

    async def register(self, code: str) -> None:
        """Modem3gpp.Register: returns once registered on code ("" = automatic), fails when the network refuses."""
        run = self._require_run()
        if self._state() < ModemState.ENABLED:
            raise DBusFailure(f"{ERROR}.Core.WrongState", "the modem is not enabled")
        run.manual = code
        if run.registered_on and (run.registered_on != code and code):
            self._deregister(run, "")
        self.changed.set()
        deadline = asyncio.get_running_loop().time() + self.timing.register_timeout_s
        while True:
            target, failure = self._target(run)
            if run.registered_on and run.registered_on == target:
                return
            # Wait for the registration loop's attempt, then give the network's answer.
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0 or (failure and failure != "NoNetwork" and self._denied()):
                raise DBusFailure(
                    f"{ERROR}.MobileEquipment.{failure or 'NetworkTimeout'}", f"cannot register on {target}"
                )
            await self._wait_change(min(remaining, 0.2))

    def _denied(self) -> bool:
        return bool(self._modem_props(M3GPP)["RegistrationState"].value == Registration.DENIED)

    async def set_primary_sim_slot(self, slot: int) -> None:
        run = self._require_run()
        if not 1 <= slot <= len(self.config.slots):
            raise DBusFailure(f"{ERROR}.Core.InvalidArgs", f"SIM slot {slot} out of range")
        if slot == self.primary_slot:
            return
        self.primary_slot = slot
        self.reprobe = self._spawn(self._reprobe(run))

    async def _reprobe(self, run: ModemRun) -> None:
        """The slot switch resets the modem: its objects go away and a new modem object appears later."""
        await asyncio.sleep(0.05)  # the method's reply goes out first, as in ModemManager
        if run.task is not None:
            run.task.cancel()
        self.run = None
        self._remove(run.path)
        for path in [*run.bearers, *run.sim_paths]:
            self._remove(path)
        self._follow_data_path()
        await asyncio.sleep(self.timing.slot_switch_s)
        self._probe()

    async def connect(self, props: dict[str, Variant]) -> str:
        run = self._require_run()
        sim = self._sim()
        if sim is None:
            raise DBusFailure(f"{ERROR}.Core.WrongState", "no SIM")
        apn = props["apn"].value if "apn" in props else ""
        deadline = asyncio.get_running_loop().time() + self.timing.register_timeout_s
        while not run.registered_on:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0 or self.run is not run:
                raise DBusFailure(f"{ERROR}.MobileEquipment.NoNetwork", "not registered")
            await self._wait_change(min(remaining, 0.2))
        self._set_state(ModemState.CONNECTING, ChangeReason.USER_REQUESTED)
        await asyncio.sleep(self.timing.connect_s)
        if self.run is not run or not run.registered_on:
            raise DBusFailure(f"{ERROR}.MobileEquipment.NoNetwork", "registration lost while connecting")
        if apn != sim.apn:
            self._set_state(ModemState.REGISTERED, ChangeReason.FAILURE)
            raise DBusFailure(f"{ERROR}.MobileEquipment.MissingOrUnknownApn", f"APN {apn!r} unknown")
        if self.carriers[run.registered_on].data_stopped:
            self._set_state(ModemState.REGISTERED, ChangeReason.FAILURE)
            raise DBusFailure(f"{ERROR}.MobileEquipment.ServiceOptionOutOfOrder", "the network refused the bearer")
        path = f"{MM_PATH}/Bearer/{self.bearer_counter}"
        self.bearer_counter += 1
        n = self.bearer_counter % 250 + 2
        ip4 = {
            "method": Variant("u", IP_METHOD_STATIC),
            "address": Variant("s", f"100.64.0.{n}"),
            "prefix": Variant("u", 30),
            "gateway": Variant("s", "100.64.0.1"),
            "dns1": Variant("s", "100.64.0.1"),
            "mtu": Variant("u", 1500),
        }
        bearer = {
            "Interface": Variant("s", self.config.interface),
            "Connected": Variant("b", True),
            "ConnectionError": Variant("(ss)", ["", ""]),
            "Suspended": Variant("b", False),
            "Multiplexed": Variant("b", False),
            "Ip4Config": Variant("a{sv}", ip4),
            "Ip6Config": NO_IP,
            "Stats": Variant("a{sv}", {}),
            "ReloadStatsSupported": Variant("b", False),
            "IpTimeout": Variant("u", 20),
            "BearerType": Variant("u", BEARER_TYPE_DEFAULT),
            "ProfileId": Variant("i", -1),
            "Properties": Variant("a{sv}", {"apn": Variant("s", apn)}),
        }
        self.objects[path] = DBusObject(path, {BEARER: bearer}, managed=False)
        run.bearers.append(path)
        self._set(run.path, MODEM, Bearers=Variant("ao", list(run.bearers)))
        self._set_state(ModemState.CONNECTED, ChangeReason.USER_REQUESTED)
        return path

    def disconnect(self, bearer: str) -> None:
        run = self._require_run()
        for path in run.bearers:
            if bearer in ("/", path):
                self._set(path, BEARER, Connected=Variant("b", False), Ip4Config=NO_IP)
        if self._state() == ModemState.CONNECTED:
            self._set_state(ModemState.REGISTERED, ChangeReason.USER_REQUESTED)

    def status(self) -> dict[str, Variant]:
        run = self._require_run()
        modem = self._modem_props(MODEM)
        out = {
            "state": Variant("u", max(self._state(), 0)),
            "signal-quality": modem["SignalQuality"],
            "current-bands": modem["CurrentBands"],
            "access-technologies": modem["AccessTechnologies"],
        }
        if run.registered_on:
            m3gpp = self._modem_props(M3GPP)
            out["m3gpp-registration-state"] = m3gpp["RegistrationState"]
            out["m3gpp-operator-code"] = m3gpp["OperatorCode"]
            out["m3gpp-operator-name"] = m3gpp["OperatorName"]
        return out

    def scan(self) -> list[dict[str, Variant]]:
        # MMModem3gppNetworkAvailability: AVAILABLE = 1, CURRENT = 2, FORBIDDEN = 3.
        out = []
        current = self.run.registered_on if self.run else ""
        for code, carrier in self.carriers.items():
            if carrier.down:
                continue
            status = 2 if code == current else 3 if carrier.reject else 1
            out.append(
                {
                    "status": Variant("u", status),
                    "operator-long": Variant("s", carrier.network.name),
                    "operator-short": Variant("s", carrier.network.name),
                    "operator-code": Variant("s", code),
                    "access-technology": Variant("u", ACCESS_TECH_LTE),
                }
            )
        return out

    def control(self, member: str, code: str, arg: Any) -> None:
        if member == "RejectSim":  # code is the SIM's IMSI here
            if code not in {s.imsi for s in self.config.slots if s is not None}:
                raise DBusFailure(f"{ERROR}.Core.NotFound", f"no SIM with IMSI {code} in the config")
            if arg and arg not in REJECT_CAUSES:
                raise DBusFailure(
                    f"{ERROR}.Core.InvalidArgs", f"reject cause {arg!r} not one of {sorted(REJECT_CAUSES)}"
                )
            if arg:
                self.sim_rejects[code] = str(arg)
            else:
                self.sim_rejects.pop(code, None)
            self.changed.set()
            return
        carrier = self.carriers.get(code)
        if carrier is None:
            raise DBusFailure(f"{ERROR}.Core.NotFound", f"no network {code} in the config")
        if member == "CarrierOutage":
            carrier.down = bool(arg)
        elif member == "Reject":
            if arg and arg not in REJECT_CAUSES:
                raise DBusFailure(
                    f"{ERROR}.Core.InvalidArgs", f"reject cause {arg!r} not one of {sorted(REJECT_CAUSES)}"
                )
            carrier.reject = str(arg)
        elif member == "DataStop":
            carrier.data_stopped = bool(arg)
            if arg and self.run is not None and self.run.registered_on == code:
                self._disconnect_all(self.run, f"{ERROR}.MobileEquipment.ServiceOptionOutOfOrder")
        self.changed.set()

    # -- the D-Bus dispatcher

    def handle(self, msg: Message) -> Message | bool | None:
        if msg.message_type != MessageType.METHOD_CALL:
            return None
        obj = self.objects.get(msg.path or "")
        if msg.interface == INTROSPECTABLE and msg.member == "Introspect":
            return Message.new_method_return(msg, "s", [self._introspect(msg.path or "/")])
        if msg.interface == PEER:
            return Message.new_method_return(msg) if msg.member == "Ping" else None
        if msg.path == MM_PATH and msg.interface == OBJMGR and msg.member == "GetManagedObjects":
            managed = {o.path: o.interfaces for o in self.objects.values() if o.managed}
            return Message.new_method_return(msg, "a{oa{sa{sv}}}", [managed])
        if obj is None:
            return Message.new_error(msg, "org.freedesktop.DBus.Error.UnknownObject", f"no object {msg.path}")
        if msg.interface == PROPS:
            return self._properties(msg, obj)
        if msg.interface not in obj.interfaces:
            return Message.new_error(msg, "org.freedesktop.DBus.Error.UnknownInterface", f"{msg.interface}")
        self._spawn(self._call(msg))
        return True

    def _properties(self, msg: Message, obj: DBusObject) -> Message:
        interface = msg.body[0] if msg.body else ""
        props = obj.interfaces.get(interface)
        if props is None:
            return Message.new_error(msg, "org.freedesktop.DBus.Error.UnknownInterface", interface)
        if msg.member == "GetAll":
            return Message.new_method_return(msg, "a{sv}", [props])
        if msg.member == "Get" and msg.body[1] in props:
            return Message.new_method_return(msg, "v", [props[msg.body[1]]])
        if msg.member == "Set":
            return Message.new_error(msg, "org.freedesktop.DBus.Error.PropertyReadOnly", f"{msg.body[1]} is read-only")
        return Message.new_error(msg, "org.freedesktop.DBus.Error.UnknownProperty", f"{msg.body[1:2]}")

    async def _call(self, msg: Message) -> None:
        key = (msg.interface or "", msg.member or "")

        async def reply_none(coro: Coroutine[Any, Any, None]) -> tuple[str, list[Any]]:
            await coro
            return "", []

        body = msg.body
        out: tuple[str, list[Any]]
        try:
            if self.config.polkit and key in AUTHORIZATION:
                await self._authorize(msg, AUTHORIZATION[key])
            if key in ((MM, "ScanDevices"), (MM, "SetLogging")):
                out = "", []  # nothing to scan for and no log level to keep: accepted as ModemManager would
            elif key == (MODEM, "Enable"):
                out = await reply_none(self.enable(bool(body[0])))
            elif key == (MODEM, "SetPrimarySimSlot"):
                out = await reply_none(self.set_primary_sim_slot(int(body[0])))
            elif key == (MODEM, "ListBearers"):
                out = "ao", [list(self._require_run().bearers)]
            elif key == (M3GPP, "Register"):
                out = await reply_none(self.register(str(body[0])))
            elif key == (M3GPP, "Scan"):
                await asyncio.sleep(self.timing.register_s)
                out = "aa{sv}", [self.scan()]
            elif key == (SIMPLE, "Connect"):
                out = "o", [await self.connect(dict(body[0]))]
            elif key == (SIMPLE, "Disconnect"):
                self.disconnect(str(body[0]))
                out = "", []
            elif key == (SIMPLE, "GetStatus"):
                out = "a{sv}", [self.status()]
            elif key == (CONTROL, "Reset") and msg.path == CONTROL_PATH:
                self.reset()
                out = "", []
            elif msg.interface == CONTROL and msg.path == CONTROL_PATH and msg.member in METHOD_TYPES[CONTROL]:
                self.control(msg.member, str(body[0]), body[1])
                out = "", []
            else:
                out = _unsupported(msg)
            self.bus.send(Message.new_method_return(msg, out[0], out[1]))
        except DBusFailure as e:
            self.bus.send(Message.new_error(msg, e.name, str(e)))

    async def _authorize(self, msg: Message, action: str) -> None:
        """Ask polkitd about the caller as ModemManager 1.20 does (mm-auth-provider.c): the subject is the
        caller's bus name, no details, user interaction allowed; refused or a challenge is Unauthorized."""
        subject = ["system-bus-name", {"name": Variant("s", msg.sender)}]
        ask = Message(destination=POLKIT, path=POLKIT_PATH, interface=f"{POLKIT}.Authority",
                      member="CheckAuthorization", signature="(sa{sv})sa{ss}us",
                      body=[subject, action, {}, POLKIT_ALLOW_USER_INTERACTION, ""])  # fmt: skip
        reply = await self.bus.call(ask)
        if reply is None or reply.message_type == MessageType.ERROR:
            text = reply.body[0] if reply is not None and reply.body else "no answer"
            raise DBusFailure(f"{ERROR}.Core.Failed", f"PolicyKit authorization failed: '{text}'")
        authorized, challenge, _ = reply.body[0]
        if not authorized:
            why = "challenge needed" if challenge else "not authorized"
            raise DBusFailure(f"{ERROR}.Core.Unauthorized", f"PolicyKit authorization failed: {why} for '{action}'")

    def _introspect(self, path: str) -> str:
        obj = self.objects.get(path)
        parts = ['<!DOCTYPE node PUBLIC "-//freedesktop//DTD D-BUS Object Introspection 1.0//EN"',
                 ' "http://www.freedesktop.org/standards/dbus/1.0/introspect.dtd">', "<node>"]  # fmt: skip
        if path == MM_PATH:
            parts.append(f'<interface name="{OBJMGR}"><method name="GetManagedObjects">'
                         '<arg type="a{oa{sa{sv}}}" direction="out"/></method></interface>')  # fmt: skip
        for interface in obj.interfaces if obj else []:
            parts.append(f"<interface name={quoteattr(interface)}>")
            for name, (sig_in, sig_out) in METHOD_TYPES.get(interface, {}).items():
                args = "".join(f'<arg type="{s}" direction="in"/>' for s in _split(sig_in))
                args += "".join(f'<arg type="{s}" direction="out"/>' for s in _split(sig_out))
                parts.append(f'<method name="{name}">{args}</method>')
            for name, sig in SIGNAL_TYPES.get(interface, {}).items():
                args = "".join(f'<arg type="{s}"/>' for s in _split(sig))
                parts.append(f'<signal name="{name}">{args}</signal>')
            for name, sig in PROPERTY_TYPES.get(interface, {}).items():
                parts.append(f'<property name="{name}" type="{sig}" access="read"/>')
            parts.append("</interface>")
        children = {
            p[len(path) :].lstrip("/").split("/")[0] for p in self.objects if p.startswith(path.rstrip("/") + "/")
        }
        parts.extend(f'<node name="{c}"/>' for c in sorted(children) if c)
        parts.append("</node>")
        return "\n".join(parts)


def _unsupported(msg: Message) -> tuple[str, list[Any]]:
    raise DBusFailure(f"{ERROR}.Core.Unsupported", f"{msg.interface}.{msg.member} is not simulated")


def _split(signature: str) -> list[str]:
    """Split a D-Bus signature into its complete types."""
    out: list[str] = []
    i = 0
    while i < len(signature):
        j = i
        while signature[j] == "a":
            j += 1
        if signature[j] in "({":
            depth = 0
            while True:
                depth += signature[j] in "({"
                depth -= signature[j] in ")}"
                j += 1
                if depth == 0:
                    break
        else:
            j += 1
        out.append(signature[i:j])
        i = j
    return out


async def serve(address: str, config: ConfigAtEdge) -> None:
    bus = await MessageBus(bus_address=address, bus_type=BusType.SYSTEM).connect()
    sim = ModemSimulator(bus, config)
    bus.add_message_handler(sim.handle)
    await bus.request_name(MM)
    sim.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"mmsim: {MM} on {address}", flush=True)
    await stop.wait()
    bus.disconnect()


class BusError(RuntimeError):
    """A private bus that did not come up."""


def own_bus(
    where: Path,
    prefix: Sequence[str] = (),
    *,
    socket: str = "bus",
    config: Callable[[Path], str] = bus_config,
    conf: Path | None = None,
) -> tuple[str, subprocess.Popen[str]]:
    """A private dbus-daemon listening at where/socket: its address and process (the caller stops it).
    Its configuration, config(the socket's path), is written to `conf` (where/bus.conf unless given): by
    default a system-like bus open to everyone (the lab's modem node runs one). `prefix` goes before
    its command line: an argv that runs it in a mount namespace of its own, say (tests/mmbus.py)."""
    where.mkdir(parents=True, exist_ok=True)
    (where / socket).unlink(missing_ok=True)
    conf = conf or where / "bus.conf"
    conf.write_text(config(where / socket))
    proc = subprocess.Popen(
        [*prefix, "dbus-daemon", "--config-file", str(conf), "--nofork", "--print-address"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        address = proc.stdout.readline().strip()
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    if not address.startswith("unix:path="):
        proc.kill()
        proc.wait()
        raise BusError(f"dbus-daemon did not start ({address!r})")
    return address, proc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    where = ap.add_mutually_exclusive_group(required=True)
    where.add_argument("--bus", help="D-Bus address, e.g. unix:path=/tmp/x/bus")
    where.add_argument("--own-bus", type=Path, metavar="DIR", help="start a private bus with its socket DIR/bus")
    ap.add_argument("--config", required=True, type=Path, help="JSON config (see ConfigAtEdge)")
    args = ap.parse_args()
    path = args.config if args.config.exists() else Path(__file__).resolve().parent.parent / args.config
    config = ConfigAtEdge.model_validate(json.loads(path.read_text()))
    if args.bus:
        asyncio.run(serve(args.bus, config))
        return
    try:
        address, daemon = own_bus(args.own_bus)
    except BusError as exc:
        raise SystemExit(f"mmsim: {exc}") from None
    try:
        asyncio.run(serve(address, config))
    finally:
        daemon.terminate()
        daemon.wait(5)


if __name__ == "__main__":
    main()

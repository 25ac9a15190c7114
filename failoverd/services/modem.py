"""The modem service: ModemManager's view of each cellular uplink's modem to the engine, and its profile switches."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

from failoverd.engine import effects as fx
from failoverd.engine import events as ev
from failoverd.engine.modemstate import Phase
from failoverd.engine.profiles import iccid_key
from failoverd.observe.logging import get as get_logger
from failoverd.policy.model import ModemSpec, Policy, ProfileSpec
from failoverd.services.base import Applied, EngineView, Inbox, Reconfigured

if TYPE_CHECKING:  # dbus_fast is imported when a modem is first met: ~14 MiB a daemon without one never needs
    from dbus_fast import Message, Variant
    from dbus_fast.aio import MessageBus

# Theory of operation. One connection to the system bus (DBUS_SYSTEM_BUS_ADDRESS, else the default
# system bus) per session. ModemManager lists its modems through the ObjectManager at MM_PATH; the
# service keeps a copy of every modem object's properties, updated from PropertiesChanged and
# InterfacesAdded/Removed (one AddMatch for every signal ModemManager sends), and the Connected flag
# of the bearers a modem lists. Each policy uplink with profiles is bound to its modem (by
# EquipmentIdentifier, or the only one); after any change the bound modem's evidence is folded into
# an events.ModemState, sent to the engine only when it differs from the last one sent. A SIM-slot
# switch makes ModemManager re-probe: the modem object goes away and a new one, under a new path,
# comes back; binding by equipment id finds it again. SwitchProfile effects run as tasks of the
# session, each bounded by twice the switch's cost, and answer with events.ProfileSwitched; nothing
# here ever awaits on the engine's loop. No bus, no ModemManager, no modem: a warning, a status line,
# and a retry every RETRY seconds.
#
# The evidence names the SIM the modem uses (PrimarySimSlot, and the primary SIM object's ICCID and
# SimType), so that the engine adopts the profile the modem is on after a restart; the first report
# for a modem waits until its SIM objects have been read. A modem registered without a bearer for
# the engine's profile (ATTACHING: at start, or after the network released it), or left disabled
# (ModemManager enables no modem by itself; it is enabled first), is connected here
# with Simple.Connect and that profile's APN, bounded like a registration, unless ModemManager is
# connecting or disconnecting already (someone else's call: not fought), a bearer with another APN
# is up (left alone, said in the status), a switch of ours is in flight, or the last attempt failed
# less than RETRY seconds ago. ModemManager 1.20 cannot enable an eSIM profile (org.freedesktop.
# ModemManager1.Sim has no such call, up to 1.24 at least): a switch to an eSIM profile goes ahead
# only as a slot switch to the slot whose eUICC has that profile enabled; otherwise it is answered
# `unsupported`.
MM = "org.freedesktop.ModemManager1"
MM_PATH = "/org/freedesktop/ModemManager1"
MODEM = f"{MM}.Modem"
M3GPP = f"{MM}.Modem.Modem3gpp"
SIMPLE = f"{MM}.Modem.Simple"
BEARER = f"{MM}.Bearer"
SIM = f"{MM}.Sim"
PROPS = "org.freedesktop.DBus.Properties"
OBJMGR = "org.freedesktop.DBus.ObjectManager"
DBUS = "org.freedesktop.DBus"

RETRY = 30.0  # s: between attempts to reach the bus or ModemManager
CALL_TIMEOUT = 10.0  # s: a D-Bus call that is not a registration or a connection
SETTLE = 0.05  # s: ModemManager signals one change per interface; a burst of them is one ModemState
CONNECT_CHECK = 1.0  # s: a registered modem without a bearer is looked at again (the engine may have moved)

log = get_logger("failoverd")

# MMModemState values used here.
STATE_FAILED, STATE_DISABLED, STATE_ENABLED, STATE_DISCONNECTING, STATE_CONNECTING = -1, 3, 6, 9, 10
SIM_TYPE_ESIM = 2  # MMSimType (Sim.SimType, since 1.20)
# MMModem3gppRegistrationState → events.Registration (SMS-only and CSFB variants count as registered:
# data is what the bearer says; emergency-only and RLOS are limited service, as searching).
REGISTRATION: dict[int, ev.Registration] = {
    0: "idle",
    1: "home",
    2: "searching",
    3: "denied",
    4: "unknown",
    5: "roaming",
    6: "home",
    7: "roaming",
    8: "searching",
    9: "home",
    10: "roaming",
    11: "searching",
}
# MMModemStateFailedReason.
FAILED_REASON = {
    0: "none",
    1: "unknown",
    2: "sim-missing",
    3: "sim-error",
    4: "unknown-capabilities",
    5: "esim-without-profiles",
}
# MMModemAccessTechnology bits, the newest first: the modem reports a mask, the status shows the best.
ACCESS = (
    (1 << 15, "5gnr"),
    (1 << 14, "lte"),
    (1 << 16, "lte-cat-m"),
    (1 << 17, "lte-nb-iot"),
    (1 << 9, "hspa-plus"),
    (1 << 8, "hspa"),
    (1 << 7, "hsupa"),
    (1 << 6, "hsdpa"),
    (1 << 5, "umts"),
    (1 << 4, "edge"),
    (1 << 3, "gprs"),
    (1 << 1, "gsm"),
)


class CallFailed(Exception):
    """A ModemManager method answered with an error (its D-Bus error name and text), or not in time."""


class Unsupported(CallFailed):
    """A switch this ModemManager has no call for (enabling an eSIM profile)."""


def modem_uplinks(policy: Policy) -> dict[str, ModemSpec]:
    return {name: u.modem for name, u in policy.uplinks.items() if u.modem is not None}


def access_name(mask: int) -> str | None:
    return next((name for bit, name in ACCESS if mask & bit), None)


def _variant(signature: str, value: Any) -> Variant:
    from dbus_fast import Variant  # noqa: PLC0415

    return Variant(signature, value)


def _unpack(props: dict[str, Variant]) -> dict[str, Any]:
    from dbus_fast import Variant  # noqa: PLC0415

    return {k: v.value if isinstance(v, Variant) else v for k, v in props.items()}


def _sim_paths(modem: dict[str, Any]) -> list[str]:
    """The SIM objects a modem names: its primary SIM and every slot's ("/" is an empty slot)."""
    paths = [modem.get("Sim", "/"), *(modem.get("SimSlots") or [])]
    return [p for p in dict.fromkeys(paths) if p and p != "/"]


class ModemService:
    name: ClassVar[str] = "modem"

    def __init__(self, view: EngineView, inbox: Inbox, *, bus_address: str | None = None, retry: float = RETRY) -> None:
        self.view = view
        self.inbox = inbox
        self.bus_address = bus_address  # None: DBUS_SYSTEM_BUS_ADDRESS, else the default system bus
        self.retry = retry
        self.bus: MessageBus | None = None
        self.tasks: asyncio.TaskGroup | None = None  # the session's: switches and bearer reads
        self.modems: dict[str, dict[str, dict[str, Any]]] = {}  # path → interface → property → value
        self.bearers: dict[str, bool] = {}  # bearer path → Connected
        self.bearer_apns: dict[str, str] = {}  # bearer path → the APN it was connected with
        self.sims: dict[str, dict[str, Any]] = {}  # SIM path → its Sim properties ({} when unreadable)
        self.busy: dict[str, asyncio.Task[None]] = {}  # uplink → our switch or bearer connect in flight
        self.connect_after: dict[str, float] = {}  # uplink → no bearer connect before (loop time)
        self.connect_note: dict[str, str] = {}  # uplink → what the last bearer check or connect found
        self.bound: dict[str, str] = {}  # uplink → its modem's path
        self.sent: dict[str, ev.ModemState] = {}  # the last ModemState the engine was told, by uplink
        self.reported: set[str] = set()  # uplinks the engine has had a report for since the daemon started
        self.rejects: dict[str, str] = {}  # uplink → the network's reject of our last Register
        self.note = "no modem uplinks in the policy"
        self.wanted = asyncio.Event()  # a reload brought modem uplinks
        self.resync = asyncio.Event()  # ModemManager restarted: read its objects again
        self.changed = asyncio.Event()  # pulsed (replaced) on every change, for switches that wait
        self.settling: asyncio.TimerHandle | None = None

    # -- the service --------------------------------------------------------------------------------
    async def run(self) -> None:
        while True:
            if not modem_uplinks(self.view.policy):
                self.note = "no modem uplinks in the policy"
                self.wanted.clear()
                await self.wanted.wait()
                continue
            try:
                await self._session()
            except (OSError, TimeoutError, CallFailed, EOFError, ValueError) as exc:
                # ValueError: dbus-fast's answer to an address it cannot parse or reach.
                self.note = f"ModemManager not reachable on the system bus: {exc or type(exc).__name__}"
                log.warning("modem-bus", note=self.note, retry_s=self.retry)
            except Exception as exc:  # a bug or an odd reply here must not end the daemon that routes 112
                self.note = f"the modem service restarts after an error: {exc!r}"
                log.exception("modem-service", note=self.note, retry_s=self.retry)
            finally:
                self._forget()
            await asyncio.sleep(self.retry)

    async def reconfigure(self, policy: Policy) -> Reconfigured:
        for name in set(self.sent) - set(modem_uplinks(policy)):
            del self.sent[name]
        if modem_uplinks(policy):
            self.wanted.set()
        self._bind()
        self._publish()
        return Applied()

    def status(self) -> dict[str, Any]:
        modems = {}
        for uplink in modem_uplinks(self.view.policy):
            path = self.bound.get(uplink)
            m = self.modems.get(path or "", {}).get(MODEM, {})
            sim = self.sims.get(m.get("Sim", "/"), {})
            modems[uplink] = {
                "path": path,
                "equipment": m.get("EquipmentIdentifier"),
                "slot": m.get("PrimarySimSlot"),
                "iccid": sim.get("SimIdentifier"),
                "esim": sim.get("SimType") == SIM_TYPE_ESIM,
                "bearer": self.connect_note.get(uplink, ""),
            }
        return {"bus": "connected" if self.bus is not None else "not connected", "note": self.note, "modems": modems}

    def switch(self, e: fx.SwitchProfile) -> None:
        """The engine's SwitchProfile: carried out in the background, answered with ProfileSwitched."""
        if self.tasks is None:
            self.inbox.put_nowait(ev.ProfileSwitched(e.uplink, e.profile, False, self.note))
            return
        connecting = self.busy.pop(e.uplink, None)
        if connecting is not None:
            connecting.cancel()  # a bearer for the profile being left: the switch connects its own
        try:
            self.busy[e.uplink] = self.tasks.create_task(self._switch(e), name=f"profile-{e.uplink}")
        except RuntimeError:  # the session is ending
            self.inbox.put_nowait(ev.ProfileSwitched(e.uplink, e.profile, False, "the modem service is restarting"))

    # -- the session --------------------------------------------------------------------------------
    async def _session(self) -> None:
        from dbus_fast import BusType  # noqa: PLC0415
        from dbus_fast.aio import MessageBus  # noqa: PLC0415

        bus = MessageBus(bus_address=self.bus_address, bus_type=BusType.SYSTEM)
        await asyncio.wait_for(bus.connect(), CALL_TIMEOUT)
        self.bus = bus
        try:
            bus.add_message_handler(self._on_message)
            for rule in (f"type='signal',sender='{MM}'", f"type='signal',interface='{DBUS}',arg0='{MM}'"):
                await self._call("/org/freedesktop/DBus", DBUS, "AddMatch", "s", [rule], destination=DBUS)
            try:
                await self._sync()
            except CallFailed as exc:
                # ModemManager not running (yet): the bus says when it takes its name (NameOwnerChanged).
                self.note = f"ModemManager not on the system bus: {exc}"
                log.warning("modem-manager", note=self.note)
            async with asyncio.TaskGroup() as tasks:
                self.tasks = tasks
                resyncs = tasks.create_task(self._resyncs(), name="modem-resync")
                bearers = tasks.create_task(self._bearers_up(), name="modem-bearers")
                with contextlib.suppress(Exception):  # closed with an error or without: the same to us
                    await bus.wait_for_disconnect()  # type: ignore[no-untyped-call]  # dbus-fast leaves it untyped
                self.bus = None  # switches in flight fail their next call and answer so
                resyncs.cancel()
                bearers.cancel()
            raise EOFError("the system bus connection closed")
        finally:
            self.tasks = None
            bus.disconnect()
            self.bus = None

    async def _sync(self) -> None:
        """Read every modem ModemManager lists, and the bearers they have."""
        (objects,) = await self._call(MM_PATH, OBJMGR, "GetManagedObjects")
        self.modems = {
            path: {iface: _unpack(props) for iface, props in ifaces.items()}
            for path, ifaces in objects.items()
            if MODEM in ifaces
        }
        for ifaces in self.modems.values():
            for bearer in ifaces[MODEM].get("Bearers", []):
                await self._read_bearer(bearer)
            for sim in _sim_paths(ifaces[MODEM]):
                await self._read_sim(sim)
        self.note = f"{len(self.modems)} modem(s) from ModemManager"
        self._bind()
        self._publish()

    async def _resyncs(self) -> None:
        while True:
            await self.resync.wait()
            self.resync.clear()
            try:
                await self._sync()
            except (TimeoutError, CallFailed) as exc:
                self.modems = {}
                self.note = f"ModemManager not answering: {exc}"
                log.warning("modem-manager", note=self.note)
                self._bind()
                self._publish()

    async def _read_bearer(self, path: str) -> None:
        try:
            (props,) = await self._call(path, PROPS, "GetAll", "s", [BEARER])
        except (TimeoutError, CallFailed):
            return  # gone already: the modem's Bearers will say so
        values = _unpack(props)
        self.bearers[path] = bool(values.get("Connected", False))
        self.bearer_apns[path] = str(_unpack(values.get("Properties") or {}).get("apn", ""))
        self._publish()

    async def _read_sim(self, path: str) -> None:
        try:
            (props,) = await self._call(path, PROPS, "GetAll", "s", [SIM])
            self.sims[path] = _unpack(props)
        except (TimeoutError, CallFailed):
            self.sims[path] = {}  # no SIM object to read (gone, or none yet): the slot is all we know
        self._publish()

    def _forget(self) -> None:
        if self.settling is not None:
            self.settling.cancel()
            self.settling = None
        self.modems, self.bearers, self.bearer_apns, self.sims = {}, {}, {}, {}
        self._bind()
        self._publish()

    # -- ModemManager's signals ---------------------------------------------------------------------
    def _on_message(self, msg: Message) -> None:
        from dbus_fast import MessageType  # noqa: PLC0415

        if msg.message_type != MessageType.SIGNAL:
            return
        path = msg.path or ""
        if msg.member == "PropertiesChanged" and msg.interface == PROPS:
            interface, changed, _ = msg.body
            values = _unpack(changed)
            if path in self.modems and interface in self.modems[path]:
                self.modems[path][interface].update(values)
                if interface == MODEM and "Bearers" in values:
                    for bearer in values["Bearers"]:
                        if bearer not in self.bearers and self.tasks is not None:
                            self.tasks.create_task(self._read_bearer(bearer), name="modem-bearer")
                if interface == MODEM and ("Sim" in values or "SimSlots" in values):
                    self._read_sims(self.modems[path][MODEM])
            elif interface == BEARER and ("Connected" in values or "Properties" in values):
                if "Connected" in values:
                    self.bearers[path] = bool(values["Connected"])
                if "Properties" in values:
                    self.bearer_apns[path] = str(_unpack(values["Properties"]).get("apn", ""))
            elif interface == SIM and path in self.sims:
                self.sims[path].update(values)
        elif msg.member == "InterfacesAdded" and msg.interface == OBJMGR:
            obj, ifaces = msg.body
            self.modems.setdefault(obj, {}).update({i: _unpack(p) for i, p in ifaces.items()})
            if MODEM not in self.modems[obj]:
                del self.modems[obj]
            else:
                self._read_sims(self.modems[obj][MODEM])
            log.info("modem-added", path=obj)
        elif msg.member == "InterfacesRemoved" and msg.interface == OBJMGR:
            obj, ifaces = msg.body
            for i in ifaces:
                self.modems.get(obj, {}).pop(i, None)
            if MODEM not in self.modems.get(obj, {MODEM: None}):
                self.modems.pop(obj, None)
                log.info("modem-removed", path=obj)
        elif msg.member == "NameOwnerChanged" and msg.body and msg.body[0] == MM:
            log.info("modem-manager", owner=msg.body[2] or "gone")
            self.modems = {}
            if msg.body[2]:
                self.resync.set()
        else:
            return
        self._bind()
        if self.settling is None:
            self.settling = asyncio.get_running_loop().call_later(SETTLE, self._settled)

    def _settled(self) -> None:
        self.settling = None
        self._publish()

    def _read_sims(self, modem: dict[str, Any]) -> None:
        for sim in _sim_paths(modem):
            if sim not in self.sims and self.tasks is not None:
                self.tasks.create_task(self._read_sim(sim), name="modem-sim")

    # -- evidence to the engine ---------------------------------------------------------------------
    def _bind(self) -> None:
        for uplink, spec in modem_uplinks(self.view.policy).items():
            if spec.equipment is not None:
                found = [p for p, i in self.modems.items() if i[MODEM].get("EquipmentIdentifier") == spec.equipment]
            else:
                found = list(self.modems) if len(self.modems) == 1 else []
            path = found[0] if found else None
            if path != self.bound.get(uplink):
                log.info("modem-bound" if path else "modem-unbound", uplink=uplink, path=path, equipment=spec.equipment)
            if path is None:
                self.bound.pop(uplink, None)
            else:
                self.bound[uplink] = path
        self.changed.set()
        self.changed = asyncio.Event()

    def evidence(self, uplink: str) -> ev.ModemState | None:
        path = self.bound.get(uplink)
        if path is None:
            return None
        ifaces = self.modems[path]
        m, g = ifaces[MODEM], ifaces.get(M3GPP)
        state = int(m.get("State", 0))
        quality = m.get("SignalQuality") or [0, False]
        signal = int(quality[0])
        access = access_name(int(m.get("AccessTechnologies", 0)))
        bearer = any(self.bearers.get(b, False) for b in m.get("Bearers", []))
        sim = self.sims.get(m.get("Sim", "/"), {})
        # PrimarySimSlot is 0 on a modem with one slot: that is slot 1 to the policy.
        slot = (int(m["PrimarySimSlot"]) or 1) if "PrimarySimSlot" in m else None
        iccid = str(sim.get("SimIdentifier") or "") or None
        esim = sim.get("SimType") == SIM_TYPE_ESIM
        if state == STATE_FAILED:
            reason = FAILED_REASON.get(int(m.get("StateFailedReason", 1)), "unknown")
            return ev.ModemState(uplink, "denied", reason=f"modem failed: {reason}", slot=slot, iccid=iccid, esim=esim)
        if g is None:
            return ev.ModemState(uplink, "unknown", signal=signal, slot=slot, iccid=iccid, esim=esim)
        registration = REGISTRATION.get(int(g.get("RegistrationState", 4)), "unknown")
        operator = str(g.get("OperatorCode") or "") or None
        reason = self.rejects.get(uplink, "") if registration == "denied" else ""
        return ev.ModemState(uplink, registration, operator, access, signal, bearer, reason, slot, iccid, esim)

    def _sim_read(self, uplink: str) -> bool:
        """Whether the bound modem's primary SIM object has been read (or found unreadable, or none)."""
        sim = self.modems[self.bound[uplink]][MODEM].get("Sim", "/")
        return sim in ("/", "") or sim in self.sims

    def _publish(self) -> None:
        for uplink in modem_uplinks(self.view.policy):
            state = self.evidence(uplink)
            if state is None or (uplink not in self.reported and not self._sim_read(uplink)):
                if uplink not in self.sent:
                    # Never seen, or its SIM not read yet: the engine keeps "no modem evidence yet",
                    # as it adopts the profile the modem is on from its first report.
                    continue
                state = ev.ModemState(uplink, "unknown", reason="the modem is gone from ModemManager")
            if self.sent.get(uplink) != state:
                self.sent[uplink] = state
                self.reported.add(uplink)
                log.info(
                    "modem",
                    uplink=uplink,
                    registration=state.registration,
                    operator=state.operator,
                    access=state.access,
                    signal=state.signal,
                    bearer=state.bearer,
                    reason=state.reason,
                )
                self.inbox.put_nowait(state)

    # -- a bearer for the profile in use ------------------------------------------------------------
    async def _bearers_up(self) -> None:
        """Connect a registered modem that has no bearer for the engine's profile (see the theory above)."""
        while True:
            changed = self.changed
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(CONNECT_CHECK):  # not wait_for: 3.11's can swallow a cancel
                    await changed.wait()
            for uplink, spec in modem_uplinks(self.view.policy).items():
                wanted = self._wants_bearer(uplink, spec)
                if wanted is not None and self.tasks is not None:
                    path, apn = wanted
                    task = self.tasks.create_task(self._connect(uplink, path, apn, spec), name=f"bearer-{uplink}")
                    self.busy[uplink] = task

    def _wants_bearer(self, uplink: str, spec: ModemSpec) -> tuple[str, str] | None:
        """The modem to connect for `uplink` now and the APN, or None (and why, in connect_note)."""
        path = self.bound.get(uplink)
        v = self.view.state.modems.get(uplink)
        if path is None or v is None or uplink in self.busy or v.phase is not Phase.ATTACHING:
            return None  # the engine has not adopted a profile yet, is switching, or is served already
        profile = next((p for p in spec.profiles if p.name == v.profile), None)
        m, g = self.modems[path][MODEM], self.modems[path].get(M3GPP)
        if profile is None:
            return None
        # A modem left disabled (ModemManager enables none by itself) is enabled first, then connected.
        disabled = int(m.get("State", 0)) == STATE_DISABLED
        if not disabled and (
            g is None or REGISTRATION.get(int(g.get("RegistrationState", 4))) not in ("home", "roaming")
        ):
            return None
        if int(m.get("State", 0)) in (STATE_CONNECTING, STATE_DISCONNECTING):
            self.connect_note[uplink] = "ModemManager is connecting or disconnecting a bearer: left to it"
            return None
        up = {self.bearer_apns.get(b, "") for b in m.get("Bearers", []) if self.bearers.get(b, False)}
        if profile.apn in up:
            return None
        if up:
            self.connect_note[uplink] = (
                f"a bearer with APN {', '.join(sorted(up))} is up, not {profile.name}'s {profile.apn}: left alone"
            )
            return None
        if asyncio.get_running_loop().time() < self.connect_after.get(uplink, 0.0):
            return None
        return path, profile.apn

    async def _connect(self, uplink: str, path: str, apn: str, spec: ModemSpec) -> None:
        limit = 2 * spec.register_time
        try:
            async with asyncio.timeout(limit):
                if int(self.modems.get(path, {}).get(MODEM, {}).get("State", 0)) == STATE_DISABLED:
                    await self._call(path, MODEM, "Enable", "b", [True])
                    log.info("modem-enabled", uplink=uplink, modem=path)
                props = {"apn": _variant("s", apn)}
                (bearer,) = await self._call(path, SIMPLE, "Connect", "a{sv}", [props], timeout=None)
            self.bearers[bearer], self.bearer_apns[bearer] = True, apn
            self.connect_note[uplink] = f"connected with APN {apn} ({bearer})"
            log.info("modem-bearer", uplink=uplink, apn=apn, bearer=bearer)
        except (TimeoutError, CallFailed) as exc:
            why = f"not connected within {limit:g}s" if isinstance(exc, TimeoutError) else str(exc)
            self.connect_after[uplink] = asyncio.get_running_loop().time() + self.retry
            self.connect_note[uplink] = f"Simple.Connect with APN {apn} failed: {why}; again in {self.retry:g}s"
            log.warning("modem-bearer", uplink=uplink, apn=apn, error=why, retry_s=self.retry)
        except Exception as exc:  # a bug or an odd reply met by one connect: said, the service goes on
            self.connect_after[uplink] = asyncio.get_running_loop().time() + self.retry
            self.connect_note[uplink] = f"Simple.Connect with APN {apn}: error {exc!r}"
            log.exception("modem-bearer-error", uplink=uplink, apn=apn)
        finally:
            if self.busy.get(uplink) is asyncio.current_task():
                del self.busy[uplink]
            self._publish()

    # -- profile switches ---------------------------------------------------------------------------
    async def _switch(self, e: fx.SwitchProfile) -> None:
        spec = modem_uplinks(self.view.policy).get(e.uplink)
        ok, unsupported, detail = False, False, f"uplink {e.uplink} has no modem in the policy"
        if spec is not None:
            cost = spec.register_time + (spec.slot_switch_time if e.how == "slot" else 0.0)
            try:
                async with asyncio.timeout(2 * cost):
                    detail = await self._carry_out(e, spec)
                ok = True
            except TimeoutError:
                detail = f"not done within {2 * cost:g}s"
            except Unsupported as exc:
                unsupported, detail = True, str(exc)
            except CallFailed as exc:
                detail = str(exc)
            except Exception as exc:  # a bug met by one switch: answered, logged, the service goes on
                detail = f"error: {exc!r}"
                log.exception("profile-switch-error", uplink=e.uplink, profile=e.profile)
        (log.info if ok else log.warning)("profile-switch", uplink=e.uplink, profile=e.profile, ok=ok, detail=detail)
        if self.busy.get(e.uplink) is asyncio.current_task():
            del self.busy[e.uplink]
        await self.inbox.put(ev.ProfileSwitched(e.uplink, e.profile, ok, detail, unsupported))
        # The engine passes over evidence while the switch is in flight: after the answer it hears
        # the modem as it is now (registered with a bearer, or failed), even if that is unchanged.
        self.sent.pop(e.uplink, None)
        self._publish()

    async def _carry_out(self, e: fx.SwitchProfile, spec: ModemSpec) -> str:
        profile = spec.profile(e.profile)
        path = self._modem(e.uplink)
        register = e.plmn if e.how == "register" else profile.register
        if e.how == "slot":
            slot = profile.slot if profile.slot is not None else self._esim_slot(path, profile)
            if (int(self.modems[path][MODEM].get("PrimarySimSlot", 0)) or 1) != slot:  # 0: the only slot
                await self._call(path, MODEM, "SetPrimarySimSlot", "u", [slot])
                # ModemManager re-probes: this object goes away, the modem comes back under a new path.
                log.info("profile-switch-slot", uplink=e.uplink, slot=slot, old=path)
                await self._until(lambda: self.bound.get(e.uplink) not in (None, path))
                path = self._modem(e.uplink)
            m = self.modems[path][MODEM]
            if int(m.get("State", 0)) == STATE_FAILED:
                reason = FAILED_REASON.get(int(m.get("StateFailedReason", 1)), "unknown")
                raise CallFailed(f"slot {slot}: the modem failed after the switch ({reason})")
            if int(m.get("State", 0)) == STATE_DISABLED:
                await self._call(path, MODEM, "Enable", "b", [True])
        if register is not None or e.how == "register":
            try:
                await self._call(path, M3GPP, "Register", "s", [register or ""], timeout=None)
            except CallFailed as exc:
                self.rejects[e.uplink] = str(exc)
                self._publish()
                raise
            self.rejects.pop(e.uplink, None)
        m = self.modems.get(path, {}).get(MODEM, {})
        if not any(self.bearers.get(b, False) for b in m.get("Bearers", [])):
            apn = {"apn": _variant("s", e.apn)}
            (bearer,) = await self._call(path, SIMPLE, "Connect", "a{sv}", [apn], timeout=None)
            self.bearers[bearer] = True
            self._publish()
        on = self.modems.get(path, {}).get(M3GPP, {}).get("OperatorCode") or "?"
        return f"{e.how} to {e.profile}: registered on {on}, connected with APN {e.apn}"

    def _esim_slot(self, path: str, profile: ProfileSpec) -> int:
        """The slot whose eUICC has the profile's eSIM profile enabled; Unsupported if none has: only
        an LPA can enable an eSIM profile, and ModemManager 1.20 has no call for it."""
        m = self.modems[path][MODEM]
        slots = list(m.get("SimSlots") or [m.get("Sim", "/")])
        for i, sim in enumerate(slots, start=1):
            props = self.sims.get(sim, {})
            iccid = str(props.get("SimIdentifier") or "")
            if props.get("SimType") == SIM_TYPE_ESIM and iccid and iccid_key(iccid) == iccid_key(profile.esim or ""):
                return i
        raise Unsupported(
            f"profile {profile.name}: eSIM profile {profile.esim} is not the enabled profile of the eUICC in any "
            f"SIM slot, and ModemManager cannot enable an eSIM profile (no such call up to 1.24): enable it "
            f"with an LPA outside failoverd, or give the profile a physical slot"
        )

    def _modem(self, uplink: str) -> str:
        path = self.bound.get(uplink)
        if path is None:
            raise CallFailed(f"uplink {uplink}: no modem from ModemManager ({self.note})")
        return path

    async def _until(self, ready: Callable[[], bool]) -> None:
        while not ready():
            await self.changed.wait()

    async def _call(
        self,
        path: str,
        interface: str,
        member: str,
        signature: str = "",
        body: list[Any] | None = None,
        *,
        destination: str = MM,
        timeout: float | None = CALL_TIMEOUT,
    ) -> list[Any]:
        """One method call; an error reply raises CallFailed naming it. timeout None: the caller bounds it."""
        from dbus_fast import Message, MessageType  # noqa: PLC0415

        if self.bus is None:
            raise CallFailed("not connected to the system bus")
        msg = Message(
            destination=destination, path=path, interface=interface, member=member, signature=signature, body=body or []
        )
        try:
            reply = await asyncio.wait_for(self.bus.call(msg), timeout)
        except TimeoutError:
            raise CallFailed(f"{interface}.{member} on {path}: no answer within {timeout:g}s") from None
        assert reply is not None
        if reply.message_type == MessageType.ERROR:
            text = reply.body[0] if reply.body else ""
            raise CallFailed(f"{member}: {reply.error_name}: {text}")
        return list(reply.body)

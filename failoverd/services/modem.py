"""The modem service: ModemManager's view of each cellular uplink's modem to the engine, and its profile switches."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any, ClassVar

from dbus_fast import BusType, Message, MessageType, Variant
from dbus_fast.aio import MessageBus

from failoverd.engine import effects as fx
from failoverd.engine import events as ev
from failoverd.observe.logging import get as get_logger
from failoverd.policy.model import ModemSpec, Policy
from failoverd.services.base import Applied, EngineView, Inbox, Reconfigured

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
MM = "org.freedesktop.ModemManager1"
MM_PATH = "/org/freedesktop/ModemManager1"
MODEM = f"{MM}.Modem"
M3GPP = f"{MM}.Modem.Modem3gpp"
SIMPLE = f"{MM}.Modem.Simple"
BEARER = f"{MM}.Bearer"
PROPS = "org.freedesktop.DBus.Properties"
OBJMGR = "org.freedesktop.DBus.ObjectManager"
DBUS = "org.freedesktop.DBus"

RETRY = 30.0  # s: between attempts to reach the bus or ModemManager
CALL_TIMEOUT = 10.0  # s: a D-Bus call that is not a registration or a connection
SETTLE = 0.05  # s: ModemManager signals one change per interface; a burst of them is one ModemState

log = get_logger("failoverd")

# MMModemState values used here.
STATE_FAILED, STATE_DISABLED, STATE_ENABLED = -1, 3, 6
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


def modem_uplinks(policy: Policy) -> dict[str, ModemSpec]:
    return {name: u.modem for name, u in policy.uplinks.items() if u.modem is not None}


def access_name(mask: int) -> str | None:
    return next((name for bit, name in ACCESS if mask & bit), None)


def _unpack(props: dict[str, Variant]) -> dict[str, Any]:
    return {k: v.value if isinstance(v, Variant) else v for k, v in props.items()}


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
        self.bound: dict[str, str] = {}  # uplink → its modem's path
        self.sent: dict[str, ev.ModemState] = {}  # the last ModemState the engine was told, by uplink
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
            modems[uplink] = {"path": path, "equipment": m.get("EquipmentIdentifier"), "slot": m.get("PrimarySimSlot")}
        return {"bus": "connected" if self.bus is not None else "not connected", "note": self.note, "modems": modems}

    def switch(self, e: fx.SwitchProfile) -> None:
        """The engine's SwitchProfile: carried out in the background, answered with ProfileSwitched."""
        if self.tasks is None:
            self.inbox.put_nowait(ev.ProfileSwitched(e.uplink, e.profile, False, self.note))
            return
        try:
            self.tasks.create_task(self._switch(e), name=f"profile-{e.uplink}")
        except RuntimeError:  # the session is ending
            self.inbox.put_nowait(ev.ProfileSwitched(e.uplink, e.profile, False, "the modem service is restarting"))

    # -- the session --------------------------------------------------------------------------------
    async def _session(self) -> None:
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
                with contextlib.suppress(Exception):  # closed with an error or without: the same to us
                    await bus.wait_for_disconnect()  # type: ignore[no-untyped-call]  # dbus-fast leaves it untyped
                self.bus = None  # switches in flight fail their next call and answer so
                resyncs.cancel()
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
            (connected,) = await self._call(path, PROPS, "Get", "ss", [BEARER, "Connected"])
        except (TimeoutError, CallFailed):
            return  # gone already: the modem's Bearers will say so
        self.bearers[path] = bool(connected.value)
        self._publish()

    def _forget(self) -> None:
        if self.settling is not None:
            self.settling.cancel()
            self.settling = None
        self.modems, self.bearers = {}, {}
        self._bind()
        self._publish()

    # -- ModemManager's signals ---------------------------------------------------------------------
    def _on_message(self, msg: Message) -> None:
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
            elif interface == BEARER and "Connected" in values:
                self.bearers[path] = bool(values["Connected"])
        elif msg.member == "InterfacesAdded" and msg.interface == OBJMGR:
            obj, ifaces = msg.body
            self.modems.setdefault(obj, {}).update({i: _unpack(p) for i, p in ifaces.items()})
            if MODEM not in self.modems[obj]:
                del self.modems[obj]
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
        if state == STATE_FAILED:
            reason = FAILED_REASON.get(int(m.get("StateFailedReason", 1)), "unknown")
            return ev.ModemState(uplink, "denied", reason=f"modem failed: {reason}")
        if g is None:
            return ev.ModemState(uplink, "unknown", signal=signal)
        registration = REGISTRATION.get(int(g.get("RegistrationState", 4)), "unknown")
        operator = str(g.get("OperatorCode") or "") or None
        reason = self.rejects.get(uplink, "") if registration == "denied" else ""
        return ev.ModemState(uplink, registration, operator, access, signal, bearer, reason)

    def _publish(self) -> None:
        for uplink in modem_uplinks(self.view.policy):
            state = self.evidence(uplink)
            if state is None:
                if uplink not in self.sent:
                    continue  # never seen: the engine keeps "no modem evidence yet"
                state = ev.ModemState(uplink, "unknown", reason="the modem is gone from ModemManager")
            if self.sent.get(uplink) != state:
                self.sent[uplink] = state
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

    # -- profile switches ---------------------------------------------------------------------------
    async def _switch(self, e: fx.SwitchProfile) -> None:
        spec = modem_uplinks(self.view.policy).get(e.uplink)
        ok, detail = False, f"uplink {e.uplink} has no modem in the policy"
        if spec is not None:
            cost = spec.register_time + (spec.slot_switch_time if e.how == "slot" else 0.0)
            try:
                async with asyncio.timeout(2 * cost):
                    detail = await self._carry_out(e, spec)
                ok = True
            except TimeoutError:
                detail = f"not done within {2 * cost:g}s"
            except CallFailed as exc:
                detail = str(exc)
            except Exception as exc:  # a bug met by one switch: answered, logged, the service goes on
                detail = f"error: {exc!r}"
                log.exception("profile-switch-error", uplink=e.uplink, profile=e.profile)
        (log.info if ok else log.warning)("profile-switch", uplink=e.uplink, profile=e.profile, ok=ok, detail=detail)
        await self.inbox.put(ev.ProfileSwitched(e.uplink, e.profile, ok, detail))
        # The engine passes over evidence while the switch is in flight: after the answer it hears
        # the modem as it is now (registered with a bearer, or failed), even if that is unchanged.
        self.sent.pop(e.uplink, None)
        self._publish()

    async def _carry_out(self, e: fx.SwitchProfile, spec: ModemSpec) -> str:
        profile = spec.profile(e.profile)
        path = self._modem(e.uplink)
        register = e.plmn if e.how == "register" else profile.register
        if e.how == "slot":
            if profile.slot is None:
                raise CallFailed(f"profile {e.profile}: eSIM profile switches are not supported yet")
            if self.modems[path][MODEM].get("PrimarySimSlot") != profile.slot:
                await self._call(path, MODEM, "SetPrimarySimSlot", "u", [profile.slot])
                # ModemManager re-probes: this object goes away, the modem comes back under a new path.
                log.info("profile-switch-slot", uplink=e.uplink, slot=profile.slot, old=path)
                await self._until(lambda: self.bound.get(e.uplink) not in (None, path))
                path = self._modem(e.uplink)
            m = self.modems[path][MODEM]
            if int(m.get("State", 0)) == STATE_FAILED:
                reason = FAILED_REASON.get(int(m.get("StateFailedReason", 1)), "unknown")
                raise CallFailed(f"slot {profile.slot}: the modem failed after the switch ({reason})")
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
            apn = {"apn": Variant("s", e.apn)}
            (bearer,) = await self._call(path, SIMPLE, "Connect", "a{sv}", [apn], timeout=None)
            self.bearers[bearer] = True
            self._publish()
        on = self.modems.get(path, {}).get(M3GPP, {}).get("OperatorCode") or "?"
        return f"{e.how} to {e.profile}: registered on {on}, connected with APN {e.apn}"

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

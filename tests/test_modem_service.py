"""The modem service against the ModemManager simulator (lab/mmsim.py) on a private dbus-daemon."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from dbus_fast import BusType, Message, MessageType, Variant
from dbus_fast.aio import MessageBus
from mmbus import launch_mmsim, start_bus, stop

from failoverd.ctl import render_status
from failoverd.engine import effects as fx
from failoverd.engine import events as ev
from failoverd.engine.state import EngineState, initial_state
from failoverd.engine.step import step
from failoverd.kernel.writer import KernelWriter
from failoverd.observe.journal import Journal
from failoverd.observe.status import modem_rows
from failoverd.policy import load_policy
from failoverd.policy.model import Policy
from failoverd.services.base import Inbox
from failoverd.services.engine import EngineService
from failoverd.services.history import History
from failoverd.services.modem import ModemService
from failoverd.statedir import StateDir
from lab.mmsim import CONTROL, CONTROL_PATH, MM

pytestmark = pytest.mark.skipif(
    shutil.which("dbus-daemon") is None, reason="needs dbus-daemon (scripts/bootstrap installs it)"
)

IMEI = "359999000000042"
SIMULATED: dict[str, Any] = {
    "equipment_id": IMEI,
    "slots": [
        {"imsi": "204040000000001", "iccid": "8931040000000000001", "home": "20404", "operator_name": "carrier-a",
         "apn": "internet.a", "roaming": ["20408"]},
        {"imsi": "204080000000002", "iccid": "8931080000000000002", "home": "20408", "operator_name": "carrier-b",
         "apn": "internet.b"},
    ],
    "networks": [{"code": "20404", "name": "carrier-a", "signal": 61}, {"code": "20408", "name": "carrier-b"}],
    "timing": {"enable_s": 0.05, "register_s": 0.3, "connect_s": 0.1, "slot_switch_s": 0.8, "register_timeout_s": 2.0},
}  # fmt: skip

POLICY = f"""
site: test
uplinks:
  - name: fiber
    interface: eth1
    next_hop: 198.51.100.1
    probes: [{{kind: udp-echo, target: 192.0.2.10, interval: 1s, timeout: 1s}}]
  - name: mobile
    interface: wwan0
    point_to_point: true
    kind: cellular
    modem: "{IMEI}"
    profiles:
      - {{name: carrier-a, slot: 1, apn: internet.a, plmns: ["20404"]}}
      - {{name: carrier-a-roam, slot: 1, apn: internet.a, plmns: ["20404", "20408"], register: "20408"}}
      - {{name: carrier-b, slot: 2, apn: internet.b, plmns: ["20408"]}}
    profile_switch: {{register_time: 3s, slot_switch_time: 3s}}
    probes: [{{kind: udp-echo, target: 192.0.2.10, interval: 1s, timeout: 1s}}]
classes:
  - name: default
    path: [fiber, mobile]
"""

WITHOUT_MODEM = POLICY.split("  - name: mobile", maxsplit=1)[0] + "classes:\n  - name: default\n    path: [fiber]\n"


@pytest.fixture
def bus(bus_daemon: tuple[str, subprocess.Popen[str]]) -> str:
    """A private system-like dbus-daemon; its address."""
    return bus_daemon[0]


@pytest.fixture
def bus_daemon(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """A private system-like dbus-daemon: its address and process."""
    address, proc = start_bus(tmp_path)
    try:
        yield address, proc
    finally:
        stop(proc)


@pytest.fixture
def mmsim(bus: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[str]:
    """The simulator on the private bus (SIMULATED, or the test's indirect parameter); the bus address."""
    proc = launch_mmsim(bus, tmp_path, getattr(request, "param", SIMULATED))
    try:
        yield bus
    finally:
        stop(proc)


class View:
    """The engine as the modem service sees it: the policy in force."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.current = initial_state(policy, 0.0)

    @property
    def state(self) -> EngineState:
        return self.current


def policy(tmp_path: Path, text: str = POLICY) -> Policy:
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    return load_policy(path)


class Running:
    """The service's task, and the engine's inbox read in order."""

    def __init__(self, service: ModemService, inbox: Inbox) -> None:
        self.service = service
        self.inbox = inbox

    async def next(self, want: Callable[[Any], bool], timeout: float = 6.0) -> Any:
        """The first event in the inbox that `want` accepts (the others before it are passed over)."""

        async def wait() -> Any:
            while True:
                item = await self.inbox.get()
                if want(item):
                    return item

        return await asyncio.wait_for(wait(), timeout)


@contextlib.asynccontextmanager
async def start(address: str, pol: Policy, retry: float = 0.2) -> AsyncIterator[Running]:
    """The service running on `address` with `pol`; its task is cancelled and awaited on the way out."""
    inbox: Inbox = asyncio.Queue()
    service = ModemService(View(pol), inbox, bus_address=address, retry=retry)
    task = asyncio.create_task(service.run(), name="modem")
    try:
        yield Running(service, inbox)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@pytest.fixture
async def running(mmsim: str, tmp_path: Path) -> AsyncIterator[Running]:
    async with start(mmsim, policy(tmp_path)) as r:
        yield r


def modem_state(**want: Any) -> Callable[[Any], bool]:
    def match(item: Any) -> bool:
        return isinstance(item, ev.ModemState) and all(getattr(item, k) == v for k, v in want.items())

    return match


def switched(item: Any) -> bool:
    return isinstance(item, ev.ProfileSwitched)


def switch(profile: str, how: fx.SwitchHow, plmn: str | None, apn: str) -> fx.SwitchProfile:
    return fx.SwitchProfile("mobile", profile, how, plmn, apn, fx.Cause("test", "asked by the test"))


async def control(address: str, member: str, signature: str, *body: Any) -> None:
    bus = await MessageBus(bus_address=address, bus_type=BusType.SYSTEM).connect()
    try:
        reply = await bus.call(
            Message(destination=MM, path=CONTROL_PATH, interface=CONTROL, member=member, signature=signature,
                    body=list(body))
        )  # fmt: skip
        assert reply is not None and reply.message_type == MessageType.METHOD_RETURN, reply
    finally:
        bus.disconnect()


async def test_modem_state_reflects_the_simulated_modem(running: Running) -> None:
    first = await running.next(modem_state())
    assert first.registration in ("idle", "searching", "unknown")  # enabling: not registered yet
    home = await running.next(modem_state(registration="home"))
    assert (home.operator, home.access, home.signal, home.bearer) == ("20404", "lte", 61, False)
    assert running.service.status()["modems"]["mobile"]["path"] == "/org/freedesktop/ModemManager1/Modem/0"


async def test_switch_by_registration_moves_to_the_partner_network_and_connects(running: Running) -> None:
    await running.next(modem_state(registration="home"))
    running.service.switch(switch("carrier-a-roam", "register", "20408", "internet.a"))
    answer = await running.next(switched)
    assert (answer.profile, answer.ok) == ("carrier-a-roam", True), answer.detail
    assert "registered on 20408" in answer.detail
    roaming = running.service.evidence("mobile")
    assert roaming is not None
    assert (roaming.registration, roaming.operator, roaming.bearer) == ("roaming", "20408", True)


async def test_a_refused_registration_answers_failed_with_the_network_cause(running: Running, mmsim: str) -> None:
    await running.next(modem_state(registration="home"))
    await control(mmsim, "Reject", "ss", "20408", "RoamingNotAllowedInArea")
    running.service.switch(switch("carrier-a-roam", "register", "20408", "internet.a"))
    answer = await running.next(switched)
    assert not answer.ok
    assert "MobileEquipment.RoamingNotAllowedInArea" in answer.detail
    denied = running.service.sent["mobile"]  # told to the engine before the answer
    assert denied.registration == "denied" and "RoamingNotAllowedInArea" in denied.reason


async def test_slot_switch_survives_the_modem_going_away_and_returning(running: Running) -> None:
    await running.next(modem_state(registration="home", operator="20404"))
    running.service.switch(switch("carrier-b", "slot", "20408", "internet.b"))
    answer = await running.next(switched)
    assert (answer.profile, answer.ok) == ("carrier-b", True), answer.detail
    assert running.service.bound["mobile"] == "/org/freedesktop/ModemManager1/Modem/1"
    now = running.service.evidence("mobile")
    assert now is not None
    assert (now.registration, now.operator, now.bearer) == ("home", "20408", True)
    assert running.service.status()["modems"]["mobile"]["slot"] == 2


EMPTY_SLOT_2 = {**SIMULATED, "slots": [SIMULATED["slots"][0], None]}


@pytest.mark.parametrize("mmsim", [EMPTY_SLOT_2], indirect=True)
async def test_slot_switch_to_an_empty_slot_fails_with_sim_missing(running: Running) -> None:
    await running.next(modem_state(registration="home"))
    running.service.switch(switch("carrier-b", "slot", "20408", "internet.b"))
    answer = await running.next(switched)
    assert not answer.ok
    assert "sim-missing" in answer.detail
    assert (running.service.sent["mobile"].registration, running.service.sent["mobile"].reason) == (
        "denied",
        "modem failed: sim-missing",
    )


async def test_carrier_outage_yields_searching_and_a_reject_denied(running: Running, mmsim: str) -> None:
    await running.next(modem_state(registration="home"))
    await control(mmsim, "CarrierOutage", "sb", "20404", True)
    lost = await running.next(modem_state(registration="searching"))
    assert (lost.operator, lost.bearer) == (None, False)
    await running.next(modem_state(registration="roaming", operator="20408"))  # automatic: the partner
    # Both networks refuse the SIM: denied, and it stays so (the modem stops retrying a rejecting PLMN).
    await control(mmsim, "Reject", "ss", "20404", "PlmnNotAllowed")
    await control(mmsim, "Reject", "ss", "20408", "RoamingNotAllowedInArea")
    await control(mmsim, "CarrierOutage", "sb", "20404", False)
    denied = await running.next(modem_state(registration="denied"))
    assert (denied.operator, denied.bearer) == (None, False)


async def test_without_modemmanager_a_status_line_and_switches_fail(bus: str, tmp_path: Path) -> None:
    """ModemManager not running: a status line, switches answered as failed; when it starts, the bus
    says so and the modem is found then, not at the next retry (30 s here)."""
    async with start(bus, policy(tmp_path), retry=30.0) as r:
        await asyncio.sleep(0.3)
        note = r.service.status()["note"]
        assert "ModemManager not on the system bus" in note and "ServiceUnknown" in note, note
        r.service.switch(switch("carrier-b", "slot", "20408", "internet.b"))
        answer = await r.next(lambda i: isinstance(i, ev.ProfileSwitched | ev.ModemState), timeout=2.0)
        assert isinstance(answer, ev.ProfileSwitched) and not answer.ok
        assert "no modem from ModemManager" in answer.detail
        proc = launch_mmsim(bus, tmp_path, SIMULATED)
        try:
            await r.next(modem_state(registration="home"), timeout=5.0)
        finally:
            stop(proc)


async def test_a_policy_without_modem_uplinks_starts_nothing(bus: str, tmp_path: Path) -> None:
    async with start(bus, policy(tmp_path, WITHOUT_MODEM)) as r:
        await asyncio.sleep(0.3)
        assert r.service.bus is None
        assert r.service.status()["note"] == "no modem uplinks in the policy"
        assert r.inbox.empty()


async def test_the_engine_switches_a_rejected_profile_and_status_shows_the_modem(mmsim: str, tmp_path: Path) -> None:
    """The pure engine between the service's events and its switches, as services/engine.py runs it:
    carrier-a refuses the SIM, the engine picks the partner network (same SIM, re-register), the modem
    serves again, and failoverctl status shows profile, operator, RAT, signal and registration."""
    pol = policy(tmp_path)
    view = View(pol)
    view.current = initial_state(pol, time.monotonic())
    async with start(mmsim, pol) as r:
        seen: list[Any] = []

        async def engine() -> None:
            while True:
                item = await r.inbox.get()
                assert isinstance(item, ev.ModemState | ev.ProfileSwitched), item  # all the service sends
                seen.append(item)
                view.current, effects = step(view.current, item, pol, time.monotonic())
                for e in effects:
                    if isinstance(e, fx.SwitchProfile):
                        seen.append(e)
                        r.service.switch(e)

        r.service.view = view
        loop = asyncio.create_task(engine(), name="engine")
        try:
            await control(mmsim, "Reject", "ss", "20404", "PlmnNotAllowed")

            async def serving() -> None:
                while True:
                    v = view.current.modems.get("mobile")
                    if v is not None and (v.profile, v.phase.value) == ("carrier-a-roam", "SERVING"):
                        return
                    await asyncio.sleep(0.05)

            await asyncio.wait_for(serving(), 8.0)
        finally:
            loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loop
    switches = [e for e in seen if isinstance(e, fx.SwitchProfile)]
    assert [(e.profile, e.how, e.plmn) for e in switches] == [("carrier-a-roam", "register", "20408")]
    assert any(isinstance(e, ev.ProfileSwitched) and e.ok for e in seen)
    (row,) = modem_rows(pol, view.current)
    assert (row["profile"], row["registration"], row["operator"], row["access"], row["bearer"]) == (
        "carrier-a-roam",
        "roaming",
        "20408",
        "lte",
        True,
    )
    text = render_status({**EMPTY_STATUS, "modems": [row], "services": {"modem": r.service.status()}}, tty=False)
    assert "modem service: 1 modem(s) from ModemManager" in text
    line = next(x for x in text.splitlines() if x.startswith("mobile "))
    assert "carrier-a-roam" in line and "roaming+data" in line and "20408" in line and "lte" in line, line


EMPTY_STATUS: dict[str, Any] = {
    "site": "test", "policy": "p.yaml", "pid": 1, "uptime_s": 1, "clock": {"state": "sane"},
    "uplinks": [], "classes": [], "overrides": [],
}  # fmt: skip


async def test_the_engine_service_hands_switch_profile_to_the_modem_service(tmp_path: Path) -> None:
    """services/engine.py records a SwitchProfile and passes it on without waiting for it."""
    pol = policy(tmp_path)
    state_dir = StateDir.create(tmp_path / "state")
    history = History(Journal(state_dir))
    inbox: Inbox = asyncio.Queue()
    # No kernel: a SwitchProfile alone changes no route, so the engine service must not touch it.
    engine = EngineService(
        pol, initial_state(pol, 0.0), inbox=inbox, kernel=cast(KernelWriter, None), history=history,
        state_dir=state_dir,
    )  # fmt: skip
    handed: list[fx.SwitchProfile] = []
    engine.profile_switch = handed.append
    e = switch("carrier-b", "slot", "20408", "internet.b")
    async with asyncio.TaskGroup() as tasks:
        await engine._execute((e,), 1.0, engine.state, tasks)
    assert handed == [e]
    assert history.last(1)[0]["kind"] == "profile-switch"


async def test_modemmanager_restarting_and_a_reload_that_brings_a_modem(bus: str, tmp_path: Path) -> None:
    """Started without modem uplinks it waits; a reload adds one; ModemManager going away makes the
    modem unknown, and once it is back the modem is found again."""
    async with start(bus, policy(tmp_path, WITHOUT_MODEM)) as r:
        await asyncio.sleep(0.2)
        assert r.service.bus is None
        proc = launch_mmsim(bus, tmp_path, SIMULATED)
        try:
            assert isinstance(r.service.view, View)
            r.service.view.policy = policy(tmp_path)
            await r.service.reconfigure(r.service.view.policy)
            await r.next(modem_state(registration="home"))
            stop(proc)
            gone = await r.next(modem_state(registration="unknown"))
            assert gone.reason == "the modem is gone from ModemManager"
            assert r.service.bound == {}
            proc = launch_mmsim(bus, tmp_path, SIMULATED)
            await r.next(modem_state(registration="home", operator="20404"))
            assert r.service.bound["mobile"] == "/org/freedesktop/ModemManager1/Modem/0"
        finally:
            stop(proc)


async def test_the_system_bus_going_away_is_a_status_line_and_a_retry(
    mmsim: str, bus_daemon: tuple[str, subprocess.Popen[str]], tmp_path: Path
) -> None:
    async with start(mmsim, policy(tmp_path)) as r:
        await r.next(modem_state(registration="home"))
        stop(bus_daemon[1])
        gone = await r.next(modem_state(registration="unknown"))
        assert gone.reason == "the modem is gone from ModemManager"
        await asyncio.sleep(0.5)  # retries (every 0.2 s) against a bus that is not there
        assert "not reachable" in r.service.status()["note"]
        r.service.switch(switch("carrier-a-roam", "register", "20408", "internet.a"))
        answer = await r.next(switched, timeout=2.0)
        assert not answer.ok


async def test_data_stop_shows_as_a_released_bearer_while_registered(running: Running, mmsim: str) -> None:
    await running.next(modem_state(registration="home"))
    running.service.switch(switch("carrier-a", "register", "20404", "internet.a"))  # connects the bearer
    assert (await running.next(switched)).ok
    await running.next(modem_state(registration="home", bearer=True))
    await control(mmsim, "DataStop", "sb", "20404", True)
    stopped = await running.next(modem_state(bearer=False))
    assert (stopped.registration, stopped.operator) == ("home", "20404")


# -- start-up: the modem as the last run left it, and its bearer --------------------------------------

MODEM0 = "/org/freedesktop/ModemManager1/Modem/0"


@contextlib.asynccontextmanager
async def with_engine(address: str, pol: Policy) -> AsyncIterator[tuple[Running, View, list[Any]]]:
    """The service and the pure engine between its events and its switches, as services/engine.py
    runs them; every event and effect in order."""
    view = View(pol)
    view.current = initial_state(pol, time.monotonic())
    async with start(address, pol) as r:
        r.service.view = view
        seen: list[Any] = []

        async def engine() -> None:
            while True:
                item = await r.inbox.get()
                seen.append(item)
                view.current, effects = step(view.current, item, pol, time.monotonic())
                seen.extend(effects)
                for e in effects:
                    if isinstance(e, fx.SwitchProfile):
                        r.service.switch(e)

        loop = asyncio.create_task(engine(), name="engine")
        try:
            yield r, view, seen
        finally:
            loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loop


async def until_phase(view: View, profile: str, phase: str, timeout: float = 8.0) -> None:
    async def wait() -> None:
        while True:
            v = view.current.modems.get("mobile")
            if v is not None and (v.profile, v.phase.value) == (profile, phase):
                return
            await asyncio.sleep(0.05)

    await asyncio.wait_for(wait(), timeout)


async def modem_call(address: str, path: str, interface: str, member: str, signature: str = "", *body: Any) -> Any:
    """One call to the simulator from another client (nmcli, an operator's mmcli): its reply body."""
    bus = await MessageBus(bus_address=address, bus_type=BusType.SYSTEM).connect()
    try:
        reply = await bus.call(
            Message(destination=MM, path=path, interface=interface, member=member, signature=signature,
                    body=list(body))
        )  # fmt: skip
        assert reply is not None and reply.message_type == MessageType.METHOD_RETURN, reply
        return reply.body
    finally:
        bus.disconnect()


async def bearers_of(address: str, path: str = MODEM0) -> list[str]:
    (value,) = await modem_call(address, path, "org.freedesktop.DBus.Properties", "Get", "ss", f"{MM}.Modem", "Bearers")
    return list(value.value)


ON_SLOT_2 = {**SIMULATED, "primary_slot": 2}


@pytest.mark.parametrize("mmsim", [ON_SLOT_2], indirect=True)
@pytest.mark.parametrize("connected", [False, True], ids=["registering", "connected"])
async def test_a_restart_finds_the_modem_on_slot_2_and_adopts_carrier_b(
    mmsim: str, tmp_path: Path, connected: bool
) -> None:
    """The daemon starts with the modem on slot 2 (carrier-b), as a previous run left it: the engine
    adopts carrier-b from the first report, no switch; the service brings up the bearer with
    carrier-b's APN if the modem has none, and leaves one that is up alone."""
    if connected:  # the last run connected it: the bearer outlives the daemon
        await modem_call(mmsim, MODEM0, f"{MM}.Modem.Simple", "Connect", "a{sv}", {"apn": Variant("s", "internet.b")})
    pol = policy(tmp_path)
    async with with_engine(mmsim, pol) as (r, view, seen):
        await until_phase(view, "carrier-b", "SERVING")
        status = r.service.status()["modems"]["mobile"]
    assert not [e for e in seen if isinstance(e, fx.SwitchProfile)]
    first = next(e for e in seen if isinstance(e, ev.ModemState))
    assert (first.slot, first.iccid, first.esim) == (2, "8931080000000000002", False)
    [adopted] = [e for e in seen if isinstance(e, fx.Alarm) and e.cause.code == "profile-adopted"]
    assert "SIM slot 2" in adopted.cause.text
    assert len(await bearers_of(mmsim)) == 1  # one bearer: ours, or the one found up
    assert ("connected with APN internet.b" in status["bearer"]) is not connected, status
    assert (status["slot"], status["iccid"]) == (2, "8931080000000000002")
    (row,) = modem_rows(pol, view.current)
    assert (row["profile"], row["registration"], row["operator"], row["bearer"]) == ("carrier-b", "home", "20408", True)
    text = render_status({**EMPTY_STATUS, "modems": [row], "services": {"modem": r.service.status()}}, tty=False)
    line = next(x for x in text.splitlines() if x.startswith("mobile "))
    assert "carrier-b" in line and "home+data" in line, line
    assert ("  mobile bearer: connected with APN internet.b" in text) is not connected, text


SLOW_CONNECT = {**SIMULATED, "timing": {**SIMULATED["timing"], "connect_s": 3.0}}


@pytest.mark.parametrize("mmsim", [SLOW_CONNECT], indirect=True)
async def test_a_connection_in_progress_is_not_fought(mmsim: str, tmp_path: Path) -> None:
    """Someone else (NetworkManager, an operator) is connecting the modem when the daemon starts: the
    service waits for it instead of calling Simple.Connect a second time."""
    props = {"apn": Variant("s", "internet.a")}
    theirs = asyncio.create_task(modem_call(mmsim, MODEM0, f"{MM}.Modem.Simple", "Connect", "a{sv}", props))

    async def connecting() -> None:
        while True:
            (state,) = await modem_call(
                mmsim, MODEM0, "org.freedesktop.DBus.Properties", "Get", "ss", f"{MM}.Modem", "State"
            )
            if state.value == 10:  # MM_MODEM_STATE_CONNECTING
                return
            await asyncio.sleep(0.05)

    await asyncio.wait_for(connecting(), 5.0)
    pol = policy(tmp_path)
    async with with_engine(mmsim, pol) as (r, view, _):
        await until_phase(view, "carrier-a", "ATTACHING")
        await asyncio.sleep(1.2)  # a CONNECT_CHECK: the service has looked at the modem meanwhile
        assert "left to it" in r.service.status()["modems"]["mobile"]["bearer"]
        (bearer,) = await asyncio.wait_for(theirs, 5.0)
        await until_phase(view, "carrier-a", "SERVING")
    assert await bearers_of(mmsim) == [bearer]


BAD_APN = POLICY.replace('apn: internet.a, plmns: ["20404"]}', 'apn: internet.x, plmns: ["20404"]}')


async def test_a_bearer_connect_that_fails_is_said_and_retried_later_not_at_once(mmsim: str, tmp_path: Path) -> None:
    pol = policy(tmp_path, BAD_APN)
    assert pol.uplinks["mobile"].modem is not None and pol.uplinks["mobile"].modem.profiles[0].apn == "internet.x"
    async with with_engine(mmsim, pol) as (r, view, _):
        r.service.retry = 30.0

        async def failed() -> str:
            while "failed" not in (note := r.service.status()["modems"]["mobile"]["bearer"]):
                await asyncio.sleep(0.05)
            return str(note)

        note = await asyncio.wait_for(failed(), 8.0)
        assert "MissingOrUnknownApn" in note and "again in 30s" in note, note
        await asyncio.sleep(1.5)  # a CONNECT_CHECK and more: no second attempt
        assert await bearers_of(mmsim) == []
        assert view.current.modems["mobile"].phase.value == "ATTACHING"


ESIM_ICCID = "8931080000000000002"
ON_ESIM = {
    **SIMULATED,
    "slots": [
        SIMULATED["slots"][0],
        {**SIMULATED["slots"][1], "esim": True, "eid": "89049032000000000000000000000001"},
    ],
}
ESIM_POLICY = POLICY.replace(
    '{name: carrier-b, slot: 2, apn: internet.b, plmns: ["20408"]}',
    f'{{name: carrier-b, esim: "{ESIM_ICCID}", apn: internet.b, plmns: ["20408"]}}\n'
    '      - {name: carrier-c, esim: "8931080000000000099", apn: internet.c, plmns: ["20408"]}',
)


@pytest.mark.parametrize("mmsim", [ON_ESIM], indirect=True)
async def test_esim_profiles_a_slot_switch_to_the_enabled_one_and_unsupported_otherwise(
    mmsim: str, tmp_path: Path
) -> None:
    """ModemManager 1.20 reads an eUICC's enabled profile but cannot enable another: carrier-b, enabled
    on the eUICC in slot 2, is reached by a slot switch; carrier-c is answered unsupported."""
    pol = policy(tmp_path, ESIM_POLICY)
    async with start(mmsim, pol) as r:
        await r.next(modem_state(registration="home", operator="20404"))
        r.service.switch(switch("carrier-b", "slot", "20408", "internet.b"))
        answer = await r.next(switched)
        assert (answer.ok, answer.unsupported) == (True, False), answer.detail
        now = r.service.evidence("mobile")
        assert now is not None and (now.slot, now.iccid, now.esim, now.bearer) == (2, ESIM_ICCID, True, True)
        r.service.switch(switch("carrier-c", "slot", "20408", "internet.c"))
        answer = await r.next(switched)
        assert (answer.ok, answer.unsupported) == (False, True)
        assert "cannot enable an eSIM profile" in answer.detail and "8931080000000000099" in answer.detail


@pytest.mark.parametrize("mmsim", [{**SIMULATED, "enabled": False}], indirect=True)
async def test_a_modem_left_disabled_is_enabled_and_connected_without_a_switch(mmsim: str, tmp_path: Path) -> None:
    """ModemManager enables no modem by itself (a gateway without a connection manager boots with its
    modem disabled): the service enables it and connects the engine's profile, no switch needed."""
    (state,) = await modem_call(mmsim, MODEM0, "org.freedesktop.DBus.Properties", "Get", "ss", f"{MM}.Modem", "State")
    assert state.value == 3  # MM_MODEM_STATE_DISABLED
    pol = policy(tmp_path)
    async with with_engine(mmsim, pol) as (r, view, seen):
        await until_phase(view, "carrier-a", "SERVING")
        note = r.service.status()["modems"]["mobile"]["bearer"]
    assert not [e for e in seen if isinstance(e, fx.SwitchProfile)]
    assert len(await bearers_of(mmsim)) == 1
    assert "connected with APN internet.a" in note, note


def test_a_daemon_without_a_modem_does_not_load_the_dbus_library() -> None:
    """dbus_fast is imported when a modem is first met: a daemon without one keeps its memory (RSS target)."""
    code = "import sys, failoverd.runtime, failoverd.cli; print('dbus_fast' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "False", r.stdout

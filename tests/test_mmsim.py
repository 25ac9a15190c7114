"""The ModemManager simulator (lab/mmsim.py) against the real client, Debian's mmcli, and a dbus-fast client."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dbus_fast import BusType, Message, MessageType, Variant
from dbus_fast.aio import MessageBus
from mmbus import launch_mmsim, start_bus, stop

from lab.mmsim import CONTROL, CONTROL_PATH, M3GPP, MM, MODEM, SIMPLE, ConfigAtEdge

pytestmark = pytest.mark.skipif(
    shutil.which("dbus-daemon") is None, reason="needs dbus-daemon (scripts/bootstrap installs it)"
)
needs_mmcli = pytest.mark.skipif(
    shutil.which("mmcli") is None, reason="needs mmcli (Debian's modemmanager; scripts/bootstrap installs it)"
)

CONFIG: dict[str, Any] = {
    "equipment_id": "359999000000042",
    "slots": [
        {"imsi": "204040000000001", "iccid": "8931040000000000001", "home": "20404", "operator_name": "carrier-a",
         "apn": "internet.a", "roaming": ["20408"]},
        {"imsi": "204080000000002", "iccid": "8931080000000000002", "home": "20408", "operator_name": "carrier-b",
         "apn": "internet.b"},
    ],
    "networks": [{"code": "20404", "name": "carrier-a"}, {"code": "20408", "name": "carrier-b", "signal": 55},
                 {"code": "20416", "name": "carrier-c"}],
    "timing": {"enable_s": 0.05, "register_s": 0.3, "connect_s": 0.1, "slot_switch_s": 0.8, "register_timeout_s": 2.0},
}  # fmt: skip


@pytest.fixture
def bus(tmp_path: Path) -> Iterator[str]:
    """A private system-like dbus-daemon; its address."""
    address, proc = start_bus(tmp_path)
    try:
        yield address
    finally:
        stop(proc)


@pytest.fixture
def mmsim(bus: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[str]:
    """The simulator on the private bus (CONFIG, or the test's indirect parameter); the bus address."""
    proc = launch_mmsim(bus, tmp_path, getattr(request, "param", CONFIG))
    try:
        yield bus
    finally:
        stop(proc)


def mmcli(bus: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DBUS_SYSTEM_BUS_ADDRESS": bus}
    done = subprocess.run(["mmcli", *args], env=env, capture_output=True, text=True, timeout=15, check=False)
    if check:
        assert done.returncode == 0, done.stderr
    return done


def keyvalues(bus: str, *args: str) -> dict[str, str]:
    """mmcli's --output-keyvalue as a dict (multi-value keys keep their first line)."""
    out: dict[str, str] = {}
    for line in mmcli(bus, *args, "-K").stdout.splitlines():
        key, _, value = line.partition(":")
        out.setdefault(key.strip(), value.strip())
    return out


def wait_for(predicate: Any, timeout: float = 5.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


@needs_mmcli
def test_mmcli_lists_the_modem_and_shows_state_operator_and_sims(mmsim: str) -> None:
    assert "/org/freedesktop/ModemManager1/Modem/0 [failoverd] mmsim" in mmcli(mmsim, "-L").stdout
    modem = wait_for(lambda: (kv := keyvalues(mmsim, "-m", "0"))["modem.generic.state"] == "registered" and kv)
    assert modem["modem.generic.equipment-identifier"] == "359999000000042"
    assert modem["modem.3gpp.operator-code"] == "20404"
    assert modem["modem.3gpp.operator-name"] == "carrier-a"
    assert modem["modem.3gpp.registration-state"] == "home"
    assert modem["modem.generic.access-technologies.value[1]"] == "lte"
    assert modem["modem.generic.sim"] == "/org/freedesktop/ModemManager1/SIM/0"
    assert modem["modem.generic.sim-slots.value[2]"] == "/org/freedesktop/ModemManager1/SIM/1"
    assert modem["modem.generic.primary-sim-slot"] == "1"
    sim = keyvalues(mmsim, "-i", "1")
    assert sim["sim.properties.imsi"] == "204080000000002"
    assert sim["sim.properties.operator-code"] == "20408"
    assert sim["sim.properties.active"] == "no"


@needs_mmcli
def test_mmcli_registers_in_a_partner_operator_and_is_refused_by_others(mmsim: str) -> None:
    wait_for(lambda: keyvalues(mmsim, "-m", "0")["modem.generic.state"] == "registered")
    assert "successfully registered" in mmcli(mmsim, "-m", "0", "--3gpp-register-in-operator=20408").stdout
    modem = keyvalues(mmsim, "-m", "0")
    assert (modem["modem.3gpp.operator-code"], modem["modem.3gpp.registration-state"]) == ("20408", "roaming")
    # carrier-c is on the air but not a partner of SIM 1: the network says PLMN not allowed.
    refused = mmcli(mmsim, "-m", "0", "--3gpp-register-in-operator=20416", check=False)
    assert refused.returncode != 0
    assert "MobileEquipment.PlmnNotAllowed" in refused.stderr
    assert keyvalues(mmsim, "-m", "0")["modem.3gpp.registration-state"] == "denied"
    mmcli(mmsim, "-m", "0", "--3gpp-register-home")
    assert keyvalues(mmsim, "-m", "0")["modem.3gpp.operator-code"] == "20404"


@needs_mmcli
def test_mmcli_sim_slot_switch_removes_the_modem_and_it_returns_under_a_new_path(mmsim: str) -> None:
    wait_for(lambda: keyvalues(mmsim, "-m", "0")["modem.generic.state"] == "registered")
    assert "successfully requested primary SIM switch" in mmcli(mmsim, "-m", "0", "--set-primary-sim-slot=2").stdout
    wait_for(lambda: "No modems were found" in mmcli(mmsim, "-L").stdout, timeout=2)
    wait_for(lambda: "/org/freedesktop/ModemManager1/Modem/1 " in mmcli(mmsim, "-L").stdout)
    modem = wait_for(lambda: (kv := keyvalues(mmsim, "-m", "1"))["modem.generic.state"] == "registered" and kv)
    assert modem["modem.generic.primary-sim-slot"] == "2"
    assert modem["modem.3gpp.operator-code"] == "20408"
    assert modem["modem.3gpp.registration-state"] == "home"
    assert keyvalues(mmsim, "-i", modem["modem.generic.sim"])["sim.properties.active"] == "yes"


@needs_mmcli
def test_mmcli_simple_connect_gives_a_bearer_with_its_interface_and_address(mmsim: str) -> None:
    wait_for(lambda: keyvalues(mmsim, "-m", "0")["modem.generic.state"] == "registered")
    mmcli(mmsim, "-m", "0", "--simple-connect=apn=internet.a")
    assert keyvalues(mmsim, "-m", "0")["modem.generic.state"] == "connected"
    bearer = keyvalues(mmsim, "-b", "0")
    assert bearer["bearer.status.connected"] == "yes"
    assert bearer["bearer.status.interface"] == "wwan0"
    assert bearer["bearer.ipv4-config.method"] == "static"
    wrong = mmcli(mmsim, "-m", "0", "--simple-connect=apn=nope", check=False)
    assert "MissingOrUnknownApn" in wrong.stderr


class Client:
    """A dbus-fast client that records the simulator's PropertiesChanged signals."""

    def __init__(self, bus: MessageBus) -> None:
        self.bus = bus
        self.changes: list[tuple[str, str, dict[str, Any]]] = []
        self.event = asyncio.Event()
        self.cursor = 0
        bus.add_message_handler(self._on_message)

    def _on_message(self, msg: Message) -> None:
        if msg.message_type == MessageType.SIGNAL and msg.member == "PropertiesChanged":
            interface, changed, _ = msg.body
            self.changes.append((msg.path or "", interface, {k: v.value for k, v in changed.items()}))
            self.event.set()

    async def call(self, path: str, interface: str, member: str, signature: str = "", *body: Any) -> Message:
        return await self.bus.call(
            Message(destination=MM, path=path, interface=interface, member=member, signature=signature,
                    body=list(body))
        )  # fmt: skip

    async def get(self, path: str, interface: str, name: str) -> Any:
        reply = await self.call(path, "org.freedesktop.DBus.Properties", "Get", "ss", interface, name)
        assert reply.message_type == MessageType.METHOD_RETURN, reply.body
        return reply.body[0].value

    async def poll(self, path: str, interface: str, name: str, value: Any, timeout: float = 5.0) -> None:
        """Wait until a property reads value; for states that pass through the same value twice."""
        deadline = asyncio.get_running_loop().time() + timeout
        while await self.get(path, interface, name) != value:
            assert asyncio.get_running_loop().time() < deadline, f"{name} never became {value}"
            await asyncio.sleep(0.05)

    async def until(self, interface: str, name: str, value: Any, timeout: float = 5.0) -> None:
        """Wait for a PropertiesChanged, after the last one waited for, that sets name to value."""

        async def wait() -> None:
            while True:
                for i in range(self.cursor, len(self.changes)):
                    _, iface, changed = self.changes[i]
                    if iface == interface and changed.get(name) == value:
                        self.cursor = i + 1
                        return
                self.event.clear()
                await self.event.wait()

        await asyncio.wait_for(wait(), timeout)


@pytest.fixture
async def client(mmsim: str) -> Any:
    bus = await MessageBus(bus_address=mmsim, bus_type=BusType.SYSTEM).connect()
    await bus.call(
        Message(destination="org.freedesktop.DBus", path="/org/freedesktop/DBus", interface="org.freedesktop.DBus",
                member="AddMatch", signature="s", body=[f"type='signal',sender='{MM}'"])
    )  # fmt: skip
    c = Client(bus)
    modem = "/org/freedesktop/ModemManager1/Modem/0"
    if await c.get(modem, M3GPP, "RegistrationState") != 1:
        await c.until(M3GPP, "RegistrationState", 1)
    yield c
    bus.disconnect()


MODEM0 = "/org/freedesktop/ModemManager1/Modem/0"


async def test_carrier_outage_drops_registration_and_the_modem_roams_to_the_partner(client: Client) -> None:
    reply = await client.call(CONTROL_PATH, CONTROL, "CarrierOutage", "sb", "20404", True)
    assert reply.message_type == MessageType.METHOD_RETURN, reply.body
    await client.until(M3GPP, "RegistrationState", 2)  # searching
    await client.until(M3GPP, "RegistrationState", 5)  # roaming, on carrier-b
    assert await client.get(MODEM0, M3GPP, "OperatorCode") == "20408"
    assert await client.get(MODEM0, MODEM, "State") == 8  # registered
    await client.call(CONTROL_PATH, CONTROL, "CarrierOutage", "sb", "20404", False)
    await client.until(M3GPP, "RegistrationState", 1)  # home again
    assert await client.get(MODEM0, M3GPP, "OperatorCode") == "20404"


async def test_network_reject_denies_registration_and_register_fails_with_the_cause(client: Client) -> None:
    await client.call(CONTROL_PATH, CONTROL, "Reject", "ss", "20404", "PlmnNotAllowed")
    await client.call(CONTROL_PATH, CONTROL, "Reject", "ss", "20408", "RoamingNotAllowedInArea")
    await client.until(M3GPP, "RegistrationState", 3)  # denied by carrier-a, then it tries carrier-b
    await client.poll(MODEM0, MODEM, "State", 6)  # enabled, not registered: both refuse
    assert await client.get(MODEM0, M3GPP, "RegistrationState") == 3
    reply = await client.call(MODEM0, M3GPP, "Register", "s", "20404")
    assert reply.message_type == MessageType.ERROR
    assert reply.error_name == "org.freedesktop.ModemManager1.Error.MobileEquipment.PlmnNotAllowed"
    typo = await client.call(CONTROL_PATH, CONTROL, "Reject", "ss", "20404", "PlmnNotAlowed")
    assert typo.error_name == "org.freedesktop.ModemManager1.Error.Core.InvalidArgs"


def test_config_refuses_a_primary_slot_beyond_the_slots() -> None:
    with pytest.raises(ValueError, match="primary_slot 3: there are 2 slots"):
        ConfigAtEdge.model_validate({**CONFIG, "primary_slot": 3})
    ConfigAtEdge.model_validate(CONFIG)


async def test_data_stop_releases_the_bearer_while_registration_stays(client: Client) -> None:
    reply = await client.call(MODEM0, SIMPLE, "Connect", "a{sv}", {"apn": Variant("s", "internet.a")})
    assert reply.message_type == MessageType.METHOD_RETURN, reply.body
    bearer = reply.body[0]
    assert await client.get(bearer, "org.freedesktop.ModemManager1.Bearer", "Connected") is True
    await client.call(CONTROL_PATH, CONTROL, "DataStop", "sb", "20404", True)
    await client.until("org.freedesktop.ModemManager1.Bearer", "Connected", False)
    assert await client.get(MODEM0, MODEM, "State") == 8  # registered, no data
    assert await client.get(MODEM0, M3GPP, "RegistrationState") == 1
    again = await client.call(MODEM0, SIMPLE, "Connect", "a{sv}", {"apn": Variant("s", "internet.a")})
    assert again.error_name == "org.freedesktop.ModemManager1.Error.MobileEquipment.ServiceOptionOutOfOrder"
    status = (await client.call(MODEM0, SIMPLE, "GetStatus")).body[0]
    assert status["m3gpp-operator-code"].value == "20404"


@needs_mmcli
def test_mmcli_disable_and_enable_and_an_absent_network(mmsim: str) -> None:
    wait_for(lambda: keyvalues(mmsim, "-m", "0")["modem.generic.state"] == "registered")
    mmcli(mmsim, "-m", "0", "--disable")
    modem = keyvalues(mmsim, "-m", "0")
    assert (modem["modem.generic.state"], modem["modem.3gpp.registration-state"]) == ("disabled", "idle")
    mmcli(mmsim, "-m", "0", "--enable")
    wait_for(lambda: keyvalues(mmsim, "-m", "0")["modem.3gpp.registration-state"] == "home")
    # No such network on the air: the modem searches until register_timeout_s, then gives up.
    absent = mmcli(mmsim, "-m", "0", "--3gpp-register-in-operator=20499", check=False)
    assert "MobileEquipment.NoNetwork" in absent.stderr
    assert keyvalues(mmsim, "-m", "0")["modem.3gpp.registration-state"] == "searching"


async def test_introspection_describes_the_interfaces_for_a_proxy_client(client: Client) -> None:
    node = await client.bus.introspect(MM, MODEM0)
    interfaces = {i.name: i for i in node.interfaces}
    assert {MODEM, M3GPP, SIMPLE} <= set(interfaces)
    proxy = client.bus.get_proxy_object(MM, MODEM0, node)
    m3gpp = proxy.get_interface(M3GPP)
    assert await m3gpp.get_operator_code() == "20404"  # type: ignore[attr-defined]
    props = {p.name: p.signature for p in interfaces[MODEM].properties}
    assert (props["State"], props["SignalQuality"], props["SimSlots"]) == ("i", "(ub)", "ao")
    manager = await client.bus.introspect(MM, "/org/freedesktop/ModemManager1")
    assert "Modem" in {n.name for n in manager.nodes}


EMPTY_SLOT_2 = {**CONFIG, "slots": [CONFIG["slots"][0], None]}


@needs_mmcli
@pytest.mark.parametrize("mmsim", [EMPTY_SLOT_2], indirect=True)
def test_mmcli_switch_to_an_empty_slot_fails_the_modem_with_sim_missing(mmsim: str) -> None:
    modem = wait_for(lambda: (kv := keyvalues(mmsim, "-m", "0"))["modem.generic.state"] == "registered" and kv)
    assert modem["modem.generic.sim-slots.value[2]"] == "/"
    mmcli(mmsim, "-m", "0", "--set-primary-sim-slot=2")
    wait_for(lambda: "/org/freedesktop/ModemManager1/Modem/1 " in mmcli(mmsim, "-L").stdout)
    modem = keyvalues(mmsim, "-m", "1")
    assert (modem["modem.generic.state"], modem["modem.generic.state-failed-reason"]) == ("failed", "sim-missing")
    assert modem["modem.generic.sim"] == "--"
    assert "Core.WrongState" in mmcli(mmsim, "-m", "1", "--enable", check=False).stderr
    # Back to slot 1: the modem comes back with its SIM and registers.
    mmcli(mmsim, "-m", "1", "--set-primary-sim-slot=1")
    wait_for(lambda: "/org/freedesktop/ModemManager1/Modem/2 " in mmcli(mmsim, "-L").stdout)
    wait_for(lambda: keyvalues(mmsim, "-m", "2")["modem.3gpp.registration-state"] == "home")


async def test_set_primary_sim_slot_to_the_current_slot_keeps_the_modem_and_out_of_range_is_refused(
    client: Client,
) -> None:
    # As ModemManager's handle_set_primary_sim_slot: already primary is a success without a re-probe.
    same = await client.call(MODEM0, MODEM, "SetPrimarySimSlot", "u", 1)
    assert same.message_type == MessageType.METHOD_RETURN
    beyond = await client.call(MODEM0, MODEM, "SetPrimarySimSlot", "u", 3)
    assert beyond.error_name == "org.freedesktop.ModemManager1.Error.Core.InvalidArgs"
    await asyncio.sleep(0.3)
    assert await client.get(MODEM0, MODEM, "PrimarySimSlot") == 1


async def test_a_sim_refused_everywhere_is_denied_on_home_and_partner_networks(client: Client) -> None:
    """RejectSim (the lab's sim-switch): the subscription is cancelled, so neither the home network nor the
    roaming partner takes it; the SIM in the other slot is not affected."""
    reply = await client.call(CONTROL_PATH, CONTROL, "RejectSim", "ss", "204040000000001", "ImsiUnknownInHss")
    assert reply.message_type == MessageType.METHOD_RETURN, reply.body
    await client.until(M3GPP, "RegistrationState", 3)  # denied
    assert await client.get(MODEM0, M3GPP, "OperatorCode") == ""
    roam = await client.call(MODEM0, M3GPP, "Register", "s", "20408")
    assert roam.error_name == "org.freedesktop.ModemManager1.Error.MobileEquipment.ImsiUnknownInHss"
    unknown = await client.call(CONTROL_PATH, CONTROL, "RejectSim", "ss", "999990000000000", "IllegalUe")
    assert unknown.error_name == "org.freedesktop.ModemManager1.Error.Core.NotFound"
    # The other SIM registers at home once the modem is switched to its slot.
    await client.call(MODEM0, MODEM, "SetPrimarySimSlot", "u", 2)
    modem1 = "/org/freedesktop/ModemManager1/Modem/1"
    await client.until(M3GPP, "RegistrationState", 1, timeout=5)
    assert await client.get(modem1, M3GPP, "OperatorCode") == "20408"


async def test_reset_clears_every_fault_and_reprobes_the_modem_on_its_configured_slot(client: Client) -> None:
    """Reset (between lab scenarios): faults gone, the modem back on slot 1 at once (no slot-switch delay),
    registering automatically with no bearer, even while a slot switch is still under way."""
    await client.call(CONTROL_PATH, CONTROL, "CarrierOutage", "sb", "20404", True)
    await client.call(CONTROL_PATH, CONTROL, "RejectSim", "ss", "204040000000001", "IllegalUe")
    await client.call(MODEM0, MODEM, "SetPrimarySimSlot", "u", 2)  # the re-probe is 0.8 s away
    await asyncio.sleep(0.2)
    reply = await client.call(CONTROL_PATH, CONTROL, "Reset")
    assert reply.message_type == MessageType.METHOD_RETURN, reply.body
    modem1 = "/org/freedesktop/ModemManager1/Modem/1"
    await client.poll(modem1, M3GPP, "RegistrationState", 1)  # home on carrier-a: slot 1, no fault
    assert await client.get(modem1, MODEM, "PrimarySimSlot") == 1
    assert await client.get(modem1, MODEM, "Bearers") == []
    await asyncio.sleep(1.0)  # the cancelled slot switch does not re-probe the modem again
    managed = await client.call("/org/freedesktop/ModemManager1", "org.freedesktop.DBus.ObjectManager",
                                "GetManagedObjects")  # fmt: skip
    assert list(managed.body[0]) == [modem1]

"""The daemon's modem service on its own, on the default system bus: profile switches, each answer a JSON line."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
from pathlib import Path
from typing import Any

from failoverd.engine import effects as fx
from failoverd.engine import events as ev
from failoverd.engine.state import EngineState, initial_state
from failoverd.policy import load_policy
from failoverd.policy.model import Policy
from failoverd.services.base import Inbox
from failoverd.services.modem import ModemService

TIMEOUT = 20.0  # s: for the modem to be seen, and for each switch's answer


class View:
    """The engine as the modem service sees it: the policy in force."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.state: EngineState = initial_state(policy, 0.0)


async def next_of(inbox: Inbox, kind: type[Any]) -> Any:
    while not isinstance(item := await inbox.get(), kind):
        pass
    return item


async def run(policy: Policy, uplink: str, switches: list[tuple[str, fx.SwitchHow, str | None, str]]) -> None:
    inbox: Inbox = asyncio.Queue()
    service = ModemService(View(policy), inbox)  # no address: DBUS_SYSTEM_BUS_ADDRESS, else the system bus
    task = asyncio.create_task(service.run(), name="modem")
    try:
        seen = await asyncio.wait_for(next_of(inbox, ev.ModemState), TIMEOUT)
        print(json.dumps({"modem": seen.registration, "note": service.note}), flush=True)
        for profile, how, plmn, apn in switches:
            service.switch(fx.SwitchProfile(uplink, profile, how, plmn, apn, fx.Cause("test", "modem_switches.py")))
            answer = await asyncio.wait_for(next_of(inbox, ev.ProfileSwitched), TIMEOUT)
            print(json.dumps({"profile": answer.profile, "ok": answer.ok, "detail": answer.detail}), flush=True)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--policy", required=True, type=Path)
    ap.add_argument("--uplink", required=True)
    ap.add_argument("switches", help='JSON: [[profile, "slot"|"register", plmn or null, apn], ...]')
    args = ap.parse_args()
    switches = [tuple(s) for s in json.loads(args.switches)]
    asyncio.run(run(load_policy(args.policy), args.uplink, switches))


if __name__ == "__main__":
    main()

"""Local evidence about the clock: chrony's own view, the kernel's adjtimex status, and step detection."""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import functools
import json
import math
import os
import shutil
import struct
import time
from dataclasses import dataclass
from datetime import datetime

from failoverd.clock.consensus import Step

STA_UNSYNC = 0x0040
# A wall clock that slews moves at most 500 ppm (the kernel's limit for adjtime); anything faster is a step.
MAX_SLEW = 500e-6
JITTER = 0.02  # scheduling noise between reading the two clocks


class _Timex(ctypes.Structure):
    # struct timex from <sys/timex.h>, x86-64 / aarch64 layout (longs are 8 bytes).
    _fields_ = [
        ("modes", ctypes.c_uint),
        ("offset", ctypes.c_long),
        ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long),
        ("esterror", ctypes.c_long),
        ("status", ctypes.c_int),
        ("constant", ctypes.c_long),
        ("precision", ctypes.c_long),
        ("tolerance", ctypes.c_long),
        ("time_sec", ctypes.c_long),
        ("time_usec", ctypes.c_long),
        ("tick", ctypes.c_long),
        ("ppsfreq", ctypes.c_long),
        ("jitter", ctypes.c_long),
        ("shift", ctypes.c_int),
        ("stabil", ctypes.c_long),
        ("jitcnt", ctypes.c_long),
        ("calcnt", ctypes.c_long),
        ("errcnt", ctypes.c_long),
        ("stbcnt", ctypes.c_long),
        ("tai", ctypes.c_int),
        ("padding", ctypes.c_int * 11),
    ]


@dataclass(frozen=True, slots=True)
class KernelClock:
    synced: bool  # STA_UNSYNC clear and the kernel's maximum error small
    maxerror: float  # seconds
    esterror: float
    status: int


@functools.cache
def _libc() -> ctypes.CDLL:
    # Looked up once: find_library runs `ldconfig -p` (a fork, an exec and a parse) on every call.
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def adjtimex() -> KernelClock | None:
    """Read (never set: modes = 0) the kernel's clock discipline state."""
    libc = _libc()
    tx = _Timex()
    tx.modes = 0
    if libc.adjtimex(ctypes.byref(tx)) < 0:
        return None
    maxerror = tx.maxerror / 1e6
    # STA_UNSYNC alone is unreliable (chrony clears it only with rtcsync): also demand a small maxerror,
    # which the kernel grows by 500 ppm a second when nobody disciplines the clock.
    return KernelClock(not tx.status & STA_UNSYNC and maxerror < 1.0, maxerror, tx.esterror / 1e6, tx.status)


@dataclass(frozen=True, slots=True)
class ChronyView:
    synced: bool
    offset: float  # chrony's estimate of (true - local), seconds
    stratum: int
    ref: str
    last_offset: float
    ref_time: float


async def chrony_tracking(timeout: float = 2.0) -> ChronyView | None:
    """`chronyc -c tracking`, when chronyd runs; None otherwise."""
    if shutil.which("chronyc") is None:
        return None
    try:
        proc = await asyncio.create_subprocess_exec(
            "chronyc", "-c", "tracking", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL
        )
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except (OSError, TimeoutError):
        return None
    return parse_tracking(out.decode(errors="replace")) if proc.returncode == 0 else None


def parse_tracking(text: str) -> ChronyView | None:
    """`chronyc -c tracking` (one CSV line) as chrony's view; None if it is not one.

    The second field is the reference's address, IPv4 or IPv6 (chrony 4.3 following 2001:db8:ff::123
    wrote `2A752757,2001:db8:ff::123,4,...`: the refid is a hash of the address, and the address has
    colons but no commas, so the split holds), or the refid's name for a reference clock; empty with
    no reference yet (`00000000,,0,...,Not synchronised`).
    """
    fields = text.strip().split(",")
    if len(fields) < 14:
        return None
    try:
        leap = fields[13].strip()
        return ChronyView(
            synced=leap != "Not synchronised" and fields[1] not in ("", "0.0.0.0"),
            offset=-float(fields[4]),  # "system time" field: local minus true, so negate
            stratum=int(fields[2]),
            ref=fields[1],
            last_offset=float(fields[5]),
            ref_time=float(fields[3]),
        )
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class GpsFix:
    offset: float  # GPS time minus local wall clock, seconds
    error: float  # seconds: gpsd's estimated time error, at least the serial latency it cannot see
    mono: float


GPSD_LATENCY = 0.2  # a fix reaches gpsd over a serial line some 100-200 ms after its second began


def parse_tpv(line: bytes, local: float, mono: float) -> GpsFix | None:
    """One line of gpsd's JSON feed as a clock sample: a TPV report with a fix (mode 2 or 3), an
    RFC 3339 time with its zone and, if given, a finite non-negative `ept`; None for anything else.

    gpsd is another process, often reached over TCP: a line that is not such a report, however
    malformed, is skipped rather than trusted or allowed to raise."""
    try:
        msg = json.loads(line)
    except (ValueError, RecursionError):
        return None
    if not isinstance(msg, dict) or msg.get("class") != "TPV":
        return None
    mode, when, ept = msg.get("mode", 0), msg.get("time"), msg.get("ept", 0.0)
    if not isinstance(mode, int) or isinstance(mode, bool) or mode < 2 or not isinstance(when, str):
        return None
    if not isinstance(ept, int | float) or isinstance(ept, bool) or not 0 <= ept < math.inf:
        return None
    try:
        gps = datetime.fromisoformat(when.replace("Z", "+00:00"))
    except ValueError:
        return None
    if gps.tzinfo is None:
        return None  # a time without its zone would be read as local time
    return GpsFix(gps.timestamp() - local, max(float(ept), GPSD_LATENCY), mono)


async def gpsd_time(host: str, port: int = 2947, timeout: float = 3.0) -> GpsFix | None:
    """The next TPV report from gpsd's JSON feed (`?WATCH`), as a clock sample; None if there is none."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (OSError, TimeoutError):
        return None
    try:
        writer.write(b'?WATCH={"enable":true,"json":true};\n')
        await writer.drain()
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            line = await asyncio.wait_for(reader.readline(), left)
            if not line:
                return None
            fix = parse_tpv(line, time.time(), time.monotonic())
            if fix is not None:
                return fix
    except (OSError, TimeoutError, ValueError):  # ValueError: a line longer than the stream's limit
        pass
    finally:
        writer.close()
    return None


class StepWatch:
    """Detects wall-clock steps: wall-minus-monotonic moving faster than a slew could, and (Linux)
    a timerfd armed with TFD_TIMER_CANCEL_ON_SET, which the kernel cancels whenever the clock is set."""

    def __init__(self) -> None:
        self.base = time.time() - time.monotonic()
        self.at = time.monotonic()
        self.fd: int | None = None
        self.set_seen = False
        self._arm()

    def _arm(self) -> None:
        libc = _libc()
        clock_realtime, tfd_nonblock, tfd_timer_abstime, tfd_timer_cancel_on_set = 0, 0o4000, 1, 2
        fd = libc.timerfd_create(clock_realtime, tfd_nonblock)
        if fd < 0:
            return
        # Expire in the far future: we only want the cancellation on a clock set.
        spec = struct.pack("llll", 0, 0, int(time.time()) + 10 * 365 * 86400, 0)
        buf = ctypes.create_string_buffer(spec)
        if libc.timerfd_settime(fd, tfd_timer_abstime | tfd_timer_cancel_on_set, buf, None) < 0:
            os.close(fd)
            return
        self.fd = fd
        asyncio.get_running_loop().add_reader(fd, self._cancelled)

    def _cancelled(self) -> None:
        try:
            os.read(self.fd or -1, 8)
        except OSError:
            # ECANCELED: the realtime clock was set. Re-arm for the next one.
            self.set_seen = True
            self.close()
            self._arm()

    def close(self) -> None:
        if self.fd is not None:
            asyncio.get_running_loop().remove_reader(self.fd)
            os.close(self.fd)
            self.fd = None

    def poll(self, chrony: ChronyView | None = None) -> list[Step]:
        """Compare wall-minus-monotonic with the last call; a step if it moved faster than a slew."""
        now = time.monotonic()
        base = time.time() - now
        delta = base - self.base
        allowed = MAX_SLEW * (now - self.at) + JITTER
        self.base, self.at = base, now
        set_seen, self.set_seen = self.set_seen, False
        if abs(delta) <= allowed:
            return []
        explained = (
            chrony is not None
            and chrony.synced
            and abs(abs(chrony.last_offset) - abs(delta)) < max(0.1 * abs(delta), JITTER)
        )
        why = "chrony stepped it" if explained else "no time daemon owned up to it"
        if set_seen:
            why += "; the kernel reported a clock set (timerfd)"
        return [Step(now, delta, explained, why)]

"""Signed remote commands: HMAC-SHA256 over the request, a key per operator, replays refused.

A command that arrives over MQTT has crossed a broker and networks the gateway does not control, so
it must prove who sent it and that it is not an old one played again. The sender adds `key` (the
key's name), `issued` (its wall clock, seconds) and `sig`: the hex HMAC-SHA256, under that key's
secret, of the request's canonical JSON without `sig` (keys sorted, no spaces, UTF-8).

A gateway accepts a command only if the signature holds, and
- its `issued` is later than that of the last command it accepted under the same key: a replay, or
  a command overtaken by a newer one, is refused whatever the clocks say; and
- while the gateway's clock is trusted, `issued` lies within `max_age` of it, so that a command
  held back and delivered late cannot act. When the clock checker distrusts signed commands (the
  clock is INSANE or SUSPECT and the policy says so), that window cannot be judged: the order alone
  protects, and the reply says so. Refusing every command then would lock operators out just when a
  time fault is the emergency.

Nothing here reads a clock or a file except `load_keys`: callers pass the time and the last-issued
table in, so the rules are tested without either.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MIN_SECRET_BYTES = 16  # 128 bits


class KeyFileError(Exception):
    """The keys file is missing, unreadable by us, readable by others, or malformed."""


def canonical(request: Mapping[str, Any]) -> bytes:
    """The bytes a signature covers: the request without `sig`, as sorted compact JSON."""
    body = {k: v for k, v in request.items() if k != "sig"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def sign(request: Mapping[str, Any], key: str, secret: bytes, issued: float) -> dict[str, Any]:
    """The request with `key`, `issued` and `sig` added."""
    out = {k: v for k, v in request.items() if k != "sig"}
    out["key"] = key
    out["issued"] = round(issued, 6)
    out["sig"] = hmac.new(secret, canonical(out), hashlib.sha256).hexdigest()
    return out


@dataclass(frozen=True, slots=True)
class Verdict:
    ok: bool
    reason: str  # why refused; or, when accepted, a note for the reply ("" if none)
    key: str = ""  # the key whose signature held: set when accepted, and when refused after the check
    issued: float = 0.0


def verify(
    request: Mapping[str, Any],
    keys: Mapping[str, bytes],
    last_issued: Mapping[str, float],
    *,
    wall: float,
    max_age: float,
    clock_trusted: bool,
) -> Verdict:
    """Judge a signed request. `last_issued` is, per key, the `issued` of the last command accepted."""
    if not keys:
        return Verdict(False, "this gateway has no command keys (control.mqtt.keys_file): remote commands are off")
    key, issued, sig = request.get("key"), request.get("issued"), request.get("sig")
    if not isinstance(key, str) or not isinstance(sig, str) or sig == "":
        return Verdict(False, "unsigned: a remote command needs key, issued and sig")
    if not isinstance(issued, int | float) or isinstance(issued, bool):
        return Verdict(False, "issued must be the sender's wall-clock time in seconds")
    secret = keys.get(key)
    if secret is None:
        return Verdict(False, f'unknown key "{key}"')
    expected = hmac.new(secret, canonical(request), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, sig):
        return Verdict(False, f'bad signature for key "{key}"')
    last = last_issued.get(key)
    if last is not None and issued <= last:
        return Verdict(
            False,
            f'replayed or out of order: issued {issued} is not after the last accepted ({last}) for "{key}"',
            key,
        )
    if clock_trusted:
        age = wall - issued
        if age > max_age:
            return Verdict(False, f"too old: issued {age:.0f}s ago (max_age {max_age:g}s)", key)
        if age < -max_age:
            future = f"issued {-age:.0f}s in the future (max_age {max_age:g}s): check the sender's clock"
            return Verdict(False, future, key)
        return Verdict(True, "", key, float(issued))
    return Verdict(True, "clock not trusted: accepted on order alone, age not checked", key, float(issued))


def load_keys(path: Path) -> dict[str, bytes]:
    """`NAME SECRET` per line (SECRET in hex, at least 128 bits); `#` starts a comment.

    The file must not be readable by group or others: whoever reads it can steer the gateway."""
    try:
        st = path.stat()
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise KeyFileError(f"{path}: {exc.strerror or exc}") from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileError(f"{path}: readable by others (mode {stat.S_IMODE(st.st_mode):o}); chmod 600 it")
    keys: dict[str, bytes] = {}
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) != 2:
            raise KeyFileError(f"{path}:{n}: expected NAME SECRET")
        name, secret_hex = parts
        try:
            secret = bytes.fromhex(secret_hex)
        except ValueError:
            raise KeyFileError(f"{path}:{n}: the secret of {name} is not hex") from None
        if len(secret) < MIN_SECRET_BYTES:
            raise KeyFileError(f"{path}:{n}: the secret of {name} is shorter than {MIN_SECRET_BYTES * 8} bits")
        if name in keys:
            raise KeyFileError(f"{path}:{n}: key {name} appears twice")
        keys[name] = secret
    if not keys:
        raise KeyFileError(f"{path}: no keys")
    return keys

"""Signed remote commands: Ed25519 over the request and its destination, a key per operator, replays refused.

A command that arrives over MQTT has crossed a broker and networks the gateway does not control, so
it must prove who sent it, where it was sent, and that it is not an old one played again.

Keys. An operator holds an Ed25519 private key (`failoverctl keygen NAME` writes NAME.key, mode 600);
gateways hold only public keys, one `NAME ed25519 BASE64` line each in `control.mqtt.keys_file`
(BASE64: the 32 raw bytes of the public key). A stolen gateway therefore yields nothing that signs.
HMAC keys (`NAME HEXSECRET`) are no longer accepted: a shared secret on every gateway let any one
of them forge commands for all (see the README, "Migrating from HMAC keys").

Signature. The sender adds `key` (the key's name), `issued` (its wall clock, seconds), `dest` and
`sig`: the Ed25519 signature, in standard base64, of the request's canonical JSON without `sig`
(keys sorted, no spaces, UTF-8).

Destination. `dest` is signed with the rest and names where the command was sent:
`{"prefix": P, "site": S}` for one gateway, `{"prefix": P, "fleet": true}` for every gateway on
the fleet topic, optionally with `"sites": [...]` to reach only those. Without it a command captured
on one site's topic could be replayed, byte for byte, on another site's or the fleet's topic, where
that key's last `issued` is older, and act there too. A gateway accepts only a `dest` that names its
own prefix and, on its own topic, its own site, or, on the fleet topic, the fleet.

A gateway accepts a command only if the signature holds, its destination is this gateway, and
- its `issued` is later than that of the last command it accepted under the same key: a replay, or
  a command overtaken by a newer one, is refused whatever the clocks say; and
- while the gateway's clock is trusted, `issued` lies within `max_age` of it, so that a command
  held back and delivered late cannot act. When the clock checker distrusts signed commands (the
  clock is INSANE or SUSPECT and the policy says so), that window cannot be judged: the order alone
  protects, and the reply says so. Refusing every command then would lock operators out just when a
  time fault is the emergency.

Nothing here reads a clock, and only the `load_*`/`write_keypair` functions touch files: callers
pass the time and the last-issued table in, so the rules are tested without either.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

KEY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")  # also a file name for keygen
ALGORITHM = "ed25519"
MIGRATION = 'an HMAC key: no longer accepted; see "Migrating from HMAC keys" in the README'
FLEET = "fleet"  # the topic level of commands for every gateway: no site may take this name


class KeyFileError(Exception):
    """A keys file or private key file that is missing, unreadable, too open, or malformed."""


MAX_ISSUED = 2.0**40  # s: about the year 36812; anything later is not a wall clock


def canonical(request: Mapping[str, Any]) -> bytes:
    """The bytes a signature covers: the request without `sig`, as sorted compact JSON."""
    body = {k: v for k, v in request.items() if k != "sig"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def site_dest(prefix: str, site: str) -> dict[str, Any]:
    """The `dest` of a command for one gateway."""
    return {"prefix": prefix.rstrip("/"), "site": site}


def fleet_dest(prefix: str, sites: Sequence[str] | None = None) -> dict[str, Any]:
    """The `dest` of a command for the fleet, or for only `sites` of it."""
    out: dict[str, Any] = {"prefix": prefix.rstrip("/"), "fleet": True}
    if sites is not None:  # an empty list reaches no gateway, as the gateways read it, never all of them
        out["sites"] = list(sites)
    return out


def sign(
    request: Mapping[str, Any], key: str, private: Ed25519PrivateKey, issued: float, dest: Mapping[str, Any]
) -> dict[str, Any]:
    """The request with `key`, `issued`, `dest` and `sig` added."""
    out = {k: v for k, v in request.items() if k != "sig"}
    out["key"] = key
    out["issued"] = round(issued, 6)
    out["dest"] = dict(dest)
    out["sig"] = base64.b64encode(private.sign(canonical(out))).decode()
    return out


@dataclass(frozen=True, slots=True)
class Here:
    """Where a request arrived: the gateway's topic prefix and site, and whether on the fleet topic."""

    prefix: str
    site: str
    fleet_topic: bool


def for_others(request: Mapping[str, Any], here: Here) -> bool:
    """A fleet command whose `dest.sites` leaves this gateway out: not answered at all.

    Judged before the signature: staying silent on a request not addressed to us cannot make the
    gateway act, and it spares every gateway from answering what was meant for a few."""
    dest = request.get("dest")
    if not here.fleet_topic or not isinstance(dest, dict) or dest.get("fleet") is not True:
        return False
    sites = dest.get("sites")
    return isinstance(sites, list) and all(isinstance(s, str) for s in sites) and here.site not in sites


def misdirected(dest: Any, here: Here) -> str:
    """Why a signed `dest` does not name this gateway on the topic the request came in on ("" if it does)."""
    if dest is None:
        return "no dest: a signed command must name its destination (failoverctl too old?)"
    if not isinstance(dest, dict):
        return "dest must be an object"
    unknown = sorted(set(dest) - {"prefix", "site", "fleet", "sites"})
    if unknown:
        return f"dest has unknown fields: {', '.join(unknown)}"
    prefix = dest.get("prefix")
    if prefix != here.prefix:
        return f"signed for topic prefix {prefix!r}, not this gateway's {here.prefix!r}"
    fleet, site = dest.get("fleet"), dest.get("site")
    if (fleet is True) == (site is not None) or fleet not in (True, None):
        return 'dest names either "site" or "fleet": true'
    if site is not None:
        if not isinstance(site, str):
            return "dest.site must be a site name"
        if site != here.site:
            return f'signed for site "{site}", not this one ("{here.site}")'
        if "sites" in dest:
            return "dest.sites goes with fleet, not with a site"
        if here.fleet_topic:
            return f'signed for site "{site}" but sent on the fleet topic'
        return ""
    sites = dest.get("sites")
    if sites is not None and (not isinstance(sites, list) or not all(isinstance(s, str) for s in sites)):
        return "dest.sites must be a list of site names"
    if not here.fleet_topic:
        return f'signed for the fleet but sent on site "{here.site}"\'s own topic'
    if sites is not None and here.site not in sites:
        return f'signed for sites {", ".join(sites)}, not this one ("{here.site}")'
    return ""


@dataclass(frozen=True, slots=True)
class Verdict:
    ok: bool
    reason: str  # why refused; or, when accepted, a note for the reply ("" if none)
    key: str = ""  # the key whose signature held: set when accepted, and when refused after the check
    issued: float = 0.0


def verify(
    request: Mapping[str, Any],
    keys: Mapping[str, Ed25519PublicKey],
    last_issued: Mapping[str, float],
    *,
    here: Here,
    wall: float,
    max_age: float,
    clock_trusted: bool,
) -> Verdict:
    """Judge a signed request. `last_issued` is, per key, the `issued` of the last command accepted."""
    if not keys:
        return Verdict(False, "this gateway has no command keys (control.mqtt.keys_file): remote commands are off")
    key, issued, sig = request.get("key"), request.get("issued"), request.get("sig")
    if not isinstance(key, str) or not isinstance(sig, str) or sig == "":
        return Verdict(False, "unsigned: a remote command needs key, issued, dest and sig")
    if not isinstance(issued, int | float) or isinstance(issued, bool) or not 0 < issued < MAX_ISSUED:
        # Finite and plausible: an `issued` of inf (JSON 1e400), accepted while the clock is not
        # trusted, would become the key's last and lock the key out for good.
        return Verdict(False, "issued must be the sender's wall-clock time in seconds (a Unix time)")
    public = keys.get(key)
    if public is None:
        return Verdict(False, f'unknown key "{key}"')
    try:
        raw = base64.b64decode(sig, validate=True)
        public.verify(raw, canonical(request))
    except (binascii.Error, ValueError, InvalidSignature):
        return Verdict(False, f'bad signature for key "{key}"')
    # The destination only now: before the signature holds, what it names proves nothing.
    wrong = misdirected(request.get("dest"), here)
    if wrong:
        return Verdict(False, f"not for this gateway: {wrong}", key)
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


# -- files ---------------------------------------------------------------------------------------------
def public_line(name: str, public: Ed25519PublicKey) -> str:
    """The keys_file line of a public key."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return f"{name} {ALGORITHM} {base64.b64encode(raw).decode()}"


def load_keys(path: Path) -> dict[str, Ed25519PublicKey]:
    """`NAME ed25519 BASE64` per line (the raw public key); `#` starts a comment.

    Public keys may be read by anyone, but whoever can write the file can command the gateway: it
    must not be writable by group or others."""
    try:
        # The checks and the read on one open file: what is judged is what is read.
        with path.open("rb") as f:
            st = os.fstat(f.fileno())
            text = f.read().decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyFileError(f"{path}: {getattr(exc, 'strerror', None) or exc}") from None
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise KeyFileError(f"{path}: writable by others (mode {stat.S_IMODE(st.st_mode):o}); chmod 644 it")
    if st.st_uid not in (0, os.geteuid()):
        raise KeyFileError(
            f"{path}: owned by uid {st.st_uid}, who could change it: the keys file must belong to root "
            "(or to failoverd's own user)"
        )
    keys: dict[str, Ed25519PublicKey] = {}
    seen: dict[bytes, str] = {}
    for n, raw_line in enumerate(text.splitlines(), 1):
        line = raw_line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) == 2 and re.fullmatch(r"[0-9a-fA-F]+", parts[1]):
            raise KeyFileError(f"{path}:{n}: {parts[0]} is {MIGRATION}")
        if len(parts) != 3:
            raise KeyFileError(f"{path}:{n}: expected NAME {ALGORITHM} PUBLIC-KEY (base64)")
        name, algorithm, encoded = parts
        if not KEY_NAME.fullmatch(name):
            raise KeyFileError(f"{path}:{n}: key name {name!r}: use letters, digits, '.', '_', '-' (at most 64)")
        if algorithm != ALGORITHM:
            raise KeyFileError(f"{path}:{n}: key {name}: algorithm {algorithm!r} is not supported (only {ALGORITHM})")
        try:
            raw = base64.b64decode(encoded, validate=True)
            public = Ed25519PublicKey.from_public_bytes(raw)
        except (binascii.Error, ValueError):
            raise KeyFileError(f"{path}:{n}: key {name}: not a base64 Ed25519 public key (32 bytes)") from None
        if name in keys:
            raise KeyFileError(f"{path}:{n}: key {name} appears twice")
        if raw in seen:
            raise KeyFileError(f"{path}:{n}: key {name} is the same public key as {seen[raw]}")
        keys[name] = public
        seen[raw] = name
    if not keys:
        raise KeyFileError(f"{path}: no keys")
    return keys


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """An operator's private key (PEM, PKCS8, unencrypted), refused if group or others may read it."""
    try:
        with path.open("rb") as f:
            st = os.fstat(f.fileno())
            data = f.read()
    except OSError as exc:
        raise KeyFileError(f"{path}: {exc.strerror or exc}") from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileError(
            f"{path}: the private key is open to group or others (mode {stat.S_IMODE(st.st_mode):o}); "
            "chmod 600 it (and consider it exposed)"
        )
    try:
        private = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise KeyFileError(f"{path}: not an unencrypted PEM private key: {exc}") from None
    if not isinstance(private, Ed25519PrivateKey):
        raise KeyFileError(f"{path}: not an Ed25519 key")
    return private


def write_keypair(name: str, out: Path) -> tuple[Path, Path]:
    """Write out/NAME.key (mode 600) and out/NAME.pub (the keys_file line); never overwrites."""
    if not KEY_NAME.fullmatch(name):
        raise KeyFileError(f"key name {name!r}: use letters, digits, '.', '_', '-' (at most 64)")
    private = Ed25519PrivateKey.generate()
    key_path, pub_path = out / f"{name}.key", out / f"{name}.pub"
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    for path in (key_path, pub_path):
        if path.exists():
            raise KeyFileError(f"{path}: exists; not overwritten")
    written: list[Path] = []
    try:
        for path, data, mode in (
            (key_path, pem, 0o600),
            (pub_path, (public_line(name, private.public_key()) + "\n").encode(), 0o644),
        ):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)  # never another's file
            written.append(path)
            with os.fdopen(fd, "wb") as f:
                os.fchmod(f.fileno(), mode)  # whatever the umask: a keys file must not be group-writable
                f.write(data)
    except OSError as exc:
        for path in written:  # no half a keypair left behind
            path.unlink(missing_ok=True)
        raise KeyFileError(f"{exc.filename or out}: {exc.strerror or exc}") from None
    return key_path, pub_path

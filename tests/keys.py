"""Operator keypairs for tests: a private key for failoverctl and the gateway's keys file that trusts it."""

from __future__ import annotations

from pathlib import Path

from failoverd.control.signing import write_keypair


def operator_keys(directory: Path, name: str) -> tuple[Path, Path]:
    """A new keypair `directory/NAME.key` (mode 600) and its line appended to `directory/keys` (mode 644),
    the gateway's keys file: call it again with another name for a second operator in the same file."""
    directory.mkdir(parents=True, exist_ok=True)
    key, pub = write_keypair(name, directory)
    keys_file = directory / "keys"
    with keys_file.open("a", encoding="utf-8") as f:
        f.write(pub.read_text(encoding="utf-8"))
    keys_file.chmod(0o644)  # public keys: readable by all, writable only by the owner
    return key, keys_file

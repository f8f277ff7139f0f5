"""Bearer API keys.

Keys come from two places: the ``USAGE_ENGINE_API_KEYS`` environment variable (comma-separated,
handy for containers) and ``api_keys.json`` in the store folder, which keeps only salted
SHA-256 hashes so that reading the folder does not reveal a key. :func:`create_api_key` adds one
(the CLI's ``api-keys create`` prints it once). The server re-reads the file when it changes, so
a key created while the server runs works at once.

Every comparison is constant-time (``hmac.compare_digest``) and runs over all known keys, so the
time taken does not say which key, or how much of one, matched.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import json
import logging
import os
import secrets
import tempfile
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

__all__ = ["API_KEYS_ENV", "API_KEYS_FILE", "ApiKeys", "create_api_key", "keys_from_env"]

API_KEYS_ENV = "USAGE_ENGINE_API_KEYS"
API_KEYS_FILE = "api_keys.json"
_KEY_PREFIX = "ue_"

log = logging.getLogger("engine.http")


def keys_from_env(environ: dict[str, str] | None = None) -> list[str]:
    """The keys in ``USAGE_ENGINE_API_KEYS`` (comma-separated; blanks ignored)."""
    raw = (os.environ if environ is None else environ).get(API_KEYS_ENV, "")
    return [key.strip() for key in raw.split(",") if key.strip()]


def _digest(salt: bytes, key: str) -> bytes:
    return hashlib.sha256(salt + key.encode("utf-8")).digest()


@dataclass(frozen=True)
class _Record:
    principal: str
    salt: bytes
    digest: bytes


class ApiKeys:
    """The keys a server accepts: fixed ones (arguments, environment) plus the store's file."""

    def __init__(self, keys: Iterable[str], *, file: Path | None) -> None:
        self._fixed = []
        for key in keys:
            salt = secrets.token_bytes(16)  # per-process salt: only the digest stays in memory
            principal = "env_" + hashlib.sha256(key.encode("utf-8")).hexdigest()[:12]
            self._fixed.append(_Record(principal, salt, _digest(salt, key)))
        self._file = file
        self._file_state: tuple[int, int] | None = None
        self._file_records: list[_Record] = []
        self._lock = threading.Lock()

    @property
    def configured(self) -> bool:
        """Whether any key could match (false: every request is refused)."""
        return bool(self._fixed or self._records_from_file())

    def authenticate(self, presented: str) -> str | None:
        """The principal (a stable id for rate limits and idempotency) of a valid key."""
        found = None
        for record in (*self._fixed, *self._records_from_file()):
            # No early exit: every record is compared, whichever matches.
            if hmac.compare_digest(_digest(record.salt, presented), record.digest):
                found = record.principal
        return found

    def _records_from_file(self) -> list[_Record]:
        if self._file is None:
            return []
        try:
            stat = self._file.stat()
        except FileNotFoundError:
            return []
        state = (stat.st_mtime_ns, stat.st_size)
        with self._lock:
            if state != self._file_state:
                self._file_records = [
                    _Record(
                        "key_" + str(entry["id"]),
                        bytes.fromhex(str(entry["salt"])),
                        bytes.fromhex(str(entry["sha256"])),
                    )
                    for entry in _read_entries(self._file)
                ]
                self._file_state = state
            return self._file_records


def _read_entries(path: Path) -> list[dict[str, Any]]:
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return []
    except ValueError:
        # Writes are atomic, so this is a hand edit gone wrong: refuse its keys, loudly.
        log.error("%s is not valid JSON; its keys are ignored until it is fixed", path)
        return []
    entries = document.get("keys", []) if isinstance(document, dict) else []
    return [entry for entry in entries if isinstance(entry, dict)]


@contextlib.contextmanager
def _exclusive(path: Path) -> Iterator[None]:
    """Serialize writers of ``path`` across processes (two `api-keys create` at once)."""
    with open(path.with_name(path.name + ".lock"), "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _write_atomically(path: Path, text: str) -> None:
    """Write a temp file beside ``path``, fsync it, then rename over: readers see the old file or
    the new one, never a torn one."""
    descriptor, temp_name = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as temp:
            temp.write(text)
            temp.flush()
            os.fsync(temp.fileno())
        os.chmod(temp_name, 0o600)  # hashes only, but nobody else needs to read them
        os.replace(temp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp_name)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # make the rename itself durable
    finally:
        os.close(directory)


def create_api_key(store_path: str | Path) -> str:
    """Create an API key for the store at ``store_path`` and return it.

    Only a salted SHA-256 hash is kept (in ``api_keys.json``), so show the key to its owner now:
    it cannot be recovered later.

    >>> key = create_api_key("data/store")  # doctest: +SKIP
    >>> key.startswith("ue_")  # doctest: +SKIP
    True
    """
    folder = Path(store_path)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / API_KEYS_FILE
    key = _KEY_PREFIX + secrets.token_urlsafe(32)
    salt = secrets.token_bytes(16)
    entry = {
        "id": secrets.token_hex(8),
        "prefix": key[:8],  # enough to tell keys apart in the file, useless to an attacker
        "salt": salt.hex(),
        "sha256": _digest(salt, key).hex(),
        "created_at": datetime.now(UTC).isoformat(),
    }
    with _exclusive(path):
        entries = _read_entries(path)
        entries.append(entry)
        _write_atomically(path, json.dumps({"keys": entries}, indent=2) + "\n")
    return key

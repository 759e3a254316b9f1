"""API keys: made, listed, revoked and checked, stored hashed in ``<auth-dir>/keys.json``.

A key is ``efk_<id>.<secret>``: the id names its record, the secret (256 random bits) is shown once
when the key is made and stored only as an argon2id hash. ``keys.json`` (mode 0600, in a 0700
directory) is shared by the daemons of a pod: each re-reads it when its modification time, size or
inode changed (one ``stat`` per check), so a key made or revoked through one daemon is seen by
the others at its next request. Writes hold an ``flock`` on ``keys.lock`` and replace the file
atomically (temporary file, fsync, rename, fsync of the directory).

Checking costs an argon2 verification (milliseconds) once per key and process; after that the key's
secret is remembered as the SHA-256 of a per-process random key and the secret, compared in constant
time, which costs microseconds. A re-read of ``keys.json`` forgets what it no longer holds, so a
revoked key fails at once.

Two key files are written beside it on first start with keys required (:func:`bootstrap`):
``admin.key``, the operator's first admin key, and ``pod.key``, the admin key the pod's daemons
use to call each other.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import hmac
import json
import os
import re
import secrets
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import structlog

if TYPE_CHECKING:
    from argon2 import PasswordHasher

log = structlog.get_logger(__name__)

__all__ = ["ADMIN_KEY_FILE", "KEY_PREFIX", "POD_KEY_FILE", "ApiKey", "KeyStore", "bootstrap", "write_private"]

KEY_PREFIX = "efk_"
KEYS_FILE = "keys.json"
ADMIN_KEY_FILE = "admin.key"
POD_KEY_FILE = "pod.key"
_LOCK_FILE = "keys.lock"
_TOKEN_RE = re.compile(r"^efk_([0-9a-f]{16})\.([A-Za-z0-9_-]{43})$")
_ID_RE = re.compile(r"^[0-9a-f]{16}$")
# OWASP's argon2id minimum (19 MiB, 2 passes): the secrets are random, so this guards a leaked
# keys.json against brute force without making the first check of each key slow.
@functools.cache
def _hasher() -> PasswordHasher:
    # argon2 is loaded on the first key created or checked, not with this module: every daemon
    # imports this module, and a pod that requires no keys never hashes one.
    from argon2 import PasswordHasher

    return PasswordHasher(time_cost=2, memory_cost=19 * 1024, parallelism=1)


@dataclass(frozen=True)
class ApiKey:
    """One key's record (never its secret). ``Account`` None with ``Admin``: acts for any account."""

    Id: str
    Account: str | None
    Admin: bool
    Description: str
    Created: str
    Hash: str

    def public(self) -> dict[str, Any]:
        """What the admin API shows of a key."""
        return {"Id": self.Id, "Account": self.Account, "Admin": self.Admin, "Description": self.Description,
                "Created": self.Created}


def parse_token(token: str) -> tuple[str, str] | None:
    """(id, secret) of a well-formed key, else None."""
    m = _TOKEN_RE.match(token)
    return (m.group(1), m.group(2)) if m else None


def write_private(path: Path, data: bytes) -> None:
    """Write ``path`` atomically and durably, mode 0600."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def private_dir(path: Path) -> Path:
    """``path`` made if missing, mode 0700."""
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


class KeyStore:
    """The keys of one auth directory; see the module docstring."""

    def __init__(self, auth_dir: str | os.PathLike[str]) -> None:
        self.dir = Path(auth_dir)
        self.path = self.dir / KEYS_FILE
        self._path = str(self.path)  # os.stat of a str: no pathlib on the per-request check
        self._keys: dict[str, ApiKey] = {}
        self._seen: tuple[int, int, int] | None = None
        self._mac_key = secrets.token_bytes(32)
        # key id -> (its stored hash, HMAC of its secret), once argon2 said yes
        self._verified: dict[str, tuple[str, bytes]] = {}

    # ---- reading ---------------------------------------------------------------------------------

    def _refresh(self) -> None:
        try:
            st = os.stat(self._path)
        except FileNotFoundError:
            if self._seen is not None or self._keys:
                self._keys, self._verified, self._seen = {}, {}, None
            return
        seen = (st.st_mtime_ns, st.st_size, st.st_ino)
        if seen == self._seen:
            return
        self._keys = self._read()
        self._seen = seen
        self._verified = {k: v for k, v in self._verified.items() if k in self._keys and self._keys[k].Hash == v[0]}

    def _read(self) -> dict[str, ApiKey]:
        try:
            raw = json.loads(self.path.read_bytes() or b"{}")
        except (OSError, ValueError) as exc:
            log.error("keys_unreadable", path=str(self.path), error=str(exc))
            return {}
        out = {}
        for item in raw.get("Keys", []):
            try:
                key = ApiKey(**item)
            except TypeError:
                continue
            out[key.Id] = key
        return out

    def keys(self) -> list[ApiKey]:
        self._refresh()
        return sorted(self._keys.values(), key=lambda k: (k.Created, k.Id))

    def get(self, key_id: str) -> ApiKey | None:
        self._refresh()
        return self._keys.get(key_id)

    # ---- checking --------------------------------------------------------------------------------

    def check_cached(self, token: str) -> ApiKey | None | bool:
        """The key of ``token`` when it was verified before; False when it is certainly not valid;
        None when it needs :meth:`verify` (an argon2 verification: run it off the event loop)."""
        parsed = parse_token(token)
        if parsed is None:
            return False
        key_id, secret = parsed
        self._refresh()
        key = self._keys.get(key_id)
        if key is None:
            return False
        verified = self._verified.get(key_id)
        if verified is None or verified[0] != key.Hash:
            return None
        return key if hmac.compare_digest(self._digest(secret), verified[1]) else False

    def _digest(self, secret: str) -> bytes:
        # SHA-256 of a per-process random key and the secret: what a verified secret is remembered as.
        return hashlib.sha256(self._mac_key + secret.encode()).digest()

    def verify(self, token: str) -> ApiKey | None:
        """The key of ``token``, or None; remembers a verified secret (see the module docstring)."""
        cached = self.check_cached(token)
        if cached is not None:
            return cached or None
        key_id, secret = parse_token(token)  # type: ignore[misc]  # check_cached parsed it
        key = self._keys.get(key_id)
        if key is None:
            return None
        from argon2.exceptions import InvalidHashError, VerificationError  # here, not at the top: see _hasher

        try:
            _hasher().verify(key.Hash, secret)
        except (VerificationError, InvalidHashError):
            return None
        self._verified[key_id] = (key.Hash, self._digest(secret))
        return key

    # ---- writing ---------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, ApiKey]]:
        private_dir(self.dir)
        fd = os.open(self.dir / _LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            keys = self._read() if self.path.exists() else {}
            yield keys
        finally:
            os.close(fd)

    def _write(self, keys: dict[str, ApiKey]) -> None:
        body = {"Keys": [asdict(k) for k in sorted(keys.values(), key=lambda k: (k.Created, k.Id))]}
        write_private(self.path, json.dumps(body, indent=1).encode())

    def create(self, account: str | None, admin: bool, description: str = "") -> tuple[ApiKey, str]:
        """A new key and its token (the only time the secret exists outside the caller's hands)."""
        key_id = secrets.token_hex(8)
        secret = secrets.token_urlsafe(32)
        key = ApiKey(Id=key_id, Account=account, Admin=admin, Description=description,
                     Created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), Hash=_hasher().hash(secret))
        with self._locked() as keys:
            keys[key_id] = key
            self._write(keys)
        self._seen = None
        log.info("api_key_created", key_id=key_id, account=account, admin=admin)
        return key, f"{KEY_PREFIX}{key_id}.{secret}"

    def revoke(self, key_id: str) -> bool:
        if not _ID_RE.match(key_id):
            return False
        with self._locked() as keys:
            if keys.pop(key_id, None) is None:
                return False
            self._write(keys)
        self._seen = None
        self._verified.pop(key_id, None)
        log.info("api_key_revoked", key_id=key_id)
        return True


def _read_token(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def bootstrap(store: KeyStore) -> str:
    """Make sure the pod has its keys; returns the pod's own token (for calls between daemons).

    ``admin.key`` is written once, on the first start with keys required (deleting the file makes
    a new one at the next start); ``pod.key`` is made again whenever its key is gone.
    """
    private_dir(store.dir)
    fd = os.open(store.dir / (_LOCK_FILE + ".boot"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        admin_path = store.dir / ADMIN_KEY_FILE
        if not admin_path.exists():
            _, token = store.create(None, True, "first admin key, made at the pod's first start")
            write_private(admin_path, token.encode() + b"\n")
            log.warning("admin_key_written", path=str(admin_path),
                        detail="an admin API key; use it as Authorization: Bearer <key>")
        pod_path = store.dir / POD_KEY_FILE
        token = _read_token(pod_path)
        if not token or store.verify(token) is None:
            _, token = store.create(None, True, "the pod's daemons calling each other")
            write_private(pod_path, token.encode() + b"\n")
        return token
    finally:
        os.close(fd)


class PodCredentials:
    """The ``Authorization`` header of the pod's own key, for calls a daemon makes to another one;
    empty while there is no ``pod.key`` (keys are off). Re-read when the file changes."""

    def __init__(self, auth_dir: str | os.PathLike[str]) -> None:
        self.path = Path(auth_dir) / POD_KEY_FILE
        self._seen: tuple[int, int, int] | None = None
        self._headers: dict[str, str] = {}

    def headers(self) -> dict[str, str]:
        try:
            st = os.stat(self.path)
        except OSError:
            self._seen, self._headers = None, {}
            return self._headers
        seen = (st.st_mtime_ns, st.st_size, st.st_ino)
        if seen != self._seen:
            token = _read_token(self.path)
            self._headers = {"Authorization": f"Bearer {token}"} if token else {}
            self._seen = seen
        return self._headers

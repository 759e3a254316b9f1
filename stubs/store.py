"""The stubs function store: function records and code zips on the local filesystem.

Layout under ``root``::

    <account-hash>/<name>/versions/<version>/meta.json   FunctionRecord JSON ($LATEST, 1, 2, ...)
    <account-hash>/<name>/code/<sha256-hex>.zip           code, content-addressed, shared by versions

Crash safety: every file is written to a temporary name in its directory, fsynced, renamed into
place and the directory fsynced. A version's zip is in place before its meta.json, so a reader that
finds a meta.json finds its code. Deleting renames the directory to a ``.trash-`` name first, so a
half-deleted function is never visible. Temporary files, trash and zips no record refers to are
removed at startup (and zips after every change of a function).

The root and everything below it are root-only: directories 0700, files 0600.

Writers of one function are serialized with :meth:`FunctionStore.lock`; readers take no lock.
Blocking file I/O runs in a worker thread.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import errno
import json
import os
import re
import shutil
import uuid
import weakref
from pathlib import Path

import structlog

from easyfaas.brn import LATEST, valid_function_name
from easyfaas.errors import ServiceError
from easyfaas.models import REPOSITORY_FILESYSTEM, FunctionRecord, ModelError

log = structlog.get_logger(__name__)

META_FILE = "meta.json"
EVENT_INVOKE_CONFIG_FILE = "event-invoke-config.json"
TMP_PREFIX = ".tmp-"
TRASH_PREFIX = ".trash-"
_ACCOUNT_DIR_RE = re.compile(r"^[0-9a-z]{32}$")
_VERSION_DIR_RE = re.compile(r"^(\$LATEST|[1-9][0-9]*)$")
_ZIP_RE = re.compile(r"^([0-9a-f]{64})\.zip$")


class StoreError(Exception):
    """The store's files are not what they should be (a corrupt meta.json, say)."""


def code_sha256_hex(code_sha256_b64: str) -> str:
    """The hex form of a record's CodeSha256 (base64), which names its zip in the store."""
    try:
        digest = base64.b64decode(code_sha256_b64, validate=True)
    except (binascii.Error, ValueError):
        raise StoreError(f"CodeSha256 {code_sha256_b64!r} is not base64") from None
    if len(digest) != 32:
        raise StoreError(f"CodeSha256 {code_sha256_b64!r} is not a SHA-256 digest")
    return digest.hex()


def version_sort_key(version: str) -> tuple[int, int]:
    """$LATEST first, then numeric versions in ascending order."""
    return (0, 0) if version == LATEST else (1, int(version))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic_write(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data``: readers see the old content or the new one, never a part."""
    tmp = path.parent / f"{TMP_PREFIX}{path.name}.{uuid.uuid4().hex}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, mode)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fchmod(fd, mode)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(path.parent)


def _mkdirs(path: Path, root: Path) -> None:
    """mkdir -p below ``root``, fsyncing each parent that got a new entry."""
    root.mkdir(parents=True, exist_ok=True)
    missing = []
    p = path
    while p != root and not p.is_dir():
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        try:
            d.mkdir(mode=0o700)
        except FileExistsError:
            continue
        _fsync_dir(d.parent)


def _remove_tree(path: Path) -> None:
    """Make ``path`` disappear at once (rename to trash), then delete it."""
    trash = path.parent / f"{TRASH_PREFIX}{path.name}.{uuid.uuid4().hex}"
    os.rename(path, trash)
    _fsync_dir(path.parent)
    shutil.rmtree(trash, ignore_errors=True)


class FunctionStore:
    """Function records by (account hash, name, version), and their code zips."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).absolute()
        self._locks: weakref.WeakValueDictionary[tuple[str, str], asyncio.Lock] = weakref.WeakValueDictionary()

    # ---- paths ---------------------------------------------------------------------------------

    def function_dir(self, account: str, name: str) -> Path:
        if not _ACCOUNT_DIR_RE.match(account) or not valid_function_name(name):
            raise ValueError(f"invalid store key {account!r}/{name!r}")
        return self.root / account / name

    def _meta_path(self, account: str, name: str, version: str) -> Path:
        if not _VERSION_DIR_RE.match(version):
            raise ValueError(f"invalid version {version!r}")
        return self.function_dir(account, name) / "versions" / version / META_FILE

    def code_path(self, account: str, name: str, sha256_hex: str) -> Path:
        if not re.fullmatch(r"[0-9a-f]{64}", sha256_hex):
            raise ValueError(f"invalid code digest {sha256_hex!r}")
        return self.function_dir(account, name) / "code" / f"{sha256_hex}.zip"

    # ---- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Create the root and remove what an interrupted writer left behind."""
        await asyncio.to_thread(self._start_sync)

    def _start_sync(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        # Root only: the records hold every function's environment, the zips its code. Directories
        # an older version made 0755 are tightened too.
        os.chmod(self.root, 0o700)
        removed = 0
        for account_dir in list(self.root.iterdir()):
            removed += self._remove_leftover(account_dir)
            if not _ACCOUNT_DIR_RE.match(account_dir.name) or not account_dir.is_dir():
                continue
            for function_dir in list(account_dir.iterdir()):
                removed += self._remove_leftover(function_dir)
                if valid_function_name(function_dir.name) and function_dir.is_dir():
                    removed += self._clean_function_dir(function_dir)
        log.info("store_started", root=str(self.root), removed_leftovers=removed)

    @staticmethod
    def _remove_leftover(entry: Path) -> int:
        """Delete ``entry`` if it is a temporary file or trash; 1 if it was."""
        if entry.name.startswith((TMP_PREFIX, TRASH_PREFIX)):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            return 1
        return 0

    def _clean_function_dir(self, function_dir: Path) -> int:
        removed = 0
        for sub in ("versions", "code"):
            d = function_dir / sub
            if not d.is_dir():
                continue
            for entry in list(d.iterdir()):
                removed += self._remove_leftover(entry)
        versions = function_dir / "versions"
        if versions.is_dir():
            for vdir in list(versions.iterdir()):
                if vdir.is_dir():
                    for entry in list(vdir.iterdir()):
                        removed += self._remove_leftover(entry)
                    if not (vdir / META_FILE).exists():
                        shutil.rmtree(vdir, ignore_errors=True)
                        removed += 1
        removed += self._collect_code(function_dir)
        if not any((versions.iterdir() if versions.is_dir() else [])):
            # Nothing but (now collected) code: a create that never got its meta.json written.
            shutil.rmtree(function_dir, ignore_errors=True)
        return removed

    # ---- locking -------------------------------------------------------------------------------

    def lock(self, account: str, name: str) -> asyncio.Lock:
        """The lock every writer of this function holds across its read-modify-write."""
        key = (account, name)
        lock = self._locks.get(key)
        if lock is None:
            lock = asyncio.Lock()
            self._locks[key] = lock
        return lock

    # ---- reads ---------------------------------------------------------------------------------

    async def read(self, account: str, name: str, version: str) -> FunctionRecord | None:
        return await asyncio.to_thread(self._read_sync, account, name, version)

    def _read_sync(self, account: str, name: str, version: str) -> FunctionRecord | None:
        path = self._meta_path(account, name, version)
        try:
            raw = path.read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return None
        try:
            record = FunctionRecord.from_dict(json.loads(raw))
            sha_hex = code_sha256_hex(record.Configuration.CodeSha256)
        except (ValueError, ModelError, StoreError) as exc:
            raise StoreError(f"corrupt function record {path}: {exc}") from None
        # Location is derived, not trusted from disk: the store may have moved since it was written.
        record.Code.Location = str(self.code_path(account, name, sha_hex))
        record.Code.RepositoryType = REPOSITORY_FILESYSTEM
        return record

    async def versions(self, account: str, name: str) -> list[str]:
        """The function's versions that have a record, $LATEST first, then ascending numbers."""
        return await asyncio.to_thread(self._versions_sync, account, name)

    def _versions_sync(self, account: str, name: str) -> list[str]:
        versions_dir = self.function_dir(account, name) / "versions"
        try:
            names = os.listdir(versions_dir)
        except (FileNotFoundError, NotADirectoryError):
            return []
        found = [v for v in names if _VERSION_DIR_RE.match(v) and (versions_dir / v / META_FILE).is_file()]
        return sorted(found, key=version_sort_key)

    async def functions(self, account: str) -> list[str]:
        """Names of the account's functions that have a $LATEST record, sorted."""
        return await asyncio.to_thread(self._functions_sync, account)

    def _functions_sync(self, account: str) -> list[str]:
        if not _ACCOUNT_DIR_RE.match(account):
            raise ValueError(f"invalid account {account!r}")
        try:
            names = os.listdir(self.root / account)
        except (FileNotFoundError, NotADirectoryError):
            return []
        return sorted(
            n for n in names if valid_function_name(n) and (self.root / account / n / "versions" / LATEST / META_FILE).is_file()
        )

    async def read_code(self, account: str, name: str, sha256_hex: str) -> bytes | None:
        return await asyncio.to_thread(self._read_code_sync, account, name, sha256_hex)

    def _read_code_sync(self, account: str, name: str, sha256_hex: str) -> bytes | None:
        try:
            return self.code_path(account, name, sha256_hex).read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return None

    # ---- writes (caller holds lock(account, name)) ---------------------------------------------

    async def write(self, account: str, name: str, version: str, record: FunctionRecord, code: bytes | None) -> FunctionRecord:
        """Store ``record`` as ``version``; ``code`` is its zip, or None when the zip is already stored.

        Returns the record as a reader will see it (with its Code.Location).
        """
        try:
            return await asyncio.to_thread(self._write_sync, account, name, version, record, code)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise ServiceError(f"the function store has no room left ({os.strerror(exc.errno)}); "
                                   f"nothing was written") from None
            raise

    def _write_sync(self, account: str, name: str, version: str, record: FunctionRecord, code: bytes | None) -> FunctionRecord:
        sha_hex = code_sha256_hex(record.Configuration.CodeSha256)
        zip_path = self.code_path(account, name, sha_hex)
        meta_path = self._meta_path(account, name, version)
        _mkdirs(zip_path.parent, self.root)
        _mkdirs(meta_path.parent, self.root)
        if not zip_path.is_file():
            if code is None:
                raise StoreError(f"code {sha_hex} of {account}/{name} is not stored")
            _atomic_write(zip_path, code)
        record.Code.Location = str(zip_path)
        record.Code.RepositoryType = REPOSITORY_FILESYSTEM
        try:
            _atomic_write(meta_path, json.dumps(record.to_dict(), ensure_ascii=False, indent=1).encode())
        except BaseException:
            # Best effort: leave no zip or empty directory nobody refers to (startup cleans up otherwise).
            try:
                self._discard_unused(account, name, meta_path.parent)
            except OSError:
                pass
            raise
        self._collect_code(self.function_dir(account, name))
        return record

    def _discard_unused(self, account: str, name: str, version_dir: Path) -> None:
        if version_dir.is_dir() and not (version_dir / META_FILE).exists():
            shutil.rmtree(version_dir, ignore_errors=True)
        function_dir = self.function_dir(account, name)
        self._collect_code(function_dir)
        versions = function_dir / "versions"
        if not versions.is_dir() or not any(versions.iterdir()):
            shutil.rmtree(function_dir, ignore_errors=True)

    async def delete_function(self, account: str, name: str) -> bool:
        return await asyncio.to_thread(self._delete_function_sync, account, name)

    def _delete_function_sync(self, account: str, name: str) -> bool:
        path = self.function_dir(account, name)
        try:
            _remove_tree(path)
        except (FileNotFoundError, NotADirectoryError):
            return False
        return True

    # ---- event invoke configuration (a file of the function: it goes when the function goes) -----

    async def read_event_invoke_config(self, account: str, name: str) -> bytes | None:
        return await asyncio.to_thread(self._read_event_invoke_config_sync, account, name)

    def _read_event_invoke_config_sync(self, account: str, name: str) -> bytes | None:
        try:
            return (self.function_dir(account, name) / EVENT_INVOKE_CONFIG_FILE).read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return None

    async def write_event_invoke_config(self, account: str, name: str, data: bytes) -> None:
        """Atomically replace the function's event invoke config (the function must exist)."""
        await asyncio.to_thread(_atomic_write, self.function_dir(account, name) / EVENT_INVOKE_CONFIG_FILE, data)

    async def delete_event_invoke_config(self, account: str, name: str) -> bool:
        return await asyncio.to_thread(self._delete_event_invoke_config_sync, account, name)

    def _delete_event_invoke_config_sync(self, account: str, name: str) -> bool:
        path = self.function_dir(account, name) / EVENT_INVOKE_CONFIG_FILE
        try:
            path.unlink()
        except (FileNotFoundError, NotADirectoryError):
            return False
        _fsync_dir(path.parent)
        return True

    async def delete_version(self, account: str, name: str, version: str) -> bool:
        return await asyncio.to_thread(self._delete_version_sync, account, name, version)

    def _delete_version_sync(self, account: str, name: str, version: str) -> bool:
        version_dir = self._meta_path(account, name, version).parent
        try:
            _remove_tree(version_dir)
        except (FileNotFoundError, NotADirectoryError):
            return False
        self._collect_code(self.function_dir(account, name))
        return True

    async def collect_code(self, account: str, name: str) -> int:
        """Remove the function's zips that no version refers to any more; how many were removed."""
        return await asyncio.to_thread(self._collect_code, self.function_dir(account, name))

    def _collect_code(self, function_dir: Path) -> int:
        code_dir = function_dir / "code"
        try:
            zips = os.listdir(code_dir)
        except (FileNotFoundError, NotADirectoryError):
            return 0
        used: set[str] = set()
        versions_dir = function_dir / "versions"
        try:
            version_names = os.listdir(versions_dir)
        except (FileNotFoundError, NotADirectoryError):
            version_names = []
        for v in version_names:
            if not _VERSION_DIR_RE.match(v):
                continue  # temporary files and trash
            try:
                data = json.loads((versions_dir / v / META_FILE).read_bytes())
                used.add(code_sha256_hex(data["Configuration"]["CodeSha256"]))
            except FileNotFoundError:
                continue
            except (OSError, ValueError, KeyError, TypeError, StoreError):
                # An unreadable record might still refer to anything: keep every zip.
                log.warning("store_record_unreadable", path=str(versions_dir / v))
                return 0
        removed = 0
        for z in zips:
            m = _ZIP_RE.match(z)
            if m and m.group(1) not in used:
                try:
                    (code_dir / z).unlink()
                    removed += 1
                except FileNotFoundError:
                    pass
        return removed

"""Validation and safe extraction of function code archives (zip).

Stubs call :func:`inspect_zip` on every upload; the funclet calls :func:`extract_zip` to unpack code
into a fresh directory. Both enforce the same rules, so what stubs accepted the funclet can unpack:

* at most ``max_size`` bytes of zip, ``max_uncompressed`` bytes of content, ``max_entries`` entries;
  content sizes are checked against the headers *and* counted while decompressing, so an archive
  lying about its sizes cannot inflate past the limits; CRCs are verified;
* only stored and deflated entries (other methods decompress without an output bound), no encryption;
* names are relative, UTF-8, without ``..`` components, backslashes or NUL; no duplicates; no entry
  that is both a file and a directory; no symlinks or other special files;
* ``__MACOSX/`` entries, ``.DS_Store`` files and directory entries are ignored as junk; an archive
  with no files left is rejected.

Stdlib only. :class:`CodeArchiveError` messages are meant for the user who uploaded the archive.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import io
import os
import shutil
import stat
import zipfile
import zlib
from dataclasses import dataclass, field

MAX_SIZE = 50 * 1024 * 1024
MAX_UNCOMPRESSED = 250 * 1024 * 1024
MAX_ENTRIES = 10000

_CHUNK = 64 * 1024
_NAME_MAX = 255
_PATH_MAX = 4096
_UTF8_FLAG = 0x800
_ENCRYPTED_FLAG = 0x1
_JUNK_DIRS = ("__MACOSX",)
_JUNK_FILES = (".DS_Store",)


class CodeArchiveError(ValueError):
    """The archive is unacceptable; the message says why, in words meant for the uploader."""


@dataclass
class CodeArchive:
    sha256_b64: str  # the original's CodeSha256
    sha256_hex: str
    size: int  # bytes of zip
    uncompressed_size: int  # bytes of file content, as counted while decompressing
    files: list[str] = field(default_factory=list)  # normalized relative paths, archive order


@dataclass
class _Entry:
    info: zipfile.ZipInfo
    parts: tuple[str, ...]
    is_dir: bool
    executable: bool

    @property
    def name(self) -> str:
        return "/".join(self.parts)


def _entry_name(info: zipfile.ZipInfo) -> str:
    """The entry's real name: UTF-8, recovered from zipfile's cp437 decoding when the flag is unset."""
    name = info.orig_filename
    if info.flag_bits & _UTF8_FLAG or name.isascii():
        return name
    # zipfile decoded the raw bytes as cp437; many tools write UTF-8 without setting the flag, so
    # accept the name when its bytes are valid UTF-8, and refuse real cp437 names.
    raw = name.encode("cp437")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise CodeArchiveError(f"entry name {raw!r} is not valid UTF-8") from None


def _split_name(name: str) -> tuple[tuple[str, ...], bool]:
    """(path components, is a directory entry) of a name, or CodeArchiveError if unsafe."""
    if "\x00" in name:
        raise CodeArchiveError(f"entry name {name!r} contains a NUL byte")
    if "\\" in name:
        raise CodeArchiveError(f"entry name {name!r} contains a backslash")
    if name.startswith("/"):
        raise CodeArchiveError(f"entry name {name!r} is an absolute path")
    raw_parts = name.split("/")
    if ".." in raw_parts:
        raise CodeArchiveError(f"entry name {name!r} contains a '..' component")
    parts = tuple(p for p in raw_parts if p not in ("", "."))
    if len(name.encode()) > _PATH_MAX or any(len(p.encode()) > _NAME_MAX for p in parts):
        raise CodeArchiveError(f"entry name {name[:64]!r}... is too long")
    return parts, name.endswith("/")


def _is_junk(parts: tuple[str, ...]) -> bool:
    return bool(parts) and (parts[0] in _JUNK_DIRS or parts[-1] in _JUNK_FILES)


def _open_zip(data: bytes, max_size: int) -> zipfile.ZipFile:
    if len(data) > max_size:
        raise CodeArchiveError(f"the code archive is {len(data)} bytes, more than the limit of {max_size} bytes")
    try:
        return zipfile.ZipFile(io.BytesIO(data))
    except UnicodeDecodeError:
        raise CodeArchiveError("an entry name is marked UTF-8 but is not valid UTF-8") from None
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError, OSError) as exc:
        raise CodeArchiveError(f"the code is not a valid zip archive ({exc})") from None


def _scan(zf: zipfile.ZipFile, max_uncompressed: int, max_entries: int) -> list[_Entry]:
    infos = zf.infolist()
    if len(infos) > max_entries:
        raise CodeArchiveError(f"the archive has {len(infos)} entries, more than the limit of {max_entries}")
    entries: list[_Entry] = []
    files: set[tuple[str, ...]] = set()
    dirs: set[tuple[str, ...]] = set()
    declared = 0
    for info in infos:
        name = _entry_name(info)
        parts, is_dir = _split_name(name)
        if _is_junk(parts):
            continue
        mode = info.external_attr >> 16
        kind = stat.S_IFMT(mode)
        if kind == stat.S_IFLNK:
            raise CodeArchiveError(f"entry {name!r} is a symbolic link; links are not allowed")
        if kind == stat.S_IFDIR:
            is_dir = True
        elif kind not in (0, stat.S_IFREG):
            raise CodeArchiveError(f"entry {name!r} is a special file; only files and directories are allowed")
        if not parts:
            if is_dir:
                continue  # "./" and the like
            raise CodeArchiveError(f"entry name {name!r} is empty")
        if info.flag_bits & _ENCRYPTED_FLAG:
            raise CodeArchiveError(f"entry {name!r} is encrypted; encrypted archives are not supported")
        if is_dir:
            if parts in files:
                raise CodeArchiveError(f"entry {name!r} is both a file and a directory")
            if parts not in dirs:
                dirs.add(parts)
                entries.append(_Entry(info, parts, True, False))
            continue
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise CodeArchiveError(
                f"entry {name!r} uses compression method {info.compress_type}; only stored and deflate are supported"
            )
        if parts in files:
            raise CodeArchiveError(f"duplicate entry {name!r}")
        if parts in dirs:
            raise CodeArchiveError(f"entry {name!r} is both a file and a directory")
        for i in range(1, len(parts)):
            if parts[:i] in files:
                raise CodeArchiveError(f"entry {name!r} is inside {'/'.join(parts[:i])!r}, which is a file")
            dirs.add(parts[:i])
        files.add(parts)
        declared += info.file_size
        if declared > max_uncompressed:
            raise CodeArchiveError(f"the archive expands to more than the limit of {max_uncompressed} bytes")
        entries.append(_Entry(info, parts, False, bool(mode & 0o111)))
    if not files:
        raise CodeArchiveError("the archive contains no files")
    return entries


def _copy_entry(zf: zipfile.ZipFile, entry: _Entry, sink_fd: int | None, budget: int) -> int:
    """Decompress one file entry (CRC-checked by zipfile), optionally into ``sink_fd``; bytes read."""
    count = 0
    try:
        with zf.open(entry.info) as src:
            while True:
                chunk = src.read(_CHUNK)
                if not chunk:
                    break
                count += len(chunk)
                if count > entry.info.file_size:
                    raise CodeArchiveError(f"entry {entry.name!r} is larger than its header says")
                if count > budget:
                    raise CodeArchiveError("the archive expands to more than the size limit")
                if sink_fd is not None:
                    view = memoryview(chunk)
                    while view:
                        view = view[os.write(sink_fd, view) :]
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError) as exc:
        raise CodeArchiveError(f"entry {entry.name!r} is corrupt ({exc})") from None
    if count != entry.info.file_size:
        raise CodeArchiveError(f"entry {entry.name!r} is shorter than its header says")
    return count


def _digest(data: bytes) -> tuple[str, str]:
    digest = hashlib.sha256(data).digest()
    return base64.b64encode(digest).decode(), digest.hex()


def inspect_zip(
    data: bytes,
    *,
    max_size: int = MAX_SIZE,
    max_uncompressed: int = MAX_UNCOMPRESSED,
    max_entries: int = MAX_ENTRIES,
) -> CodeArchive:
    """Check an archive completely (including every CRC) without writing anything."""
    with _open_zip(data, max_size) as zf:
        entries = _scan(zf, max_uncompressed, max_entries)
        total = 0
        for entry in entries:
            if not entry.is_dir:
                total += _copy_entry(zf, entry, None, max_uncompressed - total)
    b64, hexdigest = _digest(data)
    return CodeArchive(b64, hexdigest, len(data), total, [e.name for e in entries if not e.is_dir])


class _DirFds:
    """Open directory fds under the extraction root, created on demand without following links."""

    def __init__(self, root_fd: int) -> None:
        self._fds: dict[tuple[str, ...], int] = {(): root_fd}

    def get(self, parts: tuple[str, ...]) -> int:
        fd = self._fds.get(parts)
        if fd is not None:
            return fd
        parent = self.get(parts[:-1])
        try:
            os.mkdir(parts[-1], 0o755, dir_fd=parent)
        except FileExistsError:
            pass
        fd = os.open(parts[-1], os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
        os.fchmod(fd, 0o755)  # exact mode, whatever the umask
        self._fds[parts] = fd
        return fd

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()


def extract_zip(
    data: bytes,
    dest_dir: str | os.PathLike[str],
    *,
    max_size: int = MAX_SIZE,
    max_uncompressed: int = MAX_UNCOMPRESSED,
    max_entries: int = MAX_ENTRIES,
) -> CodeArchive:
    """Check and unpack an archive into the existing, empty directory ``dest_dir``.

    Files are 0755 when the zip records any execute bit, else 0644; directories 0755. Nothing is
    created through or as a symlink. On any error, whatever was extracted is removed again.
    """
    dest = os.fspath(dest_dir)
    with _open_zip(data, max_size) as zf:
        entries = _scan(zf, max_uncompressed, max_entries)
        root_fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        if os.listdir(root_fd):
            os.close(root_fd)
            raise OSError(errno.ENOTEMPTY, "extraction directory is not empty", dest)
        dirs = _DirFds(root_fd)
        total = 0
        try:
            for entry in entries:
                if entry.is_dir:
                    dirs.get(entry.parts)
                    continue
                mode = 0o755 if entry.executable else 0o644
                parent = dirs.get(entry.parts[:-1])
                flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
                fd = os.open(entry.parts[-1], flags, mode, dir_fd=parent)
                try:
                    os.fchmod(fd, mode)
                    total += _copy_entry(zf, entry, fd, max_uncompressed - total)
                finally:
                    os.close(fd)
        except BaseException:
            for child in os.listdir(dest):
                path = os.path.join(dest, child)
                if os.path.isdir(path) and not os.path.islink(path):
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    os.unlink(path)
            raise
        finally:
            dirs.close()
    b64, hexdigest = _digest(data)
    return CodeArchive(b64, hexdigest, len(data), total, [e.name for e in entries if not e.is_dir])

"""Code archive checks and safe extraction (easyfaas/codezip.py), including hostile archives."""

from __future__ import annotations

import base64
import hashlib
import io
import os
import stat
import struct
import warnings
import zipfile
from pathlib import Path

import pytest

from easyfaas.codezip import CodeArchiveError, extract_zip, inspect_zip

FILE = 0o100000


def build(entries: list[tuple[str, bytes, int]], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    """A zip of (name, content, unix mode) entries, names written exactly as given."""
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # duplicate names are the point of some tests
        with zipfile.ZipFile(buf, "w") as zf:
            for name, content, mode in entries:
                info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
                info.compress_type = method
                info.external_attr = mode << 16
                zf.writestr(info, content)
    return buf.getvalue()


def patch_name(data: bytes, old: bytes, new: bytes) -> bytes:
    """Rewrite an entry name in place (local header and central directory), same length."""
    assert len(old) == len(new) and data.count(old) == 2
    return data.replace(old, new)


def set_flag_bits(data: bytes, flags: int) -> bytes:
    out = bytearray(data)
    local = out.find(b"PK\x03\x04")
    central = out.find(b"PK\x01\x02")
    struct.pack_into("<H", out, local + 6, flags)
    struct.pack_into("<H", out, central + 8, flags)
    return bytes(out)


def lie_about_size(data: bytes, size: int) -> bytes:
    """Make the first entry's headers claim ``size`` uncompressed bytes."""
    out = bytearray(data)
    struct.pack_into("<I", out, out.find(b"PK\x03\x04") + 22, size)
    struct.pack_into("<I", out, out.find(b"PK\x01\x02") + 24, size)
    return bytes(out)


HELLO = build([("index.js", b"exports.handler = () => 'hi';\n", FILE | 0o644)])


def test_inspect_good_archive() -> None:
    data = build(
        [
            ("index.js", b"a" * 1000, FILE | 0o644),
            ("lib/", b"", stat.S_IFDIR | 0o755),
            ("lib/util.js", b"b" * 10, FILE | 0o644),
            ("./bin/run", b"#!/bin/sh\n", FILE | 0o755),
        ]
    )
    archive = inspect_zip(data)
    digest = hashlib.sha256(data).digest()
    assert archive.sha256_b64 == base64.b64encode(digest).decode()
    assert archive.sha256_hex == digest.hex()
    assert archive.size == len(data)
    assert archive.uncompressed_size == 1000 + 10 + 10
    assert archive.files == ["index.js", "lib/util.js", "bin/run"]


def test_junk_is_ignored() -> None:
    data = build(
        [
            ("index.js", b"x", FILE | 0o644),
            ("__MACOSX/", b"", stat.S_IFDIR | 0o755),
            ("__MACOSX/._index.js", b"\x00\x05\x16\x07", FILE | 0o644),
            (".DS_Store", b"\x00\x00", FILE | 0o644),
            ("lib/.DS_Store", b"\x00\x00", FILE | 0o644),
        ]
    )
    assert inspect_zip(data).files == ["index.js"]


@pytest.mark.parametrize(
    "entries, reason",
    [
        ([("../evil.js", b"x", FILE | 0o644)], "'..' component"),
        ([("lib/../../evil.js", b"x", FILE | 0o644)], "'..' component"),
        ([("/etc/cron.d/evil", b"x", FILE | 0o644)], "absolute path"),
        ([("lib\\..\\evil.js", b"x", FILE | 0o644)], "backslash"),
        ([("index.js", b"x", FILE | 0o644), ("link", b"/etc/passwd", stat.S_IFLNK | 0o777)], "symbolic link"),
        ([("fifo", b"", stat.S_IFIFO | 0o644)], "special file"),
        ([("index.js", b"x", FILE | 0o644), ("index.js", b"y", FILE | 0o644)], "duplicate entry"),
        ([("index.js", b"x", FILE | 0o644), ("./index.js", b"y", FILE | 0o644)], "duplicate entry"),
        ([("a", b"x", FILE | 0o644), ("a/b", b"y", FILE | 0o644)], "which is a file"),
        ([("a/b", b"x", FILE | 0o644), ("a", b"y", FILE | 0o644)], "both a file and a directory"),
        ([("lib/", b"", stat.S_IFDIR | 0o755)], "no files"),
        ([("__MACOSX/._x", b"x", FILE | 0o644), (".DS_Store", b"x", FILE | 0o644)], "no files"),
    ],
)
def test_hostile_or_useless_archives(entries: list[tuple[str, bytes, int]], reason: str) -> None:
    with pytest.raises(CodeArchiveError, match=reason):
        inspect_zip(build(entries))


def test_empty_zip() -> None:
    buf = io.BytesIO()
    zipfile.ZipFile(buf, "w").close()
    with pytest.raises(CodeArchiveError, match="no files"):
        inspect_zip(buf.getvalue())


@pytest.mark.parametrize("data", [b"", b"not a zip at all", b"PK\x03\x04" + b"\x00" * 40, HELLO[: len(HELLO) // 2]])
def test_not_a_zip(data: bytes) -> None:
    with pytest.raises(CodeArchiveError, match="not a valid zip"):
        inspect_zip(data)


def test_corrupt_content_fails_the_crc() -> None:
    data = bytearray(build([("index.js", b"A" * 5000, FILE | 0o644)], method=zipfile.ZIP_STORED))
    data[data.find(b"AAAA") + 100] = ord("B")
    with pytest.raises(CodeArchiveError, match="corrupt"):
        inspect_zip(bytes(data))


def test_bomb_with_lying_header_sizes() -> None:
    # 4 MiB of zeros deflate to a few KiB; the headers claim 1000 bytes, under every limit.
    data = lie_about_size(build([("bomb.bin", b"\x00" * (4 << 20), FILE | 0o644)]), 1000)
    assert len(data) < 10_000
    with pytest.raises(CodeArchiveError, match="corrupt|larger than its header"):
        inspect_zip(data, max_uncompressed=1 << 20)


def test_header_shorter_than_claimed() -> None:
    data = lie_about_size(build([("x.bin", b"\x00" * 100, FILE | 0o644)], method=zipfile.ZIP_DEFLATED), 5000)
    with pytest.raises(CodeArchiveError):
        inspect_zip(data)


def test_size_limits() -> None:
    honest = build([("a.bin", b"\x00" * (2 << 20), FILE | 0o644)])
    with pytest.raises(CodeArchiveError, match="expands to more than"):
        inspect_zip(honest, max_uncompressed=1 << 20)
    assert inspect_zip(honest, max_uncompressed=2 << 20).uncompressed_size == 2 << 20
    with pytest.raises(CodeArchiveError, match="more than the limit of 100 bytes"):
        inspect_zip(HELLO, max_size=100)
    many = build([(f"f{i}.js", b"", FILE | 0o644) for i in range(11)])
    with pytest.raises(CodeArchiveError, match="11 entries"):
        inspect_zip(many, max_entries=10)


def test_unsupported_compression_and_encryption() -> None:
    with pytest.raises(CodeArchiveError, match="compression method"):
        inspect_zip(build([("a.js", b"x" * 100, FILE | 0o644)], method=zipfile.ZIP_BZIP2))
    with pytest.raises(CodeArchiveError, match="encrypted"):
        inspect_zip(set_flag_bits(HELLO, 0x1))


def test_names_must_be_utf8() -> None:
    # No UTF-8 flag, bytes that are not UTF-8 (cp437 "é"): refused.
    cp437 = patch_name(build([("cafX.js", b"x", FILE | 0o644)]), b"cafX.js", b"caf\x82.js")
    with pytest.raises(CodeArchiveError, match="not valid UTF-8"):
        inspect_zip(cp437)
    # No flag, but the bytes are UTF-8 (what many zip tools write): accepted as UTF-8.
    unflagged = patch_name(build([("cafXX.js", b"x", FILE | 0o644)]), b"cafXX.js", "café.js".encode())
    assert inspect_zip(unflagged).files == ["café.js"]
    # Flag set, bytes not UTF-8: refused.
    flagged = patch_name(build([("café.js", b"x", FILE | 0o644)]), "café.js".encode(), b"caf\xff\xfe.js")
    with pytest.raises(CodeArchiveError, match="not valid UTF-8"):
        inspect_zip(flagged)
    assert inspect_zip(build([("日本.js", b"x", FILE | 0o644)])).files == ["日本.js"]


def test_nul_in_name() -> None:
    data = patch_name(build([("evilX.js", b"x", FILE | 0o644)]), b"evilX.js", b"evil\x00.js")
    with pytest.raises(CodeArchiveError, match="NUL"):
        inspect_zip(data)


# ---- extraction ----------------------------------------------------------------------------------


def test_extract_layout_and_modes(tmp_path: Path) -> None:
    dest = tmp_path / "code"
    dest.mkdir()
    data = build(
        [
            ("index.js", b"js", FILE | 0o600),
            ("bin/run", b"#!/bin/sh\necho hi\n", FILE | 0o700),
            ("empty/", b"", stat.S_IFDIR | 0o700),
            ("deep/er/file.txt", b"t", FILE | 0o666),
            ("__MACOSX/._index.js", b"junk", FILE | 0o644),
        ]
    )
    old_umask = os.umask(0o077)  # modes must not depend on the umask
    try:
        archive = extract_zip(data, dest)
    finally:
        os.umask(old_umask)
    assert archive.files == ["index.js", "bin/run", "deep/er/file.txt"]
    assert (dest / "index.js").read_bytes() == b"js"
    assert stat.S_IMODE((dest / "index.js").stat().st_mode) == 0o644
    assert stat.S_IMODE((dest / "bin/run").stat().st_mode) == 0o755
    assert stat.S_IMODE((dest / "deep/er/file.txt").stat().st_mode) == 0o644
    for d in ("bin", "empty", "deep", "deep/er"):
        assert stat.S_IMODE((dest / d).stat().st_mode) == 0o755
    assert not (dest / "__MACOSX").exists()
    assert sorted(os.listdir(dest)) == ["bin", "deep", "empty", "index.js"]


def test_extract_windows_zip_without_unix_modes(tmp_path: Path) -> None:
    data = build([("index.js", b"x", 0)])
    extract_zip(data, tmp_path)
    assert stat.S_IMODE((tmp_path / "index.js").stat().st_mode) == 0o644


def test_extract_refuses_hostile_archive_and_writes_nothing(tmp_path: Path) -> None:
    outside = tmp_path / "evil.js"
    dest = tmp_path / "code"
    dest.mkdir()
    data = build([("index.js", b"x", FILE | 0o644), ("../evil.js", b"pwned", FILE | 0o644)])
    with pytest.raises(CodeArchiveError):
        extract_zip(data, dest)
    assert not outside.exists() and os.listdir(dest) == []


def test_extract_cleans_up_when_a_later_entry_is_corrupt(tmp_path: Path) -> None:
    data = bytearray(
        build(
            [("a/first.js", b"fine", FILE | 0o644), ("b/second.js", b"Z" * 4000, FILE | 0o644)],
            method=zipfile.ZIP_STORED,
        )
    )
    data[data.find(b"ZZZZ") + 10] = ord("Y")
    with pytest.raises(CodeArchiveError, match="corrupt"):
        extract_zip(bytes(data), tmp_path)
    assert os.listdir(tmp_path) == []


def test_extract_needs_an_empty_real_directory(tmp_path: Path) -> None:
    (tmp_path / "existing").write_text("x")
    with pytest.raises(OSError):
        extract_zip(HELLO, tmp_path)
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "link"
    link.symlink_to(real)
    with pytest.raises(OSError):
        extract_zip(HELLO, link)  # never follows a symlink, not even for the destination
    assert os.listdir(real) == []

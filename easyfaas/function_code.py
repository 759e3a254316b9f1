"""Functions as a client of a pod sends them: code zips built in memory (base64 for the
``ZipFile`` of a create) and the BRN of a function in an account. The end-to-end tests and the
benchmarks deploy and invoke their functions with these. Stdlib only.
"""

from __future__ import annotations

import base64
import io
import zipfile

from easyfaas.brn import account_hash

# The account the stubs use when a request names none (stubs.app.DEFAULT_ACCOUNT_ID).
ACCOUNT = "df391b08c64c426a81645468c75163a5"


def make_zip(files: dict[str, str | bytes], executable: tuple[str, ...] = ()) -> bytes:
    """A zip of ``files`` (name: content); the names in ``executable`` get mode 0755, others 0644."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, content in files.items():
            info = zipfile.ZipInfo(name)
            mode = 0o755 if name in executable else 0o644
            info.external_attr = (0o100000 | mode) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, content)
    return buf.getvalue()


def b64zip(files: dict[str, str | bytes], executable: tuple[str, ...] = ()) -> str:
    """:func:`make_zip` in base64, as a create or update carries it."""
    return base64.b64encode(make_zip(files, executable)).decode()


def brn(name: str, qualifier: str, account: str = ACCOUNT) -> str:
    """The BRN of function ``name`` at ``qualifier`` owned by the raw account id ``account``."""
    return f"brn:cloud:faas:bj:{account_hash(account)}:function:{name}:{qualifier}"

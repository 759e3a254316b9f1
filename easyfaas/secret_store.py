"""Functions' secrets, encrypted at rest: ``<auth-dir>/secrets/<account>/<function>.sealed``.

Apart from the function's configuration (``funcData``), each function's secrets are one file
(mode 0600, in 0700 directories) holding a Fernet token (AES-128-CBC with HMAC-SHA-256, from
``cryptography``) of their JSON object. The key is ``<auth-dir>/secrets.key`` (mode 0600), made on
first use. Stubs writes them (``PUT /v1/functions/<name>/secrets``); the controller reads them when
it warms a sandbox and hands them to the funclet in the warmup request. No API returns a value.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cryptography.fernet import Fernet

from easyfaas.errors import InvalidParameterValue, ServiceError
from easyfaas.keys import private_dir, write_private

__all__ = ["MAX_SECRET_BYTES", "SECRET_NAME_RE", "SecretStore"]

SECRET_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
MAX_SECRET_BYTES = 64 * 1024
MAX_SECRETS = 64
KEY_FILE = "secrets.key"
_SEGMENT_RE = re.compile(r"^[A-Za-z0-9_.$:-]{1,200}$")


class SecretStore:
    def __init__(self, auth_dir: str | os.PathLike[str]) -> None:
        self.auth_dir = Path(auth_dir)
        self.root = self.auth_dir / "secrets"
        self._fernet: Fernet | None = None

    def _cipher(self) -> Fernet:
        if self._fernet is None:
            # Imported here, not at the top: cryptography costs every control-plane process about
            # 7 MiB of resident memory, and only a pod whose functions have secrets needs it.
            from cryptography.fernet import Fernet

            private_dir(self.auth_dir)
            path = self.auth_dir / KEY_FILE
            fd = os.open(self.auth_dir / (KEY_FILE + ".lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                if not path.exists():
                    write_private(path, Fernet.generate_key())
                self._fernet = Fernet(path.read_bytes().strip())
            finally:
                os.close(fd)
        return self._fernet

    def _path(self, account: str, function: str) -> Path:
        if not _SEGMENT_RE.match(account) or not _SEGMENT_RE.match(function) or function.startswith("."):
            raise InvalidParameterValue("invalid account or function name")
        return self.root / account / f"{function}.sealed"

    def read(self, account: str, function: str) -> dict[str, str]:
        """The function's secrets (name → value); {} when it has none."""
        path = self._path(account, function)
        try:
            sealed = path.read_bytes()
        except FileNotFoundError:
            return {}
        from cryptography.fernet import InvalidToken  # here, not at the top: see _cipher

        try:
            values = json.loads(self._cipher().decrypt(sealed))
        except (InvalidToken, ValueError):
            raise ServiceError(f"the secrets of function {function} cannot be decrypted with the pod's key") from None
        return {str(k): str(v) for k, v in values.items()}

    def names(self, account: str, function: str) -> list[str]:
        return sorted(self.read(account, function))

    def _write(self, account: str, function: str, values: dict[str, str]) -> None:
        path = self._path(account, function)
        if not values:
            path.unlink(missing_ok=True)
            return
        private_dir(self.root)
        private_dir(path.parent)
        write_private(path, self._cipher().encrypt(json.dumps(values).encode()))

    def put(self, account: str, function: str, values: object) -> list[str]:
        """Add or replace secrets; returns every name the function now has."""
        if not isinstance(values, dict) or not values:
            raise InvalidParameterValue('the body must be a JSON object {"NAME": "value", ...}')
        for name, value in values.items():
            if not SECRET_NAME_RE.match(name):
                raise InvalidParameterValue(f"invalid secret name {name[:130]!r}: letters, digits and _, not "
                                            f"starting with a digit, at most 128")
            if not isinstance(value, str):
                raise InvalidParameterValue(f"secret {name}: the value must be a string")
            if len(value.encode()) > MAX_SECRET_BYTES:
                raise InvalidParameterValue(f"secret {name}: the value is longer than {MAX_SECRET_BYTES} bytes")
        current = self.read(account, function)
        current.update(values)
        if len(current) > MAX_SECRETS:
            raise InvalidParameterValue(f"a function may have at most {MAX_SECRETS} secrets")
        self._write(account, function, current)
        return sorted(current)

    def delete(self, account: str, function: str, name: str) -> bool:
        current = self.read(account, function)
        if current.pop(name, None) is None:
            return False
        self._write(account, function, current)
        return True

    def forget(self, account: str, function: str) -> None:
        """Remove all of a function's secrets (the function was deleted)."""
        self._path(account, function).unlink(missing_ok=True)

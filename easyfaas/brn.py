"""BRN (the original's resource names) for functions, and the account hash they embed.

Format, kept byte-for-byte from the Go original:
``brn:<partition>:faas:<region>:<md5hex(uid + "cloud-cfc-2017")>:function:<name>[:<qualifier>]``.
A qualifier is a *version* (``$LATEST`` or digits) or else an *alias*.

Besides full BRNs, callers name functions by partial references; :func:`resolve_function_ref` is
the one parser of function references, for every service (stubs' routes, the controller's invoke
route), with the grammar of the original's ``pkg/brn``::

    ref     = brn | [account ":"] name [":" qualifier]
    account = [0-9a-z]{32}               (a hashed account; partial refs default to the caller's)
    name    = [a-zA-Z0-9_-]{1,64}
    qualifier = "$LATEST" | [a-zA-Z0-9_-]{1,128}

``x:y`` is ``account:name`` only when ``x`` is the caller's own account hash and ``y`` a name, else
``name:qualifier``.
What a service does with the result (a default qualifier, refusing aliases) is its own policy.
Stdlib only.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from dataclasses import dataclass

ACCOUNT_SALT = "cloud-cfc-2017"
LATEST = "$LATEST"
DEFAULT_REGION = "bj"
DEFAULT_PARTITION = "cloud"
SERVICE = "faas"
RESOURCE_TYPE = "function"

# \Z, not $: a $ would also match before a trailing newline ("f\n" is no function name).
_VERSION_RE = re.compile(r"^(\$LATEST|[0-9]+)\Z")
_FUNCTION_NAME_RE = re.compile(r"^[a-zA-Z0-9_-]{1,64}\Z")
_ACCOUNT_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}\Z")
_ACCOUNT_HASH_RE = re.compile(r"^[0-9a-z]{32}\Z")
_QUALIFIER_RE = re.compile(r"^(\$LATEST|[a-zA-Z0-9_-]{1,128})\Z")
_PARTITION_RE = re.compile(r"^cloud[a-zA-Z-]*\Z")
_REGION_RE = re.compile(r"^[a-z]{2,5}[0-9]*\Z")


class BrnError(ValueError):
    """A function reference or BRN is malformed; the message says what is wrong with it."""


def account_hash(uid: str) -> str:
    """The account part of a BRN for the raw account id ``uid``."""
    return hashlib.md5((uid + ACCOUNT_SALT).encode()).hexdigest()


def is_version(qualifier: str | None) -> bool:
    """True for ``$LATEST`` and numeric versions; False for aliases and None."""
    return qualifier is not None and bool(_VERSION_RE.match(qualifier))


def valid_function_name(name: str) -> bool:
    return isinstance(name, str) and bool(_FUNCTION_NAME_RE.match(name))


def valid_account_id(uid: str) -> bool:
    """A raw (unhashed) account id as sent in X-easyfaas-Account-Id."""
    return isinstance(uid, str) and bool(_ACCOUNT_ID_RE.match(uid))


def valid_qualifier(qualifier: str) -> bool:
    return isinstance(qualifier, str) and bool(_QUALIFIER_RE.match(qualifier))


@dataclass(frozen=True)
class Brn:
    """A function BRN. Every instance is valid: the constructor checks each part."""

    account: str
    name: str
    qualifier: str | None = None
    region: str = DEFAULT_REGION
    partition: str = DEFAULT_PARTITION
    service: str = SERVICE

    def __post_init__(self) -> None:
        # Names and accounts become directory names in the stubs store: an invalid Brn must not exist.
        if not isinstance(self.account, str) or not _ACCOUNT_HASH_RE.match(self.account):
            raise BrnError(f"invalid account {self.account!r}: expected 32 characters [0-9a-z]")
        if not valid_function_name(self.name):
            raise BrnError(f"invalid function name {self.name!r}: expected 1-64 characters [a-zA-Z0-9_-]")
        if self.qualifier is not None and not valid_qualifier(self.qualifier):
            raise BrnError(
                f"invalid qualifier {self.qualifier!r}: expected $LATEST, a version number or an alias"
                " of 1-128 characters [a-zA-Z0-9_-]"
            )
        if not isinstance(self.region, str) or not _REGION_RE.match(self.region):
            raise BrnError(f"invalid region {self.region!r}")
        if not isinstance(self.partition, str) or not _PARTITION_RE.match(self.partition):
            raise BrnError(f"invalid partition {self.partition!r}")
        if self.service != SERVICE:
            raise BrnError(f"invalid service {self.service!r}: expected {SERVICE!r}")

    @classmethod
    def for_account(cls, uid: str, name: str, qualifier: str | None = None) -> Brn:
        """The BRN of function ``name`` owned by the raw account id ``uid``."""
        return cls(account_hash(uid), name, qualifier)

    @classmethod
    def parse(cls, text: str) -> Brn:
        if not isinstance(text, str):
            raise BrnError("a BRN must be a string")
        parts = text.split(":")
        if parts[0] != "brn":
            raise BrnError(f"invalid BRN {text!r}: must start with 'brn:'")
        if len(parts) not in (7, 8):
            raise BrnError(
                f"invalid BRN {text!r}: expected brn:<partition>:faas:<region>:<account>:function:<name>[:<qualifier>]"
            )
        _, partition, service, region, account, resource_type, name, *rest = parts
        if resource_type != RESOURCE_TYPE:
            raise BrnError(f"invalid BRN {text!r}: resource type must be {RESOURCE_TYPE!r}")
        try:
            return cls(account, name, rest[0] if rest else None, region, partition, service)
        except BrnError as exc:
            raise BrnError(f"invalid BRN {text!r}: {exc}") from None

    def __str__(self) -> str:
        text = (
            f"brn:{self.partition}:{self.service}:{self.region}:{self.account}:"
            f"{RESOURCE_TYPE}:{self.name}"
        )
        return f"{text}:{self.qualifier}" if self.qualifier is not None else text

    def unqualified(self) -> Brn:
        return dataclasses.replace(self, qualifier=None)

    def with_qualifier(self, qualifier: str | None) -> Brn:
        return dataclasses.replace(self, qualifier=qualifier)

    @property
    def is_versioned(self) -> bool:
        """True when the qualifier names a version (``$LATEST`` or a number), not an alias."""
        return is_version(self.qualifier)


def resolve_function_ref(ref: str, account_uid: str, qualifier: str | None = None) -> Brn:
    """Turn what a caller wrote into a BRN (the grammar is in this module's docstring).

    ``ref`` is a full BRN, ``name``, ``name:qualifier`` or ``<account-hash>:name[:qualifier]``;
    partial references resolve in the account of ``account_uid`` (a raw account id). A two-part
    reference is ``<account-hash>:name`` only when its first part is the caller's own account hash,
    as in the original. ``qualifier`` (e.g. from a ``?Qualifier=`` query) fills a missing qualifier;
    two different qualifiers are an error. The result's qualifier is None when neither gave one.
    """
    if not isinstance(ref, str) or not ref:
        raise BrnError("the function name is empty")
    if qualifier is not None and not valid_qualifier(qualifier):
        raise BrnError(f"invalid qualifier {qualifier!r}: expected $LATEST, a version number or an alias")
    if ref.startswith("brn:"):
        brn = Brn.parse(ref)
    else:
        own_account = account_hash(account_uid)
        parts = ref.split(":")
        try:
            if len(parts) == 1:
                brn = Brn(own_account, parts[0])
            elif len(parts) == 2 and parts[0] == own_account and valid_function_name(parts[1]):
                brn = Brn(own_account, parts[1])
            elif len(parts) == 2:
                brn = Brn(own_account, parts[0], parts[1])
            elif len(parts) == 3:
                brn = Brn(parts[0], parts[1], parts[2])
            else:
                raise BrnError("too many ':'-separated parts")
        except BrnError as exc:
            raise BrnError(
                f"invalid function reference {ref!r} ({exc}); expected a BRN, name, name:qualifier"
                " or account:name[:qualifier]"
            ) from None
    if qualifier is not None:
        if brn.qualifier is None:
            brn = brn.with_qualifier(qualifier)
        elif brn.qualifier != qualifier:
            raise BrnError(
                f"conflicting qualifiers: {brn.qualifier!r} in {ref!r} and {qualifier!r} given separately"
            )
    return brn


def function_of(text: str) -> tuple[str, str]:
    """(the unqualified BRN, the function name) of ``text``, a BRN with or without its qualifier.

    Unlike :meth:`Brn.parse` it checks only the shape (``brn:`` and 7 or 8 parts), not each part:
    the controller's pool keys functions by whatever BRN text it was given. Text of another shape is
    returned as both."""
    parts = text.split(":")
    if parts[0] == "brn" and len(parts) in (7, 8):
        return ":".join(parts[:7]), parts[6]
    return text, text

"""BRN format, account hash and function-reference resolution (easyfaas/brn.py)."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from easyfaas.brn import (
    LATEST,
    Brn,
    BrnError,
    account_hash,
    is_version,
    resolve_function_ref,
    valid_account_id,
    valid_function_name,
)

UID = "df391b08c64c426a81645468c75163a5"
HASH = "8f6e5a28c663957ea04522547a66d08f"
OTHER_HASH = "0123456789abcdef0123456789abcdef"


def test_account_hash_matches_the_original() -> None:
    assert account_hash(UID) == HASH


def test_str_is_the_original_format() -> None:
    assert str(Brn(HASH, "testHelloWorld", "1")) == f"brn:cloud:faas:bj:{HASH}:function:testHelloWorld:1"
    assert str(Brn(HASH, "f")) == f"brn:cloud:faas:bj:{HASH}:function:f"
    assert str(Brn.for_account(UID, "f", LATEST)) == f"brn:cloud:faas:bj:{HASH}:function:f:$LATEST"


def test_parse_round_trip_and_parts() -> None:
    text = f"brn:cloud:faas:bj:{HASH}:function:testHelloWorld:$LATEST"
    brn = Brn.parse(text)
    assert (brn.account, brn.name, brn.qualifier, brn.region, brn.partition) == (
        HASH, "testHelloWorld", LATEST, "bj", "cloud"
    )
    assert str(brn) == text
    assert Brn.parse(f"brn:cloud-cn:faas:gz1:{HASH}:function:a-b_c").qualifier is None


def test_unqualified_and_with_qualifier() -> None:
    brn = Brn(HASH, "f", "3")
    assert brn.unqualified() == Brn(HASH, "f")
    assert brn.with_qualifier(LATEST).qualifier == LATEST
    assert brn.qualifier == "3"  # frozen: the original is unchanged
    assert brn.is_versioned and not Brn(HASH, "f", "prod").is_versioned


@pytest.mark.parametrize(
    "text, reason",
    [
        (f"arn:cloud:faas:bj:{HASH}:function:f", "must start with 'brn:'"),
        (f"brn:cloud:faas:bj:{HASH}:function", "expected brn:"),
        (f"brn:cloud:faas:bj:{HASH}:function:f:1:extra", "expected brn:"),
        (f"brn:cloud:faas:bj:{HASH}:layer:f", "resource type"),
        (f"brn:bce:faas:bj:{HASH}:function:f", "partition"),
        (f"brn:cloud:cfc:bj:{HASH}:function:f", "service"),
        (f"brn:cloud:faas:BJ:{HASH}:function:f", "region"),
        ("brn:cloud:faas:bj:cd64f99c69d7c404b61de0a4f186583:function:f", "account"),
        (f"brn:cloud:faas:bj:{HASH.upper()}:function:f", "account"),
        (f"brn:cloud:faas:bj:{HASH}:function:" + "x" * 65, "function name"),
        (f"brn:cloud:faas:bj:{HASH}:function:a.b", "function name"),
        (f"brn:cloud:faas:bj:{HASH}:function:f:", "qualifier"),
        (f"brn:cloud:faas:bj:{HASH}:function:f:$latest", "qualifier"),
    ],
)
def test_parse_rejects_with_reason(text: str, reason: str) -> None:
    with pytest.raises(BrnError, match=reason):
        Brn.parse(text)


def test_constructor_validates() -> None:
    with pytest.raises(BrnError, match="account"):
        Brn("acct", "f")
    with pytest.raises(BrnError, match="function name"):
        Brn(HASH, "../etc")


def test_predicates() -> None:
    assert is_version(LATEST) and is_version("1") and is_version("42")
    assert not is_version("prod") and not is_version("$latest") and not is_version(None) and not is_version("")
    assert valid_function_name("a" * 64) and not valid_function_name("a" * 65) and not valid_function_name("")
    assert valid_function_name("my-func_1") and not valid_function_name("my.func")
    assert valid_account_id(UID) and valid_account_id("user_1-x") and not valid_account_id("a b")
    assert not valid_account_id("") and not valid_account_id("x" * 65)


@pytest.mark.parametrize(
    "ref, qualifier, expected",
    [
        ("f", None, Brn(HASH, "f")),
        ("f", "2", Brn(HASH, "f", "2")),
        ("f:1", None, Brn(HASH, "f", "1")),
        ("f:1", "1", Brn(HASH, "f", "1")),
        ("f:prod", None, Brn(HASH, "f", "prod")),
        (f"{HASH}:f", None, Brn(HASH, "f")),
        (f"{HASH}:f", LATEST, Brn(HASH, "f", LATEST)),
        (f"{HASH}:f:$LATEST", None, Brn(HASH, "f", LATEST)),
        (f"{OTHER_HASH}:f:1", None, Brn(OTHER_HASH, "f", "1")),
        (f"brn:cloud:faas:bj:{OTHER_HASH}:function:g", "3", Brn(OTHER_HASH, "g", "3")),
    ],
)
def test_resolve_forms(ref: str, qualifier: str | None, expected: Brn) -> None:
    assert resolve_function_ref(ref, UID, qualifier) == expected


@pytest.mark.parametrize(
    "ref, qualifier, reason",
    [
        ("f:1", "2", "conflicting qualifiers"),
        (f"brn:cloud:faas:bj:{HASH}:function:f:1", LATEST, "conflicting qualifiers"),
        ("", None, "empty"),
        ("a:b:c:d", None, "invalid function reference"),
        ("f", "bad qualifier", "invalid qualifier"),
        ("not a name", None, "invalid function reference"),
        ("nothex:f:1", None, "invalid function reference"),
    ],
)
def test_resolve_errors(ref: str, qualifier: str | None, reason: str) -> None:
    with pytest.raises(BrnError, match=reason):
        resolve_function_ref(ref, UID, qualifier)


def test_two_part_ref_is_name_qualifier_unless_it_starts_with_the_callers_account() -> None:
    # As in the original: only the caller's own account hash makes "<x>:<y>" an account:name pair.
    assert resolve_function_ref(f"{OTHER_HASH}:f", UID) == Brn(HASH, OTHER_HASH, "f")


names = st.from_regex(r"\A[a-zA-Z0-9_-]{1,64}\Z")
qualifiers = st.none() | st.just(LATEST) | st.from_regex(r"\A[a-zA-Z0-9_-]{1,20}\Z")


@given(account=st.from_regex(r"\A[0-9a-z]{32}\Z"), name=names, qualifier=qualifiers)
def test_str_parse_round_trip(account: str, name: str, qualifier: str | None) -> None:
    brn = Brn(account, name, qualifier)
    assert Brn.parse(str(brn)) == brn
    assert resolve_function_ref(str(brn), UID) == brn


# ---- the one function-reference grammar, property-tested ------------------------------------------
# The original's partial-name grammar (pkg/brn), written independently of easyfaas/brn.py: every
# string it (or the full-BRN grammar) accepts resolves, and nothing else does.

_PARTIAL_RE = re.compile(r"\A([0-9a-z]{32}:)?([a-zA-Z0-9_-]{1,64})(:(\$LATEST|[a-zA-Z0-9_-]{1,128}))?\Z")
_FULL_RE = re.compile(r"\Abrn:cloud[a-zA-Z-]*:faas:[a-z]{2,5}[0-9]*:[0-9a-z]{32}:function:[a-zA-Z0-9_-]{1,64}"
                      r"(:(\$LATEST|[a-zA-Z0-9_-]{1,128}))?\Z")

accounts = st.from_regex(r"\A[0-9a-z]{32}\Z")
full_qualifiers = st.just(LATEST) | st.from_regex(r"\A[a-zA-Z0-9_-]{1,128}\Z")
# Texts near the grammar: its own characters, the separators and a few that must never pass.
near = st.lists(st.sampled_from(list("abz09AZ_-:$") + ["$LATEST", HASH, HASH + ":", "\n", " ", ".", "/", "é",
                                                     "\x00", "brn:cloud:faas:bj:", f"{HASH}:function:"]),
                max_size=8).map("".join)


@given(text=near | st.text(max_size=30))
def test_accepts_exactly_the_grammar(text: str) -> None:
    expected = bool(_FULL_RE.match(text)) if text.startswith("brn:") else bool(_PARTIAL_RE.match(text))
    try:
        resolve_function_ref(text, UID)
    except BrnError:
        accepted = False
    else:
        accepted = True
    assert accepted == expected, text


@given(name=names, qualifier=full_qualifiers, other=accounts)
def test_every_partial_form_resolves_to_its_parts(name: str, qualifier: str, other: str) -> None:
    own = Brn(HASH, name)
    assert resolve_function_ref(name, UID) == own
    assert resolve_function_ref(name, UID, qualifier) == own.with_qualifier(qualifier)
    assert resolve_function_ref(f"{name}:{qualifier}", UID) == own.with_qualifier(qualifier)
    assert resolve_function_ref(f"{name}:{qualifier}", UID, qualifier) == own.with_qualifier(qualifier)
    assert resolve_function_ref(f"{HASH}:{name}", UID) == own
    assert resolve_function_ref(f"{HASH}:{name}:{qualifier}", UID) == own.with_qualifier(qualifier)
    assert resolve_function_ref(f"{other}:{name}:{qualifier}", UID) == Brn(other, name, qualifier)


@given(account=accounts, name=names, qualifier=st.none() | full_qualifiers,
       region=st.from_regex(r"\A[a-z]{2,5}[0-9]{0,2}\Z"), partition=st.from_regex(r"\Acloud[a-zA-Z-]{0,5}\Z"))
def test_full_brn_round_trips(account: str, name: str, qualifier: str | None, region: str, partition: str) -> None:
    brn = Brn(account, name, qualifier, region, partition)
    assert Brn.parse(str(brn)) == brn
    assert resolve_function_ref(str(brn), "any-caller") == brn  # a full BRN ignores the caller's account
    if qualifier is None:
        assert resolve_function_ref(str(brn), UID, LATEST) == brn.with_qualifier(LATEST)


@given(name=names, first=full_qualifiers, second=full_qualifiers)
def test_two_qualifiers_must_agree(name: str, first: str, second: str) -> None:
    if first == second:
        assert resolve_function_ref(f"{name}:{first}", UID, second).qualifier == first
    else:
        with pytest.raises(BrnError, match="conflicting qualifiers"):
            resolve_function_ref(f"{name}:{first}", UID, second)


def test_own_account_then_a_qualifier_is_a_name_and_qualifier() -> None:
    # "<own hash>:$LATEST" cannot be account:name ($LATEST is no name): as in the grammar, it is the
    # function named like the hash, at $LATEST.
    assert resolve_function_ref(f"{HASH}:$LATEST", UID) == Brn(HASH, HASH, LATEST)


@pytest.mark.parametrize("text", ["f\n", "f:1\n", f"{HASH}:f\n", f"brn:cloud:faas:bj:{HASH}:function:f\n", "1\n"])
def test_a_trailing_newline_is_refused(text: str) -> None:
    with pytest.raises(BrnError):
        resolve_function_ref(text, UID)
    assert not valid_function_name("f\n") and not is_version("1\n")


# ---- the controller's policy over the same grammar ---------------------------------------------

def test_controller_refs_use_the_one_grammar() -> None:
    from controller.invoke import parse_function_ref
    from easyfaas.errors import InvalidParameterValue

    assert parse_function_ref("f", None, UID) == Brn(HASH, "f", LATEST)  # qualifier defaults to $LATEST
    assert parse_function_ref("f:3", None, UID) == Brn(HASH, "f", "3")
    assert parse_function_ref(f"{HASH}:f", "2", UID) == Brn(HASH, "f", "2")
    assert parse_function_ref(f"{OTHER_HASH}:f:1", None, UID) == Brn(OTHER_HASH, "f", "1")
    for ref, qualifier, cause in [("f:prod", None, "alias"), ("f", "prod", "invalid function qualifier"),
                                  ("not:a:brn", None, "invalid brn"), ("f:1", "2", "conflicting qualifiers")]:
        with pytest.raises(InvalidParameterValue, match=cause):
            parse_function_ref(ref, qualifier, UID)

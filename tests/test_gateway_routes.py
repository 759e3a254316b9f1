"""Route templates, precedence and request-path safety (httptrigger/routes.py, httptrigger/config.py)."""

from __future__ import annotations

import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from easyfaas.triggers import Trigger
from httptrigger.config import parse_http_config, route_table
from httptrigger.routes import (ANY, Route, RouteConflict, RouteError, RouteTable, parse_function_url, parse_template,
                                split_path)


def table(*routes: str) -> RouteTable[str]:
    out: RouteTable[str] = RouteTable()
    for text in routes:
        method, path = text.split(" ", 1)
        out.add(Route(method, parse_template(path), text, path))
    return out


def hit(t: RouteTable[str], method: str, path: str) -> str | None:
    m = t.match(method, path)
    return None if m is None else m.route.target


AWS_EXAMPLE = table("GET /pets/dog/1", "GET /pets/dog/{id}", "GET /pets/{proxy+}", "ANY /{proxy+}")


@pytest.mark.parametrize("method,path,want", [
    ("GET", "/pets/dog/1", "GET /pets/dog/1"),
    ("GET", "/pets/dog/2", "GET /pets/dog/{id}"),
    ("GET", "/pets/cat/1", "GET /pets/{proxy+}"),
    ("POST", "/test/5", "ANY /{proxy+}"),
    ("POST", "/pets/dog/1", "ANY /{proxy+}"),
    ("GET", "/", None),
])
def test_aws_worked_example(method: str, path: str, want: str | None) -> None:
    assert hit(AWS_EXAMPLE, method, path) == want


def test_parameters_and_greedy_values() -> None:
    t = table("GET /api/users/{id}", "ANY /files/{proxy+}", "GET /", "GET /a/{x}/b/{y}")
    m = t.match("GET", "/api/users/42")
    assert m is not None and m.path_parameters == {"id": "42"} and m.route.route_key == "GET /api/users/{id}"
    m = t.match("DELETE", "/files/a/b%20c/d.txt")
    assert m is not None and m.path_parameters == {"proxy": "a/b c/d.txt"}
    assert t.match("GET", "/files") is None  # a greedy tail takes at least one segment
    assert hit(t, "GET", "/") == "GET /"
    assert t.match("GET", "/a/1/b/2").path_parameters == {"x": "1", "y": "2"}  # type: ignore[union-attr]
    assert t.match("GET", "/api/users/") is None and t.match("GET", "/api/users/42/x") is None
    assert t.match("POST", "/api/users/42") is None


def test_explicit_method_beats_any_and_literal_beats_param() -> None:
    t = table("ANY /x/{id}", "GET /x/{id}", "ANY /x/me")
    assert hit(t, "GET", "/x/1") == "GET /x/{id}"
    assert hit(t, "PUT", "/x/1") == "ANY /x/{id}"
    assert hit(t, "GET", "/x/me") == "ANY /x/me"


def test_collisions_ignore_parameter_names() -> None:
    t = table("GET /users/{id}")
    with pytest.raises(RouteConflict):
        t.add(Route("GET", parse_template("/users/{uid}"), "other"))
    t.add(Route(ANY, parse_template("/users/{uid}"), "any"))  # another method is another route
    t.add(Route("GET", parse_template("/users/{proxy+}"), "greedy"))


@pytest.mark.parametrize("path", ["", "users", "/a//b", "/a/", "/a/{x", "/a/{x}{y}", "/{p+}/x", "/a/..", "/a/./b",
                                  "/{a}/{a}", "/a b", "/a/%2F", "/" + "a/" * 70 + "b"])
def test_bad_templates(path: str) -> None:
    with pytest.raises(RouteError) as err:
        parse_template(path)
    assert err.value.field == "Path"


@pytest.mark.parametrize("config,field", [
    ({"Path": "/x", "Methods": []}, "Config.Methods"),
    ({"Path": "/x", "Methods": ["FETCH"]}, "Config.Methods"),
    ({"Path": "/x", "Methods": ["ANY", "GET"]}, "Config.Methods"),
    ({"Methods": ["GET"]}, "Config.Path"),
    ({"Path": "/x", "PayloadFormatVersion": "3.0"}, "Config.PayloadFormatVersion"),
    ({"Path": "/x", "PayloadFormatVersion": 2.0}, "Config.PayloadFormatVersion"),
    ({"Path": "/x", "AuthType": "AWS_IAM"}, "Config.AuthType"),
    ({"Path": "/x", "Cors": {"MaxAge": "1"}}, "Config.Cors.MaxAge"),
    ({"Path": "/x", "Cors": {"AllowOrigins": "*"}}, "Config.Cors.AllowOrigins"),
    ({"Path": "/x", "Cors": {"AllowOrigins": ["*"], "AllowCredentials": True}}, "Config.Cors.AllowOrigins"),
    ({"Path": "/x", "Cors": {"Nope": 1}}, "Config.Cors.Nope"),
    ({"Path": "/x", "Extra": 1}, "Config.Extra"),
    ("GET /x", "Config"),
])
def test_bad_configs_name_the_field(config: object, field: str) -> None:
    with pytest.raises(RouteError) as err:
        parse_http_config(config)
    assert err.value.field == field


def test_config_defaults_and_table_of_triggers() -> None:
    cfg = parse_http_config({"Path": "/api/{id}", "Methods": ["get", "post"]})
    assert cfg.Methods == ("GET", "POST") and cfg.PayloadFormatVersion == "2.0" and cfg.AuthType == "NONE"
    triggers = [Trigger(TriggerId="t1", Type="http", Config={"Path": "/api/{id}", "Methods": ["GET"]}),
                Trigger(TriggerId="t2", Type="cron", Config={"Schedule": "x"}),
                Trigger(TriggerId="t3", Type="http", Config={"Path": "/api/{x}", "Methods": ["GET"]})]
    with pytest.raises(RouteConflict) as err:
        route_table(triggers)
    assert err.value.existing.trigger_id == "t1"  # type: ignore[attr-defined]
    assert len(route_table(triggers[:2])) == 1


@pytest.mark.parametrize("path", ["/pets/dog/../cat", "/pets/%2e%2e/x", "/pets/./dog", "/pets/a%00b", "/a\x00",
                                  "/pets/%zz", "/pets/%ff", "pets"])
def test_unsafe_paths_reach_nothing(path: str) -> None:
    assert split_path(path) is None
    assert AWS_EXAMPLE.match("GET", path) is None
    assert parse_function_url(path) is None


def test_encoded_slash_stays_in_its_segment() -> None:
    t = table("GET /a/{id}", "GET /a/b/c")
    m = t.match("GET", "/a/b%2Fc")
    assert m is not None and m.route.target == "GET /a/{id}" and m.path_parameters == {"id": "b/c"}


def test_function_urls() -> None:
    u = parse_function_url("/acct/fn")
    assert u is not None and (u.account_id, u.function, u.qualifier, u.raw_path) == ("acct", "fn", "$LATEST", "/")
    u = parse_function_url("/acct/fn/users/42")
    assert u is not None and (u.qualifier, u.raw_path) == ("$LATEST", "/users/42")
    u = parse_function_url("/acct/fn/3/users/42")
    assert u is not None and (u.qualifier, u.raw_path) == ("3", "/users/42")
    u = parse_function_url("/acct/fn/$LATEST")
    assert u is not None and (u.qualifier, u.raw_path) == ("$LATEST", "/")
    u = parse_function_url("/acct/fn/%24LATEST/x/")
    assert u is not None and (u.qualifier, u.raw_path) == ("$LATEST", "/x/")
    assert parse_function_url("/acct") is None and parse_function_url("/a.b/fn") is None
    assert parse_function_url("/acct/f%20n") is None


# ---- properties ----------------------------------------------------------------------------------

_seg = st.text(alphabet=string.ascii_lowercase + string.digits, min_size=1, max_size=4)
_template_seg = st.one_of(_seg, st.just("{p}"), st.just("{q}"))


@st.composite
def templates(draw: st.DrawFn) -> str:
    segs = draw(st.lists(_template_seg, min_size=0, max_size=4, unique=True))
    if draw(st.booleans()):
        segs.append("{rest+}")
    return "/" + "/".join(segs)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["GET", "ANY"]), templates()), max_size=8),
       st.lists(_seg, max_size=6))
def test_match_is_the_most_specific_of_all_matching_routes(defs: list[tuple[str, str]], segs: list[str]) -> None:
    t: RouteTable[str] = RouteTable()
    added = []
    for method, path in defs:
        try:
            t.add(Route(method, parse_template(path), f"{method} {path}", path))
            added.append(t.conflict(method, parse_template(path)))
        except RouteConflict:
            pass
    path = "/" + "/".join(segs)
    got = t.match("GET", path)
    # Brute force: every route that matches alone, ranked by precedence.
    candidates = []
    for route in added:
        assert route is not None
        alone: RouteTable[str] = RouteTable()
        alone.add(route)
        if alone.match("GET", path) is not None:
            candidates.append(route)
    if not candidates:
        assert got is None
        return
    best = min(candidates, key=Route.precedence)
    assert got is not None and got.route.precedence() == best.precedence()
    # A whole-path match is never beaten by a greedy route.
    if any(not c.greedy for c in candidates):
        assert not got.route.greedy


_evil = st.sampled_from(["..", ".", "%2e%2e", "%2E.", "a%00", "%00", "x\x00y"])


@settings(max_examples=300, deadline=None)
@given(st.lists(_seg, max_size=4), _evil, st.lists(_seg, max_size=4))
def test_no_dot_segment_or_nul_reaches_any_route(before: list[str], evil: str, after: list[str]) -> None:
    t = table("ANY /{proxy+}", "GET /a/{x}", "GET /a/b/c")
    path = "/" + "/".join(before + [evil] + after)
    assert t.match("GET", path) is None
    assert parse_function_url(path) is None


@settings(max_examples=300, deadline=None)
@given(st.lists(_seg, min_size=1, max_size=4), st.lists(_seg, min_size=1, max_size=3))
def test_an_encoded_slash_never_splits_a_segment(left: list[str], right: list[str]) -> None:
    t = table("GET /{a}", "GET /{a}/{b}", "GET /{a}/{b}/{c}", "GET /{a}/{b}/{c}/{d}")
    joined = "%2F".join(left)
    path = "/" + "/".join([joined] + right)
    m = t.match("GET", path)
    if len(right) + 1 <= 4:
        assert m is not None
        assert len(m.route.segments) == len(right) + 1  # the encoded slashes did not count as segments
        assert m.path_parameters["a"] == "/".join(left)

"""Property-based tests of the error path (hypothesis): whatever a client sends — arbitrary
bytes under any content type, arbitrary JSON, or bodies shaped like the real requests but
holding hostile values (NaN, Infinity, 1e400, 5000-digit integers, lone surrogates, deep
nesting) — no route answers 5xx, every error is a 4xx whose body is strict JSON (no NaN
token, valid UTF-8) with a ``detail``, and the server logs no traceback.

The requests go over real HTTP to ``python -m service serve`` with a real redis-server, so
uvicorn's parsing is part of what is tested. Examples per property are bounded (and
derandomised) so the module takes well under a minute.
"""

from __future__ import annotations

import json
from urllib.parse import quote

import httpx
import pytest
import test_service_support as support
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from live_service import live_service
from redis_server import RedisServer

served_root = support.served_root  # fixture

POST_ROUTES = ["/recommend", "/recommend/batch", "/events", "/admin/reload", "/items/batch"]
PUT_ROUTES = ["/items/fuzz-item", "/items/1"]  # a new id and a catalog id (item API)
GET_ROUTES = ["/items/{}", "/similar-items/{}", "/healthz", "/readyz", "/metrics"]
PATH_ROUTES = [*GET_ROUTES, "DELETE /items/{}"]  # "METHOD path" (GET when no method)
CONTENT_TYPES = [
    None,
    "application/json",
    "application/json; charset=utf-8",
    "application/json; charset=latin-1",
    "text/plain",
    "text/plain; charset=utf-8",
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=x",
    "application/octet-stream",
    "application/problem+json",
    "json",
    "",
]
FUZZ = settings(
    max_examples=120,
    deadline=None,
    derandomize=True,  # the same examples every run: a failure reproduces
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


class Raw:
    """A JSON token written as is (numbers Python's json cannot produce: 1e400, -0, ...)."""

    def __init__(self, token: str):
        self.token = token

    def __repr__(self) -> str:
        return f"Raw({self.token[:40]!r})"


def dumps(value, ascii: bool = True) -> str:
    """JSON text of ``value``; floats nan/inf become NaN/Infinity, ``Raw`` goes in as is.
    ``ascii`` escapes strings (a lone surrogate becomes ``\\ud800``); without it the text
    keeps them, and encoding it with ``surrogatepass`` gives bytes that are not UTF-8."""
    if isinstance(value, Raw):
        return value.token
    if isinstance(value, dict):
        pairs = (
            f"{json.dumps(str(k), ensure_ascii=ascii)}:{dumps(v, ascii)}" for k, v in value.items()
        )
        return "{" + ",".join(pairs) + "}"
    if isinstance(value, list):
        return "[" + ",".join(dumps(v, ascii) for v in value) + "]"
    return json.dumps(value, ensure_ascii=ascii)


NUMBER_TOKENS = [
    "NaN",
    "-NaN",
    "Infinity",
    "-Infinity",
    "1e400",
    "-1e400",
    "1e-400",
    "-0",
    "1" * 5000,  # beyond Python's int-string limit (4300 digits)
    "1E+999999999",
    "0.1e1",
]
# any code point, lone surrogates and control characters included
any_text = st.text(
    st.characters(categories=["L", "M", "N", "P", "S", "Z", "Cc", "Cs"]), max_size=40
)
hostile_scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(10**300), max_value=10**300),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([Raw(t) for t in NUMBER_TOKENS]),
    any_text,
    st.sampled_from(["\ud800", "\udfff", "a\ud800b", "\x00", "", " ", "1", "popular"]),
)
any_json = st.recursive(
    hostile_scalar,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(any_text, inner, max_size=4),
    max_leaves=12,
)


def deep(n: int) -> str:
    return "[" * n + "]" * n


@pytest.fixture(scope="module")
def live(served_root, tmp_path_factory):
    # a private copy: no keys are set, so the item API is open and writes it
    root = support.copy_root(served_root, tmp_path_factory.mktemp("fuzz") / "artifacts")
    with RedisServer() as redis:
        env = {
            "ARTIFACTS_DIR": str(root / "current"),
            "REDIS_URL": redis.url,
            "LOG_LEVEL": "info",
        }
        with live_service(env) as running:
            with httpx.Client(base_url=running.url, timeout=30) as client:
                running.client = client
                yield running


@pytest.fixture(scope="module")
def real(served_root):
    """Real ids and feature names, so shaped bodies also reach the deeper validation."""
    cat = support.catalog(served_root)
    return {
        "items": [it["id"] for it in cat["items"][:20]],
        "users": [u["id"] for u in cat["users"][:10]],
        "features": cat["user_features"],
    }


def check(response: httpx.Response, what: str) -> None:
    assert response.status_code < 500, f"{what} -> {response.status_code}: {response.text[:500]}"
    if response.status_code >= 400:
        text = response.content.decode("utf-8")  # raises on invalid UTF-8
        body = json.loads(text, parse_constant=_refuse)  # strict JSON: no NaN / Infinity
        assert "detail" in body, f"{what} -> {response.status_code} without detail: {text[:300]}"


def _refuse(token: str):
    raise AssertionError(f"error body holds the non-JSON token {token}")


def assert_no_traceback(live, since: int) -> None:
    """No traceback in what the server logged after offset ``since`` (this test's part)."""
    log = live.log()[since:]
    assert "Traceback" not in log, log[-6000:]
    assert "Exception in ASGI application" not in log, log[-6000:]


def post(live, route: str, body: bytes, content_type: str | None) -> httpx.Response:
    headers = {} if content_type is None else {"content-type": content_type}
    method = "PUT" if route in PUT_ROUTES else "POST"
    return send(live, method, route, content=body, headers=headers)


def send(live, method: str, path: str, **kwargs) -> httpx.Response:
    """One request; on a connection the server closed (uvicorn does after a 500, which the
    previous example reported), once more on a new connection."""
    try:
        return live.client.request(method, path, **kwargs)
    except httpx.TransportError:
        live.client.close()
        live.client = httpx.Client(base_url=live.url, timeout=30)
        return live.client.request(method, path, **kwargs)


# --------------------------------------------------------------------------- properties


def test_arbitrary_bytes_under_any_content_type_never_give_5xx(live):
    @FUZZ
    @given(
        route=st.sampled_from(POST_ROUTES + PUT_ROUTES),
        content_type=st.sampled_from(CONTENT_TYPES),
        body=st.binary(max_size=300),
    )
    @example(route="/recommend", content_type="application/json", body=b"\xff\xfe{}")
    @example(route="/recommend/batch", content_type="application/json", body=b'{"requests":"\xe9"}')
    @example(route="/events", content_type="text/plain", body=b'{"user_id":"1","item_id":"1"}')
    @example(route="/events", content_type=None, body=b"")
    def run(route, content_type, body):
        check(post(live, route, body, content_type), f"POST {route} {content_type} {body[:80]!r}")

    start = len(live.log())
    run()
    assert_no_traceback(live, start)


def test_arbitrary_json_never_gives_5xx(live):
    @FUZZ
    @given(
        route=st.sampled_from(POST_ROUTES + PUT_ROUTES), value=any_json, ascii_only=st.booleans()
    )
    @example(route="/recommend", value=Raw(deep(100_000)), ascii_only=True)
    @example(route="/events", value=Raw(deep(3000)), ascii_only=True)
    @example(route="/recommend/batch", value={"requests": Raw(deep(5000))}, ascii_only=True)
    @example(route="/events", value={"user_id": "\ud800", "item_id": "1"}, ascii_only=False)
    def run(route, value, ascii_only):
        text = dumps(value, ascii_only)
        body = text.encode("utf-8", "surrogatepass")
        check(post(live, route, body, "application/json"), f"POST {route} {text[:200]}")

    start = len(live.log())
    run()
    assert_no_traceback(live, start)


def test_request_shaped_bodies_with_hostile_values_never_give_5xx(live, real):
    value = st.one_of(hostile_scalar, st.sampled_from(real["items"] + real["users"]), any_json)
    ids = st.lists(st.one_of(st.sampled_from(real["items"]), value), max_size=6)
    feature_name = st.one_of(st.sampled_from(real["features"]), any_text)
    recommend = st.fixed_dictionaries(
        {},
        optional={
            "user_id": st.one_of(st.sampled_from(real["users"]), value),
            "features": st.dictionaries(feature_name, value, max_size=4) | value,
            "recent_items": ids | value,
            "exclude_items": ids | value,
            "k": st.integers(-3, 200) | value,
            "exclude_seen": st.booleans() | value,
            "filter": st.fixed_dictionaries({}, optional={"genres_any": ids | value}) | value,
        },
    )
    event = st.fixed_dictionaries(
        {},
        optional={
            "user_id": st.one_of(st.sampled_from(real["users"]), value),
            "item_id": st.one_of(st.sampled_from(real["items"]), value),
            "timestamp": st.floats(allow_nan=True, allow_infinity=True) | value,
            "event_id": value,
        },
    )
    item_feature = st.one_of(st.sampled_from(["genres", "year"]), any_text)
    item = st.fixed_dictionaries(
        {},
        optional={
            "title": value,
            "genres": ids | value,
            "features": st.dictionaries(item_feature, value, max_size=3) | value,
        },
    )
    bodies = {
        "/items/1": item,
        "/items/fuzz-item": item,
        "/items/batch": st.fixed_dictionaries(
            {},
            optional={
                "upsert": st.lists(
                    st.tuples(st.one_of(st.sampled_from(real["items"]), value), item).map(
                        lambda pair: {"item_id": pair[0], **pair[1]}
                    ),
                    max_size=3,
                )
                | value,
                "delete": ids | value,
            },
        ),
        "/recommend": recommend,
        "/recommend/batch": st.fixed_dictionaries(
            {"requests": st.lists(recommend | value, max_size=4) | value}
        ),
        "/events": event
        | st.fixed_dictionaries({"events": st.lists(event, max_size=4)})
        | st.lists(event | value, max_size=4),
    }

    @FUZZ
    @given(data=st.data(), route=st.sampled_from(sorted(bodies)))
    def run(data, route):
        text = dumps(data.draw(bodies[route]))
        check(post(live, route, text.encode(), "application/json"), f"POST {route} {text[:300]}")

    start = len(live.log())
    run()
    assert_no_traceback(live, start)


def test_arbitrary_paths_and_queries_never_give_5xx(live, real):
    @FUZZ
    @given(
        route=st.sampled_from(PATH_ROUTES),
        segment=st.one_of(st.sampled_from(real["items"]), any_text),
        k=st.one_of(st.none(), any_text, st.sampled_from(["NaN", "1e400", "-1", "0", "5"])),
    )
    @example(route="/items/{}", segment="\ud800", k=None)
    @example(route="/similar-items/{}", segment="1", k="Infinity")
    def run(route, segment, k):
        method, _, route = route.rpartition(" ")
        path = route.format(quote(segment.encode("utf-8", "surrogatepass"), safe=""))
        params = {} if k is None else {"k": k.encode("utf-8", "surrogatepass")}
        r = send(live, method or "GET", path, params=params)
        check(r, f"{method or 'GET'} {path} {params}")

    start = len(live.log())
    run()
    assert_no_traceback(live, start)


# --------------------------------------------------------------------------- exact cases


@pytest.mark.parametrize(
    "route, body",
    [
        ("/events", '{"user_id": "u1", "item_id": "%(item)s", "timestamp": Infinity}'),
        ("/events", '{"user_id": "u1", "item_id": "%(item)s", "timestamp": NaN}'),
        ("/events", '{"user_id": "u1", "item_id": "%(item)s", "timestamp": 1e400}'),
        ("/recommend", '{"recent_items": ["%(item)s"], "k": 1e400}'),
        ("/recommend", '{"recent_items": ["%(item)s"], "k": NaN}'),
    ],
)
def test_non_finite_numbers_are_refused_as_invalid_where_a_number_is_expected(
    live, real, route, body
):
    r = post(live, route, (body % {"item": real["items"][0]}).encode(), "application/json")
    assert r.status_code in (400, 422), r.text
    check(r, body)


def test_a_nan_bucket_feature_is_refused_not_bucketed(live, served_root):
    cat = support.catalog(served_root)
    numeric = [
        f["name"]
        for f in cat["manifest"]["model"]["user_features"]
        if f.get("kind") in ("bucket", "numeric", "number")
    ]
    assert numeric, cat["manifest"]["model"]["user_features"]
    for token in ("NaN", "Infinity", "-Infinity", "1e400"):
        body = f'{{"features": {{"{numeric[0]}": {token}}}, "k": 3}}'
        r = post(live, "/recommend", body.encode(), "application/json")
        assert r.status_code == 422, (token, r.text)
        assert numeric[0] in r.text, r.text  # names the field


def test_text_plain_events_get_415_and_bad_utf8_gets_400(live, real):
    event = json.dumps({"user_id": "u1", "item_id": real["items"][0]}).encode()
    r = post(live, "/events", event, "text/plain")
    assert r.status_code == 415, r.text
    for route in ("/recommend", "/recommend/batch", "/events"):
        r = post(live, route, b'{"user_id": "\xff\xfe"}', "application/json")
        assert r.status_code == 400, (route, r.text)
        check(r, route)

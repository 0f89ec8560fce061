"""genrec serve: the HTTP service answers what ``Recommender.recommend_batch`` answers (the same
items; scores up to float32 rounding when batched with other requests), batches concurrent requests
into shared model calls, and turns every bad request into a 4xx with a message naming the field or
id (never a 500 or a hang)."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from fastapi.testclient import TestClient

from genrec import cli
from genrec.recommender import Recommender
from genrec.serve import create_app

JSON = {"content-type": "application/json"}


@pytest.fixture(scope="module")
def rec(tiny_saved) -> Recommender:
    return Recommender.from_pretrained(tiny_saved)


@pytest.fixture(scope="module")
def histories(rec) -> list[list[str]]:
    return [[rec.item_ids[i] for i in s] for s in rec.train_sequences[:12]]


@pytest.fixture(scope="module")
def client(rec):
    with TestClient(create_app(rec, max_history_ids=50, max_batch_histories=4, max_body_bytes=4096)) as c:
        yield c


def expected(rec: Recommender, history: list[str], k: int = 10, exclude_seen: bool = False) -> dict:
    r = rec.recommend_batch([history], k, exclude_seen)[0]
    return {"method": rec.method_name, "items": [{"item_id": i, "score": s} for i, s in zip(r.items, r.scores)],
            "gate": r.gate, "unknown_ids": r.unknown_ids, "fallback": r.fallback}


def same(got: dict, want: dict) -> bool:
    """Equal answers: the same items in the same order; scores and gate equal up to float32 rounding
    (a batched model call pads histories differently from a call of its own)."""
    def close(a, b):
        return a == b if a is None or b is None else a == pytest.approx(b, rel=1e-5, abs=1e-5)

    scores = [x["score"] for x in got["items"]], [x["score"] for x in want["items"]]
    return ([x["item_id"] for x in got["items"]] == [x["item_id"] for x in want["items"]]
            and all(close(a, b) for a, b in zip(*scores)) and close(got["gate"], want["gate"])
            and {**got, "items": 0, "gate": 0} == {**want, "items": 0, "gate": 0})


def concurrently(n: int, call) -> list:
    """``call(i)`` for i < n from n threads released at once (so the requests overlap)."""
    barrier = threading.Barrier(n)

    def go(i):
        barrier.wait(timeout=10)
        return call(i)

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(go, range(n)))


# -- answers -----------------------------------------------------------------------------------------
def test_recommend_answers_what_the_library_answers(client, rec, histories):
    for h in histories[:4]:
        for k, exclude_seen in ((10, False), (3, True), (1, False)):
            r = client.post("/recommend", json={"history": h, "k": k, "exclude_seen": exclude_seen})
            assert r.status_code == 200 and r.json() == expected(rec, h, k, exclude_seen)
    r = client.post("/recommend", json={"history": ["nope", *histories[0]], "k": 5})  # default: skip, report
    assert r.json() == expected(rec, ["nope", *histories[0]], 5) and r.json()["unknown_ids"] == ["nope"]
    r = client.post("/recommend", json={"history": ["nope"], "k": 4})  # nothing known: popular items
    assert r.status_code == 200 and r.json()["fallback"] is True and len(r.json()["items"]) == 4
    r = client.post("/recommend", content=f'{{"history": ["{histories[1][0]}"]}}')  # no Content-Type: JSON
    assert r.status_code == 200 and r.json() == expected(rec, histories[1][:1])


def test_batch_answers_what_the_library_answers(client, rec, histories):
    r = client.post("/recommend/batch", json={"histories": histories[:4], "k": 7, "exclude_seen": True})
    assert r.status_code == 200
    got = r.json()
    assert got["method"] == rec.method_name and len(got["results"]) == 4
    for h, one in zip(histories[:4], got["results"]):
        lib = rec.recommend_batch(histories[:4], 7, True)[histories[:4].index(h)]
        assert [x["item_id"] for x in one["items"]] == lib.items and [x["score"] for x in one["items"]] == lib.scores
        assert same(one, expected(rec, h, 7, True))


def test_health_and_items(client, rec, histories):
    assert client.post("/recommend", json={"history": histories[0]}).status_code == 200  # not left to other tests
    h = client.get("/health").json()
    assert h["status"] == "ok" and h["method"] == rec.method_name and h["items"] == rec.num_items
    assert h["max_k"] == rec.max_k and h["batches"] >= 1 and h["mean_batch_size"] >= 1.0
    item_id = histories[0][0]
    r = client.get(f"/items/{item_id}")
    assert r.status_code == 200 and r.json() == rec.item(item_id) and len(r.json()["semantic_id"]) >= 1
    assert client.head("/health").status_code == 200  # HEAD-based probes (was 405)
    r = client.get("/items/no-such-item")
    assert r.status_code == 404 and r.json() == {"error": "unknown item id 'no-such-item'",
                                                 "unknown_ids": ["no-such-item"]}


# -- bad requests --------------------------------------------------------------------------------------
GOOD = ["__known__"]
BAD_REQUESTS = [
    # (path, JSON body or raw bytes, status, message fragment)
    ("/recommend", b"{bad", 400, "malformed JSON body: Expecting property name"),
    ("/recommend", b"", 422, "body: expected a JSON object"),
    ("/recommend", b"[1, 2]", 422, "body: expected a JSON object"),
    ("/recommend", b"[" * 2000 + b"]" * 2000, 400, "malformed JSON body"),  # deeper than the parser goes
    ("/recommend", {"history": []}, 422, "history: empty; give at least one item id"),
    ("/recommend", {"history": ["x"] * 51}, 422, "history: 51 item ids, more than the 50 accepted"),
    ("/recommend", {"history": GOOD, "k": 0}, 422, "k: must be between 1 and 10 (fusion.k"),
    ("/recommend", {"history": GOOD, "k": 11}, 422, "k: must be between 1 and 10 (fusion.k"),
    ("/recommend", {"history": GOOD, "k": "3"}, 422, "k: Input should be a valid integer"),
    ("/recommend", {"history": GOOD, "k": 2.0}, 422, "k: Input should be a valid integer"),
    ("/recommend", {"history": GOOD, "exclude_seen": "yes"}, 422, "exclude_seen: Input should be a valid boolean"),
    ("/recommend", {"history": GOOD, "on_unknown": "maybe"}, 422, "on_unknown: Input should be 'skip' or 'error'"),
    ("/recommend", {"history": [1, 2]}, 422, "history.0: Input should be a valid string"),
    ("/recommend", {"history": "abc"}, 422, "history: Input should be a valid list"),
    ("/recommend", {"histroy": GOOD}, 422, "histroy: unknown field (expected history, k, exclude_seen, on_unknown)"),
    ("/recommend", {"k": 3}, 422, "history: required field missing"),
    ("/recommend", {"history": [*GOOD, "zz1", "zz2"], "on_unknown": "error"}, 422,
     "history: unknown item id(s) ['zz1', 'zz2']"),
    ("/recommend/batch", {"histories": []}, 422, "histories: empty; give at least one history"),
    ("/recommend/batch", {"histories": [GOOD] * 5}, 422, "histories: 5 histories, more than the 4 accepted"),
    ("/recommend/batch", {"histories": [GOOD, []]}, 422, "histories.1: empty"),
    ("/recommend/batch", {"histories": [["q"], GOOD, ["r", "q"]], "on_unknown": "error"}, 422,
     "histories.0: unknown item id(s) ['q']; histories.2: unknown item id(s) ['r', 'q']"),
    ("/recommend/batch", {"history": GOOD}, 422, "histories: required field missing"),
    ("/recommend", b"x" * 5000, 413, "request body of 5000 bytes is over the limit of 4096 bytes"),
    # JSON's \ud800 escape is a lone surrogate: no item has it, and no answer could echo it (was a 500)
    ("/recommend", b'{"history": ["a", "\\ud800"]}', 422, "history: item id 1 is not valid Unicode"),
    ("/recommend", b'{"history": ["\\ud800"], "on_unknown": "error"}', 422, "history: item id 0 is not valid"),
    ("/recommend/batch", b'{"histories": [["a"], ["\\udc80"]]}', 422, "histories.1: item id 0 is not valid Unicode"),
]


@pytest.mark.parametrize("path, body, status, message", BAD_REQUESTS,
                         ids=[f"{n}-{s}" for n, (_, _, s, _) in enumerate(BAD_REQUESTS)])
def test_bad_requests_get_a_4xx_naming_the_problem(client, histories, path, body, status, message):
    def known(v):
        return [histories[0][0] if x == "__known__" else x for x in v] if isinstance(v, list) else v

    if isinstance(body, dict):
        body = {f: ([known(h) for h in v] if f == "histories" else known(v)) for f, v in body.items()}
        r = client.post(path, json=body)
    else:
        r = client.post(path, content=body, headers=JSON)
    assert r.status_code == status, r.text
    assert message in r.json()["error"]
    if "unknown item id" in message:
        assert r.json()["unknown_ids"]


def test_body_size_type_and_routes(client, histories):
    # no Content-Length (chunked): refused by the bytes actually read
    r = client.post("/recommend", content=(b"x" * 1000 for _ in range(10)), headers=JSON)
    assert r.status_code == 413 and r.json() == {"error": "request body over the limit of 4096 bytes"}
    r = client.post("/recommend", content=b'{"history": ["a"]}', headers={"content-type": "text/plain"})
    assert r.status_code == 415 and "Content-Type must be application/json, got 'text/plain'" in r.json()["error"]
    # an empty media type is read as JSON, as a missing header is (it was a false 422: FastAPI saw the empty one)
    body = json.dumps({"history": histories[0][:1], "k": 3}).encode()
    for empty in ("", "; charset=utf-8"):
        r = client.post("/recommend", content=body, headers={"content-type": empty})
        assert r.status_code == 200 and len(r.json()["items"]) == 3, (empty, r.text)
    # repeated: this guard read the last, FastAPI the first
    r = client.post("/recommend", content=body, headers=[("content-type", "text/plain"),
                                                          ("content-type", "application/json")])
    assert r.status_code == 400 and r.json() == {"error": "repeated Content-Type header; send one"}
    r = client.get("/recommend")
    assert r.status_code == 405 and r.json() == {"error": "method GET not allowed on /recommend"}
    r = client.get("/nowhere")
    assert r.status_code == 404 and r.json() == {"error": "no endpoint GET /nowhere"}
    assert client.post("/recommend", json={"history": histories[0][:1]}).status_code == 200  # still serving
    # another method or path with a body: the router's 405 / 404 (the body guard answered 415 or 413 first)
    r = client.request("DELETE", "/recommend", content=b"x", headers={"content-type": "text/plain"})
    assert r.status_code == 405
    r = client.request("PUT", "/items/x", content=b"x" * 5000)
    assert r.status_code == 405
    # a compressed body: named, not a "malformed JSON body"
    import gzip

    r = client.post("/recommend", content=gzip.compress(body), headers={**JSON, "content-encoding": "gzip"})
    assert r.status_code == 415 and "Content-Encoding 'gzip' is not supported" in r.json()["error"]
    # HEAD on an item (a 405), and an OpenAPI schema whose operation ids are unique (HEAD /health shared one)
    assert client.head(f"/items/{histories[0][0]}").status_code == 200
    assert client.head("/items/no-such-item").status_code == 404
    schema = client.get("/openapi.json").json()
    ops = [op["operationId"] for path in schema["paths"].values() for op in path.values()]
    assert len(ops) == len(set(ops)), ops
    # the error statuses and their body, and the limits, in the schema (it listed FastAPI's 422 body only)
    responses = schema["paths"]["/recommend"]["post"]["responses"]
    assert {"400", "408", "413", "415", "422", "500", "503"} <= set(responses)
    assert responses["422"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorBody")
    assert "404" in schema["paths"]["/items/{item_id}"]["get"]["responses"]
    request = schema["components"]["schemas"]["RecommendRequest"]["properties"]
    assert request["k"]["maximum"] == 10 and request["history"]["maxItems"] == 50


def test_the_body_limit_holds_under_a_root_path_or_a_mount(rec, histories):
    """The guard compared the full path: under --root-path or mounted in another app an oversized body
    went straight to the model."""
    from fastapi import FastAPI

    big = json.dumps({"history": histories[0] * 40}).encode()
    with TestClient(create_app(rec, max_body_bytes=100), root_path="/api") as c:
        assert c.post("/api/recommend", content=big, headers=JSON).status_code == 413
    parent = FastAPI()
    parent.mount("/api", create_app(rec, max_body_bytes=100))
    with TestClient(parent) as c:
        assert c.post("/api/recommend", content=big, headers=JSON).status_code == 413
    # a root path that is a string prefix but no segment of the path ("/rec" of "/recommend"), or "/"
    from genrec.serve_guard import route_path as _route_path

    assert _route_path({"path": "/recommend", "root_path": "/rec"}) == "/recommend"
    from genrec.serve_guard import BodyGuard as _BodyGuard

    async def app(scope, receive, send):
        raise AssertionError("an oversized body must not reach the app")

    async def body():
        return {"type": "http.request", "body": big, "more_body": False}

    sent = []

    async def send(message):
        sent.append(message)

    for root in ("/rec", "/"):  # the guard skipped these: the router still routes /recommend
        sent.clear()
        scope = {"type": "http", "method": "POST", "path": "/recommend", "root_path": root,
                 "headers": [(b"content-type", b"application/json")]}
        asyncio.run(_BodyGuard(app, 100, 5.0)(scope, body, send))
        assert sent[0]["status"] == 413, root
    assert _route_path({"path": "/recommend", "root_path": "/"}) == "/recommend"
    assert _route_path({"path": "/api/recommend/", "root_path": "/api"}) == "/recommend"


def test_a_stalled_body_gets_a_408_and_never_reaches_the_app():
    from genrec.serve_guard import BodyGuard as _BodyGuard

    async def app(scope, receive, send):
        raise AssertionError("the app must not see a request whose body never came")

    async def stalled():
        await asyncio.sleep(30)

    sent = []

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/recommend", "headers": [(b"content-length", b"50")]}
    t0 = time.perf_counter()
    asyncio.run(_BodyGuard(app, 100, 0.1)(scope, stalled, send))
    assert time.perf_counter() - t0 < 5 and sent[0]["status"] == 408
    assert json.loads(sent[1]["body"]) == {"error": "request body not received within 0.1 s"}


def test_app_arguments_are_checked(rec):
    with pytest.raises(ValueError, match="max_batch must be a positive integer, got 0"):
        create_app(rec, max_batch=0)
    with pytest.raises(ValueError, match="max_wait_ms must be a finite number >= 0"):
        create_app(rec, max_wait_ms=-1)
    # a batch gathering for longer than a request waits for its answer: every request a 503 (idle server too)
    with pytest.raises(ValueError, match=r"max_wait_ms \(3000\) must be below request_timeout_s \(1 s = 1000 ms\)"):
        create_app(rec, max_wait_ms=3000, request_timeout_s=1)
    create_app(rec, max_wait_ms=999, request_timeout_s=1)


def test_without_the_lifespan_requests_are_refused_not_hung(rec, histories):
    c = TestClient(create_app(rec))  # not entered: the worker never starts
    r = c.post("/recommend", json={"history": histories[0]})
    assert r.status_code == 503 and "worker is not running" in r.json()["error"]
    assert c.get("/health").json()["status"] == "stopped"


# -- micro-batching ---------------------------------------------------------------------------------------
def test_concurrent_requests_share_model_calls(rec, histories):
    n = 16
    with TestClient(create_app(rec, max_wait_ms=300, max_batch=64)) as c:
        out = concurrently(n, lambda i: c.post("/recommend", json={"history": histories[i % 12], "k": 1 + i % 10}))
        health = c.get("/health").json()
    for i, r in enumerate(out):
        assert r.status_code == 200 and same(r.json(), expected(rec, histories[i % 12], 1 + i % 10))
    assert health["requests"] == n and health["histories"] == n
    assert health["batches"] < n and health["mean_batch_size"] > 1.0, health


@pytest.mark.parametrize("method", ["generative", "sasrec"])
def test_mixed_k_and_exclude_seen_batch_to_the_same_answers(rec, histories, method):
    # with exclude_seen the generative beam widens with k and the history: such requests are grouped
    # so that each gets what a call of its own gives; SASRec ranks the catalogue whatever k is
    one = rec.with_method(method)
    h = histories
    cases = [(h[0], 1, False), (h[1], 5, False), (h[2], 10, False), (h[3], 20, False), (h[4], 20, False),
             (h[5], 64, False), (h[6], 3, True), (h[7], 3, True), (h[6], 12, True), (h[8], 12, True),
             (h[9], 20, True), (h[9], 20, True)]
    cases = [(hist, min(k, one.max_k), ex) for hist, k, ex in cases]  # the generative model: k <= fusion.beam
    calls = []  # (histories, k, exclude_seen) of each model call
    real = one.recommend_batch

    def recorded(hs, k, exclude_seen=False, *a, **kw):
        calls.append((len(hs), k, exclude_seen))
        return real(hs, k, exclude_seen, *a, **kw)

    one.recommend_batch = recorded
    with TestClient(create_app(one, max_wait_ms=500)) as c:
        out = concurrently(len(cases), lambda i: c.post("/recommend", json={
            "history": cases[i][0], "k": cases[i][1], "exclude_seen": cases[i][2]}))
        health = c.get("/health").json()
    one.recommend_batch = real  # the expected answers below are not the server's calls
    for (h, k, ex), r in zip(cases, out):
        assert r.status_code == 200 and same(r.json(), expected(one, h, k, ex)), (k, ex)
    assert health["batches"] < len(cases)
    if method == "generative":  # exclude_seen requests are called with their own k, never a larger one's
        for k in {k for _, k, ex in cases if ex}:
            assert sum(n for n, ck, ex in calls if ex and ck == k) == sum(1 for _, ck, ex in cases if ex and ck == k)


def test_generative_requests_are_grouped_by_their_beam_width(rec, histories):
    from genrec.serve import MicroBatcher

    beam, h = rec.settings.beam, histories[0]
    gen = MicroBatcher(rec.with_method("generative"))
    # the beam is max(fusion.beam, k) = fusion.beam for every allowed k: one group
    assert rec.with_method("generative").max_k == beam
    assert gen.key([h], 1, False) == gen.key([histories[1]], beam, False)
    # with exclude_seen it widens with k (and each history's own distinct items, handled per row by the
    # library): grouped by k
    assert gen.key([h, ["unknown"]], 3, True) == gen.key([histories[2]], 3, True) != gen.key([h], 4, True)
    fused = MicroBatcher(rec)  # a fixed candidate set: only exclude_seen splits the requests
    assert fused.key([h], 1, False) == fused.key([histories[1]], 10, False) != fused.key([h], 1, True)


def test_a_failing_model_call_fails_only_its_request(rec, histories, monkeypatch):
    bad = rec.with_method(rec.method_name)  # same models, its own attributes
    poison = histories[3][-1]

    def flaky(hs, *a, **kw):
        if any(poison in h for h in hs):
            raise RuntimeError("boom")
        return rec.recommend_batch(hs, *a, **kw)

    monkeypatch.setattr(bad, "recommend_batch", flaky)
    clean = [h for h in histories if poison not in h][:3]
    with TestClient(create_app(bad, max_wait_ms=300)) as c:
        bodies = [{"history": [poison]}, *({"history": h} for h in clean)]
        out = concurrently(len(bodies), lambda i: c.post("/recommend", json=bodies[i]))
        assert out[0].status_code == 500 and out[0].json() == {"error": "the model failed (RuntimeError); see the "
                                                                        "server log"}
        for h, r in zip(clean, out[1:]):
            assert r.status_code == 200 and same(r.json(), expected(rec, h))
        assert c.post("/recommend", json={"history": clean[0]}).status_code == 200  # the worker lives on
        assert c.get("/health").json()["failed_batches"] == 1


def test_a_damaged_model_file_is_a_server_error_not_the_clients(rec, histories, monkeypatch):
    """A CheckpointError raised inside the model call (a file it reads lazily is damaged) is the
    server's failure: 500, not a 422 that tells the client to fix its request."""
    from genrec.errors import CheckpointError

    broken = rec.with_method(rec.method_name)

    def damaged(*a, **kw):
        raise CheckpointError("model/item_embeddings.npy: truncated")

    monkeypatch.setattr(broken, "recommend_batch", damaged)
    with TestClient(create_app(broken)) as c:
        r = c.post("/recommend", json={"history": histories[0]})
    assert r.status_code == 500 and r.json() == {"error": "the model failed (CheckpointError); see the server log"}


def test_a_content_length_of_non_ascii_digits_is_a_400():
    """"\xb2" (superscript two) passes str.isdigit() but not int(): the guard raised ValueError (a 500 under
    servers that pass such a header through)."""
    import asyncio

    from genrec.serve_guard import BodyGuard as _BodyGuard

    sent = []

    async def app(scope, receive, send):  # never reached
        raise AssertionError("the app was called")

    async def send(message):
        sent.append(message)

    async def receive():
        return {"type": "http.request", "body": b"{}", "more_body": False}

    scope = {"type": "http", "method": "POST", "path": "/recommend",
             "headers": [(b"content-length", "\xb2".encode("latin-1")), (b"content-type", b"application/json")]}
    asyncio.run(_BodyGuard(app, 4096, 5.0)(scope, receive, send))
    assert sent[0]["status"] == 400 and b"bad Content-Length header" in sent[1]["body"]


def test_a_slow_model_call_times_out_instead_of_hanging(rec, histories, monkeypatch):
    slow = rec.with_method(rec.method_name)

    def sleepy(*a, **kw):
        time.sleep(0.6)
        return rec.recommend_batch(*a, **kw)

    monkeypatch.setattr(slow, "recommend_batch", sleepy)
    t0 = time.perf_counter()
    with TestClient(create_app(slow, request_timeout_s=0.2)) as c:
        r = c.post("/recommend", json={"history": histories[0]})
    assert r.status_code == 503 and r.json() == {"error": "no answer within 0.2 s (the model is overloaded); "
                                                          "retry later"}
    assert time.perf_counter() - t0 < 5


def test_health_reports_a_model_call_stalled_past_the_request_timeout(rec, histories, monkeypatch):
    """A model call that never returns answered nobody while /health said "ok"."""
    import threading

    stuck = rec.with_method(rec.method_name)
    release = threading.Event()

    def hang(*a, **kw):
        release.wait(20)
        return rec.recommend_batch(*a, **kw)

    monkeypatch.setattr(stuck, "recommend_batch", hang)
    try:
        with TestClient(create_app(stuck, request_timeout_s=0.3)) as c:
            assert c.get("/health").json()["status"] == "ok"
            assert c.post("/recommend", json={"history": histories[0]}).status_code == 503  # its timeout
            time.sleep(0.1)
            r = c.get("/health")
            assert r.status_code == 503 and r.json()["status"] == "stalled" and r.json()["model_call_s"] > 0.3
            release.set()
    finally:
        release.set()


def test_the_serve_command_waits_for_calls_in_flight_as_long_as_a_request_waits(tiny_saved, monkeypatch):
    """uvicorn cancelled requests 10 s into a shutdown, before their 30 s wait: a plain-text 500."""
    import uvicorn

    from genrec.serve import REQUEST_TIMEOUT_S

    seen = {}

    class Stop(Exception):
        pass

    def capture(self, config):
        seen["graceful"] = config.timeout_graceful_shutdown
        raise Stop

    monkeypatch.setattr(uvicorn.Server, "__init__", capture)
    with pytest.raises(Stop):
        cli.main(["serve", str(tiny_saved), "--port", str(free_port())])
    assert seen["graceful"] >= REQUEST_TIMEOUT_S


def test_a_request_without_k_is_answered_where_max_k_is_below_ten(rec, histories):
    from dataclasses import replace

    small = rec.with_method(rec.method_name)
    small.settings = replace(rec.settings, k=5)  # a fusion method: max_k = fusion.k = 5
    assert small.max_k == 5
    with TestClient(create_app(small)) as c:
        r = c.post("/recommend", json={"history": histories[0]})
        assert r.status_code == 200 and len(r.json()["items"]) == 5
        r = c.post("/recommend", json={"history": histories[0], "k": 6})
        assert r.status_code == 422 and "between 1 and 5 (fusion.k), got 6" in r.json()["error"]


def test_shutdown_answers_every_waiting_request_at_once(rec, histories, monkeypatch):
    """Requests gathered into the batch being served, but in a group not yet called, get the
    shutdown 503 at once, not the request timeout."""
    from genrec.serve import ApiError, MicroBatcher

    slow = rec.with_method(rec.method_name)

    def sleepy(*a, **kw):
        time.sleep(0.5)
        return rec.recommend_batch(*a, **kw)

    monkeypatch.setattr(slow, "recommend_batch", sleepy)

    async def scenario():
        b = MicroBatcher(slow, max_wait_ms=50)
        b.start()
        # two groups of one batch (exclude_seen differs): the second waits for the first's call
        first = asyncio.ensure_future(b.submit([histories[0]], 10, False, 30.0))
        second = asyncio.ensure_future(b.submit([histories[1]], 10, True, 30.0))
        await asyncio.sleep(0.25)  # gathered, the first group's call under way
        t0 = time.perf_counter()
        await b.stop()
        out = await asyncio.gather(first, second, return_exceptions=True)
        return out, time.perf_counter() - t0

    (a, b), waited = asyncio.run(scenario())
    for r in (a, b):
        assert isinstance(r, ApiError) and r.status == 503 and "shutting down" in str(r), r
    assert waited < 2.0


def test_a_failed_batch_retries_only_requests_still_awaited(rec, histories, monkeypatch):
    from genrec.serve import ApiError, MicroBatcher

    calls = []
    bad = rec.with_method(rec.method_name)

    def failing(hs, *a, **kw):
        calls.append(len(hs))
        if len(hs) > 1:
            time.sleep(0.3)  # the second request's caller gives up meanwhile
            raise RuntimeError("boom")
        return rec.recommend_batch(hs, *a, **kw)

    monkeypatch.setattr(bad, "recommend_batch", failing)

    async def scenario():
        b = MicroBatcher(bad, max_wait_ms=10)
        b.start()
        out = await asyncio.gather(*(b.submit([h], 10, False, t) for h, t in zip(histories, (30.0, 0.15, 30.0))),
                                   return_exceptions=True)
        await b.stop()
        return out

    a, gave_up, c = asyncio.run(scenario())
    assert calls == [3, 1, 1]  # the group, then each request still awaited alone
    assert a[0].items and c[0].items
    assert isinstance(gave_up, ApiError) and gave_up.status == 503


# -- the command -----------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_command_checks_its_arguments(tiny_saved, capsys):
    assert cli.main(["serve", str(tiny_saved), "--port", "70000"]) == 2
    assert "argument --port: must be between 1 and 65535, got 70000" in capsys.readouterr().err
    assert cli.main(["serve", str(tiny_saved), "--max-batch", "0"]) == 2
    assert "argument --max-batch: must be >= 1, got 0" in capsys.readouterr().err
    assert cli.main(["serve", str(tiny_saved), "--max-wait-ms", "31000"]) == 2
    assert "argument --max-wait-ms: must be below 30000 (a request waits 30 s for its answer), got 31000" \
        in capsys.readouterr().err
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert cli.main(["serve", str(tiny_saved), "--port", str(port)]) == 2
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in capsys.readouterr().err


def test_the_real_server_process_answers_over_http(tiny_run, rec, histories):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "genrec.cli", "serve", str(tiny_run), "--port", str(port),
                             "--threads", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, f"the server exited: {proc.communicate()}"
            assert time.monotonic() < deadline, "the server did not answer /health within 60 s"
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        r = httpx.post(f"{url}/recommend", json={"history": histories[2], "k": 5}, timeout=10)
        assert r.status_code == 200 and r.json() == expected(rec, histories[2], 5)
        r = httpx.post(f"{url}/recommend", content=b"{", headers=JSON, timeout=10)
        assert r.status_code == 400 and "malformed JSON body" in r.json()["error"]
    finally:
        proc.terminate()
        try:
            out, err = proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
    # a graceful stop: uvicorn finishes, then re-raises SIGTERM so the exit status still tells why
    assert proc.returncode in (0, -signal.SIGTERM), err
    assert f"on http://127.0.0.1:{port}" in out

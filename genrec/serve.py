"""An HTTP service over a :class:`~genrec.recommender.Recommender` (FastAPI), with micro-batching.

    app = create_app(Recommender.from_pretrained("runs/beauty"))   # then: uvicorn.run(app) or `genrec serve`

**Endpoints** (every body JSON; every error ``{"error": "<message naming the field or id>", ...}``):

=========================  ==================================================================================
``POST /recommend``        ``{"history": [ids, oldest first], "k": 10, "exclude_seen": false,
                           "on_unknown": "skip"}`` -> ``{"method", "items": [{"item_id", "score"}], "gate",
                           "unknown_ids", "fallback"}``
``POST /recommend/batch``  ``{"histories": [[ids], ...], "k", "exclude_seen", "on_unknown"}`` ->
                           ``{"method", "results": [<one /recommend answer per history>]}``
``GET /health`` (or HEAD)  ``{"status", "method", "items", "max_k", "max_history", "requests",
                           "histories", "batches", "mean_batch_size", "queued", "failed_batches",
                           "model_call_s"}``: 200 with status ``ok``; 503 with ``stalled`` (a model
                           call has run past ``request_timeout_s``) or ``stopped``
``GET /items/{item_id}``   the item's text fields, ``index`` and ``semantic_id`` (or HEAD)
=========================  ==================================================================================

**Status codes.** 200 on success. 400: a body that is not valid JSON, a ``Content-Length`` that
is not a number, or a repeated ``Content-Type`` / ``Content-Length`` header (under uvicorn, a request
whose HTTP framing its parser refuses, such as ``Content-Length: abc`` or a negative one, is answered
by uvicorn itself: 400 with a plain-text body, before the service sees it). 404: ``GET /items`` of an
unknown item id (also an unknown path). 413: a body over ``max_body_bytes``, refused by its
``Content-Length`` or, without a truthful one, by the bytes actually read, before any parsing.
415: a ``Content-Type`` that is not JSON, or a ``Content-Encoding`` other than identity (bodies are
read uncompressed). 422: a well-formed request the service cannot answer:
a missing, extra or mistyped field (validation is strict: ids are JSON strings, ``k`` an integer,
flags booleans), ``k`` outside 1..``recommender.max_k`` (the message gives the limit; a request
without ``k`` gets 10, or ``max_k`` where that is smaller), an empty
history (the issue's reading: the popularity fallback is not a recommendation worth a call; a
history whose ids are all *unknown* still gets it, with ``fallback: true``), an id that is not
valid Unicode (JSON's ``"\\ud800"``: a lone surrogate), a history of more
than ``max_history_ids`` ids or a batch of more than ``max_batch_histories`` histories, and, under
``on_unknown: "error"``, unknown history ids (``unknown_ids`` in the error body). 422 rather than
404 for those: the endpoint exists, the body's content is what is wrong. 408: a body that does not
arrive within ``body_timeout_s``. 405: a method an endpoint does not take (the body checks apply to the two POST endpoints only). 503: the request queue is
full, the service is shutting down, or no answer came within ``request_timeout_s``; 500 only for a
failure of the model itself (logged with its traceback; a damaged model file included).

**Micro-batching.** ``/recommend`` and ``/recommend/batch`` requests are validated (unknown ids
included) in the event loop, then queued; one worker coroutine takes the first queued request,
gathers more until ``max_batch`` histories or ``max_wait_ms`` after the first (a request of more
histories than ``max_batch`` is a call of its own), groups them so that
one :meth:`Recommender.recommend_batch` call answers a group as a call of its own would (the same
items; scores equal up to float32 rounding, as the model's batched products pad differently),
and runs that call in a worker thread (the event loop keeps accepting requests; one model call at
a time). A group asks for the largest ``k`` among its requests and cuts each answer to its own
``k``: the ranking does not depend on ``k`` (fusion methods rank a fixed candidate set, SASRec and
the joint model the whole catalogue, the generative model a beam of ``fusion.beam >= k``), except
the generative model with ``exclude_seen``, whose beam widens to ``k`` plus the history's distinct
items: such requests are grouped by ``k`` so the answers do not change. If a group's call fails, each request of it is retried
alone, so a failure reaches only the request that causes it; a request's answer is awaited with a
timeout, so nothing hangs.
"""

# no `from __future__ import annotations`: FastAPI reads the request models of create_app's
# endpoints from their annotations, which must be real classes, not names of create_app's locals
import asyncio
import json
import logging
import math
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, AsyncIterator, Literal, Sequence

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from genrec.errors import CheckpointError, DataNotFoundError, GenrecError
from genrec.serve_guard import BodyGuard
from genrec.text_files import is_unicode

if TYPE_CHECKING:
    from genrec.recommender import Recommendations, Recommender

log = logging.getLogger(__name__)

__all__ = ["create_app", "MicroBatcher", "ApiError", "REQUEST_TIMEOUT_S"]


class ApiError(Exception):
    """An error answered as ``{"error": message, **extra}`` with HTTP ``status``."""

    def __init__(self, status: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.message, self.extra = status, message, extra


def _error_response(status: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status)


# -- micro-batching --------------------------------------------------------------------------------
@dataclass
class _Job:
    """One queued request: its histories (one for /recommend), options and the future it awaits."""

    histories: list[list[str]]
    k: int
    exclude_seen: bool
    key: tuple
    future: asyncio.Future = field(repr=False)


class MicroBatcher:
    """Queues recommendation requests and answers them in grouped ``recommend_batch`` calls, one
    at a time, in a worker thread (see the module doc). :meth:`start` / :meth:`stop` run inside the
    event loop that serves the requests (the app's lifespan)."""

    def __init__(self, recommender: "Recommender", *, max_batch: int = 64, max_wait_ms: float = 2.0,
                 max_queue: int = 4096) -> None:
        self.recommender = recommender
        self.max_batch, self.max_wait, self.max_queue = max_batch, max_wait_ms / 1000.0, max_queue
        self.requests = self.histories = self.batches = self.failed_batches = 0
        self._queue: asyncio.Queue[_Job] | None = None
        self._task: asyncio.Task | None = None
        self._held: _Job | None = None  # taken from the queue but left for the next batch (it would overflow)
        self._running: list[_Job] = []  # the jobs of the model call in progress
        self._gathered: list[_Job] = []  # the current batch: taken from the queue, not all answered yet
        self._call_started: float | None = None  # time.monotonic() when the model call in progress began

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def call_seconds(self) -> float:
        """How long the model call in progress has run (0 when none): /health reports a stalled worker,
        which answers nothing while it reports itself running."""
        started = self._call_started
        return 0.0 if started is None else time.monotonic() - started

    @property
    def queued(self) -> int:
        return (self._queue.qsize() if self._queue is not None else 0) + (self._held is not None)

    def start(self) -> None:
        """Start the worker coroutine in the running event loop."""
        self._queue = asyncio.Queue(self.max_queue)
        self._task = asyncio.get_running_loop().create_task(self._work(), name="genrec-serve-batcher")

    async def stop(self) -> None:
        """Stop the worker; every request still waiting gets a 503 rather than waiting forever."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
        pending = list(self._gathered) + list(self._running) + ([self._held] if self._held else [])
        self._held, self._gathered = None, []
        while self._queue is not None and not self._queue.empty():
            pending.append(self._queue.get_nowait())
        for job in pending:
            if not job.future.done():
                job.future.set_exception(ApiError(503, "the service is shutting down; retry elsewhere"))

    def key(self, histories: Sequence[Sequence[str]], k: int, exclude_seen: bool) -> tuple:
        """Requests with equal keys can share one model call (and take the group's largest ``k``)."""
        # Every method ranks independently of the other histories of a call. For fusion methods, SASRec
        # and the joint model the ranking does not depend on k either; the generative model's beam is
        # max(fusion.beam, k) = fusion.beam for every allowed k, but with exclude_seen it widens with k.
        if self.recommender.method_name == "generative" and exclude_seen:
            return (True, k)
        return (exclude_seen,)

    async def submit(self, histories: list[list[str]], k: int, exclude_seen: bool,
                     timeout: float) -> list["Recommendations"]:
        """Queue one request and await its answers (one per history); :class:`ApiError` 503 when
        the worker is not running, the queue is full or ``timeout`` seconds pass."""
        if not self.running or self._queue is None:
            raise ApiError(503, "the recommendation worker is not running (serve the app with its lifespan, "
                                "e.g. uvicorn or `with TestClient(app)`)")
        future = asyncio.get_running_loop().create_future()
        job = _Job(histories, k, exclude_seen, self.key(histories, k, exclude_seen), future)
        try:
            self._queue.put_nowait(job)
        except asyncio.QueueFull:
            raise ApiError(503, f"server busy: {self.max_queue} requests already queued; retry later") from None
        try:
            return await asyncio.wait_for(future, timeout)
        except asyncio.TimeoutError:  # TimeoutError from Python 3.11 on
            raise ApiError(503, f"no answer within {timeout:g} s (the model is overloaded); retry later") from None

    async def _next(self, timeout: float | None) -> _Job | None:
        if self._held is not None:
            job, self._held = self._held, None
            return job
        assert self._queue is not None
        if timeout is None:
            return await self._queue.get()
        try:
            return self._queue.get_nowait()
        except asyncio.QueueEmpty:
            if timeout <= 0:
                return None
        try:
            return await asyncio.wait_for(self._queue.get(), timeout)
        except asyncio.TimeoutError:
            return None

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            first = await self._next(None)
            jobs, size = [first], len(first.histories)
            self._gathered = jobs  # stop() answers every one of them, served or not
            deadline = loop.time() + self.max_wait
            while size < self.max_batch:
                job = await self._next(deadline - loop.time())
                if job is None:
                    break
                if size + len(job.histories) > self.max_batch:
                    self._held = job  # first in the next batch
                    break
                jobs.append(job)
                size += len(job.histories)
            groups: dict[tuple, list[_Job]] = {}
            for job in jobs:
                if not job.future.done():  # its caller may have given up (timeout)
                    groups.setdefault(job.key, []).append(job)
            for group in groups.values():
                await self._serve(group)
            self._gathered = []

    async def _serve(self, group: list[_Job]) -> None:
        """Answer one group with one model call (each job alone if that fails); every future is
        settled before this returns, whatever happens."""
        self._running = group
        try:
            try:
                self._call_started = time.monotonic()
                try:
                    answers = await asyncio.to_thread(self._call, group)
                finally:
                    self._call_started = None
            except Exception:
                if len(group) == 1:
                    raise
                log.warning("a batch of %d requests failed; answering each alone", len(group), exc_info=True)
                for job in group:
                    if not job.future.done():  # its caller may have given up meanwhile
                        await self._serve([job])
                return
            for job, recs in zip(group, answers):
                if not job.future.done():
                    job.future.set_result(recs)
        except Exception as e:
            self.failed_batches += 1
            log.exception("recommendation failed for a request of %d histories", len(group[0].histories))
            for job in group:
                if not job.future.done():
                    job.future.set_exception(e)
        finally:
            self._running = []
            for job in group:  # cancelled mid-call (shutdown): never leave a caller waiting
                if not job.future.done():
                    job.future.set_exception(ApiError(503, "the service is shutting down; retry elsewhere"))

    def _call(self, group: list[_Job]) -> list[list["Recommendations"]]:
        """One ``recommend_batch`` call for the whole group, cut back into each job's answers."""
        from genrec.recommender import Recommendations

        histories = [h for job in group for h in job.histories]
        t0 = time.perf_counter()
        # unknown ids were refused before queuing where the request asked so: "skip" is exact here
        recs = self.recommender.recommend_batch(histories, max(j.k for j in group), group[0].exclude_seen, "skip")
        log.debug("model call: %d requests, %d histories, %.1f ms", len(group), len(histories),
                  1000 * (time.perf_counter() - t0))
        out, at = [], 0
        for job in group:
            mine = recs[at:at + len(job.histories)]
            at += len(job.histories)
            out.append([Recommendations(r.items[:job.k], r.scores[:job.k], r.unknown_ids, r.gate, r.fallback)
                        for r in mine])
        self.batches += 1
        self.requests += len(group)
        self.histories += len(histories)
        return out


#: what each error status means, for the OpenAPI schema (the module doc has the whole list)
_ERROR_DESCRIPTIONS = {
    400: "malformed JSON, or a bad or repeated Content-Type / Content-Length header",
    404: "unknown item id",
    408: "the request body did not arrive in time",
    413: "request body over the size limit",
    415: "a Content-Type that is not JSON, or a compressed body",
    422: "a field missing, extra, mistyped or out of range; unknown ids under on_unknown=error",
    500: "the model failed (see the server log)",
    503: "queue full, no answer within the request timeout, or shutting down",
}


# -- validation messages -----------------------------------------------------------------------------
def _field(loc: Sequence[Any]) -> str:
    parts = [str(p) for p in loc[1:]] if loc and loc[0] == "body" else [str(p) for p in loc]
    return ".".join(parts) or "body"


def _describe(err: dict[str, Any], fields: Sequence[str]) -> str:
    """One pydantic error as ``field: message``."""
    where, kind, msg = _field(err.get("loc", ())), err.get("type", ""), str(err.get("msg", ""))
    if kind == "extra_forbidden":
        return f"{where}: unknown field (expected {', '.join(fields)})"
    if kind == "missing":
        return "body: expected a JSON object" if where == "body" else f"{where}: required field missing"
    if kind == "model_attributes_type" or (where == "body" and kind.endswith("_type")):
        return "body: expected a JSON object"
    return f"{where}: {msg.removeprefix('Value error, ')}"


def _result(method: str, r: "Recommendations") -> dict[str, Any]:
    return {"method": method,
            "items": [{"item_id": i, "score": s if math.isfinite(s) else None} for i, s in zip(r.items, r.scores)],
            "gate": r.gate, "unknown_ids": r.unknown_ids, "fallback": r.fallback}


# -- the app ---------------------------------------------------------------------------------------
#: how long a request waits for its answer by default (``create_app(request_timeout_s=...)``), seconds
REQUEST_TIMEOUT_S = 30.0


def create_app(recommender: "Recommender", *, max_batch: int = 64, max_wait_ms: float = 2.0,
               max_history_ids: int = 1000, max_body_bytes: int = 1 << 20, max_batch_histories: int = 256,
               max_queue: int = 4096, request_timeout_s: float = REQUEST_TIMEOUT_S, body_timeout_s: float = 10.0
               ) -> FastAPI:
    """A FastAPI app serving ``recommender`` (endpoints, status codes and micro-batching in the
    module doc). ``max_batch`` histories per model call, gathered for at most ``max_wait_ms`` after
    the first request; requests are refused beyond ``max_history_ids`` ids a history,
    ``max_batch_histories`` histories a batch request, ``max_body_bytes`` of body or ``max_queue``
    queued requests; a request waits at most ``request_timeout_s`` for its answer and
    ``body_timeout_s`` for its body."""
    for name, value in (("max_batch", max_batch), ("max_history_ids", max_history_ids),
                        ("max_body_bytes", max_body_bytes), ("max_batch_histories", max_batch_histories),
                        ("max_queue", max_queue)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    for name, value in (("max_wait_ms", max_wait_ms), ("request_timeout_s", request_timeout_s),
                        ("body_timeout_s", body_timeout_s)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    if request_timeout_s <= 0 or body_timeout_s <= 0:
        raise ValueError("request_timeout_s and body_timeout_s must be > 0")
    if max_wait_ms >= request_timeout_s * 1000.0:  # every request would give up while its batch gathers
        raise ValueError(f"max_wait_ms ({max_wait_ms:g}) must be below request_timeout_s ({request_timeout_s:g} s "
                         f"= {request_timeout_s * 1000.0:g} ms), the longest a request waits for its answer")

    rec = recommender
    method, max_k = rec.method_name, rec.max_k
    k_limit = rec.max_k_source
    batcher = MicroBatcher(rec, max_batch=max_batch, max_wait_ms=max_wait_ms, max_queue=max_queue)

    default_k = min(10, max_k)  # a request without k is never refused for it

    def check_k(k: int) -> int:
        if not 1 <= k <= max_k:
            raise ValueError(f"must be between 1 and {max_k} ({k_limit}), got {k}")
        return k

    def check_history(h: list[str]) -> list[str]:
        if not h:
            raise ValueError("empty; give at least one item id (oldest first)")
        if len(h) > max_history_ids:
            raise ValueError(f"{len(h)} item ids, more than the {max_history_ids} accepted "
                             f"(the model reads the last {rec.max_history})")
        for i, item_id in enumerate(h):  # JSON's "\ud800" escape reads as a lone surrogate: no item, no answer
            if not is_unicode(item_id):
                raise ValueError(f"item id {i} is not valid Unicode (a lone surrogate: {item_id!r})")
        return h

    def check_histories(hs: list[list[str]]) -> list[list[str]]:
        if not hs:
            raise ValueError("empty; give at least one history")
        if len(hs) > max_batch_histories:
            raise ValueError(f"{len(hs)} histories, more than the {max_batch_histories} accepted in one request")
        return hs

    # the limits in the OpenAPI schema too (json_schema_extra: the validators above give the messages)
    History = Annotated[list[str], AfterValidator(check_history),
                        Field(json_schema_extra={"minItems": 1, "maxItems": max_history_ids})]
    K = Annotated[int, AfterValidator(check_k), Field(json_schema_extra={"minimum": 1, "maximum": max_k})]

    class RecommendRequest(BaseModel):
        """One history of raw item ids, oldest first."""

        model_config = ConfigDict(strict=True, extra="forbid", validate_default=True)
        history: History
        k: K = default_k
        exclude_seen: bool = False
        on_unknown: Literal["skip", "error"] = "skip"

    class BatchRequest(BaseModel):
        """Many histories, answered with the same options."""

        model_config = ConfigDict(strict=True, extra="forbid", validate_default=True)
        histories: Annotated[list[History], AfterValidator(check_histories)]
        k: K = default_k
        exclude_seen: bool = False
        on_unknown: Literal["skip", "error"] = "skip"

    class ScoredItem(BaseModel):
        item_id: str
        score: float | None

    class RecommendResponse(BaseModel):
        method: str
        items: list[ScoredItem]
        gate: float | None
        unknown_ids: list[str]
        fallback: bool

    class BatchResponse(BaseModel):
        method: str
        results: list[RecommendResponse]

    class ErrorBody(BaseModel):
        """Every error's body (FastAPI's own validation body is replaced by this one)."""

        error: str
        unknown_ids: list[str] | None = None

    def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
        """OpenAPI ``responses`` of ``codes``, each with the error body."""
        return {code: {"model": ErrorBody, "description": _ERROR_DESCRIPTIONS[code]} for code in codes}

    post_errors = errors(400, 408, 413, 415, 422, 500, 503)

    fields = {RecommendRequest: list(RecommendRequest.model_fields), BatchRequest: list(BatchRequest.model_fields)}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        batcher.start()
        log.info("serving method %s (%d items), max_batch %d, max_wait %.1f ms", method, rec.num_items,
                 max_batch, max_wait_ms)
        try:
            yield
        finally:
            await batcher.stop()

    app = FastAPI(title="genrec", summary="Generative recommendation with semantic IDs: a trained recommender",
                  lifespan=lifespan)
    app.state.batcher = batcher
    app.add_middleware(BodyGuard, max_bytes=max_body_bytes, timeout=body_timeout_s)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return _error_response(exc.status, exc.message, **exc.extra)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = list(exc.errors())
        bad_json = next((e for e in errors if e.get("type") == "json_invalid"), None)
        if bad_json is not None:
            loc = bad_json.get("loc", ())
            where = f" at character {loc[-1]}" if len(loc) > 1 else ""
            reason = (bad_json.get("ctx") or {}).get("error", "not JSON")
            return _error_response(400, f"malformed JSON body: {reason}{where}")
        expected = fields[BatchRequest if request.url.path.endswith("/batch") else RecommendRequest]
        described = [_describe(e, expected) for e in errors]
        message = "; ".join(described[:5]) + (f"; and {len(described) - 5} more" if len(described) > 5 else "")
        return _error_response(422, message)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
        if exc.status_code == 400 and detail == "There was an error parsing the body":
            detail = "malformed JSON body (could not be parsed)"  # e.g. nesting too deep for the parser
        elif exc.status_code == 404 and detail == "Not Found":
            detail = f"no endpoint {request.method} {request.url.path}"
        elif exc.status_code == 405:
            detail = f"method {request.method} not allowed on {request.url.path}"
        response = _error_response(exc.status_code, detail)
        response.headers.update(exc.headers or {})  # e.g. Allow on a 405
        return response

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception) -> JSONResponse:
        log.error("unexpected error answering %s %s", request.method, request.url.path, exc_info=exc)
        return _error_response(500, f"internal error ({type(exc).__name__}); see the server log")

    def refuse_unknown(histories: list[list[str]], where: Sequence[str]) -> None:
        """422 naming every history (``where``) that holds ids the catalogue does not know."""
        problems, unknown = [], {}  # a dict: each id once, in order, in linear time (a list scan froze the
        for name, h in zip(where, histories):  # server ~55 s on a 1 MiB body of distinct unknown ids)
            missing = list(dict.fromkeys(i for i in h if i not in rec.index))
            if missing:
                more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
                problems.append(f"{name}: unknown item id(s) {missing[:5]}{more}")
                unknown.update(dict.fromkeys(missing))
        if problems:
            more = f"; and {len(problems) - 5} more histories" if len(problems) > 5 else ""
            raise ApiError(422, "; ".join(problems[:5]) + more, unknown_ids=list(unknown))

    async def answer(histories: list[list[str]], k: int, exclude_seen: bool) -> list["Recommendations"]:
        try:
            return await batcher.submit(histories, k, exclude_seen, request_timeout_s)
        except ApiError:
            raise
        except (CheckpointError, DataNotFoundError) as e:  # a damaged or missing model file: not the client's fault
            raise ApiError(500, f"the model failed ({type(e).__name__}); see the server log") from None
        except GenrecError as e:  # the library refused the input itself (checked here first; kept as a net)
            raise ApiError(422, str(e)) from None
        except Exception as e:
            raise ApiError(500, f"the model failed ({type(e).__name__}); see the server log") from None

    @app.post("/recommend", response_model=RecommendResponse, summary="top-k items for one history",
              responses=post_errors)
    async def recommend(body: RecommendRequest) -> dict[str, Any]:
        if body.on_unknown == "error":
            refuse_unknown([body.history], ["history"])
        (recs,) = await answer([body.history], body.k, body.exclude_seen)
        return _result(method, recs)

    @app.post("/recommend/batch", response_model=BatchResponse, summary="top-k items for many histories",
              responses=post_errors)
    async def recommend_batch(body: BatchRequest) -> dict[str, Any]:
        if body.on_unknown == "error":
            refuse_unknown(body.histories, [f"histories.{n}" for n in range(len(body.histories))])
        recs = await answer(body.histories, body.k, body.exclude_seen)
        return {"method": method, "results": [_result(method, r) for r in recs]}

    @app.get("/health", summary="liveness and batching counters (503 when stopped or stalled)")
    async def health() -> JSONResponse:
        b = batcher
        # a model call running past the request timeout answers nobody: a load balancer should see it
        stalled = b.running and b.call_seconds() > request_timeout_s
        status = "stalled" if stalled else "ok" if b.running else "stopped"
        return JSONResponse(status_code=200 if status == "ok" else 503, content={
            "status": status, "method": method, "items": rec.num_items, "max_k": max_k,
            "max_history": rec.max_history, "requests": b.requests, "histories": b.histories, "batches": b.batches,
            "mean_batch_size": b.histories / b.batches if b.batches else 0.0, "queued": b.queued,
            "failed_batches": b.failed_batches, "model_call_s": round(b.call_seconds(), 3)})

    # HEAD as its own route: one route for both gave them one operationId (invalid OpenAPI)
    app.add_api_route("/health", health, methods=["HEAD"], include_in_schema=False)

    @app.get("/items/{item_id:path}", summary="an item's text fields and semantic ID", responses=errors(404))
    async def item(item_id: str) -> dict[str, Any]:
        if item_id not in rec.index:
            raise ApiError(404, f"unknown item id {item_id!r}", unknown_ids=[item_id])
        return rec.item(item_id)

    app.add_api_route("/items/{item_id:path}", item, methods=["HEAD"], include_in_schema=False)  # was a 405

    return app

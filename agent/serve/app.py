"""``pllm serve``: one FastAPI app over one pllm stack.

* ``POST /v1/chat/completions`` (streamed over SSE or not) and ``GET /v1/models`` speak the OpenAI chat API, so the
  official ``openai`` client, LangChain's ``ChatOpenAI`` and the front ends built on them work with ``base_url``
  pointed here. The request's ``user`` field (or the ``X-Pllm-User`` header) names the pllm user; the newest
  ``user`` message is the turn. pllm keeps the conversation itself (the ``X-Pllm-Session`` header names the
  session, default ``default``), so the earlier messages a client resends are not read again.
* ``/v1/users/...``: the memory REST API (turns, facts current / as-of / history, search, change events, export,
  import, forget, the user's knowledge edits, adapter versions and jobs, the knowledge graph); OpenAPI at ``/docs``.
* ``/``: the web chat (plain files under ``agent/serve/static``; nothing is fetched from elsewhere).

Keys (:mod:`agent.serve.keys`): with ``require_keys`` every route but ``/``, ``/static``, ``/health`` and the docs
needs ``Authorization: Bearer KEY`` or ``X-API-Key: KEY``; a key reaches only the users in its scope (403, and
nothing is touched, for another user). Errors are OpenAI-shaped: ``{"error": {"message", "type", "code"}}``.

Turns run on worker threads; concurrent turns of different users meet in the local model's batcher (enable it
with ``LocalModel.enable_batching``; ``pllm serve`` does) and are decoded together.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agent.errors import InvalidDocument, InvalidTurn, NoUserData, UserDataError
from agent.serve.keys import ApiKey, KeyStore
from memory.errors import InvalidInput, PllmMemoryError, StoreError, UnknownUser
from memory.validation import check_user_id

if TYPE_CHECKING:  # pragma: no cover
    from agent.stack import Stack
    from editing import GenerationSettings
    from memory.records import ChangeEvent, Fact

__all__ = ["create_app", "MAX_BODY_BYTES"]

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1_000_000
STATIC = Path(__file__).with_name("static")


# ---------------------------------------------------------------------------------------------- errors


def _error(status: int, message: str, kind: str) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "code": status}}, status_code=status)


class ApiError(HTTPException):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error") -> None:
        super().__init__(status, message)
        self.kind = kind


def _location(loc: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in loc if p != "body") or "body"


def _validation_message(exc: RequestValidationError) -> tuple[int, str]:
    errors = list(exc.errors())
    for e in errors:
        if e.get("type") == "json_invalid":
            ctx = e.get("ctx") or {}
            return 400, f"the request body is not valid JSON ({ctx.get('error', e.get('msg'))}); send a JSON object"
    parts = []
    for e in errors[:5]:
        where = _location(tuple(e.get("loc", ())))
        if e.get("type") == "extra_forbidden":
            parts.append(f"unknown field {where!r}: remove it (see /docs for the fields this route takes)")
        elif e.get("type") == "missing":
            parts.append(f"{where} is required")
        else:
            parts.append(f"{where}: {e.get('msg')}")
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return 422, "; ".join(parts) + more


class BodyLimit:
    """Refuse a request body over ``max_bytes`` with 413 before any route reads it (declared or streamed)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        too_big = f"the request body is over {self.max_bytes:,} bytes; send less (one turn is at most a few KB)"
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await _error(413, too_big, "invalid_request_error")(scope, receive, send)
            return
        if declared is not None or scope.get("method") in ("GET", "HEAD", "DELETE", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        # No declared length (a chunked body): read it here, up to the limit, and replay it to the app.
        chunks, seen = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                await self.app(scope, receive, send)  # the client went away: let the app see it
                return
            chunks.append(message.get("body", b""))
            seen += len(chunks[-1])
            if seen > self.max_bytes:
                await _error(413, too_big, "invalid_request_error")(scope, receive, send)
                return
            if not message.get("more_body", False):
                break
        body, replayed = b"".join(chunks), False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


# ---------------------------------------------------------------------------------------------- schemas


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None
    function_call: dict[str, Any] | None = None
    refusal: str | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(str(p.get("text", "")) for p in self.content if p.get("type") in (None, "text"))
        return self.content or ""


class ChatCompletionRequest(_Strict):
    """The OpenAI chat-completions request. Fields pllm does not use are accepted (clients send them) and ignored,
    except where noted; any other field is refused."""

    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    user: str | None = None
    max_tokens: int | None = Field(default=None, ge=1, le=4096)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=4096)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    stop: str | list[str] | None = None
    n: int | None = Field(default=None, ge=1, le=1, description="only 1 is supported")
    seed: int | None = None
    # accepted and ignored
    top_p: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    response_format: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    functions: list[dict[str, Any]] | None = None
    function_call: str | dict[str, Any] | None = None
    metadata: dict[str, str] | None = None
    store: bool | None = None
    service_tier: str | None = None
    reasoning_effort: str | None = None
    modalities: list[str] | None = None
    prediction: dict[str, Any] | None = None
    audio: dict[str, Any] | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None
    verbosity: str | None = None


class TurnBody(_Strict):
    text: str
    role: Literal["user", "assistant"] = "user"
    session_id: str = "default"
    at: datetime | None = Field(default=None, description="when it was said (ISO-8601); default: now")


class ChatBody(_Strict):
    text: str
    session_id: str = "web"


class FeedbackBody(_Strict):
    value: Literal[1, -1]
    reply_id: str | None = None
    session_id: str = "default"


# ---------------------------------------------------------------------------------------------- JSON views


def fact_json(fact: "Fact", user_id: str, status: str) -> dict[str, Any]:
    from agent.views import _fact

    return {"id": fact.id, "subject": fact.subject, "relation": fact.relation, "object": fact.object,
            "category": fact.category, "kind": fact.kind, "polarity": fact.polarity,
            "valid_from": fact.valid_from.isoformat(), "valid_to": fact.valid_to.isoformat() if fact.valid_to else None,
            "recorded_at": fact.recorded_at.isoformat(), "status": status, "text": _fact(fact, user_id)}


def event_json(event: "ChangeEvent", user_id: str) -> dict[str, Any]:
    from agent.views import describe_event

    at = None
    for name in ("new", "fact"):
        fact = getattr(event, name, None)
        if fact is not None:
            at = fact.valid_from.isoformat() if name == "new" else (fact.valid_to or fact.valid_from).isoformat()
    return {"kind": type(event).__name__, "text": describe_event(event, user_id), "at": at}


def _sse(data: Mapping[str, Any] | str, event: str | None = None) -> str:
    body = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    return (f"event: {event}\n" if event else "") + f"data: {body}\n\n"


_DONE = object()


async def _pump(start: Callable[[], Iterator[Any]]) -> AsyncIterator[Any]:
    """Run a blocking iterator on its own thread (all of it on that one thread: a LangGraph run must not hop
    threads between steps) and hand its items to the event loop. The thread runs to the end even when the
    client goes away, so a turn that started is always remembered."""
    loop = asyncio.get_running_loop()
    items: asyncio.Queue[Any] = asyncio.Queue()

    def run() -> None:
        try:
            for item in start():
                loop.call_soon_threadsafe(items.put_nowait, item)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, which re-raises it
            loop.call_soon_threadsafe(items.put_nowait, exc)
        finally:
            loop.call_soon_threadsafe(items.put_nowait, _DONE)

    threading.Thread(target=run, name="pllm-serve-turn", daemon=True).start()
    while (item := await items.get()) is not _DONE:
        if isinstance(item, BaseException):
            raise item
        yield item


# ---------------------------------------------------------------------------------------------- keys


def _caller(request: Request) -> ApiKey | None:
    """The request's key (None when keys are off); 401 without a live one."""
    if not request.app.state.require_keys:
        return None
    keys: KeyStore = request.app.state.keys
    auth = request.headers.get("authorization", "")
    secret = auth[7:].strip() if auth.lower().startswith("bearer ") else request.headers.get("x-api-key")
    if not secret:
        raise ApiError(401, "no API key: send 'Authorization: Bearer KEY' or 'X-API-Key: KEY' (make a key with "
                            "`pllm keys create --user NAME`)", "authentication_error")
    key = keys.verify(secret)
    if key is None:
        raise ApiError(401, "unknown or revoked API key", "authentication_error")
    return key


Caller = Annotated[ApiKey | None, Depends(_caller)]


# ---------------------------------------------------------------------------------------------- the app


def create_app(stack: "Stack", *, keys: KeyStore | None = None, require_keys: bool = False,
               max_body_bytes: int = MAX_BODY_BYTES, title: str = "pllm") -> FastAPI:
    """The app over ``stack`` (which the caller owns and closes). ``require_keys``: every route but the page, the
    docs and ``/health`` needs a key from ``keys`` (``pllm serve`` turns it on for any host but loopback)."""
    if require_keys and keys is None:
        raise ValueError("require_keys=True needs a KeyStore (keys=KeyStore.under(home))")
    agent, memory, settings = stack.agent, stack.memory, stack.settings
    model_id = stack.local.model_id if stack.local is not None else type(agent.chat_model).__name__
    started = int(time.time())
    app = FastAPI(title=title, version=_version(),
                  description="Personalized chat (OpenAI-compatible) and lifelong memory of each user.")
    app.state.stack = stack
    app.state.keys = keys
    app.state.require_keys = require_keys

    # -------------------------------------------------------------------------------------- errors
    @app.exception_handler(HTTPException)
    async def _http(_: Request, exc: HTTPException) -> JSONResponse:
        kind = getattr(exc, "kind", {401: "authentication_error", 403: "permission_error",
                                     404: "not_found_error"}.get(exc.status_code, "invalid_request_error"))
        return _error(exc.status_code, str(exc.detail), kind)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        status, message = _validation_message(exc)
        return _error(status, message, "invalid_request_error")

    @app.exception_handler(PllmMemoryError)
    async def _memory_error(_: Request, exc: PllmMemoryError) -> JSONResponse:
        return _mapped(exc)

    @app.exception_handler(InvalidTurn)
    async def _turn_error(_: Request, exc: InvalidTurn) -> JSONResponse:
        return _mapped(exc)

    # -------------------------------------------------------------------------------------- keys
    def allowed(key: ApiKey | None, user_id: str) -> str:
        try:
            user_id = check_user_id(user_id)
        except InvalidInput as exc:
            raise ApiError(400, str(exc)) from exc
        if key is not None and not key.allows(user_id):
            raise ApiError(403, f"this API key may not act for user {user_id!r}", "permission_error")
        return user_id

    # -------------------------------------------------------------------------------------- page, health
    if STATIC.is_dir():
        app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        index = STATIC / "index.html"
        if not index.is_file():
            raise ApiError(404, "the web chat page is not installed with this pllm", "not_found_error")
        return FileResponse(index)

    @app.get("/health", tags=["server"])
    def health() -> dict[str, Any]:
        return {"status": "ok", "model": model_id, "keys_required": require_keys,
                "model_level": agent.model_level}

    # -------------------------------------------------------------------------------------- OpenAI
    @app.get("/v1/models", tags=["openai"])
    def models(_: Caller) -> dict[str, Any]:
        return {"object": "list", "data": [{"id": model_id, "object": "model", "created": started,
                                            "owned_by": "pllm"}]}

    @app.post("/v1/chat/completions", tags=["openai"], response_model=None)
    async def chat_completions(body: ChatCompletionRequest, request: Request, key: Caller
                               ) -> JSONResponse | StreamingResponse:
        name = body.user or request.headers.get("x-pllm-user")
        if not name:
            raise ApiError(400, "no pllm user: set the request's `user` field (openai: user=...) or the X-Pllm-User "
                                "header to the id of the user this turn belongs to")
        user_id = allowed(key, name)
        session_id = request.headers.get("x-pllm-session") or "default"
        said = next((m for m in reversed(body.messages) if m.role == "user"), None)
        if said is None or not said.text().strip():
            raise ApiError(400, "messages has no user message with text: the newest role=user message is the turn")
        generation = _generation(stack, body)
        # Validated (and refused with nothing stored) before any byte of the reply is sent.
        pieces = await run_in_threadpool(lambda: agent.stream(user_id, said.text(), session_id=session_id,
                                                              generation=generation))
        completion_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        created = int(time.time())
        if body.stream:
            usage = bool((body.stream_options or {}).get("include_usage"))
            return StreamingResponse(_openai_stream(pieces, completion_id, created, usage, user_id, session_id),
                                     media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        reply = "".join([p async for p in _pump(lambda: pieces)])
        return JSONResponse({
            "id": completion_id, "object": "chat.completion", "created": created, "model": model_id,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": reply}, "finish_reason": "stop",
                         "logprobs": None}],
            "usage": _usage(user_id, session_id, reply),
            "pllm": _turn_summary(user_id, session_id)})

    async def _openai_stream(pieces: Iterator[str], cid: str, created: int, include_usage: bool, user_id: str,
                             session_id: str) -> AsyncIterator[str]:
        def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
            return {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model_id,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]}

        yield _sse(chunk({"role": "assistant", "content": ""}))
        reply = []
        try:
            async for piece in _pump(lambda: pieces):
                reply.append(piece)
                yield _sse(chunk({"content": piece}))
        except Exception as exc:  # noqa: BLE001 - the status line is sent: report in the stream
            log.exception("a streamed turn of %s failed", user_id)
            yield _sse({"error": {"message": f"{type(exc).__name__}: {exc}", "type": "server_error", "code": 500}})
            return
        yield _sse(chunk({}, "stop"))
        if include_usage:
            usage = await run_in_threadpool(_usage, user_id, session_id, "".join(reply))
            yield _sse({"id": cid, "object": "chat.completion.chunk", "created": created, "model": model_id,
                        "choices": [], "usage": usage})
        yield _sse("[DONE]")

    def _usage(user_id: str, session_id: str, reply: str) -> dict[str, int]:
        count = stack.local.count_tokens if stack.local is not None else (lambda t: max(1, len(t) // 4))
        prompt = agent.last_turn(user_id, session_id).get("prompt") or []
        p = sum(count(str(m.content)) for m in prompt)
        c = count(reply) if reply else 0
        return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}

    def _turn_summary(user_id: str, session_id: str) -> dict[str, Any]:
        state = agent.last_turn(user_id, session_id)
        return {"user": user_id, "session_id": session_id, "reply_id": state.get("reply_id"),
                "events": [event_json(e, user_id) for e in state.get("events") or []], "jobs": state.get("jobs") or []}

    # -------------------------------------------------------------------------------------- memory REST
    @app.get("/v1/users", tags=["memory"])
    def users(key: Caller) -> dict[str, Any]:
        known = memory.users()
        return {"users": [u for u in known if key is None or key.allows(u)]}

    @app.post("/v1/users/{user_id}/chat", tags=["memory"])
    def chat(user_id: str, body: ChatBody, key: Caller) -> StreamingResponse:
        """One personalized turn, streamed as server-sent events: ``token`` events, then ``done`` with the reply,
        the turn's change events and the model-update jobs it queued (what the web chat shows)."""
        user_id = allowed(key, user_id)
        pieces = agent.stream(user_id, body.text, session_id=body.session_id)

        async def events() -> AsyncIterator[str]:
            reply = []
            try:
                async for piece in _pump(lambda: pieces):
                    reply.append(piece)
                    yield _sse({"text": piece}, "token")
                summary = await run_in_threadpool(_turn_summary, user_id, body.session_id)
            except Exception as exc:  # noqa: BLE001 - reported in the stream
                log.exception("a web-chat turn of %s failed", user_id)
                yield _sse({"message": f"{type(exc).__name__}: {exc}"}, "error")
                return
            yield _sse({"reply": "".join(reply), **summary}, "done")

        return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    @app.post("/v1/users/{user_id}/turns", tags=["memory"], status_code=201)
    def add_turn(user_id: str, body: TurnBody, key: Caller) -> dict[str, Any]:
        """Remember one turn without a reply (what mem0's ``add`` does); the change events it caused."""
        user_id = allowed(key, user_id)
        done = memory.remember(user_id, body.text, role=body.role, session_id=body.session_id, at=body.at)
        if agent.worker.handlers:
            agent.worker.poke()  # new facts: the knowledge-edit outbox has rows for the worker
        return {"episode_id": done.episode.id, "events": [event_json(e, user_id) for e in done.events]}

    @app.post("/v1/users/{user_id}/feedback", tags=["memory"])
    def feedback(user_id: str, body: FeedbackBody, key: Caller) -> dict[str, Any]:
        """Rate a reply (+1 / -1; default: the session's last one): moves the user's style weights."""
        user_id = allowed(key, user_id)
        rated = agent.rate(user_id, body.value, reply_id=body.reply_id, session_id=body.session_id)
        return {"reply_id": rated.feedback.episode_id, "value": rated.feedback.value,
                "events": [event_json(e, user_id) for e in rated.events]}

    @app.get("/v1/users/{user_id}/facts", tags=["memory"])
    def facts(user_id: str, key: Caller, view: Literal["current", "history", "as_of"] = "current",
              at: Annotated[datetime | None, Query(description="with view=as_of: ISO-8601 time")] = None
              ) -> dict[str, Any]:
        """The user's facts: ``current`` (default), ``history`` (superseded and retracted ones too, with their
        dates and status) or ``as_of`` (those true at ``at`` in the user's world, by what is known now)."""
        user_id = allowed(key, user_id)
        if view == "as_of":
            if at is None:
                raise ApiError(400, "view=as_of needs at=ISO-8601 time (e.g. at=2026-01-05T09:00:00Z)")
            # True at ``at`` in the user's world, by what is known now (a later correction counts).
            rows = [f for f in memory.facts(user_id, include_superseded=True) if f.valid_at(at)]
            status = _statuses(user_id)
            return {"user": user_id, "at": at.isoformat(), "facts": [
                fact_json(f, user_id, status.get(f.id, "current") if f.valid_to else "current") for f in rows]}
        rows = memory.facts(user_id, include_superseded=view == "history")
        status = _statuses(user_id) if view == "history" else {}
        return {"user": user_id, "facts": [fact_json(f, user_id, status.get(f.id, "current") if f.valid_to else
                                                     "current") for f in rows]}

    def _statuses(user_id: str) -> dict[str, str]:
        out: dict[str, str] = {}
        for ev in memory.graph.events(user_id):
            if ev.op == "supersede":
                out[ev.fact_id] = "superseded"
            elif ev.op == "retract":
                out[ev.fact_id] = "retracted"
        return out

    @app.get("/v1/users/{user_id}/events", tags=["memory"])
    def events(user_id: str, key: Caller, limit: Annotated[int, Query(ge=1, le=1000)] = 50) -> dict[str, Any]:
        """The user's fact changes, oldest first (the last ``limit``)."""
        from memory.records import FactAdded, FactRetracted, FactSuperseded

        user_id = allowed(key, user_id)
        log_rows = memory.graph.events(user_id)
        by_id = {ev.fact_id: ev.fact for ev in log_rows}
        replacements = {ev.superseded_by for ev in log_rows if ev.op == "supersede"}
        out = []
        for ev in log_rows:
            change: Any
            if ev.op == "assert" and ev.fact_id in replacements:
                continue  # the new value of a supersession: its "~ old → new" row already says it
            if ev.op == "assert":
                change = FactAdded(ev.fact)
            elif ev.op == "supersede" and ev.superseded_by in by_id:
                change = FactSuperseded(ev.fact, by_id[ev.superseded_by])
            elif ev.op == "retract":
                change = FactRetracted(ev.fact, ev.episode_id)
            else:
                continue
            out.append({**event_json(change, user_id), "at": ev.at.isoformat(), "seq": ev.seq})
        return {"user": user_id, "events": out[-limit:]}

    @app.get("/v1/users/{user_id}/search", tags=["memory"])
    def search(user_id: str, key: Caller, q: Annotated[str, Query(min_length=1, max_length=2000)],
               k: Annotated[int, Query(ge=1, le=50)] = 5) -> dict[str, Any]:
        """What the agent would recall for ``q``: facts and turns, best first."""
        user_id = allowed(key, user_id)
        if not memory.has_user(user_id):
            raise ApiError(404, f"nothing is stored about user {user_id!r}", "not_found_error")
        rec = memory.recall(user_id, q, k=k)
        return {"user": user_id, "query": q,
                "facts": [{**fact_json(s.fact, user_id, "current" if s.fact.valid_to is None else "past"),
                           "score": s.score} for s in rec.facts],
                "episodes": [{"id": e.episode_id, "text": e.text, "at": e.at.isoformat(), "role": e.role,
                              "session_id": e.session_id, "score": e.score, "sources": list(e.sources)}
                             for e in rec.episodes]}

    @app.get("/v1/users/{user_id}/graph", tags=["memory"])
    def graph(user_id: str, key: Caller) -> dict[str, Any]:
        """The user's knowledge graph (networkx), superseded edges included and marked."""
        import networkx as nx

        user_id = allowed(key, user_id)
        g = nx.MultiDiGraph()
        for f in memory.facts(user_id, include_superseded=True):
            g.add_edge(f.subject, f.object, label=f.relation.replace("_", " ") + (f" ({f.category})" if f.category
                                                                                  else ""),
                       current=f.valid_to is None)
        return {"user": user_id, "nodes": [{"id": n, "label": "you" if n == user_id else n} for n in g.nodes],
                "edges": [{"source": u, "target": v, "label": d["label"], "current": d["current"]}
                          for u, v, d in g.edges(data=True)]}

    @app.get("/v1/users/{user_id}/export", tags=["memory"])
    def export(user_id: str, key: Caller) -> JSONResponse:
        user_id = allowed(key, user_id)
        return JSONResponse(_user_data_call(lambda: agent.export(user_id)))

    @app.post("/v1/users/{user_id}/import", tags=["memory"], status_code=201)
    def import_(user_id: str, document: dict[str, Any], key: Caller) -> dict[str, Any]:
        """Load an export document as this user (refused when the user already has data)."""
        user_id = allowed(key, user_id)
        return {"user": user_id, "imported": _user_data_call(lambda: agent.import_(document, user_id=user_id))}

    @app.delete("/v1/users/{user_id}", tags=["memory"])
    def forget(user_id: str, key: Caller) -> dict[str, Any]:
        """Erase the user everywhere: memory, threads, knowledge edits, adapters, jobs."""
        user_id = allowed(key, user_id)
        counts = _user_data_call(lambda: agent.forget(user_id))
        if not any(counts.values()):
            raise ApiError(404, f"nothing is stored about user {user_id!r}; nothing to forget", "not_found_error")
        return {"user": user_id, "forgotten": counts}

    # -------------------------------------------------------------------------------------- model level
    def _edits(user_id: str) -> list[dict[str, Any]]:
        from agent.model_level import edit_registry

        registry = edit_registry(settings.home)
        try:
            return [r.as_dict() for r in registry.list(user_id)]
        finally:
            registry.close()

    def _adapters(user_id: str) -> list[dict[str, Any]]:
        from agent.model_level import adapter_store

        out = []
        for v in adapter_store(settings.home).versions(user_id):
            extra = dict(v.extra)
            out.append({"version": v.version, "published": v.published, "base_model_id": v.base_model_id,
                        "stale": stack.local is not None and v.base_model_id != stack.local.model_id,
                        "created_at": v.created_at, "kind": str(extra.get("kind", "edits")),
                        "edits": len(extra.get("edits", [])), "style_version": extra.get("style_version"),
                        "preference": extra.get("preference")})
        return out

    def _jobs(user_id: str) -> list[dict[str, Any]]:
        assert agent.worker.store is not None
        rows = []
        for r in agent.worker.store.list(user_id):
            row = r.as_dict()
            row["finished_at"] = row["updated_at"] if r.state in ("done", "failed", "skipped") else None
            rows.append(row)
        return rows

    @app.get("/v1/users/{user_id}/edits", tags=["model"])
    def edits(user_id: str, key: Caller) -> dict[str, Any]:
        user_id = allowed(key, user_id)
        return {"user": user_id, "edits": _edits(user_id)}

    @app.get("/v1/users/{user_id}/adapters", tags=["model"])
    def adapters(user_id: str, key: Caller) -> dict[str, Any]:
        user_id = allowed(key, user_id)
        return {"user": user_id, "adapters": _adapters(user_id)}

    @app.get("/v1/users/{user_id}/jobs", tags=["model"])
    def jobs(user_id: str, key: Caller) -> dict[str, Any]:
        user_id = allowed(key, user_id)
        return {"user": user_id, "jobs": _jobs(user_id)}

    @app.get("/v1/users/{user_id}/model", tags=["model"])
    def model_state(user_id: str, key: Caller) -> dict[str, Any]:
        """Everything model-level about the user at once (edits, adapter versions, jobs)."""
        user_id = allowed(key, user_id)
        return {"user": user_id, "model_level": agent.model_level, "edits": _edits(user_id),
                "adapters": _adapters(user_id), "jobs": _jobs(user_id)}

    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    return app


def _user_data_call(call: Callable[[], Any]) -> Any:
    try:
        return call()
    except NoUserData as exc:
        raise ApiError(404, str(exc), "not_found_error") from exc
    except InvalidDocument as exc:
        raise ApiError(400, str(exc)) from exc
    except UserDataError as exc:
        if exc.failures and all(isinstance(e, ValueError) for e in exc.failures.values()):
            # a part refused the request itself (e.g. an import for a user who already has data): nothing changed
            raise ApiError(409, str(exc), "conflict_error") from exc
        raise ApiError(500, str(exc), "server_error") from exc


def _mapped(exc: Exception) -> JSONResponse:
    if isinstance(exc, UnknownUser):
        return _error(404, str(exc).strip("'\""), "not_found_error")
    if isinstance(exc, StoreError):
        return _error(503, str(exc), "server_error")
    return _error(400, str(exc), "invalid_request_error")


def _generation(stack: "Stack", body: ChatCompletionRequest) -> "GenerationSettings | None":
    """The request's generation settings on top of the stack's (None when it sets none)."""
    limit = body.max_completion_tokens or body.max_tokens
    stops = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    if limit is None and body.temperature is None and not stops and body.seed is None:
        return None
    from editing import GenerationSettings

    own = getattr(stack.agent.chat_model, "settings", None)
    base = own if isinstance(own, GenerationSettings) else stack.settings.generation()
    return GenerationSettings(**{**base.__dict__,
                                 "max_new_tokens": limit or base.max_new_tokens,
                                 "temperature": base.temperature if body.temperature is None else body.temperature,
                                 "stop": tuple(base.stop) + tuple(stops),
                                 "seed": body.seed if body.seed is not None else base.seed})


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("pllm")
    except metadata.PackageNotFoundError:  # pragma: no cover - a source tree without an install
        return "0"

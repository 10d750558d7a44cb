"""``memsdk serve``: the memory over HTTP. REST routes under ``/v1`` (OpenAPI at
``/openapi.json``), the MCP streamable-HTTP transport at ``/mcp``, and ``/healthz``.

Every route but ``/healthz`` needs ``Authorization: Bearer <key>`` (``memsdk keys create``), and
the key alone decides the scope: no request body or path names one. A memory of another scope is
answered exactly like a missing one (the same 404 and message), so a key learns nothing of other
tenants. Bodies are bounded (``max_body_bytes``), request models refuse unknown fields, and bad
input of any kind is a 4xx with a message, never a 500.
"""

import asyncio
import contextlib
import contextvars
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping, Sequence
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from memsdk.aio import AsyncHybridMemory
from memsdk.errors import BusyError, InputError, MemsdkError, NotFoundError
from memsdk.memory import HybridMemory
from memsdk.results import MemoryItem, ScopeStats, SearchHit
from memsdk.server.keys import key_scope
from memsdk.server.mcp_tools import Grant, PathPolicy, build_mcp_server
from memsdk.stores.keys import KeyStore

__all__ = ["create_app", "serve"]

logger = logging.getLogger(__name__)

ASGIApp = Callable[[MutableMapping[str, Any], Any, Any], Awaitable[None]]
MAX_BODY_BYTES = 1 << 20
_REFUSED = (
    "missing, unknown or revoked API key: send Authorization: Bearer <key> (memsdk keys create)"
)

_Strict = ConfigDict(extra="forbid", strict=True)


class AddRequest(BaseModel):
    model_config = _Strict
    text: str = Field(min_length=1, description="the text to remember")
    metadata: dict[str, Any] | None = Field(None, description="flat str/number/bool values")


class SearchRequest(BaseModel):
    model_config = _Strict
    query: str = Field(min_length=1)
    k: int = Field(5, ge=1, le=100)
    filters: dict[str, Any] | None = Field(None, description="metadata filter (memsdk.filters)")


class QueryRequest(BaseModel):
    model_config = _Strict
    prompt: str = Field(min_length=1, description="the start of a line or fact to continue")
    route: Literal["auto", "notepad", "weights", "both"] = "auto"
    k: int = Field(5, ge=1, le=100)
    max_bytes: int = Field(200, ge=1, le=4096)


class IngestRequest(BaseModel):
    model_config = _Strict
    path: str = Field(min_length=1, description="a file or directory under --allow-path")


class SurpriseRequest(BaseModel):
    model_config = _Strict
    text: str = Field(min_length=1)


class ScopeOut(BaseModel):
    tenant: str
    user: str | None
    agent: str | None
    run: str | None


class ItemOut(BaseModel):
    """A stored memory (chunk)."""

    id: int
    text: str
    scope: ScopeOut
    document_id: int | None
    source: str | None
    seq: int
    start_byte: int
    end_byte: int
    metadata: dict[str, Any]
    created_at: datetime
    updated_at: datetime


class HitOut(ItemOut):
    score: float
    similarity: float | None
    vector_rank: int | None
    keyword_rank: int | None
    exact_match: bool


class AddOut(BaseModel):
    ids: list[int]
    document_id: int | None
    duplicates_skipped: int


class AnswerOut(BaseModel):
    completion: str
    branch: str
    reason: str
    passages: list[HitOut]


class SurpriseLineOut(BaseModel):
    line: int
    text: str
    bits_per_byte: float
    novelty: float


class SurpriseOut(BaseModel):
    bits_per_byte: float
    weights: str
    lines: list[SurpriseLineOut]


class DeletedOut(BaseModel):
    deleted: int


class ErrorOut(BaseModel):
    detail: str


def _item(item: MemoryItem) -> dict[str, Any]:
    return item.model_dump(mode="json", exclude={"raw"})


def _status(error: Exception) -> int:
    if isinstance(error, NotFoundError):
        return 404
    if isinstance(error, BusyError):
        return 503
    if isinstance(error, (InputError, ValueError)):
        return 422
    return 409  # MemsdkError: a state the request cannot change (closed, weight memory off)


def _error(status: int, detail: str) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status)


class _BodyLimit:
    """Refuses a body larger than ``limit`` bytes with 413, whether announced by
    Content-Length or streamed, before the application reads it whole."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        too_big = _error(
            413, f"the request body is larger than {self.limit} bytes: send a smaller one"
        )
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    size = int(value)
                except ValueError:
                    return await _error(400, "Content-Length is not a number")(scope, receive, send)
                if size > self.limit:
                    return await too_big(scope, receive, send)
        seen = 0

        async def limited() -> MutableMapping[str, Any]:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _TooBig
            return message

        started = False

        async def tracked(message: MutableMapping[str, Any]) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited, tracked)
        except _TooBig:
            if not started:
                await too_big(scope, receive, send)


class _TooBig(Exception):
    pass


_grant: contextvars.ContextVar[Grant | None] = contextvars.ContextVar("memsdk_grant", default=None)


def create_app(
    memory: AsyncHybridMemory,
    keys: KeyStore,
    *,
    max_body_bytes: int = MAX_BODY_BYTES,
    allow_paths: Sequence[str | os.PathLike[str]] = (),
    close_memory: bool = False,
) -> ASGIApp:
    """The ASGI application of ``memsdk serve`` over an open memory and its key table.

    Args:
        allow_paths: directories that ingest (REST and MCP) may read; none: ingest refuses.
        close_memory: flush and close ``memory`` when the server shuts down.
    """

    async def authenticate(header: str | None) -> Grant | None:
        if not header or not header.startswith("Bearer "):
            return None
        record = await asyncio.to_thread(keys.authenticate, header[len("Bearer ") :].strip())
        if record is None:
            return None
        return Grant(scope=key_scope(record), read_only=record.read_only)

    def mcp_grant(ctx: Context | None) -> Grant:
        # The /mcp wrapper authenticated this request and set its grant; the server runs
        # stateless, one task per request, so the grant is that request's own.
        grant = _grant.get()
        if grant is None:
            raise ToolError(_REFUSED)
        return grant

    paths = PathPolicy(allow_paths)
    mcp_server = build_mcp_server(memory, mcp_grant, paths=paths)
    mcp_app = mcp_server.streamable_http_app(
        streamable_http_path="/mcp", stateless_http=True, json_response=True
    )

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        async with mcp_server.session_manager.run():
            try:
                yield
            finally:
                if close_memory:
                    # Graceful shutdown: uvicorn has drained the requests in flight.
                    await memory.flush()
                    await memory.close()

    app = FastAPI(
        title="memsdk",
        version="0.1.0",
        description="Long memory for agents. Every /v1 route needs `Authorization: Bearer "
        "<key>`; the key's scope is the only scope a request can touch.",
        lifespan=lifespan,
        responses={401: {"model": ErrorOut}, 422: {"model": ErrorOut}},
    )
    bearer = HTTPBearer(auto_error=False)

    async def reader(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    ) -> Grant:
        header = f"Bearer {credentials.credentials}" if credentials is not None else None
        grant = await authenticate(header)
        if grant is None:
            raise HTTPException(401, _REFUSED, headers={"WWW-Authenticate": "Bearer"})
        return grant

    async def writer(grant: Annotated[Grant, Depends(reader)]) -> Grant:
        if grant.read_only:
            raise HTTPException(403, "this key is read-only: writing needs a read-write key")
        return grant

    Reader = Annotated[Grant, Depends(reader)]
    Writer = Annotated[Grant, Depends(writer)]

    @app.exception_handler(MemsdkError)
    async def _memsdk_error(_request: Request, error: MemsdkError) -> JSONResponse:
        return _error(_status(error), str(error))

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, error: RequestValidationError) -> JSONResponse:
        problems = []
        for e in error.errors()[:10]:
            where = ".".join(str(p) for p in e.get("loc", ()))
            problems.append(f"{where}: {e.get('msg', 'invalid')}")
        return _error(422, "invalid request: " + "; ".join(problems))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, error: StarletteHTTPException) -> JSONResponse:
        detail = error.detail
        if error.status_code == 400 and detail == "There was an error parsing the body":
            detail = "the body is not JSON in UTF-8: send a UTF-8 JSON object"
        return JSONResponse(
            {"detail": detail}, status_code=error.status_code, headers=error.headers
        )

    @app.exception_handler(RecursionError)
    async def _too_deep(_request: Request, _error_: RecursionError) -> JSONResponse:
        return _error(400, "the JSON body nests too deeply: send a flatter document")

    @app.exception_handler(ValueError)
    async def _value_error(_request: Request, error: ValueError) -> JSONResponse:
        return _error(422, str(error))

    @app.get("/healthz", tags=["server"])
    async def healthz() -> dict[str, str]:
        """Liveness: answers without a key, names nothing of the memory."""
        return {"status": "ok"}

    @app.post("/v1/memories", status_code=201, response_model=AddOut, tags=["memories"])
    async def add_memory(body: AddRequest, grant: Writer) -> Any:
        """Store a text in the key's scope."""
        result = await memory.add(body.text, scope=grant.scope, metadata=body.metadata)
        return result.model_dump(mode="json")

    @app.get("/v1/memories", response_model=list[ItemOut], tags=["memories"])
    async def list_memories(
        grant: Reader,
        limit: Annotated[int, Field(ge=1, le=1000)] = 100,
        offset: Annotated[int, Field(ge=0, le=2**62)] = 0,
    ) -> Any:
        """The scope's memories, oldest first."""
        items = await memory.get_all(scope=grant.scope, limit=limit, offset=offset)
        return [_item(i) for i in items]

    @app.get(
        "/v1/memories/{memory_id}",
        response_model=ItemOut,
        responses={404: {"model": ErrorOut}},
        tags=["memories"],
    )
    async def get_memory(memory_id: int, grant: Reader) -> Any:
        """One memory of the scope (another scope's memory is a 404, as a missing one)."""
        return _item(await memory.get(memory_id, scope=grant.scope))

    @app.delete(
        "/v1/memories/{memory_id}",
        response_model=DeletedOut,
        responses={404: {"model": ErrorOut}},
        tags=["memories"],
    )
    async def delete_memory(memory_id: int, grant: Writer) -> Any:
        """Forget one memory of the scope."""
        await memory.delete(memory_id, scope=grant.scope)
        return {"deleted": memory_id}

    @app.post("/v1/search", response_model=list[HitOut], tags=["memories"])
    async def search(body: SearchRequest, grant: Reader) -> Any:
        """Hybrid search (exact tokens and vectors) in the scope."""
        hits: list[SearchHit] = await memory.search(
            body.query, scope=grant.scope, k=body.k, filters=body.filters
        )
        return [_item(h) for h in hits]

    @app.post("/v1/query", response_model=AnswerOut, tags=["memories"])
    async def query(body: QueryRequest, grant: Reader) -> Any:
        """The routed answer: a continuation from the notepad, the weights or both, and why."""
        answer = await memory.query(
            body.prompt, scope=grant.scope, route=body.route, k=body.k, max_bytes=body.max_bytes
        )
        return {
            "completion": answer.completion,
            "branch": answer.route.branch,
            "reason": answer.route.reason,
            "passages": [_item(h) for h in answer.passages],
        }

    @app.post(
        "/v1/ingest",
        response_model=dict[str, Any],
        responses={403: {"model": ErrorOut}},
        tags=["memories"],
    )
    async def ingest(body: IngestRequest, grant: Writer) -> Any:
        """Read a file or directory tree on the server, only under its --allow-path dirs."""
        try:
            path = paths.check(body.path)
        except ToolError as e:
            raise HTTPException(403, str(e)) from e
        return (await memory.ingest(path, scope=grant.scope)).model_dump(mode="json")

    @app.post("/v1/surprise", response_model=SurpriseOut, tags=["memories"])
    async def surprise(body: SurpriseRequest, grant: Reader) -> Any:
        """Bits per byte of each line under the scope's weight memory."""
        return (await memory.surprise(body.text, scope=grant.scope)).model_dump(mode="json")

    @app.get("/v1/stats", tags=["memories"])
    async def stats(grant: Reader) -> dict[str, Any]:
        """Documents, chunks and bytes of the key's scope (and its weight memory)."""
        figures = await memory.stats()
        mine = [s for s in figures.scopes if s.scope == grant.scope]
        empty = ScopeStats(scope=grant.scope, documents=0, chunks=0, bytes=0, weights=None)
        return (mine[0] if mine else empty).model_dump(mode="json")

    async def mcp_route(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        grant = await authenticate(headers.get("authorization"))
        if grant is None:
            response = JSONResponse(
                {"detail": _REFUSED}, status_code=401, headers={"WWW-Authenticate": "Bearer"}
            )
            return await response(scope, receive, send)
        token = _grant.set(grant)
        try:
            await mcp_app(scope, receive, send)
        finally:
            _grant.reset(token)

    async def dispatch(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        path = scope.get("path", "")
        if scope["type"] == "http" and (path == "/mcp" or path.startswith("/mcp/")):
            return await mcp_route(scope, receive, send)
        return await app(scope, receive, send)

    dispatch.fastapi = app  # type: ignore[attr-defined]
    return _BodyLimit(dispatch, max_body_bytes)


def serve(
    directory: str | os.PathLike[str],
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    max_body_bytes: int = MAX_BODY_BYTES,
    allow_paths: Sequence[str | os.PathLike[str]] = (),
) -> None:
    """Run the HTTP server until SIGINT/SIGTERM, then drain, flush and close the memory."""
    import uvicorn

    memory = HybridMemory.open(directory)
    keys = KeyStore(memory.notepad.sql.url)
    try:
        app = create_app(
            AsyncHybridMemory(memory),
            keys,
            max_body_bytes=max_body_bytes,
            allow_paths=allow_paths,
            close_memory=True,
        )
        # Access logs name the method and path only; the Authorization header is never logged.
        uvicorn.run(app, host=host, port=port, log_level="info", lifespan="on")
    finally:
        keys.close()
        memory.close()

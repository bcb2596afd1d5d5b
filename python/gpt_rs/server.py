"""``gpt-rs serve``: an OpenAI-compatible HTTP server over ``gpt_rs.Engine`` (continuous
batching). Starlette routes, uvicorn serves, sse-starlette frames the streams; the optional
dependencies come with ``pip install gpt_rs[serve]``.

Routes: ``GET /health``, ``GET /v1/models``, ``GET /metrics`` (Prometheus text),
``POST /v1/chat/completions`` and ``POST /v1/completions``. Errors use OpenAI's shape,
``{"error": {"message", "type", "param", "code"}}``: 400 for invalid JSON or fields, 401 for a
wrong API key, 404 for an unknown model or path, 413 for a body over ``max_body_bytes``, 503
(with ``Retry-After``) when the engine's queue is full.
"""

from __future__ import annotations

import json
import logging
import math
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any, Optional

import gpt_rs

log = logging.getLogger("gpt_rs.serve")

DEFAULT_MAX_BODY = 1 << 20  # 1 MiB: far more than any chat, far less than a flood


class ApiError(Exception):
    """An error answered in OpenAI's shape."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: Optional[str] = None,
        code: Optional[str] = None,
        headers: Optional[dict[str, str]] = None,
    ):
        super().__init__(message)
        self.status, self.message, self.type = status, message, type
        self.param, self.code, self.headers = param, code, headers or {}

    def response(self):
        from starlette.responses import JSONResponse

        body = {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }
        return JSONResponse(body, status_code=self.status, headers=self.headers)


# -- request fields ------------------------------------------------------------------------


def _field(body: dict, name: str, kinds, default=None, *, check=None, what: str = ""):
    """``body[name]`` if of one of ``kinds`` (None -> default), else a 400 naming it."""
    v = body.get(name, default)
    if v is None:
        return default
    ok = isinstance(v, kinds) and not (isinstance(v, bool) and bool not in _as_tuple(kinds))
    if not ok:
        raise ApiError(400, f"'{name}' must be {what or _kind_names(kinds)}, got {v!r}", param=name)
    if check is not None and not check(v):
        raise ApiError(400, f"'{name}' must be {what}, got {v!r}", param=name)
    return v


def _as_tuple(k):
    return k if isinstance(k, tuple) else (k,)


def _kind_names(kinds) -> str:
    names = {int: "an integer", float: "a number", str: "a string", bool: "a boolean"}
    names.update({list: "an array", dict: "an object"})
    return " or ".join(names.get(k, k.__name__) for k in _as_tuple(kinds))


def _number(body, name, default, lo, hi, *, lo_open=False):
    def check(x):
        x = float(x)
        return math.isfinite(x) and (x > lo if lo_open else x >= lo) and x <= hi

    bounds = f"a number in {'(' if lo_open else '['}{lo}, {hi}]"
    return _field(body, name, (int, float), default, check=check, what=bounds)


def sampling_options(body: dict) -> tuple[int, dict]:
    """(max_tokens, engine options) from an OpenAI request body."""
    _field(body, "n", int, 1, check=lambda v: v == 1, what="1 (one choice per request)")
    max_tokens = _field(
        body,
        "max_completion_tokens",
        int,
        None,
        check=lambda v: v >= 1,
        what="a positive integer",
    )
    if max_tokens is None:
        max_tokens = _field(
            body, "max_tokens", int, None, check=lambda v: v >= 1, what="a positive integer"
        )
    opts: dict[str, Any] = {
        "temperature": float(_number(body, "temperature", 1.0, 0.0, 2.0)),
        "top_p": float(_number(body, "top_p", 1.0, 0.0, 1.0, lo_open=True)),
    }
    seed = _field(body, "seed", int, None, check=lambda v: 0 <= v < 2**64, what="0 to 2**64-1")
    if seed is not None:
        opts["seed"] = seed
    stop = body.get("stop")
    if stop is not None:
        if isinstance(stop, str):
            stop = [stop]
        if not (
            isinstance(stop, list)
            and len(stop) <= 4
            and all(isinstance(s, str) and s for s in stop)
        ):
            raise ApiError(
                400, "'stop' must be a string or up to 4 non-empty strings", param="stop"
            )
        opts["stop"] = stop
    for name in ("presence_penalty", "frequency_penalty"):
        v = _number(body, name, 0.0, -2.0, 2.0)
        if v != 0:
            raise ApiError(400, f"'{name}' is not supported by gpt_rs (only 0)", param=name)
    if body.get("logprobs") not in (None, False) or body.get("top_logprobs") is not None:
        raise ApiError(400, "'logprobs' is not supported by gpt_rs", param="logprobs")
    return max_tokens, opts


def chat_messages(body: dict) -> list[dict]:
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise ApiError(400, "'messages' must be a non-empty array", param="messages")
    out = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise ApiError(
                400, f"messages[{i}] must be an object with a 'role'", param=f"messages[{i}]"
            )
        content = m.get("content")
        if isinstance(content, list):  # content parts: only text ones
            texts = []
            for part in content:
                if not (isinstance(part, dict) and part.get("type") == "text"):
                    raise ApiError(
                        400,
                        f"messages[{i}].content: only text parts are supported",
                        param=f"messages[{i}].content",
                    )
                texts.append(str(part.get("text", "")))
            content = "".join(texts)
        if content is not None and not isinstance(content, str):
            raise ApiError(
                400,
                f"messages[{i}].content must be a string or text parts",
                param=f"messages[{i}].content",
            )
        out.append({**m, "content": content or ""})
    return out


# -- the app -------------------------------------------------------------------------------


def create_app(
    engine: gpt_rs.Engine,
    model_id: str,
    *,
    api_key: Optional[str] = None,
    max_body_bytes: int = DEFAULT_MAX_BODY,
):
    """The Starlette application serving ``engine`` under the name ``model_id``."""
    from sse_starlette.sse import EventSourceResponse
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.requests import Request as HttpRequest
    from starlette.responses import JSONResponse, PlainTextResponse
    from starlette.routing import Route

    model = engine.model
    created = int(time.time())

    def check_auth(request: HttpRequest) -> None:
        if api_key is None:
            return
        if request.headers.get("authorization", "") != f"Bearer {api_key}":
            raise ApiError(
                401,
                "invalid or missing API key (send 'Authorization: Bearer <key>')",
                type="authentication_error",
                code="invalid_api_key",
            )

    async def read_json(request: HttpRequest) -> dict:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_body_bytes:
            raise ApiError(413, f"request body over the limit of {max_body_bytes} bytes")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > max_body_bytes:
                raise ApiError(413, f"request body over the limit of {max_body_bytes} bytes")
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError) as e:
            raise ApiError(400, f"the body is not valid JSON: {e}") from None
        if not isinstance(data, dict):
            raise ApiError(400, "the body must be a JSON object")
        name = data.get("model")
        if not isinstance(name, str):
            raise ApiError(400, "'model' must be a string", param="model")
        if name != model_id:
            raise ApiError(
                404,
                f"the model '{name}' does not exist; this server serves '{model_id}'",
                param="model",
                code="model_not_found",
            )
        return data

    def submit(fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gpt_rs.BusyError as e:
            raise ApiError(
                503, str(e), type="server_overloaded", headers={"Retry-After": "1"}
            ) from None
        except MemoryError as e:
            raise ApiError(
                503, str(e), type="server_overloaded", headers={"Retry-After": "5"}
            ) from None
        except (ValueError, TypeError) as e:
            msg = str(e)
            code = "context_length_exceeded" if "context" in msg else None
            raise ApiError(400, msg, code=code) from None

    def default_max_tokens(prompt_len: int) -> int:
        return max(1, min(4096, model.context_length - prompt_len))

    async def run(request: HttpRequest, req, kind: str, stream: bool, include_usage: bool):
        rid = ("chatcmpl-" if kind == "chat" else "cmpl-") + uuid.uuid4().hex[:24]
        t0 = time.monotonic()

        def finished():
            u = req.usage or {}
            dt = time.monotonic() - t0
            out = u.get("completion_tokens", 0)
            log.info(
                "%s %s in=%d out=%d ttft=%.3fs tok/s=%.1f finish=%s",
                rid,
                kind,
                u.get("prompt_tokens", 0),
                out,
                u.get("time_to_first_token", 0.0),
                out / dt if dt > 0 else 0.0,
                req.finish_reason,
            )

        def usage():
            u = req.usage or {}
            p, c = u.get("prompt_tokens", 0), u.get("completion_tokens", 0)
            return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}

        def reason():
            return req.finish_reason if req.finish_reason in ("stop", "length") else "stop"

        obj = "chat.completion" if kind == "chat" else "text_completion"
        if not stream:
            try:
                async for _ in req:
                    if await request.is_disconnected():
                        req.cancel()
                        break
            finally:
                if req.finish_reason is None:
                    req.cancel()
            finished()
            if kind == "chat":
                choice = {
                    "index": 0,
                    "message": {"role": "assistant", "content": req.text},
                    "finish_reason": reason(),
                    "logprobs": None,
                }
            else:
                choice = {"index": 0, "text": req.text, "finish_reason": reason(), "logprobs": None}
            body = {
                "id": rid,
                "object": obj,
                "created": int(time.time()),
                "model": model_id,
                "choices": [choice],
                "usage": usage(),
            }
            return JSONResponse(body)

        chunk_obj = "chat.completion.chunk" if kind == "chat" else "text_completion"

        def chunk(delta: Optional[str], finish: Optional[str], first: bool = False) -> str:
            if kind == "chat":
                d: dict[str, Any] = {}
                if first:
                    d["role"] = "assistant"
                if delta is not None:
                    d["content"] = delta
                choice = {"index": 0, "delta": d, "finish_reason": finish, "logprobs": None}
            else:
                choice = {"index": 0, "text": delta or "", "finish_reason": finish}
            c: dict[str, Any] = {
                "id": rid,
                "object": chunk_obj,
                "created": int(time.time()),
                "model": model_id,
                "choices": [choice],
            }
            if include_usage:
                c["usage"] = None
            return json.dumps(c)

        async def events() -> AsyncIterator[dict]:
            try:
                if kind == "chat":  # the role comes first, as OpenAI sends it
                    yield {"data": chunk("", None, first=True)}
                async for piece in req:
                    yield {"data": chunk(piece, None)}
                yield {"data": chunk(None, reason())}
                if include_usage:
                    yield {
                        "data": json.dumps(
                            {
                                "id": rid,
                                "object": chunk_obj,
                                "created": int(time.time()),
                                "model": model_id,
                                "choices": [],
                                "usage": usage(),
                            }
                        )
                    }
                yield {"data": "[DONE]"}
                finished()
            finally:
                # A client that went away cancels its sequence (at the engine's next step).
                if req.finish_reason is None:
                    req.cancel()

        return EventSourceResponse(events(), ping=15)

    def stream_flags(body: dict) -> tuple[bool, bool]:
        stream = _field(body, "stream", bool, False)
        so = _field(body, "stream_options", dict, {})
        include = bool(_field(so, "include_usage", bool, False)) if stream else False
        return stream, include

    async def chat_completions(request: HttpRequest):
        check_auth(request)
        body = await read_json(request)
        messages = chat_messages(body)
        max_tokens, opts = sampling_options(body)
        stream, include_usage = stream_flags(body)
        tok = model.tokenizer
        if tok is None or not tok.has_chat_template:
            raise ApiError(400, f"the model '{model_id}' has no chat template", param="messages")
        try:
            ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        except (ValueError, TypeError) as e:
            raise ApiError(400, f"the chat template failed: {e}", param="messages") from None
        n = max_tokens or default_max_tokens(len(ids))
        req = submit(engine.submit, ids, n, **opts)
        return await run(request, req, "chat", stream, include_usage)

    async def completions(request: HttpRequest):
        check_auth(request)
        body = await read_json(request)
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        is_ids = isinstance(prompt, list) and all(
            isinstance(t, int) and not isinstance(t, bool) for t in prompt
        )
        if not (isinstance(prompt, str) or is_ids) or not prompt:
            raise ApiError(
                400, "'prompt' must be a non-empty string or array of token ids", param="prompt"
            )
        if isinstance(prompt, str):
            if model.tokenizer is None:
                raise ApiError(400, "this model has no tokenizer: send token ids", param="prompt")
            ids = model.tokenizer.encode(prompt)
        else:
            ids = prompt
        max_tokens, opts = sampling_options(body)
        if max_tokens is None:
            max_tokens = 16  # OpenAI's default for completions
        stream, include_usage = stream_flags(body)
        req = submit(engine.submit, ids, max_tokens, **opts)
        return await run(request, req, "completion", stream, include_usage)

    async def models(request: HttpRequest):
        check_auth(request)
        return JSONResponse(
            {
                "object": "list",
                "data": [
                    {"id": model_id, "object": "model", "created": created, "owned_by": "gpt_rs"}
                ],
            }
        )

    async def health(request: HttpRequest):
        return JSONResponse({"status": "ok", "model": model_id})

    async def metrics(request: HttpRequest):
        m = engine.metrics
        lines = []
        help_text = {
            "running": "sequences in the running batch",
            "queued": "requests waiting for a place in the batch",
            "kv_bytes_in_use": "bytes of KV cache held by running sequences",
            "kv_bytes_limit": "the engine's KV cache limit in bytes",
            "requests_total": "requests submitted",
            "prompt_tokens_total": "prompt tokens of admitted requests",
            "generated_tokens_total": "tokens generated by finished requests",
            "tokens_per_second": "tokens generated per second over the last seconds",
        }
        for key, text in help_text.items():
            kind = "counter" if key.endswith("_total") else "gauge"
            lines += [
                f"# HELP gpt_rs_{key} {text}",
                f"# TYPE gpt_rs_{key} {kind}",
                f"gpt_rs_{key} {m[key]}",
            ]
        return PlainTextResponse("\n".join(lines) + "\n", media_type="text/plain; version=0.0.4")

    async def api_error(request, exc: ApiError):
        return exc.response()

    async def http_error(request, exc: HTTPException):
        status = exc.status_code
        message = {
            404: f"no route {request.method} {request.url.path}",
            405: f"method {request.method} is not allowed on {request.url.path}",
        }.get(status, str(exc.detail))
        return ApiError(status, message, code="not_found" if status == 404 else None).response()

    async def server_error(request, exc: Exception):
        log.exception("internal error on %s", request.url.path)
        return ApiError(500, f"internal error: {exc}", type="server_error").response()

    routes = [
        Route("/health", health, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/completions", completions, methods=["POST"]),
    ]
    return Starlette(
        routes=routes,
        exception_handlers={
            ApiError: api_error,
            HTTPException: http_error,
            Exception: server_error,
        },
    )


def serve(
    model_path: str,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    max_batch: int = 8,
    max_queue: int = 64,
    api_key: Optional[str] = None,
    threads: Optional[int] = None,
    model_name: Optional[str] = None,
    max_body_bytes: int = DEFAULT_MAX_BODY,
    drain_seconds: float = 5.0,
    dtype: str = "auto",
) -> None:
    """Loads ``model_path`` and serves it until Ctrl-C or SIGTERM, which drain the running
    requests for up to ``drain_seconds`` before stopping."""
    import os

    import uvicorn

    if threads is not None:
        gpt_rs.set_num_threads(threads)
    model = gpt_rs.load_model(model_path, dtype=dtype)
    engine = gpt_rs.Engine(model, max_batch=max_batch, max_queue=max_queue)
    name = model_name or os.path.basename(os.path.normpath(str(model_path)))
    app = create_app(engine, name, api_key=api_key, max_body_bytes=max_body_bytes)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    log.info(
        "serving %s (%s, %s) on http://%s:%d with max_batch=%d, %d threads",
        name,
        model.family,
        model.dtype,
        host,
        port,
        max_batch,
        gpt_rs.get_num_threads(),
    )
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=max(1, int(drain_seconds)),
    )
    # Streams run to their end on shutdown (they are bounded by max_tokens, and uvicorn's
    # graceful timeout bounds the wait): a drain, not sse-starlette's default of cutting them.
    from sse_starlette.sse import AppStatus

    AppStatus.disable_automatic_graceful_drain()
    # uvicorn drains on SIGTERM, then raises the signal again for the handler it found: a
    # quiet one lets the process finish normally (exit 0) after the engine's own drain.
    import signal

    try:
        previous = signal.signal(signal.SIGTERM, lambda signum, frame: None)
    except ValueError:  # not the main thread: leave signals alone
        previous = None
    try:
        uvicorn.Server(config).run()
    finally:
        engine.shutdown(drain_seconds)
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    log.info("stopped")

"""OpenAI Responses API: ``POST /v1/responses`` (whole or streamed), ``GET`` / ``DELETE
/v1/responses/{id}`` and ``GET /v1/responses/{id}/input_items``, a thin translation onto
the chat path (``GenerationService.start_chat``). Stored responses (``store``, the
default) live in ``app.state.responses``, bounded, expiring and per API key."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from ...errors import GatewayError, NotFoundError
from ...protocol.responses import ResponsesRequest, normalize_input, to_chat
from ...protocol.worker import DeltaEvent
from ...web.limits import body_bytes
from ...web.responses import FastJSONResponse
from ..response_store import ResponseStore, owner_of
from ..serving import ChatRun, ChoiceResult, RunTranslator
from .anthropic import named_frame

__all__ = ["router"]

router = APIRouter()


def _suffix(run: ChatRun) -> str:
    return run.request_id.split("-", 1)[-1]


def _store(request: Request) -> ResponseStore:
    store: ResponseStore = request.app.state.responses
    return store


def _not_found(rid: str, param: str = "response_id") -> NotFoundError:
    return NotFoundError(f"Response with id '{rid}' not found.", param=param)


def _usage(prompt: int, completion: int, cached: int | None = None) -> dict[str, Any]:
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": cached or 0, "cache_write_tokens": 0},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": prompt + completion,
    }


def _text_config(req: ResponsesRequest) -> dict[str, Any]:
    fmt = req.text.format if req.text else None
    if fmt is None or fmt.type == "text":
        return {"format": {"type": "text"}}
    if fmt.type == "json_object":
        return {"format": {"type": "json_object"}}
    out: dict[str, Any] = {"type": "json_schema", "name": fmt.name or "response", "schema": fmt.schema_, "strict": bool(fmt.strict)}
    if fmt.description is not None:
        out["description"] = fmt.description
    return {"format": out}


def _response(run: ChatRun, req: ResponsesRequest, status: str, output: list[dict[str, Any]], usage: dict[str, Any] | None, finish: str | None) -> dict[str, Any]:
    reasoning = req.reasoning
    return {
        "id": "resp_" + _suffix(run),
        "object": "response",
        "created_at": run.created,
        "status": status,
        "background": False,
        "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
        "instructions": req.instructions,
        "max_output_tokens": req.max_output_tokens,
        "max_tool_calls": None,
        "model": run.model,
        "output": output,
        "parallel_tool_calls": req.parallel_tool_calls if req.parallel_tool_calls is not None else True,
        "previous_response_id": req.previous_response_id,
        "reasoning": {"effort": reasoning.effort, "summary": reasoning.summary} if reasoning else {"effort": None, "summary": None},
        "service_tier": "default",
        "store": req.store,
        "temperature": req.temperature if req.temperature is not None else 1.0,
        "text": _text_config(req),
        "tool_choice": req.tool_choice if req.tool_choice is not None else "auto",
        "tools": [_tool(t) for t in req.tools or []],
        "top_p": req.top_p if req.top_p is not None else 1.0,
        "truncation": req.truncation or "disabled",
        "usage": usage,
        "metadata": req.metadata or {},
        **({"user": req.user} if req.user is not None else {}),
    }


def _tool(t: dict[str, Any]) -> dict[str, Any]:
    out = {"type": "function", "name": t.get("name"), "parameters": t.get("parameters"), "strict": t.get("strict")}
    if t.get("description") is not None:
        out["description"] = t["description"]
    return out


def _status(finish: str | None) -> str:
    return "incomplete" if finish == "length" else "completed"


def _reasoning_item(rid: str, text: str) -> dict[str, Any]:
    return {"id": rid, "type": "reasoning", "summary": [{"type": "summary_text", "text": text}] if text else []}


def _message_item(mid: str, text: str, status: str) -> dict[str, Any]:
    content = [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}] if status != "in_progress" else []
    return {"id": mid, "type": "message", "role": "assistant", "status": status, "content": content}


def _call_item(fid: str, call_id: str, name: str, arguments: str, status: str) -> dict[str, Any]:
    return {"id": fid, "type": "function_call", "call_id": call_id, "name": name, "arguments": arguments, "status": status}


def _output(run: ChatRun, c: ChoiceResult) -> list[dict[str, Any]]:
    sfx = _suffix(run)
    output: list[dict[str, Any]] = []
    if c.reasoning:
        output.append(_reasoning_item(f"rs_{sfx}", "".join(c.reasoning)))
    text = "".join(c.text)
    if text or not c.tool_calls:
        output.append(_message_item(f"msg_{sfx}", text, "completed" if c.finish_reason != "length" else "incomplete"))
    for i in sorted(c.tool_calls):
        call = c.tool_calls[i]
        output.append(_call_item(f"fc_{sfx}_{i}", call["id"], call["function"]["name"], call["function"]["arguments"], "completed"))
    return output


def _with_ids(items: list[dict[str, Any]], sfx: str) -> list[dict[str, Any]]:
    """Input items as stored (and listed by input_items): each with an id."""
    out = []
    for i, item in enumerate(items):
        item = dict(item)
        item.setdefault("type", "message")
        if "id" not in item:
            item["id"] = f"{'msg' if item['type'] == 'message' else 'fc' if item['type'] == 'function_call' else 'fco'}_{sfx}_in{i}"
        if item["type"] == "message":
            if isinstance(item.get("content"), str):
                kind = "output_text" if item.get("role") == "assistant" else "input_text"
                item["content"] = [{"type": kind, "text": item["content"]}]
            item.setdefault("status", "completed")
        elif item["type"] in ("function_call", "function_call_output"):
            item.setdefault("status", "completed")
        out.append(item)
    return out


def _keep(
    request: Request, owner: str, req: ResponsesRequest, response: dict[str, Any], history: list[dict[str, Any]], items: list[dict[str, Any]], chain: str
) -> None:
    if req.store:
        _store(request).put(owner, response, items, history, chain=chain)


@router.post("/v1/responses")
async def create_response(body: ResponsesRequest, request: Request) -> Response:
    owner = owner_of(request)
    history: list[dict[str, Any]] = []
    chain = "responses:" + uuid.uuid4().hex  # the dispatch affinity of a previous_response_id chain
    if body.previous_response_id:
        prev = _store(request).get(owner, body.previous_response_id)
        if prev is None:
            raise _not_found(body.previous_response_id, "previous_response_id")
        history = prev.history + [dict(o) for o in prev.response["output"]]
        chain = prev.chain or chain
    new_items = normalize_input(body)
    conversation = history + new_items
    chat_req = to_chat(body, conversation)
    run = await request.app.state.generation.start_chat(chat_req, body_bytes(request), id_prefix="resp", affinity=chain, whole=not body.stream)
    stored_input = _with_ids(new_items, _suffix(run))
    stored_history = history + stored_input
    if body.stream:
        keep = lambda final: _keep(request, owner, body, final, stored_history, stored_input, chain)  # noqa: E731
        return run.streamed(run.translate(_ResponseStream(run, body, keep)), done=None, error_event=_stream_error, encode=named_frame)
    choices, usage = await run.collect()
    c = choices[0]
    response = _response(run, body, _status(c.finish_reason), _output(run, c), _usage(usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens), c.finish_reason)
    _keep(request, owner, body, response, stored_history, stored_input, chain)
    return FastJSONResponse(response)


def _stream_error(exc: GatewayError) -> dict[str, Any]:
    return {"type": "error", "code": getattr(exc, "code", None) or "server_error", "message": str(exc), "param": getattr(exc, "param", None), "sequence_number": 0}


class _ResponseStream(RunTranslator):
    """The Responses event sequence: response.created / in_progress, per output item
    output_item.added, its parts and deltas, their done events, output_item.done, then
    response.completed (or response.incomplete at the token limit)."""

    def __init__(self, run: ChatRun, req: ResponsesRequest, keep: Callable[[dict[str, Any]], None]) -> None:
        super().__init__()
        self.run, self.req, self.keep = run, req, keep
        self.sfx = _suffix(run)
        self.seq = 0
        self.output: list[dict[str, Any]] = []
        self.cur: dict[str, Any] | None = None  # the open item (kept whole as it grows)
        self.call_index: int | None = None

    def _ev(self, out: list[Any], kind: str, **fields: Any) -> None:
        out.append({"type": kind, "sequence_number": self.seq, **fields})
        self.seq += 1

    def head(self) -> list[Any]:
        out: list[Any] = []
        self._ev(out, "response.created", response=_response(self.run, self.req, "in_progress", [], None, None))
        self._ev(out, "response.in_progress", response=_response(self.run, self.req, "in_progress", [], None, None))
        return out

    def _close(self, out: list[Any]) -> None:
        cur = self.cur
        if cur is None:
            return
        idx = len(self.output) - 1
        if cur["type"] == "reasoning":
            text = cur["summary"][0]["text"]
            self._ev(out, "response.reasoning_summary_text.done", item_id=cur["id"], output_index=idx, summary_index=0, text=text)
            self._ev(out, "response.reasoning_summary_part.done", item_id=cur["id"], output_index=idx, summary_index=0, part={"type": "summary_text", "text": text})
        elif cur["type"] == "message":
            part = cur["content"][0]
            self._ev(out, "response.output_text.done", item_id=cur["id"], output_index=idx, content_index=0, text=part["text"], logprobs=[])
            self._ev(out, "response.content_part.done", item_id=cur["id"], output_index=idx, content_index=0, part=dict(part))
            cur["status"] = "completed"
        else:
            self._ev(out, "response.function_call_arguments.done", item_id=cur["id"], output_index=idx, arguments=cur["arguments"], name=cur["name"])
            cur["status"] = "completed"
        self._ev(out, "response.output_item.done", output_index=idx, item=_copy(cur))
        self.cur = None

    def _open(self, out: list[Any], item: dict[str, Any]) -> dict[str, Any]:
        self._close(out)
        self.output.append(item)
        self.cur = item
        idx = len(self.output) - 1
        if item["type"] == "reasoning":
            self._ev(out, "response.output_item.added", output_index=idx, item={"id": item["id"], "type": "reasoning", "summary": []})
            item["summary"] = [{"type": "summary_text", "text": ""}]
            self._ev(out, "response.reasoning_summary_part.added", item_id=item["id"], output_index=idx, summary_index=0, part={"type": "summary_text", "text": ""})
        elif item["type"] == "message":
            self._ev(out, "response.output_item.added", output_index=idx, item=_copy(item))
            item["content"] = [{"type": "output_text", "text": "", "annotations": [], "logprobs": []}]
            part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
            self._ev(out, "response.content_part.added", item_id=item["id"], output_index=idx, content_index=0, part=part)
        else:
            self._ev(out, "response.output_item.added", output_index=idx, item=_copy(item))
        return item

    def on_delta(self, e: DeltaEvent, out: list[Any]) -> None:
        sfx, cur = self.sfx, self.cur
        if e.reasoning:
            if cur is None or cur["type"] != "reasoning":
                cur = self._open(out, {"id": f"rs_{sfx}_{len(self.output)}", "type": "reasoning", "summary": []})
            cur["summary"][0]["text"] += e.reasoning
            self._ev(out, "response.reasoning_summary_text.delta", item_id=cur["id"], output_index=len(self.output) - 1, summary_index=0, delta=e.reasoning)
        if e.text:
            if cur is None or cur["type"] != "message":
                cur = self._open(out, _message_item(f"msg_{sfx}_{len(self.output)}", "", "in_progress"))
            cur["content"][0]["text"] += e.text
            self._ev(out, "response.output_text.delta", item_id=cur["id"], output_index=len(self.output) - 1, content_index=0, delta=e.text, logprobs=[])
        for d in e.tool_calls or ():
            if d.id or cur is None or cur["type"] != "function_call" or d.index != self.call_index:
                cur = self._open(out, _call_item(f"fc_{sfx}_{d.index}", d.id or f"call_{sfx}_{d.index}", d.name or "", "", "in_progress"))
                self.call_index = d.index
            if d.arguments:
                cur["arguments"] += d.arguments
                self._ev(out, "response.function_call_arguments.delta", item_id=cur["id"], output_index=len(self.output) - 1, delta=d.arguments)

    def tail(self, out: list[Any]) -> None:
        if not self.output:  # nothing generated: one empty message, as the whole answer has
            self._open(out, _message_item(f"msg_{self.sfx}_0", "", "in_progress"))
        self._close(out)
        status = _status(self.finish_reason)
        if status == "incomplete":
            for item in self.output:
                if item["type"] == "message":
                    item["status"] = "incomplete"
        usage = _usage(self.usage.prompt_tokens, self.usage.completion_tokens, self.usage.cached_tokens)
        final = _response(self.run, self.req, status, [_copy(o) for o in self.output], usage, self.finish_reason)
        self.keep(final)
        self._ev(out, "response.completed" if status == "completed" else "response.incomplete", response=final)


def _copy(item: dict[str, Any]) -> dict[str, Any]:
    out = dict(item)
    for key in ("content", "summary"):
        if key in out:
            out[key] = [dict(p) for p in out[key]]
    return out


@router.get("/v1/responses/{response_id}")
async def get_response(response_id: str, request: Request) -> FastJSONResponse:
    entry = _store(request).get(owner_of(request), response_id)
    if entry is None:
        raise _not_found(response_id)
    return FastJSONResponse(entry.response)


@router.delete("/v1/responses/{response_id}")
async def delete_response(response_id: str, request: Request) -> FastJSONResponse:
    if not _store(request).delete(owner_of(request), response_id):
        raise _not_found(response_id)
    return FastJSONResponse({"id": response_id, "object": "response", "deleted": True})


@router.get("/v1/responses/{response_id}/input_items")
async def list_input_items(
    response_id: str,
    request: Request,
    limit: int = Query(20, ge=1, le=100),
    order: Literal["asc", "desc"] = "desc",
    after: str | None = Query(None, max_length=256),
) -> FastJSONResponse:
    entry = _store(request).get(owner_of(request), response_id)
    if entry is None:
        raise _not_found(response_id)
    items = list(entry.input_items)
    if order == "desc":
        items.reverse()
    if after is not None:
        ids = [i.get("id") for i in items]
        items = items[ids.index(after) + 1 :] if after in ids else []
    page = items[:limit]
    return FastJSONResponse(
        {
            "object": "list",
            "data": page,
            "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None,
            "has_more": len(items) > limit,
        }
    )



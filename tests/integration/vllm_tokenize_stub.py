"""Stands in for ``python -m vllm.entrypoints.openai.api_server`` in test_tokenize: vLLM's
root ``/tokenize`` and ``/detokenize`` (its shapes, its bearer-key check) on the model's own
Hugging Face tokenizer, plus ``/health``. Run as ``python vllm_tokenize_stub.py <vLLM argv>``."""

from __future__ import annotations

import sys

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from transformers import AutoTokenizer


def _arg(name: str, default: str | None = None) -> str | None:
    argv = sys.argv[1:]
    return argv[argv.index(name) + 1] if name in argv else default


TOK = AutoTokenizer.from_pretrained(_arg("--model"))
KEY = _arg("--api-key")
MAX_LEN = int(_arg("--max-model-len", "2048") or 2048)


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": "BadRequestError", "param": None, "code": status}}, status)


def _authorised(request: Request) -> bool:
    return KEY is None or request.headers.get("authorization") == f"Bearer {KEY}"


async def health(request: Request) -> JSONResponse:
    return JSONResponse({})


async def tokenize(request: Request) -> JSONResponse:
    if not _authorised(request):
        return _error(401, "Unauthorized")
    body = await request.json()
    if "messages" in body:
        text = TOK.apply_chat_template(
            body["messages"], tokenize=False, add_generation_prompt=body.get("add_generation_prompt", True),
            **body.get("chat_template_kwargs", {}),
        )
        ids = TOK(text, add_special_tokens=body.get("add_special_tokens", False))["input_ids"]
    else:
        ids = TOK(body["prompt"], add_special_tokens=body.get("add_special_tokens", True))["input_ids"]
    out: dict = {"count": len(ids), "max_model_len": MAX_LEN, "tokens": ids}
    if body.get("return_token_strs"):
        out["token_strs"] = TOK.convert_ids_to_tokens(ids)
    return JSONResponse(out)


async def detokenize(request: Request) -> JSONResponse:
    if not _authorised(request):
        return _error(401, "Unauthorized")
    ids = (await request.json())["tokens"]
    if any(not 0 <= t < len(TOK) for t in ids):
        return _error(400, "Token id out of vocabulary")
    return JSONResponse({"prompt": TOK.decode(ids)})


app = Starlette(
    routes=[
        Route("/health", health, methods=["GET"]),
        Route("/tokenize", tokenize, methods=["POST"]),
        Route("/detokenize", detokenize, methods=["POST"]),
    ]
)

if __name__ == "__main__":
    uvicorn.run(app, host=_arg("--host", "127.0.0.1") or "127.0.0.1", port=int(_arg("--port") or 0), log_level="warning")

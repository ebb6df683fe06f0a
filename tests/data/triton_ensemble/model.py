"""A Triton Python-backend model with the TensorRT-LLM ``ensemble`` tensor interface, backed by
llama.cpp on a GGUF file: what tests/engines/test_triton.py serves from a real tritonserver.

Decoupled like the real ensemble: with ``stream`` true one response per generated token (the
last one flagged final), else one response whose ``text_output`` is the prompt followed by the
completion (TensorRT-LLM's ``exclude_input_in_output: false``). ``stop_words`` / ``bad_words``
are one CSV row each, as the ensemble's preprocessing reads them. Each request's start, end and
cancellation are appended as JSON lines to the ``events_log`` file named in config.pbtxt, so a
test can see what Triton did.
"""

from __future__ import annotations

import csv
import json
import threading
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils


def _words(request: Any, name: str) -> list[str]:
    t = pb_utils.get_input_tensor_by_name(request, name)
    if t is None:
        return []
    rows = [v.decode() if isinstance(v, bytes) else str(v) for v in t.as_numpy().reshape(-1)]
    return [w for w in next(csv.reader(rows[:1]), []) if w] if rows else []


def _one(request: Any, name: str, default: Any) -> Any:
    t = pb_utils.get_input_tensor_by_name(request, name)
    if t is None:
        return default
    return t.as_numpy().reshape(-1)[0]


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        import llama_cpp.llama_cpp as L
        from llama_cpp import Llama

        cfg = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in cfg.get("parameters", {}).items()}
        if params.get("extra_buffers") == "0":  # no AMX/repacked weight buffers (gpt_server's llama_cpp/buffers.py)
            defaults = L.llama_model_default_params

            def plain() -> Any:
                p = defaults()
                p.use_extra_bufts = False
                return p

            L.llama_model_default_params = plain
        self._make = lambda logits_all: Llama(
            model_path=params["gguf"], n_ctx=int(params.get("n_ctx", "2048")), n_threads=int(params.get("n_threads", "1")),
            logits_all=logits_all, verbose=False,
        )
        self.llm = self._make(False)
        self.llm_lp: Any = None  # logprobs need logits of every position: a second instance, made on first use
        self.events_log = params.get("events_log")
        self.lock = threading.Lock()  # llama.cpp runs one request at a time; others wait here
        self.log_lock = threading.Lock()

    def _log(self, **event: Any) -> None:
        if self.events_log:
            with self.log_lock, open(self.events_log, "a") as f:
                f.write(json.dumps(event) + "\n")

    def execute(self, requests: list[Any]) -> None:
        for request in requests:
            threading.Thread(target=self._serve, args=(request,), daemon=True).start()
        return None

    def _serve(self, request: Any) -> None:
        sender = request.get_response_sender()
        try:
            self._generate(request, sender)
        except Exception as exc:  # noqa: BLE001 - any failure is an error response that ends the request
            sender.send(pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(str(exc))),
                        flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)

    def _response(self, text: str, logprobs: list[float] | None) -> Any:
        out = [pb_utils.Tensor("text_output", np.array([[text.encode()]], dtype=np.object_))]
        if logprobs is not None:
            out.append(pb_utils.Tensor("output_log_probs", np.array([[logprobs]], dtype=np.float32)))
            out.append(pb_utils.Tensor("cum_log_probs", np.array([[sum(logprobs)]], dtype=np.float32)))
        return pb_utils.InferenceResponse(output_tensors=out)

    def _generate(self, request: Any, sender: Any) -> None:
        prompt = _one(request, "text_input", b"").decode()
        max_tokens = int(_one(request, "max_tokens", 16))
        stream = bool(_one(request, "stream", False))
        want_lp = bool(_one(request, "return_log_probs", False))
        seed = _one(request, "random_seed", None)
        stops = _words(request, "stop_words")
        bias = {}
        for w in _words(request, "bad_words"):
            ids = self.llm.tokenize(w.encode(), add_bos=False, special=True)
            if len(ids) == 1:
                bias[ids[0]] = -float("inf")
        kw = dict(
            max_tokens=max_tokens, temperature=float(_one(request, "temperature", 1.0)),
            top_k=int(_one(request, "top_k", 0)), top_p=float(_one(request, "top_p", 1.0)),
            repeat_penalty=float(_one(request, "repetition_penalty", 1.0)),
            seed=int(seed) if seed is not None else None, logprobs=1 if want_lp else None,
            logit_bias=bias or None, stream=True,
        )
        rid = request.request_id()
        with self.lock:
            if want_lp and self.llm_lp is None:
                self.llm_lp = self._make(True)
            llm = self.llm_lp if want_lp else self.llm
            self._log(event="start", id=rid, max_tokens=max_tokens, stream=stream, stop_words=stops)
            text, pending, tokens, cancelled = "", None, 0, False
            for chunk in llm.create_completion(prompt, **kw):
                if request.is_cancelled():
                    cancelled = True
                    break
                choice = chunk["choices"][0]
                piece = choice["text"]
                lps = (choice.get("logprobs") or {}).get("token_logprobs") if want_lp else None
                if not piece and not lps:
                    continue
                tokens += 1
                text += piece
                if stream:
                    if pending is not None:
                        sender.send(pending)
                    pending = self._response(piece, [float(x) for x in lps] if lps else ([] if want_lp else None))
                if any(s in text for s in stops):
                    break
            self._log(event="cancelled" if cancelled else "done", id=rid, tokens=tokens)
        if cancelled:
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        elif stream:
            sender.send(pending or self._response("", [] if want_lp else None), flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        else:
            sender.send(self._response(prompt + text, None), flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)

"""The triton engine's request shapes, without a server: the generate_stream body under
TensorRT-LLM's tensor names (and renamed ones), the CSV row of stop/bad words, Qwen-VL's image
prompt, reading streamed responses, the options' bounds, and /generate's translation."""

from __future__ import annotations

import csv

import pytest
from pydantic import ValidationError

from gpt_server.backends.triton import TritonOptions
from gpt_server.backends.triton.client import _status_error, normalise_url
from gpt_server.backends.triton.request import (
    PRESETS,
    Sampling,
    build_inputs,
    csv_row,
    qwen_vl_messages,
    response_logprobs,
    response_text,
)
from gpt_server.errors import BadRequestError, ServiceUnavailableError, UpstreamError
from gpt_server.protocol.openai import ChatCompletionRequest
from gpt_server.protocol.tritonserver import TritonGenerateRequest, generate_chat_body


def test_body_sends_only_what_differs_from_trtllm_defaults() -> None:
    body = build_inputs({}, "Hi", Sampling(max_tokens=5))
    assert body == {"text_input": "Hi", "max_tokens": 5, "stream": True}
    s = Sampling(max_tokens=7, temperature=0.7, top_k=40, top_p=0.9, repetition_penalty=1.1, seed=3, logprobs=True,
                 stop_words=["\n\n", "a,b", 'say "x"'], bad_words=["<|im_end|>"], end_id=2, pad_id=2)
    body = build_inputs({}, "Hi", s)
    assert body["temperature"] == 0.7 and body["top_k"] == 40 and body["top_p"] == 0.9
    assert body["repetition_penalty"] == 1.1 and body["random_seed"] == 3 and body["return_log_probs"] is True
    assert body["end_id"] == 2 and body["pad_id"] == 2 and body["bad_words"] == "<|im_end|>"
    # one CSV row, read back the way TensorRT-LLM's preprocessing reads it
    assert next(csv.reader([body["stop_words"]])) == ["\n\n", "a,b", 'say "x"']


def test_greedy_is_top_k_one() -> None:
    body = build_inputs({}, "Hi", Sampling(max_tokens=3, temperature=0.0, top_k=50, top_p=0.5))
    assert body["top_k"] == 1 and "temperature" not in body and "top_p" not in body


def test_tensor_names_rename_or_leave_out() -> None:
    names = {"text_input": "prompt", "max_tokens": "request_output_len", "stream": "streaming", "random_seed": ""}
    body = build_inputs(names, "Hi", Sampling(max_tokens=4, seed=9))
    assert body == {"prompt": "Hi", "request_output_len": 4, "streaming": True}
    with pytest.raises(BadRequestError):
        build_inputs({"text_input": ""}, "Hi", Sampling(max_tokens=4))


def test_csv_row_of_plain_words() -> None:
    assert csv_row(["User:", "###"]) == "User:,###"


def test_qwen_vl_prompt_and_image_tensor() -> None:
    msgs = [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAA"}},
        {"type": "text", "text": "What is it?"},
        {"type": "image_url", "image_url": {"url": "https://example.com/b.jpg"}},
    ]}]
    out, images = qwen_vl_messages(msgs)
    assert out[0]["content"] == "Picture 1: <img>1</img>\nWhat is it?Picture 2: <img>2</img>\n"
    assert images == ["data:image/png;base64,AAA", "https://example.com/b.jpg"]
    body = build_inputs({}, out[0]["content"], Sampling(max_tokens=8, end_id=151645), images)
    assert body["image_input"] == images and body["end_id"] == 151645
    assert PRESETS["qwen-vl"].images and "<|im_end|>" in PRESETS["qwen2-chat"].stop_words


def test_reading_streamed_responses() -> None:
    assert response_text({"text_output": " Paris"}, "text_output") == " Paris"
    assert response_text({"text_output": [" Paris"]}, "text_output") == " Paris"
    assert response_text({}, "text_output") == ""
    assert response_logprobs({"output_log_probs": -0.5}, "output_log_probs") == [-0.5]
    assert response_logprobs({"output_log_probs": [[-0.5, -1.0]]}, "output_log_probs") == [-0.5, -1.0]
    assert response_logprobs({"text_output": "x"}, "output_log_probs") is None


def test_triton_http_errors_map_to_openai_statuses() -> None:
    assert isinstance(_status_error(400, b'{"error":"missing input max_tokens"}'), BadRequestError)
    assert isinstance(_status_error(404, b'{"error":"unknown model"}'), ServiceUnavailableError)
    assert isinstance(_status_error(503, b"down"), ServiceUnavailableError)
    assert isinstance(_status_error(500, b"boom"), UpstreamError)
    assert normalise_url("localhost:8000/") == "http://localhost:8000"


def test_options_bounds_and_names() -> None:
    ok = TritonOptions(model_name_or_path="tok.gguf", server_url="localhost:8000", tensor_names={"text_input": "prompt"})
    assert ok.triton_model == "ensemble" and ok.preset == "trtllm"
    for bad in ({"tensor_names": {"nope": "x"}}, {"triton_model": "../x"}, {"preset": "llama"}, {"health_interval": 0},
                {"upstream_timeout": 0}):
        with pytest.raises(ValidationError):
            TritonOptions(model_name_or_path="tok.gguf", server_url="localhost:8000", **bad)


def test_generate_route_translation() -> None:
    req = TritonGenerateRequest(prompt="Describe", images=["https://x/a.png"], max_output_len=16, top_k=-1, top_p=0.8,
                                temperature=0.5, repetition_penalty=1.05, num_beams=1)
    body = generate_chat_body(req, "chat")
    creq = ChatCompletionRequest.model_validate(body)
    assert creq.max_tokens == 16 and creq.top_k == -1 and creq.repetition_penalty == 1.05
    assert body["messages"][0]["content"][0] == {"type": "image_url", "image_url": {"url": "https://x/a.png"}}
    with pytest.raises(ValidationError):
        TritonGenerateRequest(prompt="x", max_output_len=0)
    with pytest.raises(ValidationError):
        TritonGenerateRequest(prompt="x", images=["u"] * 17)

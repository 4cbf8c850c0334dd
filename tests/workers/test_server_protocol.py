"""The local server's request checks and response shapes (workers/server/protocol.py): pure,
no model."""

import pytest

from workers.runtime import GenerationParams, GenerationResult
from workers.server.protocol import (
    RequestError,
    chunk,
    completion,
    parse_chat_request,
    usage_chunk,
)

SERVED = ["smollm2-135m-instruct"]
HI = [{"role": "user", "content": "hi"}]


def parse(body):
    return parse_chat_request(body, served_models=SERVED)


def test_a_full_request_is_read_field_by_field():
    request = parse(
        {
            "model": SERVED[0],
            "messages": [
                {"role": "developer", "content": "Be brief."},
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
                },
            ],
            "max_completion_tokens": 7,
            "temperature": 0,
            "top_p": 0.5,
            "stop": "\n",
            "seed": 3,
            "stream": True,
            "stream_options": {"include_usage": True},
            "adapter_id": "3/17/adapter",
            "user": "ignored",
        }
    )

    assert request.messages == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "ab"},
    ]
    assert request.params == GenerationParams(
        max_new_tokens=7, temperature=0.0, top_p=0.5, stop=("\n",), seed=3
    )
    assert (request.stream, request.include_usage, request.adapter_id) == (
        True,
        True,
        "3/17/adapter",
    )


def test_defaults_follow_openai():
    request = parse({"messages": HI})

    assert request.params == GenerationParams(max_new_tokens=256, temperature=1.0, top_p=1.0)
    assert (request.stream, request.include_usage, request.adapter_id) == (False, False, None)


@pytest.mark.parametrize(
    ("body", "param", "code", "status"),
    [
        ([], None, "invalid_body", 400),
        ({"messages": HI, "model": "gpt-9"}, "model", "model_not_found", 404),
        ({}, "messages", None, 400),
        ({"messages": ["hi"]}, "messages[0]", None, 400),
        ({"messages": [{"role": "user"}]}, "messages[0].content", None, 400),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
            "messages[0].content[0]",
            None,
            400,
        ),
        ({"messages": HI, "max_tokens": 0}, "max_tokens", None, 400),
        ({"messages": HI, "max_tokens": True}, "max_tokens", None, 400),
        ({"messages": HI, "max_completion_tokens": 1.5}, "max_completion_tokens", None, 400),
        ({"messages": HI, "temperature": -1}, "temperature", None, 400),
        ({"messages": HI, "temperature": "hot"}, "temperature", None, 400),
        ({"messages": HI, "top_p": 0}, "top_p", None, 400),
        ({"messages": HI, "stop": ""}, "stop", None, 400),
        ({"messages": HI, "stop": [1]}, "stop", None, 400),
        ({"messages": HI, "seed": "x"}, "seed", None, 400),
        ({"messages": HI, "stream": "yes"}, "stream", None, 400),
        ({"messages": HI, "stream_options": {"include_usage": 1}}, "stream_options", None, 400),
        ({"messages": HI, "adapter_id": ""}, "adapter_id", None, 400),
        ({"messages": HI, "n": 2}, "n", "unsupported", 400),
        ({"messages": HI, "tools": [{"type": "function"}]}, "tools", "unsupported", 400),
        ({"messages": HI, "logprobs": True}, "logprobs", "unsupported", 400),
    ],
)
def test_a_bad_request_names_its_field(body, param, code, status):
    with pytest.raises(RequestError) as info:
        parse(body)

    error = info.value.body()["error"]
    assert (error["param"], error["code"], error["type"], info.value.status) == (
        param,
        code,
        "invalid_request_error",
        status,
    )
    assert error["message"]


def test_response_shapes():
    result = GenerationResult(text="Paris.", input_tokens=30, output_tokens=3, finish_reason="stop")

    body = completion("chatcmpl-1", "m", result)
    assert body["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Paris."},
            "finish_reason": "stop",
            "logprobs": None,
        }
    ]
    assert body["usage"] == {"prompt_tokens": 30, "completion_tokens": 3, "total_tokens": 33}
    assert chunk("chatcmpl-1", "m", {"content": "P"}, include_usage=True)["usage"] is None
    assert "usage" not in chunk("chatcmpl-1", "m", {"content": "P"})
    assert usage_chunk("chatcmpl-1", "m", result)["choices"] == []

"""The OpenAI wire format: what a bad request is told, and how chunks fold into one answer.

A request body is validated into a pydantic model; `errors.from_validation_error`
turns the first failure into the 400 a client sees, naming the field. `gather()`
is what a non-streaming caller receives, built from the same chunks a stream sends.
"""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from modelyard.errors import ModelyardError, from_validation_error
from modelyard.wire import ChatCompletionRequest, CompletionRequest, EmbeddingRequest, gather

HELLO = [{"role": "user", "content": "Hello"}]


def refusal(request_type: type, /, **body) -> ModelyardError:
    """The error a client gets for this request body."""
    with pytest.raises(ValidationError) as info:
        request_type.model_validate(body)
    err = from_validation_error(info.value)
    assert isinstance(err, ModelyardError)
    return err


# --- request validation --------------------------------------------------------


def test_a_plain_chat_request_is_accepted_with_openai_defaults():
    req = ChatCompletionRequest.model_validate({"model": "chat", "messages": HELLO})
    assert req.messages[0].text() == "Hello"
    assert req.stream is False
    assert req.stop_list == []
    assert req.token_limit is None
    assert req.include_usage is False


def test_chat_request_without_messages_is_a_400_naming_messages():
    err = refusal(ChatCompletionRequest, model="chat")
    assert err.status == 400
    assert err.param == "messages"
    assert err.code == "missing_required_parameter"
    assert "messages" in err.message
    assert err.body()["error"]["type"] == "invalid_request_error"


def test_chat_request_with_an_empty_message_list_is_refused():
    err = refusal(ChatCompletionRequest, model="chat", messages=[])
    assert (err.status, err.param) == (400, "messages")


def test_temperature_above_two_is_a_400_naming_temperature_and_the_value():
    err = refusal(ChatCompletionRequest, model="chat", messages=HELLO, temperature=2.5)
    assert err.status == 400
    assert err.param == "temperature"
    assert err.code == "invalid_value"
    assert "2.5" in err.message


def test_negative_temperature_is_refused():
    err = refusal(ChatCompletionRequest, model="chat", messages=HELLO, temperature=-0.1)
    assert err.param == "temperature"


def test_max_tokens_zero_is_refused():
    err = refusal(ChatCompletionRequest, model="chat", messages=HELLO, max_tokens=0)
    assert (err.status, err.param, err.code) == (400, "max_tokens", "invalid_value")


def test_more_than_four_stop_sequences_are_refused():
    err = refusal(ChatCompletionRequest, model="chat", messages=HELLO, stop=["a", "b", "c", "d", "e"])
    assert (err.status, err.param) == (400, "stop")
    assert "at most 4" in err.message


def test_four_stop_sequences_are_fine_and_a_single_string_is_one_stop():
    assert ChatCompletionRequest(model="chat", messages=HELLO, stop=["a", "b", "c", "d"]).stop_list == ["a", "b", "c", "d"]
    assert ChatCompletionRequest(model="chat", messages=HELLO, stop="END").stop_list == ["END"]


def test_an_empty_stop_sequence_is_refused():
    err = refusal(ChatCompletionRequest, model="chat", messages=HELLO, stop=["ok", ""])
    assert err.param == "stop"


def test_an_unknown_field_is_refused_by_name_not_ignored():
    err = refusal(ChatCompletionRequest, model="chat", messages=HELLO, temprature=0.5)
    assert err.status == 400
    assert err.param == "temprature"
    assert err.code == "unknown_parameter"
    assert "temprature" in err.message


def test_an_unknown_message_field_is_refused_by_its_path():
    err = refusal(ChatCompletionRequest, model="chat", messages=[{"role": "user", "content": "hi", "padding": "x" * 100}])
    assert err.status == 400 and err.param == "messages.0.padding" and err.code == "unknown_parameter"
    err = refusal(ChatCompletionRequest, model="chat",
                  messages=[{"role": "user", "content": [{"type": "text", "text": "hi", "extra": 1}]}])
    assert err.status == 400 and err.param.startswith("messages.0.content")


def test_the_openai_message_fields_of_tool_calls_and_images_are_accepted():
    messages = [
        {"role": "user", "content": [{"type": "text", "text": "what is here?"},
                                     {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}}]},
        {"role": "assistant", "content": None, "refusal": None,
         "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "42"},
    ]
    request = ChatCompletionRequest.model_validate({"model": "chat", "messages": messages})
    assert request.messages[2].tool_call_id == "call_1"
    assert request.messages[1].tool_calls[0]["function"]["name"] == "f"


def test_user_and_metadata_are_bounded():
    err = refusal(ChatCompletionRequest, model="chat", messages=HELLO, user="u" * 257)
    assert err.status == 400 and err.param == "user" and "256" in err.message
    err = refusal(EmbeddingRequest, model="embed", input="hi", user="u" * 10_000)
    assert err.param == "user"
    err = refusal(ChatCompletionRequest, model="chat", messages=HELLO, metadata={f"k{i}": "v" for i in range(17)})
    assert err.param == "metadata" and "16" in err.message
    err = refusal(ChatCompletionRequest, model="chat", messages=HELLO, metadata={"k": "v" * 513})
    assert err.param == "metadata" and "512" in err.message
    assert ChatCompletionRequest.model_validate({"model": "chat", "messages": HELLO, "user": "u" * 256,
                                                 "metadata": {"k": "v" * 512}}).user == "u" * 256


def test_a_bad_message_role_names_the_message_and_field():
    err = refusal(ChatCompletionRequest, model="chat", messages=[{"role": "robot", "content": "hi"}])
    assert err.param == "messages.0.role"
    assert err.status == 400


def test_max_completion_tokens_wins_over_max_tokens():
    req = ChatCompletionRequest(model="chat", messages=HELLO, max_tokens=50, max_completion_tokens=7)
    assert req.token_limit == 7


def test_include_usage_follows_stream_options():
    req = ChatCompletionRequest(model="chat", messages=HELLO, stream=True, stream_options={"include_usage": True})
    assert req.include_usage is True


def test_completion_request_needs_a_prompt():
    err = refusal(CompletionRequest, model="m")
    assert (err.param, err.code) == ("prompt", "missing_required_parameter")


def test_embedding_request_with_empty_input_is_refused():
    assert refusal(EmbeddingRequest, model="e", input="").param == "input"
    assert refusal(EmbeddingRequest, model="e", input=[]).param == "input"


# --- gather(): chunks into the non-streaming body ---------------------------------


def chat_chunk(delta, finish=None, logprobs=None, **extra):
    return {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 111, "model": "gemma", **extra,
            "choices": [{"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}]}


def lp(token: str, value: float) -> dict:
    return {"token": token, "logprob": value, "bytes": list(token.encode()), "top_logprobs": []}


def test_gather_folds_a_chat_stream_into_one_chat_completion():
    usage = {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}
    chunks = [
        chat_chunk({"role": "assistant", "content": ""}, system_fingerprint="fp_1"),
        chat_chunk({"content": "Hel"}, logprobs={"content": [lp("Hel", -0.1)]}),
        chat_chunk({"content": "lo"}, logprobs={"content": [lp("lo", -0.2)]}),
        chat_chunk({}, finish="stop"),
        {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 111, "model": "gemma", "choices": [],
         "usage": usage},
    ]
    body = gather("chat", chunks)
    assert body["object"] == "chat.completion"
    assert (body["id"], body["created"], body["model"]) == ("chatcmpl-1", 111, "gemma")
    assert body["system_fingerprint"] == "fp_1"
    assert body["usage"] == usage
    [choice] = body["choices"]
    assert choice["index"] == 0
    assert choice["message"] == {"role": "assistant", "content": "Hello"}
    assert choice["finish_reason"] == "stop"
    assert [e["token"] for e in choice["logprobs"]["content"]] == ["Hel", "lo"]


def test_gather_without_logprobs_leaves_them_null_and_defaults_the_role():
    body = gather("chat", [chat_chunk({"content": "Hi"}), chat_chunk({}, finish="length")])
    [choice] = body["choices"]
    assert choice["message"] == {"role": "assistant", "content": "Hi"}
    assert choice["logprobs"] is None
    assert choice["finish_reason"] == "length"
    assert body["usage"] is None


def test_gather_keeps_choices_apart_by_index():
    chunks = [
        {"id": "c", "model": "m", "choices": [{"index": 1, "delta": {"content": "B"}}]},
        {"id": "c", "model": "m", "choices": [{"index": 0, "delta": {"content": "A"}}]},
        {"id": "c", "model": "m", "choices": [{"index": 1, "delta": {"content": "b"}, "finish_reason": "stop"}]},
    ]
    body = gather("chat", chunks)
    assert [c["message"]["content"] for c in body["choices"]] == ["A", "Bb"]
    assert [c["index"] for c in body["choices"]] == [0, 1]


def test_gather_folds_completion_chunks_and_their_legacy_logprobs():
    def text_chunk(text, finish=None, logprobs=None):
        return {"id": "cmpl-1", "object": "text_completion", "created": 5, "model": "gemma",
                "choices": [{"index": 0, "text": text, "logprobs": logprobs, "finish_reason": finish}]}

    chunks = [
        text_chunk("Once", logprobs={"tokens": ["Once"], "token_logprobs": [-0.5], "top_logprobs": [{"Once": -0.5}],
                                     "text_offset": [0]}),
        text_chunk(" upon", finish="length",
                   logprobs={"tokens": [" upon"], "token_logprobs": [-0.25], "top_logprobs": [{" upon": -0.25}],
                             "text_offset": [4]}),
        {"id": "cmpl-1", "object": "text_completion", "created": 5, "model": "gemma", "choices": [],
         "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}},
    ]
    body = gather("completion", chunks)
    assert body["object"] == "text_completion"
    [choice] = body["choices"]
    assert choice["text"] == "Once upon"
    assert choice["finish_reason"] == "length"
    assert choice["logprobs"] == {"tokens": ["Once", " upon"], "token_logprobs": [-0.5, -0.25],
                                  "top_logprobs": [{"Once": -0.5}, {" upon": -0.25}], "text_offset": [0, 4]}
    assert body["usage"]["total_tokens"] == 3


@pytest.mark.parametrize("kind, obj", [("chat", "chat.completion"), ("completion", "text_completion"),
                                       ("embedding", "list")])
def test_a_single_complete_body_passes_through_unchanged(kind, obj):
    whole = {"id": "x", "object": obj, "choices": [{"index": 0, "text": "kept"}], "usage": {"prompt_tokens": 1}}
    assert gather(kind, [whole]) is whole


def test_gather_of_nothing_is_an_error_not_an_empty_answer():
    with pytest.raises(ValueError):
        gather("chat", [])

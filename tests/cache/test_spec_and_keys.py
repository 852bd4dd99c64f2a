"""The `cache` block of an endpoint spec, and which requests share an answer."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from modelyard.cache.keys import cache_control, not_repeatable, request_keys
from modelyard.cache.spec import CacheSpec, parse_duration
from modelyard.errors import from_validation_error
from modelyard.serving.spec import EndpointSpec
from modelyard.wire import ChatCompletionRequest, CompletionRequest


def refused(cache: dict) -> tuple[str, str]:
    with pytest.raises(ValidationError) as exc:
        EndpointSpec(name="assistant", cache=cache)
    err = from_validation_error(exc.value)
    assert err.status == 400
    return err.param, err.message


def test_the_issue_example_is_accepted_and_off_is_the_default():
    spec = EndpointSpec(name="assistant", cache={"mode": "semantic", "similarity": 0.92, "ttl": "1d",
                                                 "max_entries": 100000, "scope": "endpoint", "backend": "local"})
    assert spec.cache.mode == "semantic" and spec.cache.ttl_s == 86400
    assert EndpointSpec(name="assistant").cache.mode == "off"
    assert EndpointSpec(name="assistant", cache={"backend": "redis://127.0.0.1:6379/0"}).cache.is_redis


@pytest.mark.parametrize("value", [0, -0.1, 1.01, 2])
def test_a_threshold_outside_0_1_is_refused_naming_the_field(value):
    param, message = refused({"mode": "semantic", "similarity": value})
    assert param == "cache.similarity" and "(0, 1]" in message


def test_a_threshold_of_exactly_1_is_allowed():
    assert CacheSpec(similarity=1).similarity == 1


def test_unknown_mode_and_backend_are_refused():
    param, message = refused({"mode": "fuzzy"})
    assert param == "cache.mode" and "'off', 'exact' or 'semantic'" in message
    param, message = refused({"backend": "memcached://x"})
    assert param == "cache.backend" and "'local' or a Redis URL" in message
    param, _ = refused({"scope": "everyone"})
    assert param == "cache.scope"
    param, _ = refused({"bogus": 1})
    assert param == "cache.bogus"


@pytest.mark.parametrize("ttl", ["3y", "1 fortnight", "-1h", "0s", "soon", ""])
def test_a_bad_ttl_is_refused(ttl):
    param, message = refused({"ttl": ttl})
    assert param == "cache.ttl" and "ttl" in message


def test_durations():
    assert [parse_duration(t) for t in ("30s", "15m", "1h", "1d", "7d", "90")] == [30, 900, 3600, 86400, 604800, 90]


def chat(content: str = "What is the capital of France?", *, system: str | None = None, **params):
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": content}]
    return ChatCompletionRequest(model="assistant", messages=messages, **{"temperature": 0, **params})


def keys(request, kind: str = "chat", scope: str = "*", models=("m",)):
    return request_keys(kind, request, endpoint="assistant", models=models, scope=scope)


def test_only_repeatable_requests_are_cacheable_by_default():
    assert not_repeatable(chat()) is None
    assert not_repeatable(chat(temperature=None, seed=7)) is None
    assert not_repeatable(chat(temperature=0.7)) is not None
    assert not_repeatable(chat(temperature=None)) is not None  # the default temperature samples
    assert not_repeatable(chat(n=2)) == "n > 1"
    assert not_repeatable(chat(tools=[{"type": "function", "function": {"name": "f"}}])) == "tools"


def test_cache_control_headers():
    assert cache_control({"x-modelyard-cache": "allow"}) == (True, False, False)
    assert cache_control({"cache-control": "no-cache"}) == (False, True, False)
    assert cache_control({"cache-control": "max-age=0, no-store"}) == (False, False, True)
    assert cache_control(None) == (False, False, False)


def test_stream_and_non_stream_share_an_entry_but_parameters_and_history_do_not():
    base = keys(chat())
    assert keys(chat(stream=True, stream_options={"include_usage": True}, user="u1")) == base
    assert keys(chat(max_completion_tokens=None, max_tokens=None)) == base
    assert keys(chat(max_tokens=10)).partition != base.partition
    assert keys(chat(seed=3)).partition != base.partition
    assert keys(chat(system="Answer in French.")).partition != base.partition
    assert keys(chat(), models=("other",)).partition != base.partition
    assert keys(chat(), scope="key:7").partition != base.partition
    # a paraphrase: same partition, another exact key
    para = keys(chat("Which city is the capital of France?"))
    assert para.partition == base.partition and para.exact != base.exact
    assert para.query == "Which city is the capital of France?"


def test_text_parts_read_as_one_string_and_a_non_user_last_message_has_no_key():
    parts = ChatCompletionRequest(model="a", temperature=0, messages=[
        {"role": "user", "content": [{"type": "text", "text": "What is the capital "}, {"type": "text", "text": "of France?"}]}])
    assert keys(parts) == keys(chat())
    assistant_last = ChatCompletionRequest(model="a", temperature=0, messages=[
        {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}])
    assert keys(assistant_last) is None


def test_completion_prompts_are_keyed_on_the_prompt():
    a = keys(CompletionRequest(model="a", prompt="Once upon a time", temperature=0), kind="completion")
    b = keys(CompletionRequest(model="a", prompt="Once upon a time", temperature=0), kind="completion")
    assert a == b and a.query == "Once upon a time"
    assert keys(CompletionRequest(model="a", prompt=[1, 2, 3], temperature=0), kind="completion") is None

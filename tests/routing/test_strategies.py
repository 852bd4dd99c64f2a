"""The router strategies' decisions at their interfaces: rules, cascade scorers, calibration."""

from __future__ import annotations

import asyncio
import math
import time

import numpy as np
import pytest

from modelyard.errors import ModelyardError
from modelyard.routing.calibrate import threshold_for_share
from modelyard.routing.cascade import CascadePolicy, is_refusal, token_logprobs
from modelyard.routing.policy import RulesPolicy, estimate_tokens, max_cost
from modelyard.routing.spec import CascadeRouter, RulesRouter
from modelyard.wire import ChatCompletionRequest


def chat(content: str, **kw) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate({"model": "m", "messages": [{"role": "user", "content": content}], **kw})


def test_refusals_and_admissions_of_ignorance_are_detected():
    for text in ("I don't know.", "I'm not sure which one it is.", "I cannot answer that.", "", "   ",
                 "As an AI, I have no opinion.", "I'm sorry, but I can't help with that."):
        assert is_refusal(text), text
    for text in ("Paris.", "The answer is 42.", "Know your rights: the capital is Paris."):
        assert not is_refusal(text), text


def test_token_logprobs_are_read_from_chat_and_completion_bodies():
    chat_body = {"choices": [{"logprobs": {"content": [{"token": "a", "logprob": -0.5}, {"token": "b", "logprob": -1.5}]}}]}
    completion_body = {"choices": [{"logprobs": {"token_logprobs": [-0.25, None, -0.75]}}]}
    assert token_logprobs("chat", chat_body) == [-0.5, -1.5]
    assert token_logprobs("completion", completion_body) == [-0.25, -0.75]
    assert token_logprobs("chat", {"choices": [{"logprobs": None}]}) == []


class _Ctx:
    kind = "chat"

    def __init__(self, prompt: str) -> None:
        self.request = chat(prompt)


class _Verifier:
    """Says the strong tier is needed when the answer hedges."""

    def score(self, prompts, answers=None):
        return np.array([0.9 if "maybe" in a else 0.1 for a in answers])


class _Models:
    def router(self, endpoint):
        return _Verifier()


@pytest.mark.parametrize("scorer, body, expected", [
    ("mean_logprob", {"choices": [{"logprobs": {"content": [{"logprob": -1.0}, {"logprob": -3.0}]}}]}, -2.0),
    ("min_logprob", {"choices": [{"logprobs": {"content": [{"logprob": -1.0}, {"logprob": -3.0}]}}]}, -3.0),
    ("mean_logprob", {"choices": [{"message": {"content": "x"}, "logprobs": None}]}, -math.inf),
    ("refusal", {"choices": [{"message": {"content": "I do not know."}}]}, 0.0),
    ("refusal", {"choices": [{"message": {"content": "Paris."}}]}, 1.0),
    ("verifier", {"choices": [{"message": {"content": "maybe Lyon"}}]}, 0.1),
    ("verifier", {"choices": [{"message": {"content": "Paris"}}]}, 0.9),
])
def test_cascade_scores(scorer, body, expected):
    threshold = -1.0 if "logprob" in scorer else 0.5
    policy = CascadePolicy(CascadeRouter(strategy="cascade", scorer=scorer, threshold=threshold), _Models(), "e")
    assert asyncio.run(policy.score(_Ctx("Capital of France?"), body)) == pytest.approx(expected)


def test_a_low_budget_lowers_the_cascade_bar():
    policy = CascadePolicy(CascadeRouter(strategy="cascade", scorer="mean_logprob", threshold=-1.0), _Models(), "e")
    assert policy._threshold(False) == -1.0 and policy._threshold(True) == -1.5
    policy = CascadePolicy(CascadeRouter(strategy="cascade", scorer="verifier", threshold=0.6), _Models(), "e")
    assert policy._threshold(True) == pytest.approx(0.3)


def test_rules_match_in_order_and_fall_back_to_the_default():
    policy = RulesPolicy(RulesRouter.model_validate({"strategy": "rules", "default": "mid", "rules": [
        {"name": "sql", "when": {"regex": r"\bselect\b.+\bfrom\b"}, "tier": "large"},
        {"name": "chatty", "when": {"min_messages": 3}, "tier": "small"},
        {"name": "short", "when": {"max_prompt_tokens": 5}, "tier": "small"},
    ]}))
    assert policy.choose(chat("Fix: SELECT name FROM users WHERE"), {}) == ("large", "sql")
    assert policy.choose(chat("hi"), {}) == ("small", "short")
    assert policy.choose(chat("a question that is certainly longer than twenty characters"), {}) == ("mid", "default")
    many = ChatCompletionRequest.model_validate({"model": "m", "messages": [
        {"role": "user", "content": "x" * 100}, {"role": "assistant", "content": "y"}, {"role": "user", "content": "z" * 100}]})
    assert policy.choose(many, {}) == ("small", "chatty")


def test_a_catastrophic_rule_regex_is_cut_off_instead_of_stalling_the_gateway():
    policy = RulesPolicy(RulesRouter.model_validate({"strategy": "rules", "default": "small", "rules": [
        {"name": "evil", "when": {"regex": r"^(a|aa)+$"}, "tier": "large"},
        {"name": "fine", "when": {"regex": r"^a+b$"}, "tier": "large"},
    ]}))
    started = time.perf_counter()
    assert policy.choose(chat("a" * 40 + "!"), {}) == ("small", "default")
    assert time.perf_counter() - started < 1.0  # Python's re had not finished after 10 s
    assert policy.regex_timeouts == 1
    assert policy.choose(chat("aaab"), {}) == ("large", "fine")


def test_prompt_tokens_are_estimated_from_characters_and_bad_cost_headers_refused():
    assert estimate_tokens(chat("x" * 40)) == 10
    assert max_cost({"x-modelyard-max-cost": "0.25"}) == 0.25
    assert max_cost({}) is None
    for bad in ("-1", "nan", "cheap"):
        with pytest.raises(ModelyardError) as err:
            max_cost({"x-modelyard-max-cost": bad})
        assert err.value.status == 400 and err.value.param == "x-modelyard-max-cost"


def test_calibration_picks_the_threshold_for_the_wanted_share():
    scores = np.linspace(0.0, 0.99, 100)
    for share in (0.1, 0.3, 0.5):
        t = threshold_for_share(scores, share)
        assert np.mean(scores >= t) == pytest.approx(share, abs=0.011)
    assert threshold_for_share(scores, 0.0) == 1.0
    with pytest.raises(ModelyardError):
        threshold_for_share(scores, 1.2)

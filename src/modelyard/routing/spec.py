"""The router's and the budget's settings, as an endpoint spec carries them::

    name: assistant
    policy: router
    tiers: [local-small, hosted-mini, hosted-large]   # deployments, cheapest first
    router:
      strategy: cascade            # rules | cascade | learned | speculative
      scorer: mean_logprob
      threshold: -1.2
    budget: {usd_per_day: 5}

Each strategy has its own settings model (a tagged union on ``strategy``),
so a missing or misspelt setting is refused when the spec is applied, with
the field named, never discovered on a live request.
"""

from __future__ import annotations

from typing import Annotated, Literal, Union

import regex
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RuleConditions(_Spec):
    """What a request must show for its rule to match; every condition given must hold."""

    #: prompt length in tokens (estimated as characters / 4 over every message: no tokenizer in the gateway)
    min_prompt_tokens: int | None = Field(default=None, ge=0)
    max_prompt_tokens: int | None = Field(default=None, ge=0)
    #: a regular expression searched in the last user message (case-insensitive)
    regex: str | None = None
    #: any of these words or phrases in the last user message (case-insensitive)
    keywords: list[str] | None = None
    min_messages: int | None = Field(default=None, ge=0)
    max_messages: int | None = Field(default=None, ge=0)
    #: the request's ``metadata`` tags: each named tag must have the value, or one of the values
    metadata: dict[str, str | list[str]] | None = None
    #: the ``x-modelyard-max-cost`` header (USD the client will pay for this request) is below this
    max_cost_below: float | None = Field(default=None, gt=0)

    @field_validator("regex")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                regex.compile(value)
            except regex.error as exc:
                raise ValueError(f"regex {value!r} does not compile: {exc}") from None
        return value


class Rule(_Spec):
    #: a name for reports and the ``x-modelyard-route`` header
    name: str | None = None
    when: RuleConditions = Field(default_factory=RuleConditions)
    #: the tier (deployment name) that answers when the rule matches
    tier: str


class RulesRouter(_Spec):
    """First matching rule picks the tier; no match: ``default`` (the cheapest tier unless set)."""

    strategy: Literal["rules"]
    rules: list[Rule] = Field(min_length=1)
    default: str | None = None


Scorer = Literal["mean_logprob", "min_logprob", "refusal", "verifier"]


class CascadeRouter(_Spec):
    """Call the cheapest tier, score its answer, escalate while the score is under ``threshold``.

    Scores: ``mean_logprob`` / ``min_logprob`` are the answer's token
    log-probabilities (≤ 0; e.g. −1.0); ``refusal`` is 0 for an answer that
    refuses or says it does not know, 1 otherwise; ``verifier`` is the trained
    router model's probability that the answer is good enough (0–1).
    """

    strategy: Literal["cascade"]
    scorer: Scorer = "mean_logprob"
    threshold: float
    #: also escalate an answer that refuses or says it does not know, whatever the scorer
    escalate_on_refusal: bool = True

    @model_validator(mode="after")
    def _threshold_in_range(self) -> "CascadeRouter":
        if self.scorer in ("mean_logprob", "min_logprob") and self.threshold > 0:
            raise ValueError(f"threshold for scorer {self.scorer} is a log-probability: 0 or below, not {self.threshold}")
        if self.scorer in ("refusal", "verifier") and not 0 <= self.threshold <= 1:
            raise ValueError(f"threshold for scorer {self.scorer} is between 0 and 1, not {self.threshold}")
        return self


class LearnedRouter(_Spec):
    """A trained model scores each prompt; above ``threshold`` goes to the stronger tier.

    The model is trained with ``modelyard router train ENDPOINT`` and the
    threshold chosen with ``modelyard router calibrate``. A prompt far from
    the model's training data (``ood_fallback``, on by default), and every
    prompt while the model is not activated (it did not beat the length rule
    when trained), is routed by ``fallback``: ``length`` — the length rule
    at the threshold's share of strong calls — or a ``rules`` or ``cascade``
    router of its own.
    """

    strategy: Literal["learned"]
    threshold: float = Field(default=0.5, ge=0, le=1)
    ood_fallback: bool = True
    fallback: Union[Literal["length"], Annotated[Union[RulesRouter, CascadeRouter], Field(discriminator="strategy")]] \
        = "length"


class SpeculativeRouter(_Spec):
    """Stream the cheapest tier at once; ask the strongest in parallel; correct when they disagree."""

    strategy: Literal["speculative"]
    #: cosine similarity of the two answers' embeddings under which the strong answer replaces the fast one
    similarity: float = Field(default=0.8, gt=0, le=1)
    #: how long a finished fast stream waits for the strong answer before it closes (the correction is
    #: then only at ``GET /v1/responses/{id}``)
    grace_ms: int = Field(default=10_000, ge=0, le=600_000)


RouterSpec = Annotated[Union[RulesRouter, CascadeRouter, LearnedRouter, SpeculativeRouter],
                       Field(discriminator="strategy")]

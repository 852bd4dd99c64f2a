"""What a request costs: hosted models per token, local ones by the instance time they used.

A local deployment's hourly price comes from its card unless the deployment
spec sets ``cost.usd_per_instance_hour``; an instance that serves several
requests at once splits its hour between them. (The end-to-end check — a
real local request's usage record carrying that cost — is in
tests/routing/test_budget.py.)
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from pydantic import ValidationError

from modelyard.catalog.card import ModelCard
from tests.cards import hosted_model_card
from modelyard.serving.spec import DeploymentSpec
from modelyard.telemetry.cost import deployment_cost, request_cost


def local_card(per_hour: float = 0.02, **tokens) -> ModelCard:
    return ModelCard(id="gemma-3-270m", family="gemma3", task="chat", format="gguf", license="gemma",
                     context_length=32768, source={"type": "local", "path": "/m.gguf"},
                     price={"per_instance_hour": per_hour, **tokens})


def hosted_card() -> ModelCard:
    return hosted_model_card("gpt-4o-mini", "http://127.0.0.1:9/v1", price=(0.15, 0.6), context_length=128000)


def deployment(card: ModelCard, **spec) -> SimpleNamespace:
    return SimpleNamespace(card=card, spec=DeploymentSpec(name="dep", endpoint_name="chat", model=card.id, **spec))


def test_a_hosted_request_costs_its_tokens_at_the_card_price_whatever_the_time():
    cost = (1000 * 0.15 + 500 * 0.6) / 1e6
    assert request_cost(hosted_card(), 1000, 500, 12.0) == pytest.approx(cost)
    # an instance-hour price on a hosted deployment changes nothing
    assert deployment_cost(deployment(hosted_card(), cost={"usd_per_instance_hour": 99}), 1000, 500, 12.0) == \
        pytest.approx(cost)


def test_a_local_request_costs_the_seconds_it_held_its_instance_at_the_cards_hourly_price():
    assert request_cost(local_card(0.02), 40, 200, 1.8) == pytest.approx(0.02 * 1.8 / 3600)
    assert deployment_cost(deployment(local_card(0.02)), 40, 200, 1.8) == pytest.approx(0.02 * 1.8 / 3600)
    # a card that also prices tokens (a metered local service) adds them
    assert request_cost(local_card(0.02, output_per_1m=1.0), 0, 1000, 3.6) == pytest.approx(0.00002 + 0.001)


def test_the_deployment_spec_overrides_the_hourly_price_and_concurrency_splits_it():
    dep = deployment(local_card(0.02), cost={"usd_per_instance_hour": 0.5})
    assert deployment_cost(dep, 40, 200, 7.2) == pytest.approx(0.001)
    shared = deployment(local_card(0.02), cost={"usd_per_instance_hour": 0.5},
                        request_settings={"max_concurrent_requests_per_instance": 4})
    assert deployment_cost(shared, 40, 200, 7.2) == pytest.approx(0.00025)
    free = deployment(local_card(0.02), cost={"usd_per_instance_hour": 0})
    assert deployment_cost(free, 40, 200, 7.2) == 0.0


def test_a_deployment_without_a_spec_is_priced_from_its_card():
    assert deployment_cost(SimpleNamespace(card=local_card(3.6)), 1, 1, 2.0) == pytest.approx(0.002)


@pytest.mark.parametrize("cost, field", [
    ({"usd_per_instance_hour": -0.01}, "cost.usd_per_instance_hour"),
    ({"usd_per_instance_hour": float("inf")}, "cost.usd_per_instance_hour"),
    ({"usd_per_instance_hour": float("nan")}, "cost.usd_per_instance_hour"),
    ({"usd_per_instance_hour": "5 cents"}, "cost.usd_per_instance_hour"),
    ({"usd_per_instance_hour": 0.05, "currency": "EUR"}, "cost.currency"),
    ({}, "cost.usd_per_instance_hour"),
])
def test_a_bad_cost_setting_is_refused_naming_the_field(cost, field):
    with pytest.raises(ValidationError) as exc:
        DeploymentSpec(name="dep", endpoint_name="chat", model="gemma-3-270m", cost=cost)
    assert ".".join(map(str, exc.value.errors()[0]["loc"])) == field

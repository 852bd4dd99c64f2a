"""ConfigStore (serving/config.py) keeps endpoint and deployment specs across restarts, exactly as written."""

from __future__ import annotations

from sqlalchemy import select

from modelyard.serving.spec import DeploymentSpec, EndpointSpec, RequestSettings
from modelyard.serving.config import ConfigStore
from modelyard.store import Database
from modelyard.store.models import Deployment, Endpoint


def _deployment(name: str, endpoint: str = "chat", **fields) -> DeploymentSpec:
    return DeploymentSpec(name=name, endpoint_name=endpoint, model="gemma-3-270m", **fields)


def test_endpoint_round_trips_through_a_new_connection(any_db):
    spec = EndpointSpec(
        name="chat",
        description="the default chat endpoint",
        traffic={"blue": 90, "green": 10},
        mirror_traffic={"canary": 5},
    )
    assert ConfigStore(any_db).save_endpoint(spec) is True

    any_db.close()  # what a restart would do
    assert ConfigStore(any_db).get_endpoint("chat") == spec


def test_saving_an_endpoint_again_replaces_it(any_db):
    store = ConfigStore(any_db)
    store.save_endpoint(EndpointSpec(name="chat", traffic={"blue": 100}))
    with any_db.session() as session:
        first = session.scalars(select(Endpoint)).one()

    assert store.save_endpoint(EndpointSpec(name="chat", traffic={"green": 100})) is False

    assert store.get_endpoint("chat").traffic == {"green": 100}
    with any_db.session() as session:
        row = session.scalars(select(Endpoint)).one()
    assert row.id == first.id
    assert row.created_at == first.created_at
    assert row.updated_at >= first.updated_at
    assert row.created_at.tzinfo is not None


def test_list_endpoints_is_sorted_by_name(any_db):
    store = ConfigStore(any_db)
    for name in ("zeta", "alpha", "mid"):
        store.save_endpoint(EndpointSpec(name=name))
    assert [spec.name for spec in store.list_endpoints()] == ["alpha", "mid", "zeta"]


def test_missing_things_are_none_and_deleting_them_is_false(any_db):
    store = ConfigStore(any_db)
    assert store.get_endpoint("nope") is None
    assert store.get_deployment("nope", "blue") is None
    assert store.delete_endpoint("nope") is False
    assert store.delete_deployment("nope", "blue") is False
    assert store.list_endpoints() == [] and store.list_deployments() == []


def test_deployment_round_trips_with_nested_settings(any_db):
    spec = _deployment(
        "blue",
        instance_count=2,
        request_settings=RequestSettings(request_timeout_ms=5_000, max_concurrent_requests_per_instance=4),
        environment_variables={"OMP_NUM_THREADS": "2"},
        options={"context_length": 4096, "stop": ["</s>"], "rope": {"scale": 1.5}},
    )
    store = ConfigStore(any_db)
    assert store.save_deployment(spec) is True

    assert store.get_deployment("chat", "blue") == spec
    assert store.save_deployment(spec.model_copy(update={"instance_count": 3})) is False
    assert store.get_deployment("chat", "blue").instance_count == 3


def test_deployment_names_are_scoped_to_their_endpoint(any_db):
    store = ConfigStore(any_db)
    store.save_deployment(_deployment("blue", "chat"))
    store.save_deployment(_deployment("blue", "embed"))
    store.save_deployment(_deployment("green", "chat"))

    assert [(d.endpoint_name, d.name) for d in store.list_deployments()] == [
        ("chat", "blue"),
        ("chat", "green"),
        ("embed", "blue"),
    ]
    assert [d.name for d in store.list_deployments("chat")] == ["blue", "green"]
    assert [d.name for d in store.list_deployments("embed")] == ["blue"]


def test_deleting_an_endpoint_deletes_its_deployments_only(any_db):
    store = ConfigStore(any_db)
    store.save_endpoint(EndpointSpec(name="chat", traffic={"blue": 100}))
    store.save_endpoint(EndpointSpec(name="embed"))
    store.save_deployment(_deployment("blue", "chat"))
    store.save_deployment(_deployment("green", "chat"))
    store.save_deployment(_deployment("blue", "embed"))

    assert store.delete_endpoint("chat") is True

    assert store.get_endpoint("chat") is None
    assert store.list_deployments("chat") == []
    assert [spec.name for spec in store.list_endpoints()] == ["embed"]
    assert [(d.endpoint_name, d.name) for d in store.list_deployments()] == [("embed", "blue")]
    with any_db.session() as session:
        assert session.scalars(select(Deployment.endpoint_name)).all() == ["embed"]


def test_delete_deployment_leaves_the_endpoint_and_its_siblings(any_db):
    store = ConfigStore(any_db)
    store.save_endpoint(EndpointSpec(name="chat"))
    store.save_deployment(_deployment("blue"))
    store.save_deployment(_deployment("green"))

    assert store.delete_deployment("chat", "blue") is True

    assert store.get_endpoint("chat") is not None
    assert [d.name for d in store.list_deployments("chat")] == ["green"]


def test_a_deployment_may_be_saved_before_its_endpoint(db: Database):
    store = ConfigStore(db)
    store.save_deployment(_deployment("blue", "later"))
    store.save_endpoint(EndpointSpec(name="later", traffic={"blue": 100}))
    assert store.get_deployment("later", "blue") is not None

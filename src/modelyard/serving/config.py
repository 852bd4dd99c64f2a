"""Endpoint and deployment specs, kept in the database as JSON.

`ConfigStore` is the persistence half of ``serving/``: it saves the
`EndpointSpec` and `DeploymentSpec` a user applies and reads them back
validated. It knows nothing about traffic or instances; it only makes the
specs survive a restart::

    store = ConfigStore(db)
    store.save_endpoint(EndpointSpec(name="chat", traffic={"blue": 100}))
    store.save_deployment(DeploymentSpec(name="blue", endpoint_name="chat", model="gemma-3-270m"))
    store.list_deployments("chat")   # [DeploymentSpec(name='blue', ...)]

Specs are stored with ``spec.model_dump(mode="json")`` and read back with
``model_validate``, so a stored spec is always a valid one. Saving is an
upsert keyed by the spec's name (and endpoint, for deployments); deleting an
endpoint deletes its deployments in the same transaction.
"""

from __future__ import annotations

import logging

from sqlalchemy import delete, select

from .spec import DeploymentSpec, EndpointSpec
from ..store.db import Database
from ..store.models import Deployment, Endpoint, utcnow

log = logging.getLogger(__name__)


class ConfigStore:
    """Save, read and delete endpoint and deployment specs."""

    def __init__(self, db: Database) -> None:
        self.db = db

    # -- endpoints ----------------------------------------------------------

    def save_endpoint(self, spec: EndpointSpec) -> bool:
        """Insert or replace the endpoint named ``spec.name``; True when it was new."""
        data = spec.model_dump(mode="json")
        with self.db.session() as session:
            row = session.scalars(select(Endpoint).where(Endpoint.name == spec.name)).one_or_none()
            if row is None:
                session.add(Endpoint(name=spec.name, spec=data))
                log.info("endpoint %s created", spec.name)
                return True
            row.spec = data
            row.updated_at = utcnow()
            log.info("endpoint %s updated", spec.name)
            return False

    def get_endpoint(self, name: str) -> EndpointSpec | None:
        """The endpoint named ``name``, or None."""
        with self.db.session() as session:
            data = session.scalars(select(Endpoint.spec).where(Endpoint.name == name)).one_or_none()
        return None if data is None else EndpointSpec.model_validate(data)

    def list_endpoints(self) -> list[EndpointSpec]:
        """Every endpoint, sorted by name."""
        with self.db.session() as session:
            rows = session.scalars(select(Endpoint.spec).order_by(Endpoint.name)).all()
        return [EndpointSpec.model_validate(data) for data in rows]

    def delete_endpoint(self, name: str) -> bool:
        """Delete the endpoint and all of its deployments; True when the endpoint existed."""
        with self.db.session() as session:
            gone = session.scalars(select(Deployment.name).where(Deployment.endpoint_name == name)).all()
            session.execute(delete(Deployment).where(Deployment.endpoint_name == name))
            existed = bool(session.execute(delete(Endpoint).where(Endpoint.name == name)).rowcount)
        if existed:
            log.info("endpoint %s deleted (deployments: %s)", name, ", ".join(gone) or "none")
        return existed

    # -- deployments --------------------------------------------------------

    def save_deployment(self, spec: DeploymentSpec) -> bool:
        """Insert or replace deployment ``spec.name`` of ``spec.endpoint_name``; True when it was new.

        The endpoint need not exist yet: files may be applied in any order.
        """
        data = spec.model_dump(mode="json")
        with self.db.session() as session:
            row = session.scalars(
                select(Deployment).where(
                    Deployment.endpoint_name == spec.endpoint_name, Deployment.name == spec.name
                )
            ).one_or_none()
            if row is None:
                session.add(Deployment(endpoint_name=spec.endpoint_name, name=spec.name, spec=data))
                log.info("deployment %s/%s created", spec.endpoint_name, spec.name)
                return True
            row.spec = data
            row.updated_at = utcnow()
            log.info("deployment %s/%s updated", spec.endpoint_name, spec.name)
            return False

    def get_deployment(self, endpoint: str, name: str) -> DeploymentSpec | None:
        """Deployment ``name`` of ``endpoint``, or None."""
        with self.db.session() as session:
            data = session.scalars(
                select(Deployment.spec).where(Deployment.endpoint_name == endpoint, Deployment.name == name)
            ).one_or_none()
        return None if data is None else DeploymentSpec.model_validate(data)

    def list_deployments(self, endpoint: str | None = None) -> list[DeploymentSpec]:
        """Deployments of ``endpoint`` (of every endpoint when None), sorted by endpoint then name."""
        query = select(Deployment.spec).order_by(Deployment.endpoint_name, Deployment.name)
        if endpoint is not None:
            query = query.where(Deployment.endpoint_name == endpoint)
        with self.db.session() as session:
            rows = session.scalars(query).all()
        return [DeploymentSpec.model_validate(data) for data in rows]

    def delete_deployment(self, endpoint: str, name: str) -> bool:
        """Delete one deployment; True when it existed."""
        with self.db.session() as session:
            result = session.execute(
                delete(Deployment).where(Deployment.endpoint_name == endpoint, Deployment.name == name)
            )
            existed = bool(result.rowcount)
        if existed:
            log.info("deployment %s/%s deleted", endpoint, name)
        return existed


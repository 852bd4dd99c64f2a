"""``python -m modelyard.worker --port N``: serve one model on 127.0.0.1."""

from __future__ import annotations

import argparse
import logging
import os

import orjson
import uvicorn

from ..backends.base import load_backend
from ..catalog.card import ModelCard
from ..catalog.sources import resolve_path
from ..settings import Settings
from .app import build_app


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m modelyard.worker")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--name", default="instance")
    args = parser.parse_args()
    logging.basicConfig(level=os.environ.get("MODELYARD_LOG_LEVEL", "INFO"),
                        format=f"%(asctime)s {args.name} %(levelname)s %(name)s: %(message)s")
    spec = orjson.loads(os.environ["MODELYARD_WORKER_SPEC"])
    card = ModelCard.model_validate(spec["card"])
    options = dict(spec.get("options") or {})
    if not card.is_hosted and "path" not in options:
        options["path"] = str(resolve_path(card, Settings.from_env()))  # the weights: assembled or pulled already
    backend = load_backend(card, options)
    # taken out of the environment so that nothing the backend starts inherits it
    app = build_app(backend, name=args.name, token=os.environ.pop("MODELYARD_INSTANCE_TOKEN", None))
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False,
                loop="uvloop", http="httptools", timeout_graceful_shutdown=5)


if __name__ == "__main__":
    main()

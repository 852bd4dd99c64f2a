"""The public Python API: every name in `modelyard.__all__` resolves, and importing the package is light."""

from __future__ import annotations

import subprocess
import sys

import modelyard


def test_every_public_name_resolves():
    for name in modelyard.__all__:
        assert getattr(modelyard, name) is not None, name
    assert modelyard.evaluate_router.__module__ == "modelyard.routing.evaluate"
    assert modelyard.EndpointSpec(name="chat", traffic={"blue": 100}).name == "chat"


def test_importing_modelyard_loads_no_web_framework_and_no_torch():
    code = "import sys, modelyard; print(sorted(m for m in ('fastapi', 'torch', 'sqlalchemy') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"

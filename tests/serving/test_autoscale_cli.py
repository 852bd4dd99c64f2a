"""``deployment create/update --autoscale``: what a user types, and the errors that name what is wrong."""

from __future__ import annotations

import pytest
import typer
from typer.testing import CliRunner

from modelyard.cli import app
from modelyard.cli.deployment import parse_autoscale


def test_the_short_keys_become_the_spec_fields():
    assert parse_autoscale("min=1,max=8,target-in-flight=4,up-delay=10,down-delay=2m") == {
        "min_instances": 1, "max_instances": 8, "target_in_flight": 4.0, "upscale_delay_s": 10.0,
        "downscale_delay_s": 120.0}
    assert parse_autoscale("max=3") == {"max_instances": 3, "min_instances": 1}
    assert parse_autoscale("min=0, max=2, down-delay=0")["downscale_delay_s"] == 0.0


@pytest.mark.parametrize("text, says", [
    ("min=1", "give max=N"),
    ("min=1,max=x", "max='x' is not a whole number"),
    ("max=2,target-in-flight=0", "target-in-flight (target_in_flight)"),
    ("max=2,up-delay=soon", "up-delay='soon' is not a number of seconds"),
    ("min=3,max=2", "must not exceed max_instances"),
    ("max=2,maximum=3", "unknown key 'maximum'"),
    ("max", "'max' is not KEY=VALUE"),
    ("max=65", "max (max_instances)"),
])
def test_a_bad_value_is_refused_naming_the_key(text, says):
    with pytest.raises(typer.BadParameter) as err:
        parse_autoscale(text)
    assert says in str(err.value)


def test_create_refuses_a_bad_autoscale_before_calling_the_server():
    result = CliRunner().invoke(app, ["deployment", "create", "chat", "blue", "--model", "gemma-3-270m",
                                      "--autoscale", "min=4,max=2"], env={"COLUMNS": "200"})
    assert result.exit_code == 2
    assert "--autoscale" in result.output and "must not exceed max_instances" in result.output

"""``modelyard router calibrate ENDPOINT --strong-share 0.3``: set a learned router's threshold.

Thin: one call to ``POST /api/endpoints/{name}/router/calibrate``; the
server scores the endpoint's recent prompts with its trained model and
stores the threshold that sends the wanted share to the strong tier
(`modelyard.routing.calibrate`).
"""

from __future__ import annotations

import json

import typer

from .endpoint import api_path
from .remote import call_api, console


def calibrate(
    endpoint: str = typer.Argument(..., help="a router endpoint with strategy: learned"),
    strong_share: float = typer.Option(..., "--strong-share", min=0.0, max=1.0,
                                       help="the share of recent prompts to send to the strong tier, 0-1"),
    force: bool = typer.Option(False, "--force", help="set it even if the router is not activated (it did not beat "
                               "the length rule) or is below the rule on the endpoint's rated answers; activates it"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
) -> None:
    """Pick the threshold that sends about STRONG_SHARE of recent traffic to the strong tier, and set it.

    Refused when the router did not beat the length rule when trained, or is
    below it on the endpoint's rated answers (--force overrides).
    """
    body = call_api("POST", api_path(endpoint, "router", "calibrate"),
                    json={"strong_share": strong_share, "force": force})
    if as_json:
        print(json.dumps(body))
        return
    console.print(f"[bold]{endpoint}[/]: threshold {body['previous_threshold']:.4f} → [bold]{body['threshold']:.4f}[/] "
                  f"— {body['strong_share'] * 100:.1f}% of the last {body['prompts']} prompts would go to the strong "
                  f"tier (asked {body['target_strong_share'] * 100:.0f}%)")
    console.print(f"{body['ood_share'] * 100:.1f}% of those prompts are out of the router's training distribution"
                  + (" and go to the fallback" if body.get("ood_fallback") else " (fallback off)"))
    check = body.get("feedback_check")
    if check:
        console.print(f"on {check['rows']} rated answers: learned APGR {check['learned_apgr']:.3f}, length rule "
                      f"{check['length_apgr']:.3f}, random 0.500")
    if body.get("forced"):
        console.print("[yellow]forced: the router is active although it did not beat the length rule[/]")

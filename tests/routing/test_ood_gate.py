"""Never worse than the rule: the learned router knows where its training data is, and is gated against the
length rule before it goes live.

- a prompt far from the training prompts is *out of distribution* and the live strategy routes it by the
  fallback (the length rule by default, or a rules / cascade router) — on by default;
- `modelyard router train` measures the router against the length rule on held-out subjects (and on
  --check-data) and does not activate one that does not beat it (--force overrides);
- an inactive router routes every prompt by the fallback; `router eval` measures it that way;
- version-1 router files still load.

The embedder is the tests' hashed bag of words (test_learned.HashingEmbedder): words of the training
prompts land in a few of its 64 dimensions, unrelated words elsewhere.
"""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from modelyard.cli import app
from modelyard.errors import ModelyardError
from modelyard.routing.data import OutcomeData
from modelyard.routing.gate import run_gate
from modelyard.routing.learned import LearnedRouter, candidate_path, router_path
from modelyard.routing.ood import NearestNeighbours
from modelyard.routing.policy import LearnedPolicy
from modelyard.routing.spec import LearnedRouter as LearnedSpec
from modelyard.serving.spec import EndpointSpec
from modelyard.settings import Settings
from modelyard.telemetry.router_report import parse_window, router_report
from modelyard.wire import ChatCompletionRequest

from tests.routing.test_learned import HashingEmbedder, fake_embedder, outcomes_csv, synthetic  # noqa: F401
from tests.routing.test_report import write
from tests.store.conftest import db, sqlite_url  # noqa: F401 - fixtures

runner = CliRunner(env={"COLUMNS": "200"})

#: nothing like the synthetic training prompts ("Question 7: tell me about the integral of item 12")
FOREIGN = ["Write a haiku about autumn leaves falling on a quiet pond",
           "Sarah buys three boxes of pencils with twelve pencils each and gives away nine; how many remain",
           "Plan a two week vacation itinerary through southern Portugal with trains",
           "Draft a polite email declining a wedding invitation from my cousin",
           "Explain why sourdough bread rises more slowly than yeasted bread"]


@pytest.fixture(scope="module")
def trained() -> LearnedRouter:
    prompts, weak, strong = synthetic(300)
    return LearnedRouter(embedder=HashingEmbedder()).fit(prompts, weak, strong)


# --- out of distribution -----------------------------------------------------------------------


def test_prompts_unlike_the_training_data_are_out_of_distribution_and_alike_ones_are_not(trained):
    like, _, _ = synthetic(200, seed=7)  # new prompts from the training distribution

    inside = trained.assess(like)
    outside = trained.assess(FOREIGN)

    assert inside.outside.mean() <= 0.05  # the threshold is the 99% quantile of the training prompts' own distances
    assert outside.outside.all()
    assert outside.distance.min() > inside.distance.max()


def test_the_threshold_is_the_quantile_of_the_training_prompts_leave_one_out_distances():
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(2000, 16))
    detector = NearestNeighbours.fit(vectors, k=3, quantile=0.9)
    fresh = rng.normal(size=(2000, 16))  # the same distribution, never seen

    assert 0.05 <= detector.outside(fresh).mean() <= 0.15
    assert len(detector.reference) == 2000 and detector.k == 3
    with pytest.raises(ModelyardError) as err:
        NearestNeighbours.fit(vectors, quantile=1.0)
    assert err.value.param == "ood_quantile"


def test_the_reference_is_a_sample_when_the_training_data_is_large():
    vectors = np.random.default_rng(1).normal(size=(600, 8))
    detector = NearestNeighbours.fit(vectors, max_reference=100)
    assert detector.reference.shape == (100, 8) and np.isfinite(detector.threshold)


def test_guarded_scores_rank_out_of_distribution_prompts_by_length_and_keep_the_models_order_inside(trained):
    like, _, _ = synthetic(50, seed=8)
    mixed = like + FOREIGN

    guarded = trained.guarded_scores(mixed)
    raw = trained.score(like)

    foreign = guarded[len(like):]
    assert list(np.argsort(foreign)) == list(np.argsort([len(p) for p in FOREIGN]))  # the length rule
    kept = ~trained.assess(like).outside  # (about 1% of prompts like the training data are called outside too)
    inside = guarded[:len(like)][kept]
    assert kept.sum() >= 45 and (np.diff(inside[np.argsort(raw[kept], kind="stable")]) >= 0).all()  # the model's
    assert ((guarded >= 0) & (guarded <= 1.0 + 1e-6)).all()
    without = trained.guarded_scores(mixed, ood=False)
    assert (np.argsort(without[len(like):]) == np.argsort(trained.score(FOREIGN))).all()


# --- serving ---------------------------------------------------------------------------------


class _Tier:
    def __init__(self, name: str) -> None:
        self.name = name


class _Ctx:
    """Just enough of `TierCalls` for `respond`: records which tier answered."""

    kind = "chat"
    streaming = False
    budget_low = False
    request_headers: dict = {}

    def __init__(self, prompt: str) -> None:
        self.request = ChatCompletionRequest.model_validate({"model": "m", "messages": [
            {"role": "system", "content": "be brief"}, {"role": "user", "content": prompt}]})
        self.tiers = [_Tier("small"), _Tier("large")]
        self.route = ""
        self.answered: str | None = None

    def allows(self, tier) -> bool:
        return True

    async def complete(self, tier, **_):
        return {"choices": [{"message": {"content": "ok"}}]}, None

    def answer(self, tier, body, **_):
        self.answered = tier.name


class _Models:
    def __init__(self, model: LearnedRouter) -> None:
        self.model = model

    def router(self, endpoint: str) -> LearnedRouter:
        return self.model


def decide(model: LearnedRouter, prompt: str, **spec) -> _Ctx:
    policy = LearnedPolicy(LearnedSpec.model_validate({"strategy": "learned", **spec}), _Models(model), "assistant")
    ctx = _Ctx(prompt)
    asyncio.run(policy.answer(ctx))
    return ctx


def test_the_out_of_distribution_fallback_is_on_by_default_and_routes_by_length(trained):
    assert LearnedSpec.model_validate({"strategy": "learned"}).ood_fallback is True
    threshold = trained.threshold_for_share(0.3)
    like, _, _ = synthetic(50, seed=11)
    top = like[int(np.argmax(trained.score(like)))]

    inside = decide(trained, top, threshold=threshold)
    short = decide(trained, "Plan a picnic", threshold=threshold)
    long = decide(trained, FOREIGN[2] + " and a day in Lisbon with museums, food markets and the old trams",
                  threshold=threshold)

    assert inside.route.startswith("learned:") and inside.answered == "large"
    assert short.route == "learned-ood:length>small" and short.answered == "small"
    assert long.route == "learned-ood:length>large" and long.answered == "large"
    off = decide(trained, "Plan a picnic", threshold=threshold, ood_fallback=False)
    assert off.route.startswith("learned:")


def test_the_fallback_may_be_a_rules_router(trained):
    ctx = decide(trained, "Plan a picnic in the park", fallback={
        "strategy": "rules", "rules": [{"name": "picnic", "when": {"keywords": ["picnic"]}, "tier": "large"}]})
    assert ctx.route == "learned-ood:rules:picnic>large" and ctx.answered == "large"


def test_an_inactive_router_routes_every_prompt_by_the_fallback(trained, tmp_path):
    trained.save(tmp_path / "m")
    LearnedRouter.set_active(tmp_path / "m", False, "test")
    inactive = LearnedRouter.load(tmp_path / "m", embedder=HashingEmbedder())

    ctx = decide(inactive, "Question 3: tell me about the integral of item 41", threshold=0.5)

    assert not inactive.active and ctx.route.startswith("learned-off:length>")
    prompts, weak, strong = synthetic(100, seed=3)
    lengths = np.array([len(p) for p in prompts])
    assert (np.argsort(inactive.guarded_scores(prompts), kind="stable") ==
            np.argsort(lengths, kind="stable")).all()


def test_the_router_report_counts_fallback_decisions(db):  # noqa: F811
    now = datetime(2025, 6, 15, 12, 0, tzinfo=timezone.utc)
    spec = EndpointSpec(name="assistant", policy="router", tiers=["small", "large"], router={"strategy": "learned"})
    rec = lambda route: {"endpoint": "assistant", "created_at": now - timedelta(minutes=5),  # noqa: E731
                         "deployment": "small", "cost_usd": 0.0, "prompt_tokens": 1, "completion_tokens": 1,
                         "route": route}
    write(db, [rec("learned:0.12>small"), rec("learned:0.90>large"), rec("learned-ood:length>small"),
               rec("learned-ood:rules:x>large"), rec("learned-off:length>small")])

    report = router_report(db, spec, {}, parse_window("1h"), now=now)

    assert report["learned_fallbacks"] == {"learned_requests": 5, "ood": 2, "inactive": 1, "ood_share": 0.4,
                                           "fallback_share": 0.6}


# --- the gate ----------------------------------------------------------------------------------


def length_only(n: int = 400, seed: int = 0, groups: int = 4) -> OutcomeData:
    """Outcomes that depend on nothing but the prompt's length: the length rule is the best router there is."""
    rng = np.random.default_rng(seed)
    words = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet"]
    prompts, weak = [], []
    for i in range(n):
        k = int(rng.integers(3, 60))
        prompts.append(f"{i} " + " ".join(rng.choice(words, size=k)))
        weak.append(float(k < 30))
    return OutcomeData(prompts, np.array(weak), np.ones(n), [f"g{i % groups}" for i in range(n)], "weak", "strong",
                       source="length-only")


def fit(data: OutcomeData) -> LearnedRouter:
    return LearnedRouter(embedder=HashingEmbedder()).fit(data.prompts, data.weak, data.strong)


def test_the_gate_passes_a_router_that_beats_the_rule_and_fails_one_that_does_not():
    prompts, weak, strong = synthetic(400)
    topical = OutcomeData(prompts, weak, strong, [f"g{i % 4}" for i in range(400)], "weak", "strong")

    good = run_gate(topical, fit)
    bad = run_gate(length_only(), fit)

    assert good.passed and good.learned_apgr > good.length_apgr and len(good.folds) == 2
    assert not bad.passed and "does not beat the length rule" in bad.reason
    assert bad.learned_apgr <= bad.length_apgr


def test_the_gate_also_checks_outside_sets():
    prompts, weak, strong = synthetic(400)
    topical = OutcomeData(prompts, weak, strong, [f"g{i % 4}" for i in range(400)], "weak", "strong")
    # prompts like the training ones where the weak model fails the *easy* topics: the model ranks them last
    p2, w2, s2 = synthetic(200, seed=9)
    inverted = OutcomeData(p2, 1.0 - w2, np.ones(200), ["x"] * 200, "weak", "strong", source="inverted")

    passed = run_gate(topical, fit)
    result = run_gate(topical, fit, checks=[inverted])

    assert passed.passed and not result.passed
    assert result.checks[0].rows == 200 and result.checks[0].learned_apgr < result.checks[0].length_apgr
    assert result.reason.startswith("on inverted its APGR")


def write_folder(root: Path, data: OutcomeData) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for g in data.group_names:
        rows = ["prompt,weak_correct,strong_correct"]
        rows += [f'"{p}",{bool(w)},{bool(s)}' for p, w, s, gg in zip(data.prompts, data.weak, data.strong, data.groups)
                 if gg == g]
        (root / f"{g}.csv").write_text("\n".join(rows) + "\n")
    return root


def test_router_train_does_not_activate_a_router_that_does_not_beat_the_rule(tmp_path, modelyard_home,
                                                                            fake_embedder):  # noqa: F811
    data = write_folder(tmp_path / "len", length_only())

    result = runner.invoke(app, ["router", "train", "assistant", "--data", str(data)])

    assert result.exit_code == 3, result.output
    assert "not activated" in result.output and "--force" in result.output
    assert "length APGR" in result.output  # the comparison table
    path = router_path(Settings.from_env(), "assistant")
    saved = json.loads(path.with_suffix(".json").read_text())
    assert saved["active"] is False and saved["gate"]["passed"] is False
    assert not LearnedRouter.load(path, embedder=HashingEmbedder()).active


def test_a_failed_router_does_not_replace_an_active_one_and_force_activates(tmp_path, modelyard_home,
                                                                          fake_embedder):  # noqa: F811
    good = runner.invoke(app, ["router", "train", "assistant", "--data", str(outcomes_csv(tmp_path)), "--json"])
    assert good.exit_code == 0, good.output
    body = json.loads(good.stdout)
    assert body["activated"] and body["gate"]["passed"] and body["gate"]["learned_apgr"] > body["gate"]["length_apgr"]
    path = router_path(Settings.from_env(), "assistant")
    before = path.read_bytes()
    data = write_folder(tmp_path / "len", length_only())

    bad = runner.invoke(app, ["router", "train", "assistant", "--data", str(data), "--json"])

    assert bad.exit_code == 3 and not json.loads(bad.stdout)["activated"]
    assert path.read_bytes() == before  # the working router stays
    assert candidate_path(path).is_file() and json.loads(bad.stdout)["path"] == str(candidate_path(path))

    forced = runner.invoke(app, ["router", "train", "assistant", "--data", str(data), "--force", "--json"])

    assert forced.exit_code == 0, forced.output
    saved = json.loads(path.with_suffix(".json").read_text())
    assert saved["active"] is True and saved["gate"]["forced"] is True and saved["gate"]["passed"] is False


def test_router_eval_measures_the_learned_router_as_it_would_go_live(tmp_path, fake_embedder):  # noqa: F811
    data = write_folder(tmp_path / "len", length_only(600, groups=6))

    gated = runner.invoke(app, ["router", "eval", "--data", str(data), "--json"])
    bare = runner.invoke(app, ["router", "eval", "--data", str(data), "--json", "--no-gate", "--no-ood"])
    table = runner.invoke(app, ["router", "eval", "--data", str(data)])

    assert gated.exit_code == 0 and bare.exit_code == 0, gated.output + bare.output
    g, b = json.loads(gated.stdout), json.loads(bare.stdout)
    # the gate failed in each fold, so the rule routed: the learned figure is the rule's
    assert [x["passed"] for x in g["gates"]] == [False, False]
    assert g["apgr"] == pytest.approx(g["length"]["apgr"], abs=0.01)
    assert b["apgr"] < b["length"]["apgr"] and b["gates"] == []
    assert "length rule" in table.output and "gate FAILED" in table.output


# --- the file format ---------------------------------------------------------------------------


def test_a_version_1_router_file_still_loads_and_scores_as_before(trained, tmp_path):
    npz = trained.save(tmp_path / "old")
    meta = npz.with_suffix(".json")
    description = json.loads(meta.read_text())
    description["version"] = 1
    for key in ("ood", "gate", "active"):
        description.pop(key)
    meta.write_text(json.dumps(description))
    with np.load(npz) as arrays:
        kept = {k: arrays[k] for k in ("coef", "intercept", "classes", "mean", "scale", "score_quantiles")}
    np.savez(npz, **kept)

    old = LearnedRouter.load(npz, embedder=HashingEmbedder())
    prompts, _, _ = synthetic(20, seed=4)

    assert old.active and old.ood is None
    np.testing.assert_allclose(old.score(prompts), trained.score(prompts))
    assert not old.assess(FOREIGN).outside.any()
    np.testing.assert_allclose(old.guarded_scores(prompts), trained.score(prompts))
    ctx = decide(old, FOREIGN[0], threshold=0.5)
    assert ctx.route.startswith("learned:")


def test_a_router_file_of_an_unknown_version_is_a_clear_error(trained, tmp_path):
    npz = trained.save(tmp_path / "new")
    meta = npz.with_suffix(".json")
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "version": 99}))

    with pytest.raises(ModelyardError) as err:
        LearnedRouter.load(npz)

    assert err.value.status == 400 and err.value.code == "router_version"
    assert "retrain it with `modelyard router train`" in err.value.message


# --- calibration -------------------------------------------------------------------------------


class _Store:
    def __init__(self, prompts: list[str], rated: list[dict]) -> None:
        self.prompts, self.rated = prompts, rated

    def recent_prompts(self, endpoint: str, limit: int) -> list[str]:
        return self.prompts[:limit]

    def outcomes(self, endpoint: str) -> list[dict]:
        return self.rated


class _Gateway:
    """What `calibrate` uses of the gateway: the endpoint's spec, its logged prompts and rated answers, its model."""

    def __init__(self, model_path: Path, prompts: list[str], rated: list[dict]) -> None:
        from types import SimpleNamespace

        spec = SimpleNamespace(policy="router", router=LearnedSpec.model_validate({"strategy": "learned"}))
        self.updated: dict | None = None
        path = model_path

        class Models:
            def router(self, endpoint):
                return LearnedRouter.load(path, embedder=HashingEmbedder())

            def activate(self, endpoint, reason):
                LearnedRouter.set_active(path, True, reason)

        async def update_endpoint(name, router):
            self.updated = router

        self.endpoints = SimpleNamespace(get=lambda name: SimpleNamespace(spec=spec), update_endpoint=update_endpoint)
        self.router = SimpleNamespace(responses=SimpleNamespace(store=_Store(prompts, rated)), models=Models())


def test_calibrate_refuses_an_inactive_router_unless_forced_and_reports_the_out_of_distribution_share(trained,
                                                                                                    tmp_path):
    from modelyard.routing.calibrate import calibrate

    path = trained.save(tmp_path / "assistant")
    LearnedRouter.set_active(path, False, "test: did not beat the rule")
    like, _, _ = synthetic(30, seed=12)
    gateway = _Gateway(path, like + FOREIGN * 2, [])

    with pytest.raises(ModelyardError) as err:
        asyncio.run(calibrate(gateway, "assistant", 0.3))
    assert err.value.status == 409 and err.value.code == "router_not_activated" and gateway.updated is None

    body = asyncio.run(calibrate(gateway, "assistant", 0.3, force=True))

    assert body["forced"] and body["active"] and gateway.updated["threshold"] == body["threshold"]
    assert 10 / 40 <= body["ood_share"] <= 12 / 40  # the ten foreign prompts, and about 1% of the others
    assert LearnedRouter.load(path, embedder=HashingEmbedder()).active


def test_calibrate_refuses_a_router_that_the_rated_answers_show_below_the_rule(trained, tmp_path):
    from modelyard.routing.calibrate import calibrate

    path = trained.save(tmp_path / "assistant")
    prompts, weak, _ = synthetic(60, seed=13)
    rated = [{"prompt": p, "weak_correct": not bool(w), "strong_correct": True} for p, w in zip(prompts, weak)]
    gateway = _Gateway(path, prompts, rated)  # the traffic's outcomes are the opposite of the training data's

    with pytest.raises(ModelyardError) as err:
        asyncio.run(calibrate(gateway, "assistant", 0.3))

    assert err.value.code == "router_not_activated" and "rated answers" in err.value.message
    body = asyncio.run(calibrate(gateway, "assistant", 0.3, force=True))
    check = body["feedback_check"]
    assert body["forced"] and check["rows"] == 60 and check["learned_apgr"] < check["length_apgr"]


def test_router_train_measures_the_router_on_check_data_from_outside_too(tmp_path, modelyard_home,
                                                                         fake_embedder):  # noqa: F811
    prompts, weak, _ = synthetic(200, seed=14)
    check = tmp_path / "elsewhere.csv"
    check.write_text("prompt,weak_correct,strong_correct\n" + "".join(
        f'"{p}",{not bool(w)},True\n' for p, w in zip(prompts, weak)))  # the opposite of the training outcomes

    result = runner.invoke(app, ["router", "train", "assistant", "--data", str(outcomes_csv(tmp_path)),
                                 "--check-data", str(check), "--json"])

    assert result.exit_code == 3, result.output
    gate = json.loads(result.stdout)["gate"]
    assert gate["checks"][0]["name"] == str(check) and gate["checks"][0]["rows"] == 200
    assert gate["reason"].startswith(f"on {check} its APGR") and not gate["passed"]

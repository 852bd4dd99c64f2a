"""The learned router: it learns which prompts need the strong tier, saves and loads safely, trains a
verifier from the weak model's answers, and `modelyard router train` puts it where the live strategy
finds it.

Most tests use a small deterministic embedder (hashed bag of words) through the embedder seam; the
tests marked ``model`` run the packaged all-MiniLM-L6-v2.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from modelyard.cli import app
from modelyard.cli import router as router_cli
from modelyard.errors import ModelyardError
from modelyard.routing.data import load_outcomes
from modelyard.routing.evaluate import evaluate, learned_router, sweep
from modelyard.routing.features import FEATURE_NAMES, CachedEmbedder, prompt_features
from modelyard.routing.learned import LearnedRouter, router_path
from modelyard.settings import Settings

runner = CliRunner(env={"COLUMNS": "200"})
MMLU = Path(__file__).resolve().parents[3] / "shared" / "data" / "routing" / "mmlu"
needs_mmlu = pytest.mark.skipif(not MMLU.is_dir(), reason=f"the RouteLLM MMLU outcome files are not at {MMLU}")


class HashingEmbedder:
    """Bag of words hashed into 64 dimensions, L2-normalised. Counts its calls."""

    name = "test-hashing-64"

    def __init__(self) -> None:
        self.calls = 0
        self.texts = 0

    def __call__(self, texts: list[str]) -> np.ndarray:
        self.calls += 1
        self.texts += len(texts)
        out = np.zeros((len(texts), 64), dtype=np.float32)
        for i, text in enumerate(texts):
            for word in re.findall(r"\w+", text.lower()):
                out[i, int(hashlib.md5(word.encode()).hexdigest(), 16) % 64] += 1.0
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.where(norms == 0, 1, norms)


TOPICS_HARD = ["integral", "eigenvalue", "theorem", "derivative", "proof"]
TOPICS_EASY = ["capital", "colour", "animal", "holiday", "greeting"]


def synthetic(n: int = 200, seed: int = 0) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Prompts about hard topics fail on the weak model (the strong one is right); easy ones both get right."""
    rng = np.random.default_rng(seed)
    prompts, weak, strong = [], [], []
    for i in range(n):
        hard = rng.random() < 0.4
        topic = rng.choice(TOPICS_HARD if hard else TOPICS_EASY)
        prompts.append(f"Question {i}: tell me about the {topic} of item {rng.integers(1000)}")
        fails = hard and rng.random() < 0.8
        weak.append(0.0 if fails else 1.0)
        strong.append(1.0 if rng.random() < 0.95 else 0.0)
    return prompts, np.array(weak), np.array(strong)


@pytest.fixture
def trained() -> LearnedRouter:
    prompts, weak, strong = synthetic()
    return LearnedRouter(embedder=HashingEmbedder()).fit(prompts, weak, strong)


def test_the_router_scores_prompts_that_need_the_strong_tier_higher(trained):
    prompts, weak, strong = synthetic(200, seed=1)  # unseen prompts

    scores = trained.score(prompts)

    assert scores.shape == (200,) and ((scores >= 0) & (scores <= 1)).all()
    assert sweep(scores, weak, strong).apgr > 0.75  # random: 0.5; knowing the topics' outcomes: 0.84
    hard = trained.score(["Question 9: tell me about the eigenvalue of item 3"])[0]
    easy = trained.score(["Question 9: tell me about the capital of item 3"])[0]
    assert hard > 0.5 > easy


def test_save_and_load_round_trip_without_pickle(trained, tmp_path):
    saved = trained.save(tmp_path / "routers" / "assistant")

    assert saved == tmp_path / "routers" / "assistant.npz"
    meta = json.loads((tmp_path / "routers" / "assistant.json").read_text())
    assert meta["format"] == "modelyard.learned-router" and meta["embedder"] == "test-hashing-64"
    assert meta["embedding_dim"] == 64 and meta["features"] == list(FEATURE_NAMES) and meta["trained"]["rows"] == 200
    with np.load(saved, allow_pickle=False) as arrays:  # plain arrays only
        assert {"coef", "intercept", "classes", "mean", "scale"} <= set(arrays.files)

    loaded = LearnedRouter.load(saved, embedder=HashingEmbedder())
    prompts = synthetic(20, seed=2)[0]
    np.testing.assert_allclose(loaded.score(prompts), trained.score(prompts))


def test_router_path_is_under_modelyard_home(modelyard_home):
    path = router_path(Settings.from_env(), "assistant")

    assert path == modelyard_home / "routers" / "assistant.npz"
    with pytest.raises(ModelyardError):
        router_path(Settings.from_env(), "../escape")


def test_loading_a_missing_router_is_a_404(tmp_path):
    with pytest.raises(ModelyardError) as err:
        LearnedRouter.load(tmp_path / "nothing.npz")
    assert err.value.status == 404 and err.value.code == "router_not_found"


def test_a_router_loaded_with_an_embedder_of_another_size_says_so(trained, tmp_path):
    trained.save(tmp_path / "r.npz")
    router = LearnedRouter.load(tmp_path / "r.npz", embedder=lambda texts: np.ones((len(texts), 8)) / np.sqrt(8))

    with pytest.raises(ModelyardError) as err:
        router.score(["hello"])
    assert err.value.code == "router_embedder_mismatch" and "test-hashing-64" in err.value.message


@pytest.mark.parametrize("weak, strong, code", [
    ([1, 1, 0], [1, 1, 0], "no_positive_labels"),   # the strong model never does better
    ([1, 0, 1], [0, 0, 1], "no_positive_labels"),   # ...or only worse
    ([0, 0, 0], [1, 1, 1], "no_negative_labels"),   # always better: nothing to decide
])
def test_training_data_without_both_kinds_of_label_is_rejected(weak, strong, code):
    with pytest.raises(ModelyardError) as err:
        LearnedRouter(embedder=HashingEmbedder()).fit(["a", "b", "c"], weak, strong)
    assert err.value.status == 400 and err.value.code == code


def test_mismatched_training_inputs_name_the_field():
    router = LearnedRouter(embedder=HashingEmbedder())
    with pytest.raises(ModelyardError) as err:
        router.fit(["a", "b"], [0, 1], [1])
    assert err.value.param == "strong"
    with pytest.raises(ModelyardError) as err:
        router.fit([], [], [])
    assert err.value.code == "no_rows"


def test_an_untrained_router_cannot_score():
    with pytest.raises(ModelyardError) as err:
        LearnedRouter(embedder=HashingEmbedder()).score(["hello"])
    assert err.value.code == "router_not_trained"


def test_threshold_for_share_sends_that_share_of_training_prompts_to_strong(trained):
    prompts = synthetic()[0]
    scores = trained.score(prompts)

    for share in (0.1, 0.3, 0.5):
        assert np.mean(scores >= trained.threshold_for_share(share)) == pytest.approx(share, abs=0.06)


def test_judge_scores_train_on_which_model_did_better():
    prompts, weak, strong = synthetic(150)
    noise = np.random.default_rng(4).integers(0, 2, size=(2, 150))
    weak_scores, strong_scores = 2 + 6 * weak + noise[0], 2 + 6 * strong + noise[1]  # 1-10 judge scores
    router = LearnedRouter(embedder=HashingEmbedder()).fit(prompts, weak_scores, strong_scores)

    test_prompts, w, s = synthetic(150, seed=5)
    assert sweep(router.score(test_prompts), w, s).apgr > 0.6  # random: 0.5


def test_the_verifier_learns_from_the_weak_answer():
    rng = np.random.default_rng(3)
    prompts = [f"Question {i} about item {rng.integers(100)}" for i in range(200)]
    bad = rng.random(200) < 0.4  # the weak model hedged; then the strong one did better
    answers = ["I'm not sure, I don't know." if b else f"The answer is {rng.integers(10)}." for b in bad]
    weak, strong = np.where(bad, 0.0, 1.0), np.ones(200)
    router = LearnedRouter(embedder=HashingEmbedder()).fit(prompts, weak, strong, answers=answers)

    assert router.uses_answers
    hedged, sure = router.score(["Question 1 about item 5"] * 2, answers=["I'm not sure, I don't know.",
                                                                         "The answer is 4."])
    assert hedged > 0.8 and sure < 0.2
    with pytest.raises(ModelyardError) as err:
        router.score(["Question 1"])
    assert err.value.param == "answers"


def test_embedding_cache_embeds_each_text_once_and_persists(tmp_path):
    inner = HashingEmbedder()
    texts = [f"text number {i}" for i in range(300)]
    first = CachedEmbedder(inner, tmp_path)(texts)

    again = CachedEmbedder(inner, tmp_path)  # a new process, the same directory
    second = again(texts + ["a new one"])

    np.testing.assert_array_equal(first, second[:300])
    assert inner.texts == 301 and again.hits == 300 and again.misses == 1
    assert list((tmp_path / "test-hashing-64").glob("shard-*.npz"))


def test_prompt_features_are_finite_for_odd_inputs():
    for text in ["", " ", "∫ x² dx = ?", "a" * 10000, "1. one\n2. two\n3. three", "def f():\n    return {}"]:
        assert np.isfinite(prompt_features(text)).all()


def test_learned_strategy_evaluates_end_to_end_on_subject_files(tmp_path):
    root = tmp_path / "subjects"
    root.mkdir()
    for k in range(4):
        prompts, weak, strong = synthetic(60, seed=10 + k)
        rows = ["prompt,weak_correct,strong_correct"] + [f'"{p}",{bool(w)},{bool(s)}' for p, w, s in
                                                         zip(prompts, weak, strong)]
        (root / f"subject{k}.csv").write_text("\n".join(rows) + "\n")

    result = evaluate(load_outcomes(root), router=learned_router(HashingEmbedder()))

    assert result.summary()["apgr"] > 0.75 and len(result.folds) == 2


# --- the command -----------------------------------------------------------------------------


@pytest.fixture
def fake_embedder(monkeypatch, tmp_path):
    inner = HashingEmbedder()
    monkeypatch.setattr(router_cli, "_embedder", lambda: CachedEmbedder(inner, tmp_path / "emb-cache"))
    return inner


def outcomes_csv(tmp_path: Path, n: int = 200) -> Path:
    prompts, weak, strong = synthetic(n)
    path = tmp_path / "outcomes.csv"
    lines = ["prompt,weak_correct,strong_correct,response"]
    lines += [f'"{p}",{bool(w)},{bool(s)},"ignored"' for p, w, s in zip(prompts, weak, strong)]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_router_train_saves_the_endpoints_router_where_the_live_strategy_looks(tmp_path, modelyard_home,
                                                                              fake_embedder):
    result = runner.invoke(app, ["router", "train", "assistant", "--data", str(outcomes_csv(tmp_path))])

    assert result.exit_code == 0, result.output
    path = router_path(Settings.from_env(), "assistant")
    assert path.is_file() and path.with_suffix(".json").is_file() and str(path) in result.output.replace("\n", "")
    router = LearnedRouter.load(path, embedder=HashingEmbedder())
    prompts, weak, strong = synthetic(200, seed=1)
    assert sweep(router.score(prompts), weak, strong).apgr > 0.75


def test_router_train_output_and_json(tmp_path, fake_embedder):
    out = tmp_path / "elsewhere" / "model.npz"

    result = runner.invoke(app, ["router", "train", "assistant", "--data", str(outcomes_csv(tmp_path)), "--output",
                                 str(out), "--json"])

    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout)
    assert body["path"] == str(out) and out.is_file() and body["rows"] == 200 and not body["verifier"]
    assert set(body["thresholds"]) == {"0.1", "0.2", "0.3", "0.5"}


def test_router_train_without_positive_labels_fails_and_saves_nothing(tmp_path, modelyard_home, fake_embedder):
    path = tmp_path / "same.csv"
    path.write_text("prompt,weak_correct,strong_correct\na,1,1\nb,0,0\n")

    result = runner.invoke(app, ["router", "train", "assistant", "--data", str(path)])

    assert result.exit_code == 1 and "no prompt where the strong model" in result.output
    assert not router_path(Settings.from_env(), "assistant").exists()


def test_router_eval_learned_reports_embedding_cache_use(tmp_path, fake_embedder):
    data = outcomes_csv(tmp_path, 120)

    first = runner.invoke(app, ["router", "eval", "--data", str(data), "--json"])
    second = runner.invoke(app, ["router", "eval", "--data", str(data), "--json"])

    assert first.exit_code == 0 and second.exit_code == 0, first.output + second.output
    a, b = json.loads(first.stdout), json.loads(second.stdout)
    assert a["split"] == "rows" and a["apgr"] > 0.7 and a["apgr"] == b["apgr"]
    assert b["embeddings"]["computed"] == 0 and b["embeddings"]["cached"] > 0


# --- the packaged model ----------------------------------------------------------------------


@pytest.mark.model
def test_minilm_embedder_returns_unit_vectors_and_the_fast_path_matches_encode():
    from modelyard.routing.features import MiniLMEmbedder

    embedder = MiniLMEmbedder()
    texts = ["What is the capital of France?", "Prove that there are infinitely many primes."]
    one_by_one = np.vstack([embedder([t]) for t in texts])  # the per-request path
    batch = embedder(texts * 3)[:2]  # encode()

    assert one_by_one.shape == (2, 384)
    np.testing.assert_allclose(np.linalg.norm(one_by_one, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(one_by_one, batch, atol=1e-5)


@needs_mmlu
def test_surface_features_alone_beat_random_on_real_outcomes_in_domain():
    data = load_outcomes(MMLU)
    keep = np.isin(np.array(data.groups), data.group_names[::3])  # a third of the subjects keeps this short
    subset = data.subset(keep)
    subset.groups = ["all"] * len(subset)  # one group: split by rows (train and test share subjects)

    result = evaluate(subset, router=learned_router(use_embeddings=False))

    assert result.summary()["apgr"] > 0.55  # random: 0.5


@pytest.mark.model
@needs_mmlu
@pytest.mark.timeout(900)  # embeds ~500 prompts and trains: ~1-2 minutes, over 5 on a machine busy with other work
def test_default_router_trains_on_real_outcomes_and_beats_random_in_domain():
    data = load_outcomes(MMLU)
    keep = np.isin(np.array(data.groups), data.group_names[:4])  # ~500 prompts to embed keep this test short
    subset = data.subset(keep)
    subset.groups = ["all"] * len(subset)

    result = evaluate(subset, router=learned_router())

    assert result.summary()["apgr"] > 0.5

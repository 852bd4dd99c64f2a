"""Offline router evaluation: the metrics on data small enough to work out by hand, loading outcome
data as users have it, and `modelyard router eval` as a user runs it.

The hand-worked example used throughout (four prompts)::

    weak   = [0, 0, 1, 1]     q_weak   = 0.50
    strong = [1, 1, 1, 0]     q_strong = 0.75
    gain   = [1, 1, 0, -1]    PGR = (quality - 0.5) / 0.25

The oracle sends the two gains first: quality 1.0 at 50% strong (PGR 2),
flat over the tie, then down to 0.75 (PGR 1) at 100%:
APGR = 0.5 + 0.5 + 0.375 = 1.375, CPT(50%) = 12.5%, CPT(80%) = 20%.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from modelyard.cli import app
from modelyard.errors import ModelyardError
from modelyard.routing.data import load_outcomes
from modelyard.routing.evaluate import evaluate, oracle_curve, random_curve, subject_split, sweep

runner = CliRunner(env={"COLUMNS": "200"})
MMLU = Path(__file__).resolve().parents[3] / "shared" / "data" / "routing" / "mmlu"
needs_mmlu = pytest.mark.skipif(not MMLU.is_dir(), reason=f"the RouteLLM MMLU outcome files are not at {MMLU}")

WEAK = np.array([0.0, 0.0, 1.0, 1.0])
STRONG = np.array([1.0, 1.0, 1.0, 0.0])


# --- the metrics, by hand -------------------------------------------------------------------


def test_oracle_curve_matches_the_hand_computed_values():
    curve = oracle_curve(WEAK, STRONG)

    assert curve.strong_share.tolist() == [0.0, 0.5, 0.75, 1.0]
    assert curve.quality.tolist() == [0.5, 1.0, 1.0, 0.75]
    assert curve.pgr.tolist() == [0.0, 2.0, 2.0, 1.0]
    assert curve.apgr == pytest.approx(1.375)
    assert curve.cpt(0.5) == pytest.approx(0.125)
    assert curve.cpt(0.8) == pytest.approx(0.2)


def test_random_router_recovers_the_gap_in_proportion_to_its_strong_calls():
    curve = random_curve(WEAK, STRONG)

    assert curve.apgr == pytest.approx(0.5)
    assert curve.cpt(0.5) == pytest.approx(0.5)
    assert curve.cpt(0.8) == pytest.approx(0.8)
    assert curve.quality[-1] == pytest.approx(0.75)


def test_a_router_ranking_the_worst_prompts_first_has_negative_pgr_until_the_end():
    curve = sweep(np.array([1.0, 2.0, 3.0, 4.0]), WEAK, STRONG)  # sends gain -1, then 0, then the two gains

    assert curve.pgr.tolist() == [0.0, -1.0, -1.0, 0.0, 1.0]
    assert curve.apgr == pytest.approx(-0.375)
    assert curve.cpt(0.5) == pytest.approx(0.875)  # halfway between 75% (PGR 0) and 100% (PGR 1)
    assert curve.thresholds.tolist()[1:] == [4.0, 3.0, 2.0, 1.0]  # "score >= threshold goes to strong"


def test_prompts_with_equal_scores_move_together_so_a_constant_score_is_the_random_router():
    curve = sweep(np.full(4, 0.3), WEAK, STRONG)

    assert curve.strong_share.tolist() == [0.0, 1.0]
    assert curve.apgr == pytest.approx(0.5)
    assert curve.cpt(0.5) == pytest.approx(0.5)


def test_judge_scores_are_averaged_as_quality():
    weak, strong = np.array([2.0, 8.0]), np.array([9.0, 8.0])  # q_weak 5, q_strong 8.5
    curve = sweep(np.array([1.0, 0.0]), weak, strong)

    assert curve.quality.tolist() == [5.0, 8.5, 8.5]
    assert curve.pgr.tolist() == [0.0, 1.0, 1.0]
    assert curve.apgr == pytest.approx(0.75)


def test_undefined_pgr_when_the_strong_model_is_not_better_is_a_clear_error():
    with pytest.raises(ModelyardError) as err:
        sweep(np.array([1.0, 0.0]), np.array([1.0, 1.0]), np.array([1.0, 0.0]))
    assert err.value.status == 400 and err.value.code == "no_positive_labels"
    assert "not better" in err.value.message


# --- data ------------------------------------------------------------------------------------


def write_csv(path: Path, rows: list[dict], columns: list[str] | None = None) -> Path:
    columns = columns or list(rows[0])
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return path


def subject_rows(subject: str, n: int = 6) -> list[dict]:
    """n prompts; the long ones are where the weak model fails and the strong one succeeds."""
    rows = []
    for i in range(n):
        long = i % 2 == 0
        rows.append({"prompt": f"{subject} question {i}" + (" with a long context" * 10 if long else ""),
                     "mistralai/Mixtral-8x7B-Instruct-v0.1": str(not long), "gpt-4-1106-preview": "True",
                     "response": "recorded text, ignored"})
    return rows


@pytest.fixture
def folder(tmp_path) -> Path:
    root = tmp_path / "outcomes"
    for subject in ("algebra", "biology", "history", "law"):
        write_csv(root / f"{subject}.csv", subject_rows(subject))
    return root


def test_a_folder_of_csvs_is_one_subject_per_file_with_routellm_columns(folder):
    data = load_outcomes(folder)

    assert len(data) == 24 and data.group_names == ["algebra", "biology", "history", "law"]
    assert data.weak_column == "mistralai/Mixtral-8x7B-Instruct-v0.1" and data.strong_column == "gpt-4-1106-preview"
    assert data.weak.tolist()[:2] == [0.0, 1.0] and data.strong.sum() == 24
    assert data.answers is None and data.notes == []


def test_contaminated_prompts_beside_the_data_are_dropped(folder):
    dropped = subject_rows("law")[1]["prompt"]
    (folder / "contaminated_prompts.jsonl").write_text(json.dumps({"train_prompt": "x", "eval_prompt": dropped}) + "\n")

    data = load_outcomes(folder)

    assert len(data) == 23 and dropped not in data.prompts and data.dropped_contaminated == 1


def test_weak_correct_strong_correct_columns_and_jsonl(tmp_path):
    path = tmp_path / "outcomes.jsonl"
    path.write_text("\n".join(json.dumps({"prompt": f"p{i}", "weak_correct": i % 2 == 0, "strong_correct": True,
                                          "weak_answer": f"answer {i}"}) for i in range(4)))

    data = load_outcomes(path)

    assert (data.weak_column, data.strong_column) == ("weak_correct", "strong_correct")
    assert data.weak.tolist() == [1.0, 0.0, 1.0, 0.0]
    assert data.answers == ["answer 0", "answer 1", "answer 2", "answer 3"]


def test_two_unknown_score_columns_are_guessed_by_their_means_and_the_guess_is_said(tmp_path):
    path = write_csv(tmp_path / "judged.csv", [{"prompt": "a", "model-x": "9", "model-y": "3", "note": "n/a"},
                                               {"prompt": "b", "model-x": "8", "model-y": "8", "note": "ok"}])

    data = load_outcomes(path)

    assert (data.weak_column, data.strong_column) == ("model-y", "model-x")
    assert "guessed" in data.notes[0] and "--weak-column" in data.notes[0]


def test_named_columns_win_over_guessing(tmp_path):
    path = write_csv(tmp_path / "judged.csv", [{"prompt": "a", "small": "9", "big": "3", "other": "1"}])

    data = load_outcomes(path, weak_column="small", strong_column="big")

    assert (data.weak_column, data.strong_column) == ("small", "big") and data.notes == []


@pytest.mark.parametrize("rows, options, param, words", [
    ([{"question": "a", "weak_correct": "1", "strong_correct": "0"}], {}, "data", "'prompt'"),
    ([{"prompt": "a", "weak_correct": "1", "strong_correct": "0"}], {"weak_column": "nope"}, "weak_column", "'nope'"),
    ([{"prompt": "a", "x": "1", "y": "0", "z": "1"}], {}, "weak_column", "cannot tell"),
    ([{"prompt": "a", "text": "hello"}], {}, "weak_column", "no boolean/number"),
])
def test_missing_columns_are_400s_that_name_the_field(tmp_path, rows, options, param, words):
    path = write_csv(tmp_path / "bad.csv", rows)

    with pytest.raises(ModelyardError) as err:
        load_outcomes(path, **options)

    assert err.value.status == 400 and err.value.param == param and words in err.value.message


def test_a_file_without_usable_rows_is_a_clear_error(tmp_path):
    path = write_csv(tmp_path / "empty.csv", [{"prompt": "", "weak_correct": "", "strong_correct": "1"}])

    with pytest.raises(ModelyardError) as err:
        load_outcomes(path)

    assert err.value.code == "no_rows" and "no usable rows" in err.value.message


def test_data_where_the_strong_model_never_wins_has_no_positive_labels(tmp_path):
    path = write_csv(tmp_path / "same.csv", [{"prompt": f"p{i}", "weak_correct": "1", "strong_correct": "1"}
                                             for i in range(3)])
    data = load_outcomes(path)

    with pytest.raises(ModelyardError) as err:
        data.require_positive()

    assert err.value.code == "no_positive_labels" and "beats the weak one" in err.value.message


# --- the split and the evaluation ------------------------------------------------------------


def test_the_subject_split_is_fixed_disjoint_and_used_both_ways(folder):
    data = load_outcomes(folder)

    first, again = subject_split(data, seed=0), subject_split(data, seed=0)

    (n1, tr1, te1, g_tr1, g_te1), (n2, tr2, te2, g_tr2, g_te2) = first
    assert [f[3] for f in again] == [g_tr1, g_tr2]
    assert sorted(g_tr1 + g_te1) == data.group_names and not set(g_tr1) & set(g_te1)
    assert len(g_tr1) == len(g_te1) == 2
    assert (g_tr2, g_te2) == (g_te1, g_tr1) and (tr1 == te2).all() and (tr1 != te1).all()


def test_evaluate_averages_both_directions_and_reports_references(folder):
    result = evaluate(load_outcomes(folder), "length")
    body = result.to_json()

    # in every subject the long prompts are exactly the ones the strong model fixes: length is the oracle here;
    # half the prompts gain 1, so PGR climbs to 1 at 50% strong and stays: APGR = 0.25 + 0.5
    assert body["apgr"] == pytest.approx(body["oracle"]["apgr"]) == pytest.approx(0.75)
    assert body["random"]["apgr"] == pytest.approx(0.5) and body["random"]["cpt50"] == pytest.approx(0.5)
    assert body["cpt50"] == pytest.approx(0.25) and body["strong_share_at_pgr"]["0.5"] == pytest.approx(0.25)
    assert [f["name"] for f in body["folds"]] == ["A->B", "B->A"] and body["split"] == "subjects"
    assert body["points"][0] == {"threshold": None, "strong_share": 0.0, "quality": 0.5, "pgr": 0.0}
    assert body["points"][-1]["pgr"] == pytest.approx(1.0) and len(body["points"]) == 101


def test_a_custom_router_trains_on_one_half_and_is_tested_on_the_other(folder):
    seen = []

    def factory(train):
        seen.append(set(train.groups))
        return lambda test: -np.array([len(p) for p in test.prompts], dtype=float)  # short prompts first: the worst

    result = evaluate(load_outcomes(folder), router=factory)

    assert len(seen) == 2 and not seen[0] & seen[1]
    # nothing is gained over the first half (the short prompts), then PGR climbs to 1: APGR = 0.5 * 0.5
    assert result.summary()["apgr"] == pytest.approx(0.25) and result.summary()["cpt50"] == pytest.approx(0.75)


def test_train_on_one_data_set_and_evaluate_on_another(folder, tmp_path):
    other = write_csv(tmp_path / "other.csv", subject_rows("chemistry", 8))

    result = evaluate(load_outcomes(other), "length", train=load_outcomes(folder))

    assert result.split == "train/data" and [f.n_test for f in result.folds] == [8]
    assert result.summary()["apgr"] == pytest.approx(0.75)


def test_an_unknown_strategy_is_rejected(folder):
    with pytest.raises(ModelyardError) as err:
        evaluate(load_outcomes(folder), "magic")
    assert err.value.param == "strategy"


# --- the command -----------------------------------------------------------------------------


def test_router_eval_json_is_one_object_with_the_metrics(folder):
    result = runner.invoke(app, ["router", "eval", "--data", str(folder), "--strategy", "length", "--json"])

    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout)
    assert {"apgr", "cpt50", "cpt80", "strong_share_at_pgr", "points", "random", "oracle"} <= set(body)
    assert set(body["points"][5]) == {"threshold", "strong_share", "quality", "pgr"}
    assert body["data"]["rows"] == 24 and body["data"]["subjects"] == 4


def test_router_eval_prints_the_table_and_writes_the_plot(folder, tmp_path):
    png = tmp_path / "curve.png"

    result = runner.invoke(app, ["router", "eval", "--data", str(folder), "--strategy", "random", "--plot", str(png)])

    assert result.exit_code == 0, result.output
    assert "APGR" in result.output and "CPT(50%)" in result.output and "oracle" in result.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_router_eval_on_bad_data_exits_1_with_the_reason(tmp_path):
    bad = write_csv(tmp_path / "bad.csv", [{"question": "a", "weak_correct": "1", "strong_correct": "0"}])

    result = runner.invoke(app, ["router", "eval", "--data", str(bad), "--strategy", "length"])

    assert result.exit_code == 1 and "no 'prompt' column" in result.output


# --- the real data ---------------------------------------------------------------------------


@needs_mmlu
def test_mmlu_length_rule_random_and_oracle_match_the_published_figures():
    data = load_outcomes(MMLU)
    result = evaluate(data, "length")
    summary, oracle = result.summary(), result.summary("oracle")

    assert len(data) == 14037 and data.dropped_contaminated == 5 and len(data.group_names) == 57
    assert summary["apgr"] == pytest.approx(0.59, abs=0.01) and summary["cpt50"] == pytest.approx(0.34, abs=0.01)
    assert oracle["apgr"] == pytest.approx(1.29, abs=0.01)
    assert result.summary("random")["apgr"] == pytest.approx(0.5)

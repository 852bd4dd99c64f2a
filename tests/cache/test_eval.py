"""`modelyard cache eval`: precision and recall of semantic look-ups on paraphrase pairs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from modelyard.cache import evaluate as ev
from modelyard.cli import app

PAIRS = Path(__file__).resolve().parents[3] / "shared" / "data" / "cache" / "paraphrase_pairs.json"
METRICS = {"threshold", "precision", "recall", "false_hit_rate", "lookup_p50_ms", "lookup_p99_ms"}


def test_threshold_ranges():
    assert ev.parse_thresholds("0.8:0.99:0.01")[:3] == [0.8, 0.81, 0.82]
    assert len(ev.parse_thresholds("0.8:0.99:0.01")) == 20 and ev.parse_thresholds("0.8:0.99:0.01")[-1] == 0.99
    assert ev.parse_thresholds("0.85,0.9") == [0.85, 0.9]
    for bad in ("0.8:1.2:0.1", "0:0.5:0.1", "x", "0.9:0.8:0.01", "1.5"):
        with pytest.raises(ValueError):
            ev.parse_thresholds(bad)


def test_a_bad_pairs_file_is_refused(tmp_path):
    for content, why in (("[]", "non-empty"), ("{", "not JSON"), ('[{"origin": 1}]', "item 0")):
        (tmp_path / "p.json").write_text(content)
        with pytest.raises(ValueError, match=why):
            ev.load_pairs(tmp_path / "p.json")
    with pytest.raises(ValueError, match="no pairs file"):
        ev.load_pairs(tmp_path / "missing.json")


class Lookup:
    """A fake embedder: a fixed vector per text."""

    dim = 384

    def __init__(self, vectors: dict[str, np.ndarray]) -> None:
        self.vectors = vectors

    def __call__(self, texts):
        return np.stack([self.vectors[t] for t in texts])


def test_precision_recall_and_false_hits_are_counted_against_withheld_origins():
    rng = np.random.default_rng(3)
    vectors, pairs = {}, []
    for i in range(40):
        o = rng.standard_normal(384).astype(np.float32)
        o /= np.linalg.norm(o)
        s = o + 0.2 * rng.standard_normal(384).astype(np.float32) / np.sqrt(384)
        vectors[f"o{i}"], vectors[f"s{i}"] = o, s / np.linalg.norm(s)
        pairs.append((f"o{i}", f"s{i}"))
    result = ev.evaluate(pairs, [0.5, 0.9, 0.999], default=0.9, embedder=Lookup(vectors))
    assert result["inserted"] == 20 and result["withheld"] == 20
    assert METRICS <= set(result["default"]) and result["default"]["threshold"] == 0.9
    by = {r["threshold"]: r for r in result["thresholds"]}
    assert by[0.9]["precision"] == 1.0 and by[0.9]["recall"] == 1.0 and by[0.9]["false_hit_rate"] == 0.0
    assert by[0.999]["hits"] == 0 and by[0.999]["precision"] is None and by[0.999]["recall"] == 0.0
    assert by[0.5]["false_hit_rate"] == 0.0  # random vectors in 384 dimensions are far apart


@pytest.mark.model
@pytest.mark.skipif(not PAIRS.exists(), reason=f"the paraphrase pairs are not here ({PAIRS}); they live in ../shared/data")
def test_eval_on_the_shared_pairs_prints_json_and_draws_the_plot(tmp_path):
    plot = tmp_path / "pr.png"
    result = CliRunner().invoke(app, ["cache", "eval", "--pairs", str(PAIRS), "--thresholds", "0.85:0.95:0.05",
                                      "--plot", str(plot), "--json"])
    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout)
    assert set(body["default"]) >= METRICS and [r["threshold"] for r in body["thresholds"]] == [0.85, 0.9, 0.95]
    assert body["withheld"] > 400 and body["inserted"] > 400
    rows = body["thresholds"]
    assert rows[0]["recall"] >= rows[1]["recall"] >= rows[2]["recall"]  # a higher bar hits less
    assert rows[0]["false_hit_rate"] >= rows[2]["false_hit_rate"]
    assert all(0 <= r["precision"] <= 1 and r["lookup_p99_ms"] > 0 for r in rows)
    assert plot.stat().st_size > 10_000 and plot.read_bytes()[:4] == b"\x89PNG"


def test_eval_from_the_command_line_refuses_bad_thresholds(tmp_path):
    result = CliRunner().invoke(app, ["cache", "eval", "--pairs", str(tmp_path / "x.json"), "--thresholds", "0.5:1.5:0.1"])
    assert result.exit_code == 2 and "(0, 1]" in result.output

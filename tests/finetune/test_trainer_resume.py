"""A training run killed between checkpoints and started again ends exactly where an uninterrupted one does:
the same batches in the same order, the same optimiser and schedule state, bit for bit. (A tiny random
Llama stands in for the model: the trainer's resume logic does not depend on which model it trains.)"""

from __future__ import annotations

import copy
import random

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

from modelyard.finetune.data import Encoded  # noqa: E402
from modelyard.finetune.trainer import Checkpoints, Hyperparameters, train  # noqa: E402


class Killed(Exception):
    pass


@pytest.fixture(scope="module")
def base():
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(config).float()


def rows(n: int, seed: int) -> list[Encoded]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        length = rng.randint(6, 14)
        out.append(Encoded([rng.randrange(1, 64) for _ in range(length)], [i >= length // 2 for i in range(length)]))
    return out


@pytest.mark.parametrize("killed_at", [5, 7])  # mid-epoch after a checkpoint, and in the next epoch
def test_a_resumed_run_ends_bit_for_bit_where_an_uninterrupted_one_does(base, tmp_path, killed_at):
    torch.set_num_threads(1)
    data, valid = rows(10, 1), rows(3, 2)
    hp = Hyperparameters(n_epochs=3, batch_size=3, lora_rank=4, lora_alpha=8)

    def run(root, kill_at=None):
        def on_step(step):
            if step.step == kill_at:
                raise Killed
        return train(copy.deepcopy(base), data, valid, hp, seed=5, checkpoints=Checkpoints(root),
                     checkpoint_every=2, pad=0, on_step=on_step)

    whole = run(tmp_path / "whole")
    with pytest.raises(Killed):
        run(tmp_path / "resumed", kill_at=killed_at)
    assert Checkpoints(tmp_path / "resumed").latest().name == f"step-{killed_at - 1}"
    resumed = run(tmp_path / "resumed")

    assert (resumed.steps, resumed.trained_tokens) == (whole.steps, whole.trained_tokens) == (12, whole.trained_tokens)
    assert resumed.train_loss == whole.train_loss and resumed.valid_loss == whole.valid_loss
    assert sorted(resumed.state) == sorted(whole.state)
    assert all(torch.equal(resumed.state[k], whole.state[k]) for k in whole.state)

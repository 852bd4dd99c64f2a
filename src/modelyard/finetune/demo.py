"""The demonstration task: turn a shop order written in words into a fixed JSON shape.

``python -m modelyard.finetune.demo OUT_DIR [--train 240 --validation 30 --test 60 --seed 7]`` writes
``train.jsonl``, ``validation.jsonl`` and ``test.jsonl`` in OpenAI's chat fine-tuning format. An order
such as "Please send Maria 3 green lamps." must be answered with exactly
``{"item": "lamp", "color": "green", "qty": 3, "name": "Maria"}`` — a shape the base model has never seen
and does not produce when asked (it answers in prose), while a tuned one can. The test split uses customer
names and phrasings that the training split never contains, so exact match on it measures what was learned,
not what was memorised.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

SYSTEM = "Turn the order into JSON with the keys item, color, qty and name."
ITEMS = ["mug", "lamp", "chair", "kettle", "desk", "towel", "pillow", "vase", "clock", "basket"]
COLORS = ["red", "blue", "green", "black", "white", "yellow", "grey", "pink"]
TRAIN_NAMES = ["Anna", "Ben", "Chloe", "Dev", "Eva", "Femi", "Gus", "Hana", "Ivan", "Jo", "Kai", "Lena",
               "Mo", "Nina", "Omar", "Pia", "Quinn", "Rosa", "Sam", "Tara"]
TEST_NAMES = ["Maria", "Victor", "Yuki", "Zane", "Wendy", "Uma", "Xavier", "Leo"]
TRAIN_PHRASES = [
    "Order {qty} {color} {item}s for {name}",
    "{name} wants {qty} {color} {item}s",
    "Please send {name} {qty} {color} {item}s.",
    "Can you ship {qty} {color} {item}s to {name}?",
    "New order: {qty} x {color} {item}, customer {name}",
]
TEST_PHRASES = [
    "Put down {qty} {color} {item}s for {name}, thanks",
    "{name} would like {qty} {color} {item}s please",
]


def example(rng: random.Random, names: list[str], phrases: list[str]) -> dict:
    item, color, name, qty = rng.choice(ITEMS), rng.choice(COLORS), rng.choice(names), rng.randint(2, 9)
    order = rng.choice(phrases).format(qty=qty, color=color, item=item, name=name)
    answer = json.dumps({"item": item, "color": color, "qty": qty, "name": name})
    return {"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": order},
                         {"role": "assistant", "content": answer}]}


def write(out: Path, *, train: int = 240, validation: int = 30, test: int = 60, seed: int = 7) -> dict[str, Path]:
    rng = random.Random(seed)
    out.mkdir(parents=True, exist_ok=True)
    splits = {"train": [example(rng, TRAIN_NAMES, TRAIN_PHRASES) for _ in range(train)],
              "validation": [example(rng, TRAIN_NAMES, TRAIN_PHRASES) for _ in range(validation)],
              "test": [example(rng, TEST_NAMES, TEST_PHRASES) for _ in range(test)]}
    paths = {}
    for name, rows in splits.items():
        paths[name] = out / f"{name}.jsonl"
        paths[name].write_text("".join(json.dumps(r) + "\n" for r in rows))
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--train", type=int, default=240)
    parser.add_argument("--validation", type=int, default=30)
    parser.add_argument("--test", type=int, default=60)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    for name, path in write(args.out, train=args.train, validation=args.validation, test=args.test,
                            seed=args.seed).items():
        print(f"{name}: {path}")


if __name__ == "__main__":
    main()

"""A metric for `modelyard flow eval --metric metric.py:contains`: the small model answers in a sentence, so an
answer counts when it contains the expected words (exact match would count almost nothing)."""


def contains(prediction: str, expected: str, inputs: dict) -> float:
    return 1.0 if expected.lower() in prediction.lower() else 0.0

"""Training files as OpenAI's chat fine-tuning format has them: checked line by line, rendered with the card's
template so that only the answers (and their stop sequence) are learned."""

from __future__ import annotations

import json

import pytest

from modelyard.backends.templates import get_template
from modelyard.errors import ModelyardError
from modelyard.finetune.data import encode, load_examples, parse_line, render


def line(messages, **extra) -> bytes:
    return json.dumps({"messages": messages} | extra).encode()


def convo(*pairs, system=None):
    out = [{"role": "system", "content": system}] if system else []
    for user, assistant in pairs:
        out += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    return out


@pytest.mark.parametrize(("raw", "field", "code"), [
    (b"{not json", "line 3", "invalid_json"),
    (b"[1, 2]", "line 3", "invalid_format"),
    (line([]), "line 3, messages", "invalid_format"),
    (line([{"role": "robot", "content": "x"}]), "line 3, messages[0].role", "invalid_role"),
    (line([{"role": "user", "content": 5}]), "line 3, messages[0].content", "invalid_content"),
    (line([{"role": "user", "content": "hi"}]), "line 3, messages", "missing_assistant"),
    (line([{"role": "user", "content": "hi", "weight": 1}, {"role": "assistant", "content": "yo"}]),
     "line 3, messages[0].weight", "invalid_weight"),
    (line([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo", "weight": 0}]),
     "line 3, messages", "no_weight"),
    (line(convo(("a", "b")), tools=[{"type": "function"}]), "line 3, tools", "unsupported_format"),
    (line(convo(("a", "b")), extra=1), "line 3, extra", "invalid_format"),
])
def test_a_bad_line_is_refused_naming_the_line_and_the_field(raw, field, code):
    with pytest.raises(ModelyardError) as err:
        parse_line(raw, 3, param="validation_file")
    assert err.value.status == 400 and err.value.param == "validation_file" and err.value.code == code
    assert f"{field}:" in err.value.message


def test_a_file_needs_ten_conversations_and_blank_lines_do_not_count(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_bytes(b"\n".join([line(convo(("q", "a")))] * 9) + b"\n\n")
    with pytest.raises(ModelyardError) as err:
        load_examples(path)
    assert err.value.code == "too_few_examples" and "9 example" in err.value.message
    path.write_bytes(b"\n".join([line(convo(("q", "a")))] * 10))
    assert len(load_examples(path)) == 10


def test_the_dialogue_template_learns_each_weighted_answer_and_its_stop_sequence():
    ex = parse_line(line([{"role": "user", "content": "first?"},
                          {"role": "assistant", "content": "not learned", "weight": 0},
                          {"role": "user", "content": "second?"},
                          {"role": "assistant", "content": "learned one"},
                          {"role": "user", "content": "third?"},
                          {"role": "assistant", "content": " learned two "}]), 1)
    text, spans = render(ex, get_template("dialogue"))
    assert text.endswith("User: third?\nAssistant: learned two\nUser:")
    assert [text[s:e] for s, e in spans] == [" learned one\nUser:", " learned two\nUser:"]
    # What the tuned model is asked when served is exactly the text before the last answer.
    assert text[: spans[-1][0]] == get_template("dialogue").render(ex.messages[:-1])


def test_chatml_answers_end_with_the_end_of_turn_marker():
    ex = parse_line(line(convo(("hi", "hello"), system="Be brief.")), 1)
    text, spans = render(ex, get_template("chatml"))
    assert [text[s:e] for s, e in spans] == ["hello<|im_end|>"]


class CharTokenizer:
    """One token per character, with offsets: enough to check which tokens are learned."""

    def __call__(self, text, return_offsets_mapping=False, add_special_tokens=True):
        ids = [1] + [ord(c) for c in text]
        offsets = [(0, 0)] + [(i, i + 1) for i in range(len(text))]
        return {"input_ids": ids, "offset_mapping": offsets}


def test_only_answer_tokens_are_learned_and_a_cut_that_leaves_none_drops_the_example():
    ex = parse_line(line(convo(("q", "ok"))), 1)
    template = get_template("dialogue")
    enc = encode(CharTokenizer(), ex, template, max_length=10_000)
    learned = "".join(chr(i) for i, keep in zip(enc.ids, enc.learned) if keep)
    assert learned == " ok\nUser:"
    assert encode(CharTokenizer(), ex, template, max_length=20) is None

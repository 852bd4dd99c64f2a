"""Chat templates: the prompt text a model without its own template is shown.

Plus `_partial_stop`, which decides how much generated text the llama.cpp
backend may send now and how much it must hold back because it could still
turn into a stop sequence.
"""

from __future__ import annotations

import pytest

from modelyard.backends.llamacpp import _partial_stop
from modelyard.backends.templates import DIALOGUE_EXAMPLE, DIALOGUE_PREAMBLE, TEMPLATES, get_template
from modelyard.errors import ModelyardError
from modelyard.wire import ChatMessage


def msgs(*pairs: tuple[str, str]) -> list[ChatMessage]:
    return [ChatMessage(role=role, content=content) for role, content in pairs]


def render(name: str, *pairs: tuple[str, str]) -> str:
    return get_template(name).render(msgs(*pairs))


# --- dialogue (the packaged Gemma 3 270M base model) ---------------------------


def test_dialogue_is_preamble_example_then_turns_ending_with_assistant_cue():
    text = render("dialogue", ("user", "What is the capital of France?"))
    question, answer = DIALOGUE_EXAMPLE
    assert text.splitlines() == [
        DIALOGUE_PREAMBLE,
        "",
        f"User: {question}",
        f"Assistant: {answer}",
        "User: What is the capital of France?",
        "Assistant:",
    ]


def test_dialogue_keeps_earlier_turns_in_order_and_trims_them():
    text = render("dialogue", ("user", "  Hi  "), ("assistant", "Hello!\n"), ("user", "Name a colour."))
    assert text.endswith("User: Hi\nAssistant: Hello!\nUser: Name a colour.\nAssistant:")


def test_dialogue_system_message_replaces_the_preamble():
    text = render("dialogue", ("system", "You are a pirate."), ("user", "Hi"))
    first = text.splitlines()[0]
    assert first == "You are a pirate."
    assert DIALOGUE_PREAMBLE not in text
    assert "System:" not in text and "User: You are a pirate." not in text


def test_dialogue_stops_at_the_next_user_turn():
    assert get_template("dialogue").stop == ("\nUser:",)


def test_dialogue_reads_text_parts_of_a_content_list():
    messages = [ChatMessage(role="user", content=[{"type": "text", "text": "Two "}, {"type": "text", "text": "parts"}])]
    assert "User: Two parts\nAssistant:" in get_template("dialogue").render(messages)


# --- the marker templates ------------------------------------------------------


def test_chatml_wraps_each_message_and_opens_the_assistant_turn():
    text = render("chatml", ("system", "Be brief."), ("user", "Hi"))
    assert text == ("<|im_start|>system\nBe brief.<|im_end|>\n"
                    "<|im_start|>user\nHi<|im_end|>\n"
                    "<|im_start|>assistant\n")
    assert get_template("chatml").stop == ("<|im_end|>",)


def test_chatml_renders_a_developer_message_as_system():
    assert render("chatml", ("developer", "Rules."), ("user", "Hi")).startswith("<|im_start|>system\nRules.")


def test_llama3_uses_header_ids_and_eot():
    text = render("llama3", ("user", "Hi"))
    assert text == ("<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
                    "<|start_header_id|>assistant<|end_header_id|>\n\n")
    assert get_template("llama3").stop == ("<|eot_id|>",)


def test_phi3_uses_role_tags_and_end():
    text = render("phi3", ("user", "Hi"))
    assert text == "<|user|>\nHi<|end|>\n<|assistant|>\n"
    assert get_template("phi3").stop == ("<|end|>",)


def test_gemma_folds_the_system_message_into_the_first_user_turn():
    text = render("gemma", ("system", "Be brief."), ("user", "Hi"), ("assistant", "Hello"), ("user", "Bye"))
    assert text == ("<start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n"
                    "<start_of_turn>model\nHello<end_of_turn>\n"
                    "<start_of_turn>user\nBye<end_of_turn>\n"
                    "<start_of_turn>model\n")
    assert get_template("gemma").stop == ("<end_of_turn>",)


def test_every_template_has_a_stop_sequence():
    for name, template in TEMPLATES.items():
        assert template.name == name
        assert template.stop and all(template.stop)


def test_unknown_template_name_is_a_400_listing_the_known_ones():
    with pytest.raises(ModelyardError) as info:
        get_template("alpaca")
    err = info.value
    assert err.status == 400
    assert err.param == "chat_template"
    assert "alpaca" in err.message
    assert "chatml" in err.message and "dialogue" in err.message


# --- holding back a possible stop sequence ---------------------------------------


@pytest.mark.parametrize("text, held", [
    ("The capital is Paris.", 0),      # nothing that could start "\nUser:"
    ("The capital is Paris.\n", 1),    # "\n" might be the start of "\nUser:"
    ("Paris.\nUs", 3),                 # "\nUs" still might
    ("Paris.\nUser", 5),
    ("Paris.\nUse it", 0),             # it went somewhere else: send it all
])
def test_partial_stop_holds_back_a_tail_that_could_start_the_stop(text, held):
    assert _partial_stop(text, ["\nUser:"]) == held


def test_partial_stop_holds_back_the_longest_candidate_over_several_stops():
    assert _partial_stop("answer: EN", ["END", "\nUser:"]) == 2
    assert _partial_stop("answer\nU", ["\nUser:", "U"]) == 2


def test_partial_stop_without_stops_or_text_holds_nothing():
    assert _partial_stop("anything", []) == 0
    assert _partial_stop("", ["\nUser:"]) == 0

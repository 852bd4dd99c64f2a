"""Templates render like prompt flow's: chat templates split into messages on role lines."""

from __future__ import annotations

import pytest

from modelyard.flows import FlowError, compile_template, render_chat, render_text, split_chat


def roles_and_contents(messages):
    return [(m.role, m.content) for m in messages]


def test_chat_template_splits_roles_with_or_without_hash_and_in_any_case():
    template = compile_template(
        "# system:\nYou are terse.\n\n#User:\n{{ question }}\nASSISTANT :\nSure.\n  user:  \nAnd {{ more }}?\n",
        "chat.jinja2")
    assert roles_and_contents(render_chat(template, {"question": "Why?", "more": "how"})) == [
        ("system", "You are terse."), ("user", "Why?"), ("assistant", "Sure."), ("user", "And how?")]


def test_chat_history_loops_become_alternating_turns():
    template = compile_template(
        "system:\nAnswer briefly.\n{% for turn in chat_history %}\nuser:\n{{ turn.inputs.question }}\n"
        "assistant:\n{{ turn.outputs.answer }}\n{% endfor %}\nuser:\n{{ question }}\n", "chat.jinja2")
    history = [{"inputs": {"question": "Hi"}, "outputs": {"answer": "Hello"}},
               {"inputs": {"question": "2+2?"}, "outputs": {"answer": "4"}}]
    messages = template.render_chat({"chat_history": history, "question": "And 3+3?"})
    assert roles_and_contents(messages) == [("system", "Answer briefly."), ("user", "Hi"), ("assistant", "Hello"),
                                            ("user", "2+2?"), ("assistant", "4"), ("user", "And 3+3?")]


def test_a_role_word_inside_a_line_does_not_start_a_message():
    messages = split_chat("user:\nThe user: said hi\nsystem: is not alone on its line\n")
    assert roles_and_contents(messages) == [("user", "The user: said hi\nsystem: is not alone on its line")]


def test_text_before_the_first_role_is_an_error_naming_the_template():
    with pytest.raises(FlowError) as info:
        compile_template("Hello {{ name }}\nuser:\nhi\n", "greet.jinja2").render_chat({"name": "Ada"})
    assert info.value.source == "greet.jinja2"
    assert "must start with a role line" in info.value.message and "'Hello Ada'" in info.value.message


def test_render_text_keeps_the_text_for_completions_and_prompt_nodes():
    template = compile_template("Summarize:\n{% for p in points %}\n- {{ p }}\n{% endfor %}\nSummary:", "s.jinja2")
    assert render_text(template, {"points": ["a", "b"]}) == "Summarize:\n- a\n- b\nSummary:"
    assert template.variables == {"points"}


def test_undefined_variables_render_empty_as_in_prompt_flow():
    assert compile_template("user:\n[{{ missing }}]", "t.jinja2").render_text({}) == "user:\n[]"


def test_syntax_errors_name_the_template_line():
    with pytest.raises(FlowError) as info:
        compile_template("system:\nok\nuser:\n{{ question ", "t.jinja2")
    assert (info.value.source, info.value.line) == ("t.jinja2", 4)
    assert info.value.describe().startswith("t.jinja2:4: template syntax error:")


def test_render_errors_name_the_template_line():
    template = compile_template("user:\n{{ question }}\n{{ count + 'x' }}\n", "t.jinja2")
    with pytest.raises(FlowError) as info:
        template.render_text({"question": "q", "count": 1})
    assert (info.value.source, info.value.line) == ("t.jinja2", 3)


def test_templates_run_sandboxed():
    template = compile_template("user:\n{{ ''.__class__.__mro__ }}", "evil.jinja2")
    with pytest.raises(FlowError, match="SecurityError|unsafe"):
        template.render_text({})


def test_a_loaded_template_survives_copies():
    template = compile_template("user:\n{{ q }}", "t.jinja2")
    for copy in (template.model_copy(deep=True), type(template).model_validate(template.model_dump())):
        assert roles_and_contents(copy.render_chat({"q": "hi"})) == [("user", "hi")]

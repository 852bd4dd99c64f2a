"""Flow inputs are bound at run time with defaults and type checks; references parse and resolve."""

from __future__ import annotations

import pytest

from modelyard.flows import FlowError, Reference, bind_inputs, coerce_llm_param, parse_reference, parse_flow
from modelyard.flows.references import ReferenceSyntaxError
from modelyard.flows.values import UNSET


@pytest.fixture
def flow(tmp_path):
    return parse_flow("""
inputs:
  question: {type: string}
  top_k: {type: int, default: 3}
  temperature: {type: double, default: "0.5"}
  strict: {type: bool, default: false}
  tags: {type: list, default: []}
  options: {type: object, default: {}}
  tone: {type: string, default: plain, enum: [plain, friendly]}
  history: {type: list, is_chat_history: true}
nodes:
- name: echo
  type: prompt
  source: {type: inline, content: "{{ q }}"}
  inputs: {q: "${inputs.question}"}
""", tmp_path)


def test_defaults_fill_in_and_strings_convert_to_the_declared_type(flow):
    bound = bind_inputs(flow, {"question": "hi", "top_k": "5", "strict": "TRUE", "tags": '["a"]'})
    assert bound == {"question": "hi", "top_k": 5, "temperature": 0.5, "strict": True, "tags": ["a"],
                     "options": {}, "tone": "plain", "history": []}
    assert flow.inputs["temperature"].default == 0.5  # the default was converted when the flow loaded


def test_a_missing_required_input_is_named(flow):
    with pytest.raises(FlowError) as info:
        flow.bind_inputs({})
    assert info.value.field == "inputs.question"
    assert info.value.message == "missing required flow input 'question' (string)"
    error = info.value.to_error()
    assert (error.status, error.param, error.code) == (400, "inputs.question", "invalid_flow")


@pytest.mark.parametrize("given, field, expected", [
    ({"question": 3}, "inputs.question", "flow input 'question' is string: expected a string, got int 3"),
    ({"question": "q", "top_k": 2.5}, "inputs.top_k", "expected an int, got float 2.5"),
    ({"question": "q", "top_k": True}, "inputs.top_k", "expected an int, got the bool True"),
    ({"question": "q", "strict": "yes"}, "inputs.strict", "expected true or false"),
    ({"question": "q", "options": [1]}, "inputs.options", "expected an object, got a list"),
    ({"question": "q", "history": ["hi"]}, "inputs.history", "chat history item 0 must be an object"),
    ({"question": "q", "tone": "angry"}, "inputs.tone", "must be one of ['plain', 'friendly']"),
    ({"question": "q", "qestion": "x"}, "inputs.qestion", "unknown flow input 'qestion'"),
])
def test_a_wrong_input_is_named_with_what_was_expected(flow, given, field, expected):
    with pytest.raises(FlowError) as info:
        flow.bind_inputs(given)
    assert info.value.field == field and expected in info.value.message


def test_every_wrong_input_is_listed(flow):
    with pytest.raises(FlowError) as info:
        flow.bind_inputs({"top_k": "many"})
    assert [p.field for p in info.value.problems] == ["inputs.question", "inputs.top_k"]


@pytest.mark.parametrize("text, expected", [
    ("${inputs.question}", Reference(source="inputs", name="question")),
    ("${flow.question}", Reference(source="inputs", name="question")),
    ("${answer}", Reference(source="node", name="answer")),
    ("${answer.output}", Reference(source="node", name="answer")),
    ("${search.output.0.text}", Reference(source="node", name="search", path=("0", "text"))),
    (" ${ search.output } ", Reference(source="node", name="search")),
])
def test_references_parse(text, expected):
    assert parse_reference(text) == expected


def test_a_reference_prints_in_its_canonical_form():
    assert str(parse_reference("${flow.q}")) == "${inputs.q}"
    assert str(parse_reference("${search.output.0.text}")) == "${search.output.0.text}"


def test_references_resolve_through_dicts_lists_and_attributes():
    outputs = {"search": [{"text": "hit", "meta": {"score": 0.9}}], "answer": "plain string"}
    assert parse_reference("${search.output.0.text}").resolve({}, outputs) == "hit"
    assert parse_reference("${search.output.-1.meta.score}").resolve({}, outputs) == 0.9
    assert parse_reference("${inputs.q}").resolve({"q": "why"}, outputs) == "why"
    with pytest.raises(KeyError, match=r"\$\{answer.output.text\}: str value has no field 'text'"):
        parse_reference("${answer.output.text}").resolve({}, outputs)
    with pytest.raises(KeyError, match="node 'later' has no output"):
        parse_reference("${later}").resolve({}, outputs)


def test_text_around_a_reference_is_not_a_reference():
    with pytest.raises(ReferenceSyntaxError):
        parse_reference("Hello ${inputs.name}")


@pytest.mark.parametrize("name, value, api, expected", [
    ("max_tokens", "256", "chat", 256),
    ("temperature", "0.2", "chat", 0.2),
    ("echo", "False", "completion", False),
    ("logprobs", "true", "chat", True),
    ("logprobs", "2", "completion", 2),
    ("stop", "", "chat", UNSET),
    ("stop", "###", "chat", "###"),
    ("stop", '["a", "b"]', "chat", ["a", "b"]),
    ("logit_bias", "", "chat", UNSET),
    ("response_format", "json_object", "chat", {"type": "json_object"}),
    ("response_format", '{"type": "text"}', "chat", {"type": "text"}),
])
def test_llm_parameters_convert_prompt_flow_string_spellings(name, value, api, expected):
    assert coerce_llm_param(name, value, api) == expected

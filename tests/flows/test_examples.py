"""The example flows load into the models the engine expects."""

from __future__ import annotations

import pytest

from modelyard.errors import ModelyardError
from modelyard.flows import (
    EmbedNode,
    FlowError,
    LLMNode,
    PromptNode,
    PythonNode,
    Reference,
    RetrieveNode,
    load_flow,
    variant,
)

from .conftest import EXAMPLES, line_of

RETRIEVAL = EXAMPLES / "chat_with_retrieval" / "flow.dag.yaml"


def names(levels):
    return [[node.name for node in level] for level in levels]


def test_chat_with_retrieval_flow_loads_as_typed_nodes():
    flow = load_flow(EXAMPLES / "chat_with_retrieval")

    assert flow.name == "handbook-chat"
    assert flow.chat_input == "question" and flow.chat_history == "chat_history" and flow.chat_output == "answer"
    assert flow.outputs["answer"].reference == Reference(source="node", name="compose_answer")
    assert flow.outputs["sources"].type == "list"

    rewrite, embed, search, fmt, answer = flow.nodes
    assert isinstance(rewrite, LLMNode) and rewrite.endpoint == "small" and rewrite.api == "chat"
    assert rewrite.params == {"max_tokens": 64, "temperature": 0.0}
    assert rewrite.variables == {"question": Reference(source="inputs", name="question"),
                                 "chat_history": Reference(source="inputs", name="chat_history")}
    assert rewrite.template.origin == "rewrite_question.jinja2"
    assert rewrite.template.variables == {"question", "chat_history"}

    assert isinstance(embed, EmbedNode) and embed.endpoint == "embeddings"
    assert embed.input == Reference(source="node", name="rewrite_question")
    assert isinstance(search, RetrieveNode)
    assert (search.index, search.top_k, search.filter) == ("handbook", 4, None)
    assert search.query == Reference(source="node", name="embed_question")

    assert isinstance(fmt, PythonNode)
    assert fmt.tool.function == "format_context" and fmt.tool.path == EXAMPLES / "chat_with_retrieval/format_context.py"
    assert [(p.name, p.annotation, p.required) for p in fmt.tool.parameters] == [
        ("hits", "list", True), ("max_chars", "int", False)]
    assert fmt.args == {"hits": Reference(source="node", name="search_docs")}  # ${search_docs} = its output

    assert answer.endpoint == "strong" and answer.params["stop"] == ["\nUser:"]
    assert flow.warnings == []


def test_levels_follow_the_chain_of_a_linear_flow():
    flow = load_flow(EXAMPLES / "chat_with_retrieval" / "flow.dag.yaml")
    assert names(flow.levels()) == [["rewrite_question"], ["embed_question"], ["search_docs"],
                                    ["format_context"], ["compose_answer"]]
    assert flow.dependencies()["compose_answer"] == {"format_context"}
    assert flow.dependents()["rewrite_question"] == {"embed_question"}


def test_levels_put_independent_nodes_together_and_activate_conditions_are_dependencies():
    flow = load_flow(EXAMPLES / "branching")

    assert names(flow.levels()) == [["classify", "detect_language", "human_handoff"],
                                    ["refund_reply", "general_reply"],
                                    ["merge_reply"]]
    refund = flow.node("refund_reply")
    assert refund.dependencies == {"classify", "detect_language"}  # classify only through activate.when
    assert refund.activate.when == Reference(source="node", name="classify")
    assert refund.activate.is_met("refund") and not refund.activate.is_met("other")
    handoff = flow.node("human_handoff")
    assert handoff.dependencies == frozenset() and handoff.activate.equals is True
    assert handoff.args["priority"] == 2  # "2" converted: the parameter is annotated int
    assert flow.node("merge_reply").args["ticket"] == Reference(source="node", name="human_handoff", path=("id",))
    assert [n.name for n in flow.order()] == ["classify", "detect_language", "human_handoff",
                                              "refund_reply", "general_reply", "merge_reply"]


def test_branching_flow_has_inline_and_completion_templates():
    flow = load_flow(EXAMPLES / "branching")
    classify = flow.node("classify")
    assert classify.api == "completion"
    assert classify.template.render_text({"message": "my order broke"}).endswith("Message: my order broke\nCategory:\n")
    general = flow.node("general_reply")
    assert isinstance(general, PromptNode)
    assert general.template.render_text({"message": "hi"}).startswith("Thanks for your message.")
    assert flow.node("detect_language").tool.function == "detect_language"  # named by source.function


def test_variant_flow_runs_the_default_variant_and_switches_on_request():
    flow = load_flow(EXAMPLES / "variants")

    summarize = flow.node("summarize")
    assert summarize.variant == "variant_0" and summarize.endpoint == "small"
    assert summarize.params == {"max_tokens": 128, "temperature": 0.2}  # prompt flow writes them as strings
    assert set(flow.variants["summarize"].nodes) == {"variant_0", "variant_1"}
    assert flow.variants["summarize"].descriptions == {"variant_1": "longer and warmer"}
    assert flow.selected_variants() == {"summarize": "variant_0"}

    detailed = variant(flow, {"summarize": "variant_1"})
    chosen = detailed.node("summarize")
    assert (chosen.variant, chosen.endpoint, chosen.api) == ("variant_1", "strong", "completion")
    assert chosen.params == {"max_tokens": 256, "temperature": 0.7, "top_p": 0.9}
    assert names(detailed.levels()) == [["summarize"], ["word_count"]]
    assert flow.node("summarize").variant == "variant_0"  # the original flow is unchanged


def test_choosing_a_variant_that_does_not_exist_names_the_variants():
    flow = load_flow(EXAMPLES / "variants")
    with pytest.raises(FlowError) as info:
        variant(flow, {"summarize": "variant_9"})
    assert info.value.node == "summarize"
    assert "no variant 'variant_9' (variants: variant_0, variant_1)" in str(info.value)
    with pytest.raises(FlowError, match="node 'word_count' has no variants"):
        variant(flow, {"word_count": "variant_0"})


def test_azure_flow_maps_deployments_connections_and_packaged_tools():
    flow = load_flow(EXAMPLES / "azure_rag")

    embed = flow.node("embed_the_question")
    assert isinstance(embed, EmbedNode)
    assert embed.endpoint == "text-embedding-ada-002"  # deployment_name names the endpoint
    assert embed.package_tool == "promptflow.tools.embedding.embedding"
    assert embed.ignored == {"inputs.connection": "aoai_connection"}

    docs = flow.node("search_docs")
    assert isinstance(docs, RetrieveNode)
    assert docs.index == "contoso-docs"  # index.index inside mlindex_content
    assert docs.query == Reference(source="inputs", name="question")  # queries -> query
    assert docs.top_k == 2 and docs.ignored == {"inputs.query_type": "Hybrid (vector + keyword)"}
    faq = flow.node("search_faq")
    assert (faq.index, faq.top_k) == ("contoso-faq", 3)
    assert faq.query == Reference(source="node", name="embed_the_question")

    chat = flow.node("chat_with_context")
    assert isinstance(chat, LLMNode) and chat.endpoint == "gpt-35-turbo"
    # '' means unset (stop, logit_bias); strings become numbers
    assert chat.params == {"temperature": 0.0, "top_p": 1.0, "max_tokens": 1000,
                           "presence_penalty": 0.0, "frequency_penalty": 0.0}
    assert chat.ignored == {"connection": "aoai_connection", "provider": "AzureOpenAI",
                            "module": "promptflow.tools.aoai"}
    assert names(flow.levels()) == [["embed_the_question", "search_docs"], ["search_faq"],
                                    ["generate_prompt_context"], ["Prompt_variants"], ["chat_with_context"]]


def test_azure_flow_renders_its_prompt_into_chat_messages():
    flow = load_flow(EXAMPLES / "azure_rag")
    inputs = flow.bind_inputs({"chat_history": [{"inputs": {"question": "Hi"}, "outputs": {"answer": "Hello!"}}]})
    prompt = flow.node("Prompt_variants").template.render_text(
        {"contexts": "Content: use az ml online-endpoint create", **inputs})
    messages = flow.node("chat_with_context").template.render_chat({"prompt_text": prompt})

    assert [m.role for m in messages] == ["system", "user", "assistant", "user"]
    assert "az ml online-endpoint create" in messages[0].content
    assert messages[-1].content == "How do I deploy a model to an online endpoint?"


def test_unknown_endpoints_are_reported_for_every_node_and_variant():
    with pytest.raises(FlowError) as info:
        load_flow(EXAMPLES / "variants", endpoint_exists=lambda name: name == "small")
    assert [(p.node, p.variant) for p in info.value.problems] == [("summarize", "variant_1")]
    assert "endpoint 'strong' does not exist" in str(info.value)

    with pytest.raises(FlowError) as info:
        load_flow(EXAMPLES / "chat_with_retrieval", endpoint_exists=lambda name: name != "embeddings")
    assert info.value.node == "embed_question" and info.value.line == line_of(RETRIEVAL, "endpoint: embeddings")

    assert load_flow(EXAMPLES / "chat_with_retrieval", endpoint_exists=lambda name: True).nodes


def test_flow_error_becomes_an_openai_shaped_400():
    with pytest.raises(FlowError) as info:
        load_flow(EXAMPLES / "chat_with_retrieval", endpoint_exists=lambda name: name != "strong")
    error = info.value.to_error()
    assert isinstance(error, ModelyardError)
    assert error.status == 400
    assert error.body()["error"] == {
        "message": str(info.value), "type": "invalid_request_error",
        "param": "nodes.compose_answer.inputs.endpoint", "code": "invalid_flow"}
    line = line_of(RETRIEVAL, "endpoint: strong")
    assert str(info.value) == (f"{RETRIEVAL}:{line}: node 'compose_answer': field 'inputs.endpoint': "
                               "endpoint 'strong' does not exist")

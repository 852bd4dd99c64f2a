"""A bad flow is refused before anything runs, with an error that names the node, the field and the line."""

from __future__ import annotations

import pytest

from modelyard.flows import FlowError, load_flow, parse_flow

from .conftest import line_of

HELLO = {"hello.jinja2": "user:\n{{ question }}\n"}


def problems(folder) -> list[FlowError]:
    with pytest.raises(FlowError) as info:
        load_flow(folder)
    return list(info.value.problems)


def only(folder) -> FlowError:
    found = problems(folder)
    assert len(found) == 1, "\n".join(p.describe() for p in found)
    return found[0]


def test_a_cycle_is_refused_naming_the_nodes_in_it(flow_dir):
    folder = flow_dir("""
        inputs:
          question: {type: string}
        outputs:
          answer: {type: string, reference: "${c.output}"}
        nodes:
        - name: a
          type: prompt
          source: {type: code, path: hello.jinja2}
          inputs: {question: "${c.output}"}
        - name: b
          type: prompt
          source: {type: code, path: hello.jinja2}
          inputs: {question: "${a.output}"}
        - name: c
          type: prompt
          source: {type: code, path: hello.jinja2}
          inputs: {question: "${b}"}
        """, HELLO)
    error = only(folder)
    assert error.node == "a" and error.line == line_of(folder / "flow.dag.yaml", "- name: a")
    assert "node 'a' is in a cycle: a → c → b → a" in error.message


def test_a_node_reading_its_own_output_is_a_cycle(flow_dir):
    folder = flow_dir("""
        nodes:
        - name: loop
          type: prompt
          source: {type: code, path: hello.jinja2}
          inputs: {question: "${loop.output}"}
        """, HELLO)
    assert "node 'loop' reads its own output" in only(folder).message


def test_a_reference_to_an_unknown_node_names_node_field_line_and_suggests(flow_dir):
    folder = flow_dir("""
        inputs:
          question: {type: string}
        nodes:
        - name: rewrite
          type: prompt
          source: {type: code, path: hello.jinja2}
          inputs: {question: "${inputs.question}"}
        - name: answer
          type: prompt
          source: {type: code, path: hello.jinja2}
          inputs:
            question: ${rewrte.output}
        """, HELLO)
    error = only(folder)
    assert (error.node, error.field) == ("answer", "inputs.question")
    assert error.line == line_of(folder / "flow.dag.yaml", "${rewrte.output}")
    assert "unknown node 'rewrte' in ${rewrte.output} (did you mean 'rewrite'?)" in error.message
    assert str(error).startswith(f"{folder / 'flow.dag.yaml'}:{error.line}: node 'answer': field 'inputs.question'")


def test_a_reference_to_an_undeclared_flow_input_lists_the_declared_ones(flow_dir):
    folder = flow_dir("""
        inputs:
          question: {type: string}
        nodes:
        - name: answer
          type: prompt
          source: {type: code, path: hello.jinja2}
          inputs:
            question: ${flow.querstion}
        """, HELLO)
    error = only(folder)
    assert error.field == "inputs.question"
    assert "unknown flow input 'querstion'" in error.message and "declared inputs: question" in error.message


@pytest.mark.parametrize("reference, expected", [
    ("${answer.result}", "a node has only an output"),
    ("${inputs.question.text}", "a flow input has no fields"),
    ("${inputs}", "names no input"),
    ("${}", "an empty name"),
])
def test_malformed_references_say_how_to_write_them(flow_dir, reference, expected):
    folder = flow_dir(f"""
        inputs:
          question: {{type: string}}
        nodes:
        - name: answer
          type: prompt
          source: {{type: code, path: hello.jinja2}}
          inputs: {{question: "{reference}"}}
        """, HELLO)
    assert expected in only(folder).message


def test_an_output_referencing_an_unknown_node_is_refused(flow_dir):
    folder = flow_dir("""
        outputs:
          answer:
            type: string
            reference: ${anwser.output}
        nodes:
        - name: answer
          type: prompt
          source: {type: inline, content: hi}
        """)
    error = only(folder)
    assert error.node is None and error.field == "outputs.answer.reference"
    assert error.line == line_of(folder / "flow.dag.yaml", "reference:")
    assert "unknown node 'anwser'" in error.message


def test_an_unknown_key_is_an_error_with_its_line_not_ignored(flow_dir):
    folder = flow_dir("""
        nodes:
        - name: answer
          type: prompt
          source:
            type: inline
            contents: hi
          activte:
            when: ${inputs.x}
            is: true
        outputz: {}
        """)
    found = {p.message.split(";")[0]: p for p in problems(folder)}
    path = folder / "flow.dag.yaml"
    nested = found["unknown key 'contents' (did you mean 'content'?)"]
    assert (nested.node, nested.field, nested.line) == ("answer", "source", line_of(path, "contents:"))
    node_key = found["unknown key 'activte' (did you mean 'activate'?)"]
    assert (node_key.node, node_key.field, node_key.line) == ("answer", None, line_of(path, "activte:"))
    top = found["unknown key 'outputz' (did you mean 'outputs'?)"]
    assert (top.node, top.line) == (None, line_of(path, "outputz:"))
    assert "known keys here: $schema, additional_includes, description" in top.message


def test_an_unknown_key_inside_a_variant_names_the_variant(flow_dir):
    folder = flow_dir("""
        nodes:
        - name: summarize
          use_variants: true
        node_variants:
          summarize:
            default_variant_id: v0
            variants:
              v0:
                node:
                  type: prompt
                  source: {type: inline, content: hi}
                  temprature: 0.3
        """)
    error = only(folder)
    assert (error.node, error.variant) == ("summarize", "v0")
    assert error.line == line_of(folder / "flow.dag.yaml", "temprature")


def test_a_key_written_twice_is_refused(flow_dir):
    folder = flow_dir("""
        nodes:
        - name: answer
          type: prompt
          type: llm
        """)
    error = only(folder)
    assert error.line == 4 and "key 'type' is given twice in one mapping (first on line 3)" in error.message


def test_yaml_syntax_errors_name_the_line(flow_dir):
    folder = flow_dir("""
        nodes:
        - name: answer
          inputs: {question: [unclosed}
        """)
    error = only(folder)
    assert error.line == 3 and error.message.startswith("not valid YAML")


def test_duplicate_node_names_are_refused(flow_dir):
    folder = flow_dir("""
        nodes:
        - name: answer
          type: prompt
          source: {type: inline, content: one}
        - name: answer
          type: prompt
          source: {type: inline, content: two}
        """)
    error = only(folder)
    assert error.line == 5 and "two nodes are called 'answer' (the first is at line 2)" in error.message


@pytest.mark.parametrize("yaml_value, expected", [
    ("max_tokens: lots", "max_tokens: expected an int, got str 'lots'"),
    ("temperature: hot", "temperature: expected a number, got str 'hot'"),
    ("echo: maybe", "echo: expected true or false"),
    ("stop: 3", "stop: expected a string or a list of strings"),
])
def test_wrong_literal_types_of_request_parameters_are_refused(flow_dir, yaml_value, expected):
    folder = flow_dir(f"""
        nodes:
        - name: answer
          type: llm
          api: completion
          source: {{type: inline, content: hi}}
          inputs:
            endpoint: small
            {yaml_value}
        """)
    error = only(folder)
    assert error.field == f"inputs.{yaml_value.split(':')[0]}" and error.line == 8
    assert expected in error.message


def test_wrong_literal_types_of_defaults_python_args_and_top_k_are_refused(flow_dir):
    folder = flow_dir("""
        inputs:
          limit: {type: int, default: ten}
          strict: {type: bool, default: "yes"}
        nodes:
        - name: search
          type: retrieve
          inputs: {index: docs, query: hello, top_k: many}
        - name: count
          type: python
          source: {type: code, path: count.py}
          inputs: {text: hello, limit: "3.5"}
        """, {"count.py": """
        from promptflow import tool

        @tool
        def count(text: str, limit: int = 3) -> int:
            return min(len(text), limit)
        """})
    messages = [p.describe() for p in problems(folder)]
    assert any("field 'inputs.limit.default': default of a int input: expected an int, got str 'ten'" in m
               for m in messages)
    assert any("inputs.strict.default" in m and "expected true or false" in m for m in messages)
    assert any("node 'search': field 'inputs.top_k': top_k: expected an int" in m for m in messages)
    assert any("node 'count': field 'inputs.limit': parameter 'limit' of count is int" in m for m in messages)


def test_template_syntax_errors_name_the_template_file_and_line(flow_dir):
    folder = flow_dir("""
        inputs:
          question: {type: string}
        nodes:
        - name: answer
          type: llm
          source: {type: code, path: answer.jinja2}
          inputs: {endpoint: strong, question: "${inputs.question}"}
        """, {"answer.jinja2": """
        system:
        Be brief.
        user:
        {% if question %}{{ question }}{% endfi %}
        """})
    error = only(folder)
    assert (error.source, error.line, error.node) == ("answer.jinja2", 4, "answer")
    assert str(error).startswith("answer.jinja2:4: node 'answer': field 'source.path': template syntax error:")


def test_a_template_variable_no_input_sets_is_refused(flow_dir):
    folder = flow_dir("""
        nodes:
        - name: answer
          type: llm
          source: {type: inline, content: "user:\\n{{ question }} {{ context }}"}
          inputs: {endpoint: strong, question: hi}
        """)
    assert "uses 'context', which the node's inputs do not set" in only(folder).message


def test_a_missing_template_file_names_the_yaml_line(flow_dir):
    folder = flow_dir("""
        nodes:
        - name: answer
          type: prompt
          source:
            type: code
            path: missing.jinja2
        """)
    error = only(folder)
    assert (error.field, error.line) == ("source.path", 6) and "file 'missing.jinja2' does not exist" in error.message


def test_a_source_path_outside_the_flow_folder_is_refused(flow_dir):
    folder = flow_dir("""
        nodes:
        - name: answer
          type: prompt
          source: {type: code, path: ../secrets.jinja2}
        """)
    assert "is outside the flow folder" in only(folder).message


TOOLS_PY = """
    from promptflow import tool


    def helper(text):
        return text.strip()


    @tool
    def shout(text: str, times: int = 1) -> str:
        return helper(text).upper() * times
    """


def test_python_function_named_by_function_key_must_exist(flow_dir):
    folder = flow_dir("""
        nodes:
        - name: shout
          type: python
          source: {type: code, path: tools.py, function: yell}
          inputs: {text: hi}
        """, {"tools.py": TOOLS_PY})
    error = only(folder)
    assert error.field == "source.function" and error.line == 4
    assert "has no top-level function 'yell' (functions: helper, shout)" in error.message


def test_python_file_without_a_tool_function_says_how_to_name_one(flow_dir):
    folder = flow_dir("""
        nodes:
        - name: clean
          type: python
          source: {type: code, path: plain.py}
        """, {"plain.py": "def clean(text):\n    return text\n"})
    assert "has no function decorated with @tool; decorate one, or name it with source.function" in only(folder).message


def test_python_parameters_must_cover_the_node_inputs(flow_dir):
    folder = flow_dir("""
        nodes:
        - name: shout
          type: python
          source: {type: code, path: tools.py}
          inputs:
            txt: hi
        """, {"tools.py": TOOLS_PY})
    found = [p.message for p in problems(folder)]
    assert "tools.py: function shout(text, times) has no parameter 'txt'" in found
    assert "tools.py: function shout(text, times) needs 'text', which the node's inputs do not set" in found


def test_python_syntax_errors_name_the_python_file_and_line(flow_dir):
    folder = flow_dir("""
        nodes:
        - name: shout
          type: python
          source: {type: code, path: broken.py}
        """, {"broken.py": "from promptflow import tool\n\n@tool\ndef shout(text:\n    return text\n"})
    error = only(folder)
    assert (error.source, error.node) == ("broken.py", "shout") and error.line in (4, 5)


def test_python_files_are_never_imported(flow_dir):
    folder = flow_dir("""
        nodes:
        - name: boom
          type: python
          source: {type: code, path: boom.py}
          inputs: {x: 1}
        """, {"boom.py": """
        raise SystemExit("imported!")

        @tool
        def boom(x):
            return x
        """})
    assert load_flow(folder).node("boom").tool.function == "boom"


def test_a_variant_id_that_does_not_exist_is_refused(flow_dir):
    folder = flow_dir("""
        nodes:
        - name: summarize
          use_variants: true
        node_variants:
          summarize:
            default_variant_id: variant_2
            variants:
              variant_0:
                node: {type: prompt, source: {type: inline, content: short}}
              variant_1:
                node: {type: prompt, source: {type: inline, content: long}}
        """)
    error = only(folder)
    assert (error.node, error.field, error.line) == ("summarize", "default_variant_id", 6)
    assert "default_variant_id 'variant_2' is not one of its variants (variant_0, variant_1)" in error.message


def test_use_variants_without_node_variants_is_refused(flow_dir):
    folder = flow_dir("""
        nodes:
        - name: summarize
          use_variants: true
        """)
    assert "sets use_variants: true but node_variants has no entry for it" in only(folder).message


def test_every_variant_is_checked_not_only_the_default(flow_dir):
    folder = flow_dir("""
        nodes:
        - name: summarize
          use_variants: true
        node_variants:
          summarize:
            default_variant_id: variant_0
            variants:
              variant_0:
                node: {type: prompt, source: {type: inline, content: short}}
              variant_1:
                node:
                  type: prompt
                  source: {type: inline, content: "{{ text }}"}
                  inputs: {text: "${nowhere.output}"}
        """)
    error = only(folder)
    assert (error.node, error.variant, error.line) == ("summarize", "variant_1", 14)


@pytest.mark.parametrize("when, expected", [
    ("${inputs.n} > 0", "must be a reference such as ${node.output}"),
    ("${classfy.output}", "unknown node 'classfy'"),
    ("${inputs.mode}", "unknown flow input 'mode'"),
])
def test_an_invalid_activate_condition_is_refused(flow_dir, when, expected):
    folder = flow_dir(f"""
        inputs:
          n: {{type: int}}
        nodes:
        - name: classify
          type: prompt
          source: {{type: inline, content: refund}}
        - name: refund
          type: prompt
          source: {{type: inline, content: sorry}}
          activate:
            when: "{when}"
            is: refund
        """)
    error = only(folder)
    assert (error.node, error.field, error.line) == ("refund", "activate.when", 11)
    assert expected in error.message


def test_aggregation_nodes_are_refused_with_the_reason(flow_dir):
    folder = flow_dir("""
        nodes:
        - name: accuracy
          type: prompt
          source: {type: inline, content: hi}
          aggregation: true
        """)
    error = only(folder)
    assert error.field == "aggregation" and "once over a whole batch run" in error.message


def test_other_packaged_tools_are_refused_with_what_is_supported(flow_dir):
    folder = flow_dir("""
        nodes:
        - name: search_web
          type: python
          source: {type: package, tool: promptflow.tools.serpapi.SerpAPI.search}
          inputs: {query: hi}
        """)
    assert "runs prompt flow's embedding and index_lookup tools itself" in only(folder).message


def test_an_llm_node_without_an_endpoint_says_which_input_to_set(flow_dir):
    folder = flow_dir("""
        nodes:
        - name: answer
          type: llm
          source: {type: inline, content: "user:\\nhi"}
        """)
    assert "names no endpoint: set inputs.endpoint (or prompt flow's inputs.deployment_name)" in only(folder).message


def test_chat_flows_need_both_a_chat_input_and_a_chat_output(flow_dir):
    folder = flow_dir("""
        inputs:
          question: {type: string, is_chat_input: true}
        outputs:
          answer: {type: string, reference: "${answer.output}"}
        nodes:
        - name: answer
          type: prompt
          source: {type: inline, content: "{{ q }}"}
          inputs: {q: "${inputs.question}"}
        """)
    assert "needs an output with is_chat_output: true" in only(folder).message


def test_every_problem_is_reported_in_one_pass(flow_dir):
    folder = flow_dir("""
        inputs:
          question: {type: string}
        outputs:
          answer: {type: string, reference: "${answr.output}"}
        nodes:
        - name: answer
          type: llm
          source: {type: inline, content: "user:\\n{{ question }}"}
          inputs: {endpoint: strong, question: "${inputs.qestion}", max_tokens: many}
        - name: extra
          type: retrieve
          inputs: {index: docs}
        """)
    error = problems(folder)
    assert len(error) == 4  # the bad reference, max_tokens, the missing query, the output
    text = "\n".join(p.describe() for p in error)
    assert "unknown flow input 'qestion'" in text and "max_tokens" in text
    assert "field 'inputs.query': is required (query)" in text and "unknown node 'answr'" in text


def test_parse_flow_reads_text_with_files_from_base_dir(tmp_path):
    (tmp_path / "hello.jinja2").write_text("user:\n{{ name }}\n")
    flow = parse_flow("nodes:\n- name: greet\n  type: prompt\n  source: {type: code, path: hello.jinja2}\n"
                      "  inputs: {name: Ada}\n", tmp_path, source="inline.yaml")
    assert flow.source == "inline.yaml" and flow.node("greet").variables == {"name": "Ada"}
    with pytest.raises(FlowError, match=r"^inline.yaml:1: a flow file must be a mapping"):
        parse_flow("- just a list\n", tmp_path, source="inline.yaml")


def test_load_flow_accepts_the_folder_or_the_file_and_says_when_neither_has_a_flow(tmp_path):
    with pytest.raises(FlowError, match="holds no flow.dag.yaml"):
        load_flow(tmp_path)
    with pytest.raises(FlowError, match="no such file"):
        load_flow(tmp_path / "flow.dag.yaml")


def test_a_cycle_through_a_non_default_variant_is_refused_naming_the_variant(flow_dir):
    folder = flow_dir("""
        nodes:
        - name: draft
          use_variants: true
        - name: critique
          type: prompt
          source: {type: inline, content: "{{ text }}"}
          inputs: {text: "${draft.output}"}
        node_variants:
          draft:
            default_variant_id: plain
            variants:
              plain:
                node: {type: prompt, source: {type: inline, content: first draft}}
              revised:
                node:
                  type: prompt
                  source: {type: inline, content: "{{ notes }}"}
                  inputs: {notes: "${critique.output}"}
        """)
    error = only(folder)
    assert (error.node, error.variant) == ("draft", "revised")
    assert "draft → critique → draft with variant 'revised' of node 'draft'" in error.message


def test_a_variant_keeps_the_activate_condition_of_the_node_it_varies(flow_dir):
    folder = flow_dir("""
        inputs:
          mode: {type: string, default: short}
        nodes:
        - name: summarize
          use_variants: true
          activate: {when: "${inputs.mode}", is: short}
        node_variants:
          summarize:
            default_variant_id: v0
            variants:
              v0:
                node: {type: prompt, source: {type: inline, content: one}}
              v1:
                node: {type: prompt, source: {type: inline, content: two}}
        """)
    flow = load_flow(folder)
    for node in flow.variants["summarize"].nodes.values():
        assert node.activate.equals == "short" and node.name == "summarize"


def test_things_that_load_but_look_unintended_are_warnings(flow_dir):
    folder = flow_dir("""
        inputs:
          q: {type: string}
        nodes:
        - name: ask
          type: llm
          enable_cache: true
          source: {type: inline, content: "user:\\n{{ q }}"}
          inputs:
            endpoint: small
            q: Hello ${inputs.q}
            tempreature: 0.5
        - name: shout
          type: prompt
          source: {type: inline, content: "{{ x }}"}
          inputs: {x: "${ask.output.text}"}
        """)
    flow = load_flow(folder)
    path = folder / "flow.dag.yaml"
    assert flow.warnings == [
        f"{path}:6: node 'ask': enable_cache is ignored: llm and embed calls are cached by their endpoint's "
        "response cache",
        f"{path}:10: node 'ask': input 'q' holds ${{...}} inside other text; it is passed literally, not substituted",
        f"{path}:11: node 'ask': input 'tempreature' is not used by template <inline template of node 'ask'> and "
        "is not a known request parameter",
        f"{path}:15: node 'shout': ${{ask.output.text}} reads a field of node 'ask', whose output is a string",
    ]
    assert flow.node("ask").ignored == {"enable_cache": True}
    assert flow.node("ask").variables == {"q": "Hello ${inputs.q}", "tempreature": 0.5}


def test_a_checked_flow_serializes_to_json(flow_dir):
    folder = flow_dir("""
        nodes:
        - name: greet
          type: prompt
          source: {type: inline, content: "Hi {{ name }}"}
          inputs: {name: Ada}
        """)
    assert '"kind":"prompt"' in load_flow(folder).model_dump_json()


def test_an_endpoint_chosen_by_reference_is_left_to_run_time(flow_dir):
    folder = flow_dir("""
        inputs:
          tier: {type: string, default: small}
        nodes:
        - name: answer
          type: llm
          source: {type: inline, content: "user:\\nhi"}
          inputs: {endpoint: "${inputs.tier}"}
        """)
    asked = []
    flow = load_flow(folder, endpoint_exists=lambda name: asked.append(name) or False)
    assert asked == [] and flow.node("answer").dependencies == frozenset()
    assert str(flow.node("answer").endpoint) == "${inputs.tier}"

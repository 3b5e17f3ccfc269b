"""Tenants' templates render in the sandbox: values in, nothing of Python out."""

from __future__ import annotations

import pytest
from spine_agent import TaskFailed
from spine_agent.llm import TemplateError, TemplateRefused, render
from spine_agent.llm.templates import MAX_RANGE_PER_RENDER

VARS = {
    "input": {"text": "Kafka is a log.", "items": [1, 2, 3]},
    "dependencies": {"plan": {"echo": {"topic": "logs"}}},
    "conversation": [{"role": "user", "content": {"name": "Ana"}}],
    "config": {"sentences": 2},
}


def test_renders_the_task_values() -> None:
    source = (
        "Summarise in {{ config.sentences }} sentences: {{ input.text }} "
        "(topic {{ dependencies.plan.echo.topic }}, for {{ conversation[0].content.name }}; "
        "{{ input['items'] | sum }}{% for i in range(2) %}.{% endfor %})"
    )
    assert render(source, VARS) == (
        "Summarise in 2 sentences: Kafka is a log. (topic logs, for Ana; 6..)"
    )


@pytest.mark.parametrize(
    "source",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ cycler.__init__.__globals__ }}",
        "{{ joiner.__init__.__globals__.os }}",
        "{{ lipsum.__globals__['os'].popen('id').read() }}",
        "{{ input.__class__ }}",
        "{{ (1).__class__.__base__ }}",
        "{{ input['items'].append(4) }}",
        "{{ input.update({'x': 1}) }}",
        "{{ range.__closure__ }}",
        "{{ 'x' * 10000000 }}",
        "{{ 10 ** 100000 }}",
        "{% for i in range(100001) %}{% endfor %}",
        f"{{% for i in range({MAX_RANGE_PER_RENDER}) %}}{{% for j in range(2) %}}"
        "{% endfor %}{% endfor %}",
    ],
)
def test_reaching_for_internals_or_unbounded_work_is_refused(source: str) -> None:
    with pytest.raises(TemplateRefused) as caught:
        render(source, VARS, name="system")
    assert caught.value.message.startswith("template 'system' refused by the sandbox")
    assert isinstance(caught.value, TaskFailed)  # a clear error result, no traceback


def test_an_undefined_variable_is_named() -> None:
    with pytest.raises(TemplateError) as caught:
        render("Hello {{ input.nmae }} and {{ missing }}", VARS)
    assert "nmae" in caught.value.message and "template 'prompt'" in caught.value.message


def test_a_syntax_error_names_the_line() -> None:
    with pytest.raises(TemplateError) as caught:
        render("ok\n{% for %}", VARS)
    assert "line 2" in caught.value.message


def test_output_is_bounded() -> None:
    with pytest.raises(TemplateError) as caught:
        render("{% for i in range(1000) %}{{ input.text }}{% endfor %}", VARS, max_chars=1000)
    assert "more than 1000 characters" in caught.value.message
    assert len(render("{{ input.text }}", VARS, max_chars=1000)) == 15


def test_the_shipped_llm_flow_renders() -> None:
    from pathlib import Path

    from spine_flows import load_flow_file

    flow = load_flow_file(Path(__file__).resolve().parents[2] / "flows" / "llm_summary.yaml")
    [node] = [n for n in flow.nodes if n.agent_id == "llm"]
    config = node.config.model_dump(mode="json", exclude_none=True)  # as the task carries it
    variables = {
        "input": {"text": "Kafka keeps an ordered log."},
        "dependencies": {},
        "conversation": [],
        "config": {k: v for k, v in config.items() if k not in ("system", "prompt")},
    }
    assert render(config["system"], variables).startswith(
        "You summarise text for a busy reader in at most 2 sentences."
    )
    assert render(config["prompt"], variables).endswith("\n\nKafka keeps an ordered log.")

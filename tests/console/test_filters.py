"""Template filters turn values into plain text; escaping stays the template's job."""

from __future__ import annotations

from jinja2 import Environment
from spine_console import filters


def test_when_duration_and_status_classes() -> None:
    assert filters.when("2026-12-07T19:45:05.123+00:00") == "2026-12-07 19:45:05 UTC"
    assert filters.when("not a time") == "not a time"
    assert filters.when(None) == ""
    assert filters.duration(12.4) == "12 ms"
    assert filters.duration(1500) == "1.50 s"
    assert filters.duration(None) == ""
    assert filters.status_class("completed") == "st-ok"
    assert filters.status_class("waiting_input") == "st-wait"
    assert filters.status_class("something new") == "st-idle"


def test_pretty_json_of_untrusted_text_is_escaped_by_the_template() -> None:
    env = Environment(autoescape=True)
    filters.install(env)
    html = env.from_string("<pre>{{ v|pretty_json }}</pre>").render(
        v={"text": "<script>alert(1)</script>"}
    )
    assert "<script>" not in html and "&lt;script&gt;" in html

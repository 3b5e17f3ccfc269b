"""``model_agent``: an AI Spine agent whose handler is a model call.

::

    from spine_agent.llm import LLM, model_agent

    agent = model_agent(
        agent_id="summariser",
        llm=lambda: LLM.openai("gpt-4o-mini"),      # built at start, closed at stop
        system="You summarise in {{ config.sentences | default(2) }} sentences.",
        prompt="{{ input.text }}",
    )
    agent.run()

Per task the handler renders the node's ``config.system`` and ``config.prompt`` (else the
defaults given here) over ``input``, ``dependencies``, ``conversation`` and ``config``
(without ``system``/``prompt``), calls the model and returns
``{"text", "usage": {"model", "input_tokens", "output_tokens"}[, "data"]}`` — usage of
every round. A priced flow's task carries a budget: each round's ``max_tokens`` is bounded
by what it still pays for, and a budget that pays for no output token fails the node before
any request; a failure after paid rounds still reports their ``usage`` in its output.

The endpoint and the key are the agent's own (its environment or its code). A node config
travels inside tasks and is written by tenants, so one that names an endpoint, a key, a
provider or a model is refused (:data:`REFUSED_CONFIG`): it would otherwise point a paid
key at an address of the tenant's choosing, or be silently ignored.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from pydantic import BaseModel
from spine_contracts import AgentInfo

from ..agent import Agent
from ..task import Task
from .client import LLM
from .errors import ConfigRefused, TemplateError
from .templates import render
from .tools import Tool

#: Node config keys that would choose where a request goes or with which credentials.
REFUSED_CONFIG = frozenset(
    {
        "api_base",
        "api_key",
        "api_type",
        "api_version",
        "auth_token",
        "azure_endpoint",
        "base_url",
        "default_headers",
        "extra_body",
        "extra_headers",
        "extra_query",
        "headers",
        "http_client",
        "model",
        "organization",
        "project",
        "provider",
        "proxies",
        "proxy",
        "websocket_base_url",
    }
)
#: What templates see of the node config: everything but the templates themselves.
TEMPLATE_KEYS = ("system", "prompt")

#: ``(task, text delta)``: where streamed tokens go; ``None`` streams to nobody.
TaskTokenCallback = Callable[[Task, str], Awaitable[None]]


async def stream_progress(task: Task, delta: str) -> None:
    """The default: each text delta goes to :meth:`Task.progress`, which coalesces them
    (about 10 messages a second) so the execution's streams show the answer as it comes."""
    await task.progress(text=delta)


def check_config(config: dict[str, Any]) -> None:
    """Refuse a node config that names an endpoint or credentials (any spelling)."""
    named = sorted(k for k in config if str(k).strip().lower().replace("-", "_") in REFUSED_CONFIG)
    if named:
        raise ConfigRefused(
            f"node config may not set {', '.join(named)}: the model's endpoint, key, "
            "provider and model are the agent's own (its environment), never a task's"
        )


def _positive_int(config: dict[str, Any], name: str) -> int | None:
    value = config.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigRefused(f"config {name} must be a positive integer, got {value!r}")
    return value


def _temperature(config: dict[str, Any]) -> float | None:
    value = config.get("temperature")
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not 0 <= value <= 2
    ):
        raise ConfigRefused(f"config temperature must be a number from 0 to 2, got {value!r}")
    return float(value)


class ModelHandler:
    """What a model agent does with one task (separate from :class:`Agent` for tests)."""

    def __init__(
        self,
        llm: LLM | Callable[[], LLM],
        *,
        system: str | None = None,
        prompt: str | None = None,
        tools: Sequence[Tool | Callable[..., Any]] = (),
        output: type[BaseModel] | None = None,
        on_token: TaskTokenCallback | None = stream_progress,
    ) -> None:
        self._llm = llm if isinstance(llm, LLM) else None
        self._factory = None if isinstance(llm, LLM) else llm
        self.system = system
        self.prompt = prompt
        self.tools = tuple(tools)
        self.output = output
        self.on_token = on_token

    @property
    def llm(self) -> LLM:
        if self._llm is None:
            assert self._factory is not None
            self._llm = self._factory()
        return self._llm

    async def aclose(self) -> None:
        """Close a client this handler built (one handed in belongs to the caller)."""
        if self._factory is not None and self._llm is not None:
            await self._llm.aclose()
            self._llm = None

    async def __call__(self, task: Task) -> dict[str, Any]:
        config = task.config
        check_config(config)
        variables = {
            "input": task.input,
            "dependencies": task.dependencies,
            "conversation": list(task.conversation),
            "config": {k: v for k, v in config.items() if k not in TEMPLATE_KEYS},
        }
        system_src = config.get("system", self.system)
        prompt_src = config.get("prompt", self.prompt)
        if not isinstance(prompt_src, str) or not prompt_src.strip():
            raise TemplateError("no prompt: set the node's config.prompt (a template)")
        if system_src is not None and not isinstance(system_src, str):
            raise TemplateError("config.system must be a string (a template)")
        system = render(system_src, variables, name="system") if system_src else None
        prompt = render(prompt_src, variables, name="prompt")
        llm = self.llm
        cap = _positive_int(config, "max_tokens")
        on_token = self.on_token

        async def forward(delta: str) -> None:
            assert on_token is not None
            await on_token(task, delta)

        done = await llm.complete(
            prompt,
            system=system,
            tools=self.tools,
            output=self.output,
            max_tokens=min(cap, llm.max_tokens) if cap else None,
            temperature=_temperature(config),
            on_token=forward if on_token is not None else None,
            budget=task.budget,
        )
        return done.as_output()


def model_agent(
    *,
    agent_id: str,
    llm: LLM | Callable[[], LLM],
    system: str | None = None,
    prompt: str | None = None,
    tools: Sequence[Tool | Callable[..., Any]] = (),
    output: type[BaseModel] | None = None,
    name: str | None = None,
    description: str | None = None,
    capabilities: Sequence[str] = ("llm",),
    concurrency: int = 16,
    on_token: TaskTokenCallback | None = stream_progress,
    stream: bool = True,
) -> Agent:
    """An :class:`Agent` answering each task with the model (see the module docstring).

    Streamed text goes to ``on_token``: by default to ``task.progress`` (live on the
    execution's streams, never stored); ``stream=False`` (or ``on_token=None``) turns it off.

    ``llm`` is an :class:`LLM` or, better, a function that builds one: it then runs at
    start-up and its client is closed at shutdown, so nothing connects at import time.
    ``config.max_tokens`` may lower the agent's ``max_tokens``, never raise it.
    """
    handler = ModelHandler(
        llm,
        system=system,
        prompt=prompt,
        tools=tools,
        output=output,
        on_token=on_token if stream else None,
    )
    agent = Agent(
        AgentInfo(
            agent_id=agent_id,
            name=name or agent_id,
            description=description or "Answers with a language model.",
            capabilities=tuple(capabilities),
            agent_type="processor",
        ),
        concurrency=concurrency,
    )

    @agent.on_startup
    async def open_client() -> None:
        handler.llm  # noqa: B018 - builds the client before the first task

    @agent.on_shutdown
    async def close_client() -> None:
        await handler.aclose()

    @agent.handler
    async def handle(task: Task) -> dict[str, Any]:
        return await handler(task)

    return agent

"""What the tool loop needs of a provider: one streamed reply to a conversation.

Retries: both official SDKs retry a request on connection errors, 408, 409, 429 and every
5xx with exponential backoff and jitter (0.5 s doubling to 8 s), honouring the server's
``Retry-After``/``retry-after-ms`` up to two minutes; ``max_retries`` (default 2) is theirs,
passed through, so the kit adds no second retry loop around them. A stream that fails
half-way is not retried (its tokens reached the callback already): it fails the task, and
retrying the task is the orchestrator's (``retries`` in the node config).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from .turns import OutputSpec, Reply, ToolSpec, Turn

#: Receives each text delta as it streams; later the SDK's ``task.progress`` plugs in here.
TokenCallback = Callable[[str], Awaitable[None]]

DEFAULT_MAX_RETRIES = 2
#: Seconds for one HTTP request (connect 5 s); a stream counts as one request.
DEFAULT_TIMEOUT_S = 120.0


class Provider(Protocol):
    #: ``openai`` or ``anthropic``: how errors and usage name it
    name: str

    async def reply(
        self,
        *,
        model: str,
        system: str | None,
        turns: Sequence[Turn],
        tools: Sequence[ToolSpec],
        output: OutputSpec | None,
        max_tokens: int,
        temperature: float | None,
        on_token: TokenCallback | None,
    ) -> Reply: ...

    async def aclose(self) -> None: ...

"""Sends the flows of ``FLOWS_DIR`` to the flow catalogue's writer and keeps watching the
directory.

A file becomes a ``DefineFlow`` command (owner ``system``, source ``file``, mode
``replace``) on ``spine.flows.commands``; a deleted file a ``DeleteFlow`` naming its path.
The writer (:mod:`.flow_writer`) decides: a file may take only a free or system flow id,
and a deletion removes only the flow that file defined. The loader follows ``spine.flows``
from the beginning to know what is current, so it sends nothing that would change nothing.

A file that fails validation is logged with the file, node and field and sends nothing,
so the last good version stays live. At start a file is sent only if it is newer than the
topic's latest record for its flow (or the flow is unknown): an admin's API write made
after the file's last edit stays; afterwards every change to a file is sent. A flow id a
user owns is not sent at all, and logged as an error (``flow_file_id_taken``): a file
cannot take it, and the writer would refuse it anyway.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Final

from spine_contracts import DefineFlow, DeleteFlow, FlowDefined, FlowDeleted, Message
from spine_contracts.access import SYSTEM
from spine_flows import FlowValidationError, flow_version, load_flow_file
from spine_servicekit.logging import get_logger
from watchfiles import Change, awatch

log = get_logger(__name__)

Publish = Callable[[Message, str], Awaitable[None]]
SUFFIXES = (".yaml", ".yml")
#: the actor of the files' commands: the service decides them on its own (DESIGN §12)
ACTOR: Final = "orchestrator"


class FlowLoader:
    def __init__(self, directory: str | os.PathLike[str], publish: Publish) -> None:
        """``publish(command, flow_id)`` sends a command to ``spine.flows.commands``."""
        self.directory = Path(directory)
        self._publish = publish
        self.latest: dict[str, tuple[Message, int]] = {}  # flow_id -> (last record, ts ms)
        self._by_path: dict[str, str] = {}  # file path -> flow_id it defined
        self._sent: dict[str, str] = {}  # flow_id -> path of the last define sent for it

    def observe(self, message: Message, record: Any) -> None:
        """Fold one record of ``spine.flows`` (fed by a follower from the beginning)."""
        if isinstance(message, (FlowDefined, FlowDeleted)):
            self.latest[message.data.flow_id] = (message, record.timestamp)

    def _current(self, flow_id: str) -> FlowDefined | None:
        entry = self.latest.get(flow_id)
        if entry and isinstance(entry[0], FlowDefined):
            return entry[0]
        return None

    async def scan(self) -> int:
        """Send every file newer than what the topic holds; return how many."""
        sent = 0
        if not self.directory.is_dir():
            log.warning("flows_dir_missing", directory=str(self.directory))
            return 0
        for path in sorted(self.directory.iterdir()):
            if path.suffix in SUFFIXES:
                mtime_ms = int(path.stat().st_mtime * 1000)
                sent += await self.load(path, only_if_newer_than_ms=mtime_ms)
        return sent

    async def load(self, path: Path, only_if_newer_than_ms: int | None = None) -> int:
        """Send ``path``'s flow to the writer unless that would change nothing; 1 if sent."""
        try:
            definition = await asyncio.to_thread(load_flow_file, path)
        except FlowValidationError as exc:
            log.error("flow_invalid", path=str(path), problems=str(exc))
            return 0
        flow_id = definition.flow_id
        self._by_path[str(path)] = flow_id
        version = flow_version(definition)
        current = self._current(flow_id)
        if only_if_newer_than_ms is not None and flow_id in self.latest:
            if self.latest[flow_id][1] >= only_if_newer_than_ms:
                return 0  # the topic holds a later write (an admin's API update, or this file)
        if current is not None and current.data.owner != SYSTEM:
            log.error(
                "flow_file_id_taken",
                flow_id=flow_id,
                path=str(path),
                owner=current.data.owner,
                reason="a flow file may take only a free or system flow id",
            )
            return 0
        if current is not None and (
            current.data.flow_version,
            current.data.source,
            current.data.source_path,
        ) == (version, "file", str(path)):
            return 0
        command = DefineFlow.build(
            actor=ACTOR,
            flow_id=flow_id,
            flow_version=version,
            definition=definition,
            owner=SYSTEM,
            source="file",
            source_path=str(path),
            mode="replace",
        )
        await self._publish(command, flow_id)
        self._sent[flow_id] = str(path)
        log.info("flow_file_sent", flow_id=flow_id, flow_version=version, path=str(path))
        return 1

    async def removed(self, path: Path) -> None:
        flow_id = self._by_path.pop(str(path), None)
        if flow_id is None:
            return
        current = self._current(flow_id)
        defined_here = (
            current is not None
            and current.data.source == "file"
            and current.data.source_path == str(path)
        )
        # a define sent moments ago may not be on spine.flows yet; the writer checks the path
        if not defined_here and self._sent.get(flow_id) != str(path):
            return
        command = DeleteFlow.build(
            actor=ACTOR, flow_id=flow_id, owner=SYSTEM, source="file", source_path=str(path)
        )
        await self._publish(command, flow_id)
        self._sent.pop(flow_id, None)
        log.info("flow_file_removed", flow_id=flow_id, path=str(path))

    async def watch(self, stop: asyncio.Event) -> None:
        """React to file changes until ``stop`` is set."""
        if not self.directory.is_dir():
            return
        async for changes in awatch(self.directory, stop_event=stop, debounce=200, step=50):
            for change, name in sorted(changes, key=lambda c: c[1]):
                path = Path(name)
                if path.suffix not in SUFFIXES:
                    continue
                if change == Change.deleted or not await asyncio.to_thread(path.exists):
                    await self.removed(path)
                else:
                    await self.load(path)

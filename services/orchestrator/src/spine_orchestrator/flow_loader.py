"""Publishes the flows of ``FLOWS_DIR`` on ``spine.flows`` and keeps watching the directory.

A file that fails validation is logged with the file, node and field and publishes
nothing, so the last good version stays live. "Latest write wins" between files and the
API: at start a file is published only if it is newer than the topic's latest record for
its flow (or the flow is unknown); afterwards every change to a file is a new write.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from spine_contracts import FlowDefined, FlowDeleted, Message
from spine_flows import FlowValidationError, flow_version, load_flow_file
from spine_servicekit.logging import get_logger
from watchfiles import Change, awatch

log = get_logger(__name__)

Publish = Callable[[Message, str], Awaitable[None]]
SUFFIXES = (".yaml", ".yml")


class FlowLoader:
    def __init__(self, directory: str | os.PathLike[str], publish: Publish) -> None:
        self.directory = Path(directory)
        self._publish = publish
        self.latest: dict[str, tuple[Message, int]] = {}  # flow_id -> (last record, ts ms)
        self._by_path: dict[str, str] = {}  # file path -> flow_id it defined

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
        """Publish every file newer than what the topic holds; return how many."""
        published = 0
        if not self.directory.is_dir():
            log.warning("flows_dir_missing", directory=str(self.directory))
            return 0
        for path in sorted(self.directory.iterdir()):
            if path.suffix in SUFFIXES:
                mtime_ms = int(path.stat().st_mtime * 1000)
                published += await self.load(path, only_if_newer_than_ms=mtime_ms)
        return published

    async def load(self, path: Path, only_if_newer_than_ms: int | None = None) -> int:
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
                return 0  # the topic holds a later write (an API update, or this file)
        if current is not None and current.data.flow_version == version:
            return 0
        replaced = current.data.source if current is not None else None
        message = FlowDefined.build(
            flow_id=flow_id,
            flow_version=version,
            definition=definition,
            source="file",
            source_path=str(path),
            replaced_source=replaced,
        )
        await self._publish(message, flow_id)
        self.latest[flow_id] = (message, int(message.occurred_at.timestamp() * 1000))
        log.info("flow_published", flow_id=flow_id, flow_version=version, path=str(path))
        return 1

    async def removed(self, path: Path) -> None:
        flow_id = self._by_path.pop(str(path), None)
        current = self._current(flow_id) if flow_id else None
        if flow_id and current is not None and current.data.source_path == str(path):
            message = FlowDeleted.build(flow_id=flow_id, source="file")
            await self._publish(message, flow_id)
            self.latest[flow_id] = (message, int(message.occurred_at.timestamp() * 1000))
            log.info("flow_deleted", flow_id=flow_id, path=str(path))

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

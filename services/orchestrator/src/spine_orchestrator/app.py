"""Wiring of the orchestrator: the agent catalogue follower, timers, the execution loop and
its projection, and the flow catalogue: its single writer (a loop of its own over
``spine.flows.commands``) and the flow-file loader that sends it the files' commands."""

from __future__ import annotations

import asyncio
from typing import Any

from aiokafka import ConsumerRecord
from spine_contracts import Message, to_bytes, topics
from spine_flows import evaluate_condition
from spine_servicekit.follower import TopicFollower
from spine_servicekit.kafka import dead_letter, dead_letter_outgoing, headers_for
from spine_servicekit.logging import get_logger
from spine_servicekit.projector import BATCH_INTERVAL_S, Projector
from spine_servicekit.runtime import ServiceContext
from spine_servicekit.txloop import TransactionalLoop

from .catalog import AgentCatalog
from .flow_loader import FlowLoader
from .flow_writer import FlowWriter, make_flow_writer_loop
from .handlers import OrchestratorHandler
from .projection import PROJECTION
from .settings import OrchestratorSettings
from .timers import TimerScheduler

log = get_logger(__name__)


async def main(ctx: ServiceContext) -> None:
    settings = ctx.settings
    assert isinstance(settings, OrchestratorSettings)
    cfg = ctx.kafka
    producer = ctx.producer

    async def publish(topic: str, key: str, message: Message) -> None:
        await producer.send_and_wait(
            topic, to_bytes(message), key=key.encode(), headers=headers_for(message)
        )

    catalog = AgentCatalog()
    handler: OrchestratorHandler | None = None

    async def on_registry_event(message: Message, _record: ConsumerRecord[Any, Any]) -> None:
        agent_id = catalog.apply(message)
        if agent_id is not None and handler is not None:
            await handler.agent_changed(agent_id)  # wakes the nodes waiting for it

    registry = TopicFollower(
        cfg.background(),
        cfg.topic(topics.REGISTRY_EVENTS),
        on_registry_event,
        name="registry-follower",
    )
    await registry.start()
    await registry.wait_caught_up()
    log.info("agent_catalog_loaded", agents=len(catalog))

    commands_topic = cfg.topic(topics.EXECUTION_COMMANDS)

    async def fire(command: Message, execution_id: str) -> None:
        await publish(commands_topic, execution_id, command)

    timers = TimerScheduler(fire)

    async def reject_snapshot(record: ConsumerRecord[Any, Any], error: Exception) -> None:
        # Deterministic id: every state rebuild that meets the record sends the same letter.
        letter = dead_letter_outgoing(cfg, dead_letter(record, error, "orchestrator-recovery"))
        await publish(letter.topic, letter.key, letter.message)

    handler = OrchestratorHandler(
        cfg,
        catalog=catalog,
        timers=timers,
        evaluate_condition=evaluate_condition,
        default_node_timeout_s=settings.default_node_timeout_s,
        default_input_timeout_s=settings.default_input_timeout_s,
        default_agent_wait_s=settings.default_agent_wait_s,
        dead_letter=reject_snapshot,
        partitions=len(await producer.partitions_for(commands_topic)),
        send_command=fire,
    )
    loop = TransactionalLoop(
        cfg,
        group_id=f"{cfg.prefix}orchestrator",
        input_topics=[commands_topic, cfg.topic(topics.AGENT_RESULTS)],
        handler=handler,
        transactional_id_prefix=f"{cfg.prefix}orchestrator",
        consumer_name="orchestrator",
        max_batch=settings.max_batch,
    )
    projector = Projector(  # nothing on a request's path waits on it: held by the broker
        cfg.batched(),
        settings.database_url,
        PROJECTION,
        schema=settings.db_schema,
        min_interval_s=BATCH_INTERVAL_S,
    )

    flow_writer_loop = make_flow_writer_loop(cfg, FlowWriter(cfg), max_batch=settings.max_batch)
    flow_commands = cfg.topic(topics.FLOW_COMMANDS)
    loader = FlowLoader(settings.flows_dir, lambda m, key: publish(flow_commands, key, m))
    flows = TopicFollower(
        cfg.background(), cfg.topic(topics.FLOWS), loader.observe, name="flows-follower"
    )
    await flows.start()
    await flows.wait_caught_up()
    sent = await loader.scan()
    log.info("flows_loaded", directory=settings.flows_dir, sent=sent)

    tasks: list[asyncio.Task[None]] = [asyncio.create_task(timers.run(), name="timers")]
    if settings.watch_flows:
        tasks.append(asyncio.create_task(loader.watch(ctx.stopping), name="flow-watch"))
    ctx.details["live_executions"] = 0
    await projector.start()
    try:
        async with loop, flow_writer_loop:
            while not ctx.stopping.is_set():
                ctx.details["live_executions"] = handler.live_executions
                ctx.details["timers"] = timers.pending
                try:
                    await asyncio.wait_for(ctx.stopping.wait(), 1.0)
                except TimeoutError:
                    pass
                for task in tasks:
                    if task.done() and task.exception() is not None:
                        raise task.exception()  # type: ignore[misc]
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await projector.stop()
        await flows.stop()
        await registry.stop()

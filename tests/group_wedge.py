"""Puts a consumer group into the broker's departed-leader wedge with the bare group protocol
(see service/kafka/group_recovery.py and tests/integration/test_group_recovery.py)."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator

from aiokafka.client import AIOKafkaClient, CoordinationType
from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment

from service.kafka.group_recovery import NO_ERROR, RawMember, live_members

REBALANCE_IN_PROGRESS = 27
SESSION_MS = 6000


def broker_is_tansu() -> bool:
    """The fixtures start Tansu unless a cluster or Docker's Apache Kafka is asked for."""
    return not os.environ.get("KAFKA_BOOTSTRAP_SERVERS") and (
        os.environ.get("MODERATION_TEST_BROKER") != "docker"
    )


@contextlib.asynccontextmanager
async def coordinator(bootstrap: str, group: str) -> AsyncIterator[tuple[AIOKafkaClient, int]]:
    client = AIOKafkaClient(bootstrap_servers=bootstrap)
    await client.bootstrap()
    try:
        yield client, await client.coordinator_lookup(CoordinationType.GROUP, group)
    finally:
        await client.close()


def assignment(topic: str, partitions: list[int]) -> bytes:
    return bytes(ConsumerProtocolMemberAssignment(0, [(topic, partitions)], b"").encode())


async def settle(member: RawMember, topic: str, attempts: int) -> bool:
    """Join and sync as a lone survivor would; True once a SyncGroup succeeds."""
    for _ in range(attempts):
        await member.join()
        mine = member.leader_id == member.member_id
        plan = {m: assignment(topic, [0]) for m in member.members} if mine else None
        if await member.sync(plan) == NO_ERROR:
            return True
    return False


async def leave_during_rebalance(
    client: AIOKafkaClient, node: int, group: str, topic: str
) -> tuple[str, RawMember]:
    """A and B settle (A leads); C asks to join; A and B leave before C's join is answered.
    Returns the departed leader's id and the survivor C, which has just joined."""
    a = RawMember(client, node, group, [topic], session_timeout_ms=SESSION_MS)
    b = RawMember(client, node, group, [topic], session_timeout_ms=SESSION_MS)
    joins = asyncio.gather(a.join(), b.join())
    await joins
    leader, follower = (a, b) if a.leader_id == a.member_id else (b, a)
    plan = {m: assignment(topic, [0]) for m in leader.members}
    codes = await asyncio.gather(leader.sync(plan), follower.sync())
    assert list(codes) == [NO_ERROR, NO_ERROR], codes
    c = RawMember(client, node, group, [topic], session_timeout_ms=SESSION_MS)
    joining = asyncio.create_task(c.join())
    for _ in range(50):  # until the coordinator has C's request pending
        if len(await live_members(client, node, group)) >= 3 or joining.done():
            break
        await asyncio.sleep(0.05)
    assert await leader.leave() == NO_ERROR
    assert await follower.leave() == NO_ERROR
    await asyncio.wait_for(joining, SESSION_MS / 1000 * 3)
    return leader.member_id, c


async def wedge(bootstrap: str, group: str, topic: str) -> str:
    """Leave ``group`` wedged and empty; returns the departed leader's member id."""
    async with coordinator(bootstrap, group) as (client, node):
        departed, survivor = await leave_during_rebalance(client, node, group, topic)
        await survivor.leave()
    return departed

"""Frees a consumer group that the broker has wedged on a leader that already left.

Tansu 0.6 (the embedded broker) keeps a member that sent LeaveGroup while a rebalance was
pending as the leader of every later generation. Each JoinGroup then names that departed member
as leader, its SyncGroup never comes, and every follower's SyncGroup fails with
REBALANCE_IN_PROGRESS after the rebalance timeout: the group never settles, whatever its live
members do, and it stays so after they all leave (docs/operations.md, "A group that does not
settle", has the plain-client reproduction).

The one client-side action found that ends it: sync once in the departed leader's name, handing
every member an empty assignment, then leave in that settled generation. The broker handles a
leave from a settled group correctly and elects a live leader at the next join.

It only acts when the named leader is provably gone: a probe member joins to learn the leader's
id, and the group's member list (DescribeGroups) must not contain it. A broker without the bug
forgets departed members, so it answers the sync in their name with UNKNOWN_MEMBER_ID and nothing
changes. Every request is bounded by ``timeout_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections.abc import Sequence
from typing import Any

from aiokafka.client import AIOKafkaClient, ConnectionGroup, CoordinationType
from aiokafka.coordinator.protocol import (
    ConsumerProtocolMemberAssignment,
    ConsumerProtocolMemberMetadata,
)
from aiokafka.errors import KafkaError
from aiokafka.protocol.admin import DescribeGroupsRequest
from aiokafka.protocol.group import JoinGroupRequest, LeaveGroupRequest, SyncGroupRequest

log = logging.getLogger(__name__)

NO_ERROR = 0
MEMBER_ID_REQUIRED = 79  # KIP-394: join again with the member id the broker just gave
# The assignors aiokafka consumers offer: the probe must share one or it would be refused.
PROTOCOLS = ("roundrobin", "range")
LEAVE_TIMEOUT_S = 2.0


class Outcome(enum.StrEnum):
    """What one recovery attempt found (the ``outcome`` label of its metric)."""

    RELEASED = "released"  # the departed leader's generation was synced and left
    LEADER_ALIVE = "leader_alive"  # the group's leader is a live member: nothing to free
    REFUSED = "refused"  # the broker refused to act for the departed leader (no bug there)
    FAILED = "failed"  # the coordinator could not be reached or answered an error


class GroupProtocolError(Exception):
    """A group request answered with an error code."""

    def __init__(self, request: str, code: int) -> None:
        super().__init__(f"{request} answered error code {code}")
        self.code = code


class RawMember:
    """One group member spoken for with the bare protocol: join, sync, leave.

    Used to act for a member the broker still believes in, which no consumer client allows."""

    def __init__(
        self,
        client: AIOKafkaClient,
        node_id: int,
        group_id: str,
        topics: Sequence[str],
        *,
        member_id: str = "",
        session_timeout_ms: int = 10_000,
    ) -> None:
        self._client = client
        self._node_id = node_id
        self.group_id = group_id
        self.member_id = member_id
        self.generation = -1
        self.leader_id = ""
        self.members: list[str] = []
        self._session_timeout_ms = session_timeout_ms
        metadata = ConsumerProtocolMemberMetadata(0, sorted(topics), b"").encode()
        self._protocols = [(name, metadata) for name in PROTOCOLS]

    async def _send(self, request: Any) -> Any:
        return await self._client.send(self._node_id, request, group=ConnectionGroup.COORDINATION)

    async def join(self) -> None:
        """Join (or rejoin under ``member_id``); raises GroupProtocolError on a refusal."""
        for _ in range(2):  # at most one MEMBER_ID_REQUIRED round trip
            response = await self._send(
                JoinGroupRequest(
                    self.group_id,
                    self._session_timeout_ms,
                    self._session_timeout_ms,
                    self.member_id,
                    None,  # no group instance id: a dynamic member
                    "consumer",
                    self._protocols,
                )
            )
            self.member_id = response.member_id or self.member_id
            if response.error_code == MEMBER_ID_REQUIRED:
                continue
            if response.error_code != NO_ERROR:
                raise GroupProtocolError("JoinGroup", response.error_code)
            self.generation = response.generation_id
            self.leader_id = response.leader_id
            self.members = [member[0] for member in response.members]
            return
        raise GroupProtocolError("JoinGroup", MEMBER_ID_REQUIRED)

    async def sync(self, assignments: dict[str, bytes] | None = None) -> int:
        """Sync this generation; a leader passes the assignments. Returns the error code."""
        response = await self._send(
            SyncGroupRequest(
                self.group_id,
                self.generation,
                self.member_id,
                None,
                list((assignments or {}).items()),
            )
        )
        return int(response.error_code)

    async def leave(self) -> int:
        response = await self._send(LeaveGroupRequest(self.group_id, self.member_id))
        return int(response.error_code)


def empty_assignment() -> bytes:
    return bytes(ConsumerProtocolMemberAssignment(0, [], b"").encode())


async def live_members(client: AIOKafkaClient, node_id: int, group_id: str) -> set[str]:
    """The member ids the coordinator lists for the group (DescribeGroups)."""
    response = await client.send(
        node_id, DescribeGroupsRequest([group_id]), group=ConnectionGroup.COORDINATION
    )
    for group in response.groups:
        if group[1] == group_id:
            if group[0] != NO_ERROR:
                raise GroupProtocolError("DescribeGroups", group[0])
            return {member[0] for member in group[5]}
    return set()


async def release_departed_leader(
    options: dict[str, object],
    group_id: str,
    topics: Sequence[str],
    *,
    timeout_s: float,
    session_timeout_ms: int = 10_000,
) -> Outcome:
    """One bounded attempt to free ``group_id`` from a departed leader (see the module doc)."""
    client = AIOKafkaClient(**options, client_id="moderation-group-recovery")
    try:
        async with asyncio.timeout(timeout_s):
            return await _release(client, group_id, topics, session_timeout_ms)
    except (TimeoutError, KafkaError, GroupProtocolError, OSError) as exc:
        log.warning("group recovery for %s failed: %r", group_id, exc)
        return Outcome.FAILED
    finally:
        await client.close()


async def _release(
    client: AIOKafkaClient, group_id: str, topics: Sequence[str], session_timeout_ms: int
) -> Outcome:
    await client.bootstrap()
    node_id = await client.coordinator_lookup(CoordinationType.GROUP, group_id)
    probe = RawMember(client, node_id, group_id, topics, session_timeout_ms=session_timeout_ms)
    await probe.join()
    try:
        leader = probe.leader_id
        alive = await live_members(client, node_id, group_id)
        if not leader or leader == probe.member_id or leader in alive:
            log.info(
                "group %s: its leader %r is a live member (%s); nothing to free",
                group_id,
                leader,
                sorted(alive),
            )
            return Outcome.LEADER_ALIVE
        ghost = RawMember(
            client,
            node_id,
            group_id,
            topics,
            member_id=leader,
            session_timeout_ms=session_timeout_ms,
        )
        try:
            await ghost.join()
        except GroupProtocolError as exc:
            log.info("group %s: the broker refused to act for %s (%s)", group_id, leader, exc)
            return Outcome.REFUSED
        if ghost.leader_id != leader:
            # The broker elected someone else meanwhile: leave the generation we just joined.
            await ghost.leave()
            return Outcome.LEADER_ALIVE
        code = await ghost.sync({member: empty_assignment() for member in ghost.members})
        await ghost.leave()
        if code != NO_ERROR:
            log.info("group %s: sync for the departed leader answered %d", group_id, code)
            return Outcome.REFUSED
        log.warning(
            "group %s was wedged on departed leader %s; released it for %d members",
            group_id,
            leader,
            len(ghost.members),
        )
        return Outcome.RELEASED
    finally:
        with contextlib.suppress(KafkaError, GroupProtocolError, OSError, TimeoutError):
            await asyncio.wait_for(probe.leave(), LEAVE_TIMEOUT_S)

"""Load shedding: past ENGRAM_MAX_CONCURRENT_RPCS calls, an OVERLOADED status; probes exempt."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from google.rpc import code_pb2, error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from engram.config.settings import Settings
from engram.rpc.errors import reason_of, unpack_detail
from engram.services.agents import AgentService, AgentView
from engram.services.caller import Caller
from engram.store.database import Database
from engram.v1 import agent_pb2, agent_service_pb2
from support.api import rich_status, running_api


async def test_calls_past_the_limit_are_shed_with_retry_advice(
    settings: Settings, database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running_api(settings.model_copy(update={"max_concurrent_rpcs": 1}), database) as api:
        agent = await api.org_a.agents.CreateAgent(
            agent_service_pb2.CreateAgentRequest(agent=agent_pb2.Agent(display_name="busy"))
        )
        entered = asyncio.Event()
        release = asyncio.Event()
        original_get = AgentService.get

        async def slow_get(self: AgentService, caller: Caller, agent_id: str) -> AgentView:
            entered.set()
            await release.wait()
            return await original_get(self, caller, agent_id)

        monkeypatch.setattr(AgentService, "get", slow_get)
        request = agent_service_pb2.GetAgentRequest(name=agent.name)
        holding = asyncio.ensure_future(api.org_a.agents.GetAgent(request))
        await asyncio.wait_for(entered.wait(), timeout=10)

        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await api.org_a.agents.GetAgent(request)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        status = rich_status(refused.value)
        assert status.code == code_pb2.RESOURCE_EXHAUSTED
        assert reason_of(status) == "OVERLOADED"
        retry = unpack_detail(status, error_details_pb2.RetryInfo)
        assert retry is not None and retry.retry_delay.seconds >= 1

        # Probes are not counted and still answer while the server sheds.
        health = health_pb2_grpc.HealthStub(api.channel)
        answer = await health.Check(health_pb2.HealthCheckRequest(service="engram.v1.AgentService"))
        assert answer.status == health_pb2.HealthCheckResponse.SERVING

        release.set()
        assert (await holding).name == agent.name
        # The slot is free again once the first call finished.
        assert (await api.org_a.agents.GetAgent(request)).name == agent.name


async def test_no_limit_when_zero(settings: Settings, database: Database) -> None:
    async with running_api(settings.model_copy(update={"max_concurrent_rpcs": 0}), database) as api:
        created = await asyncio.gather(
            *(
                api.org_a.agents.CreateAgent(
                    agent_service_pb2.CreateAgentRequest(
                        agent=agent_pb2.Agent(display_name=f"a{index}")
                    )
                )
                for index in range(20)
            )
        )
        assert len({agent.id for agent in created}) == 20

"""The suite's Redis is real: it answers commands and keeps stream entries."""

from __future__ import annotations

import redis.asyncio as redis

from support.redis import RedisServer


async def test_redis_answers(redis_server: RedisServer) -> None:
    client = redis.from_url(redis_server.url)
    try:
        assert await client.ping()
        entry = await client.xadd("engram:test:stream", {"seq": "1"})
        assert (await client.xrange("engram:test:stream", min=entry, max=entry))[0][1] == {
            b"seq": b"1"
        }
        await client.delete("engram:test:stream")
    finally:
        await client.aclose()

"""Sessions on a Redis Cluster (RNNLM_REDIS_CLUSTER=true): spread over the shards, same behaviour.

A real three-master cluster of redis-servers on loopback, built by the test.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError

from app.sessions.store import DEFAULT_NAMESPACE
from app.settings import Settings
from tests.helpers import SESSION_CHAR_TEXT, ClientFactory, call, create, cut, feed_pieces
from tests.redis_server import RedisClusterServers, free_cluster_port


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterServers]:
    with RedisClusterServers(tmp_path_factory.mktemp("cluster")) as servers:
        yield servers


def shard_of(cluster: RedisClusterServers, session_id: str) -> int:
    """Which node holds the session's record."""
    key = DEFAULT_NAMESPACE + session_id
    (index,) = [i for i, keys in enumerate(cluster.keys_per_node(DEFAULT_NAMESPACE + "*")) if key in keys]
    return index


async def test_sessions_spread_over_the_shards_and_behave_as_on_one_server(
    make_client: ClientFactory, cluster: RedisClusterServers
) -> None:
    async with (
        make_client(redis_url=cluster.url, redis_cluster=True, max_text_chars=500) as one,
        make_client(redis_url=cluster.url, redis_cluster=True, max_text_chars=500) as other,
    ):
        # Fed in pieces on a cluster, a text scores as /v1/score scores it whole.
        tokens = await feed_pieces(one, "char", cut(SESSION_CHAR_TEXT, 7))
        whole = (await call(one, "POST", "/v1/score", json={"model": "char", "texts": [SESSION_CHAR_TEXT]}))["results"][
            0
        ]
        assert [t["logprob"] for t in tokens] == pytest.approx([t["logprob"] for t in whole["tokens"]], abs=1e-4)

        ids = [await create(one, model="char", prompt=f"session {i}") for i in range(24)]
        assert all(keys for keys in cluster.keys_per_node(DEFAULT_NAMESPACE + "*")), "a shard holds no session"

        # Any service on the cluster continues any session: a seeded generation on the
        # other service gives the text a fork generates on the first.
        for session_id in ids[:6]:
            fork = (await call(one, "POST", f"/v1/sessions/{session_id}/fork", 201))["id"]
            body = {"max_tokens": 12, "seed": 5}
            there = await call(other, "POST", f"/v1/sessions/{session_id}/generate", json=body)
            here = await call(one, "POST", f"/v1/sessions/{fork}/generate", json=body)
            assert there["text"] == here["text"]
            assert there["session"]["token_count"] == here["session"]["token_count"]

        # Compare-and-set holds on a shard: of two writes at one version, one wins.
        target = f"/v1/sessions/{ids[7]}/feed"
        version = (await call(one, "GET", f"/v1/sessions/{ids[7]}"))["version"]
        answers = await asyncio.gather(
            one.post(target, json={"text": "a", "expected_version": version}),
            other.post(target, json={"text": "b", "expected_version": version}),
        )
        assert sorted(a.status_code for a in answers) == [200, 409]

        await call(other, "DELETE", f"/v1/sessions/{ids[8]}", 204)
        await call(one, "GET", f"/v1/sessions/{ids[8]}", 404)


async def test_a_dead_shard_fails_only_its_sessions_and_they_come_back(
    make_client: ClientFactory, tmp_path: Path
) -> None:
    with RedisClusterServers(tmp_path / "cluster", appendonly=True) as servers:
        async with make_client(redis_url=servers.url, redis_cluster=True) as client:
            ids = [await create(client, model="char", prompt="hello") for _ in range(18)]
            dead = shard_of(servers, ids[0])
            on_dead = {i for i in ids if shard_of(servers, i) == dead}
            servers.nodes[dead].kill()

            for session_id in ids:
                started = time.monotonic()
                response = await client.get(f"/v1/sessions/{session_id}")
                took = time.monotonic() - started
                expected = 503 if session_id in on_dead else 200
                assert response.status_code == expected, response.text
                assert took < 2.0, f"{took:.2f}s to answer {response.status_code}"
                if expected == 503:
                    assert response.json()["error"]["type"] == "unavailable"
            score = await client.post("/v1/score", json={"model": "char", "texts": ["hi"]})
            assert score.status_code == 200  # stateless calls never needed Redis

            servers.nodes[dead].start()  # same port and node id; its AOF brings the records back
            for session_id in on_dead:
                info = None
                for _ in range(100):
                    response = await client.get(f"/v1/sessions/{session_id}")
                    if response.status_code == 200:
                        info = response.json()
                        break
                    await asyncio.sleep(0.1)
                assert info is not None and info["token_count"] == len("hello")


def test_cluster_mode_needs_an_address() -> None:
    with pytest.raises(ValidationError, match="RNNLM_REDIS_CLUSTER=true needs RNNLM_REDIS_URL"):
        Settings(redis_cluster=True, redis_url=None)


async def test_an_unreachable_cluster_answers_503_and_stateless_calls_go_on(make_client: ClientFactory) -> None:
    async with make_client(redis_url=f"redis://127.0.0.1:{free_cluster_port()}/0", redis_cluster=True) as client:
        response = await client.post("/v1/sessions", json={})
        assert response.status_code == 503 and "unavailable" in response.json()["error"]["message"]
        assert (await client.post("/v1/score", json={"texts": ["hi"]})).status_code == 200
        ready = await client.get("/ready")
        assert ready.status_code == 503 and ready.json()["checks"]["redis"] is False

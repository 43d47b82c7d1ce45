"""Gauge removals with several shards: a removal applied in one shard hides an older value held
by another shard (the series' producers write to different shards), and removal records are
forgotten after ``gauge_removal_memory_seconds``. Real apply script, real Redis, real renderer."""

from __future__ import annotations

import time
from typing import Any

import redis
import redis.asyncio as aioredis
from prometheus_client.parser import text_string_to_metric_families

from aggregator.apply import PendingEntry, ShardApplier
from aggregator.engine import Engine
from aggregator.exposition import Exposition
from aggregator.housekeeping import Housekeeper
from aggregator.litellm_config import MetricsConfig
from aggregator.settings import AggregatorSettings
from aggregator.state import Delta, encode_series
from producer.keys import Keys
from producer.wire import decode_entry
from tests.events import entry_fields

GROUP = "aggregators"
GAUGE = "litellm_deployment_state"


class Shards:
    def __init__(self, aclient: aioredis.Redis, client: redis.Redis, namespace: str, n: int) -> None:
        self.keys = Keys(namespace, n)
        self.aclient = aclient
        self.client = client
        self.engine = Engine(MetricsConfig.from_litellm_settings({}))
        mkey = self.engine.metric_key(GAUGE)
        assert mkey is not None
        self.mkey = mkey
        self.seq = 0
        for s in range(n):
            client.xgroup_create(self.keys.stream(s), GROUP, id="0", mkstream=True)

    def series(self, model_id: str) -> str:
        labels = self.engine.label_names(GAUGE)
        return encode_series([model_id if n == "model_id" else "x" for n in labels])

    async def set(self, shard: int, model_id: str, t: float, value: float | None) -> None:
        self.seq += 1
        fields = entry_fields(f"p{shard}", self.seq, [{"kind": "x", "t": t}])
        self.client.xadd(self.keys.stream(shard), fields)  # type: ignore[arg-type]
        raw: Any = await self.aclient.xreadgroup(GROUP, "c", {self.keys.stream(shard): ">"}, count=10)
        batch = [
            PendingEntry(i.decode(), f"p{shard}", e.seq, e.events) for i, f in raw[0][1] for e in [decode_entry(f)]
        ]

        def delta(_entries: Any) -> Delta:
            d = Delta()
            d.set_gauge(self.mkey, self.series(model_id), t, value)
            return d

        await ShardApplier(self.aclient, self.keys, shard, GROUP, "c").apply(batch, [], delta, time.time())

    def exported(self) -> dict[str, float]:
        body = Exposition(self.client, self.keys, self.engine.schema).render("text", frozenset({GAUGE}))
        out = {}
        for fam in text_string_to_metric_families(body.decode()):
            for s in fam.samples:
                out[s.labels["model_id"]] = s.value
        return out


async def test_a_removal_in_one_shard_hides_an_older_value_in_another(
    aclient: aioredis.Redis, redis_client: redis.Redis, namespace: str
) -> None:
    sh = Shards(aclient, redis_client, namespace, 2)
    await sh.set(0, "m1", 100.0, 2.0)
    await sh.set(0, "m2", 100.0, 1.0)
    assert sh.exported() == {"m1": 2.0, "m2": 1.0}
    await sh.set(1, "m1", 101.0, None)  # removed by an event that went to the other shard
    assert sh.exported() == {"m2": 1.0}
    await sh.set(1, "m2", 99.0, None)  # an older removal does not hide a newer value
    assert sh.exported() == {"m2": 1.0}
    await sh.set(0, "m1", 102.0, 0.0)  # a newer write brings the series back
    assert sh.exported() == {"m1": 0.0, "m2": 1.0}


async def test_one_shard_keeps_no_record_for_removing_what_never_existed(
    aclient: aioredis.Redis, redis_client: redis.Redis, namespace: str
) -> None:
    sh = Shards(aclient, redis_client, namespace, 1)
    await sh.set(0, "never", 100.0, None)
    assert redis_client.hlen(sh.keys.metric(0, "gt", sh.mkey)) == 0


async def test_old_removal_records_are_forgotten(
    aclient: aioredis.Redis, redis_client: redis.Redis, namespace: str
) -> None:
    sh = Shards(aclient, redis_client, namespace, 2)
    now = time.time()
    await sh.set(0, "old", now - 7200, 1.0)
    await sh.set(0, "old", now - 7100, None)
    await sh.set(0, "recent", now - 60, None)
    await sh.set(0, "live", now - 7200, 3.0)
    settings = AggregatorSettings(namespace=namespace, shards=2, gauge_removal_memory_seconds=3600)
    keeper = Housekeeper(aclient, sh.keys, 0, settings)
    keeper.gauge_keys = [sh.mkey]
    assert await keeper.forget_old_removals(now - 3600) == 1
    times = redis_client.hgetall(sh.keys.metric(0, "gt", sh.mkey))
    assert {sh.series("recent").encode(), sh.series("live").encode()} == set(times)  # a live value keeps its time
    assert sh.exported() == {"live": 3.0}

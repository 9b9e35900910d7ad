"""The OpenAI wire, spoken two ways: the `openai` SDK against plain httpx2 and json, per call.

The provider answers with httpx2 and json directly (`providers/openai_compatible.py`); it once streamed and listed
models with the SDK. This measures the client side of one call both ways against the upstream simulator (its own
process), for a whole answer and for a streamed one: the CPU seconds this process spends per call (what a daemon
pays on its event loop) and the wall time per call at concurrency 1. Subjects run in short blocks, in a new random
order every round, so load from elsewhere falls on every side alike. The ratios (SDK ÷ raw) are the claim.

Run: `python bench/openai_wire.py [--rounds 10] [--calls 50] [--out bench/results/openai_wire.json]`
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import openai

from exai.providers.base import CallOptions, UpstreamError, collect_stream, reading, sending
from exai.providers.catalogue import custom_model_info
from exai.providers.openai_compatible import OpenAICompatibleProvider, messages_of, usage_from
from exai.providers.quirks import openai_params, reasoning_from
from exai.providers.types import GenerateRequest, GenerateResponse, Message, StreamChunk, Usage
from servers import FAST_MODEL, Servers

Call = Callable[[], Awaitable[GenerateResponse]]
REQUEST = GenerateRequest(
    system="You are terse.", messages=[Message(role="user", content="Say something about benchmarks, briefly.")]
)
MODEL = custom_model_info(FAST_MODEL, 32_768)
OPTIONS = CallOptions(timeout=30.0, headers={"X-Request-ID": "bench"})


class SdkWire:
    """The same calls through the `openai` SDK (its retries off, on its own httpx2 pool), as the provider made them
    before it spoke the wire one way."""

    def __init__(self, base_url: str) -> None:
        self.name = "custom"
        self._client = openai.AsyncOpenAI(api_key="not-needed", base_url=base_url, max_retries=0)

    async def generate(self) -> GenerateResponse:
        started = time.perf_counter()
        with sending(openai, self.name):
            completion = await self._client.chat.completions.create(
                model=MODEL.name,
                messages=messages_of(REQUEST),  # type: ignore[arg-type]
                timeout=OPTIONS.timeout,
                extra_headers=dict(OPTIONS.headers),
                **openai_params(REQUEST, MODEL),
            )
        with reading(openai):
            choice = completion.choices[0]
            return GenerateResponse(
                text=choice.message.content or "",
                reasoning=reasoning_from(MODEL, choice.message),
                usage=usage_from(completion.usage) or Usage(),
                finish_reason=choice.finish_reason,
                model=MODEL.name,
                provider=self.name,
                upstream_latency_ms=(time.perf_counter() - started) * 1000,
            )

    async def stream(self, request: GenerateRequest, model: Any, options: CallOptions) -> AsyncIterator[StreamChunk]:
        finished = False
        with sending(openai, self.name):
            stream = await self._client.chat.completions.create(
                model=model.name,
                messages=messages_of(request),  # type: ignore[arg-type]
                stream=True,
                stream_options={"include_usage": True},
                timeout=options.timeout,
                extra_headers=dict(options.headers),
                **openai_params(request, model),
            )
        with reading(openai):
            async with stream:
                async for event in stream:
                    chunk = StreamChunk(usage=usage_from(event.usage))
                    if event.choices:
                        choice = event.choices[0]
                        chunk.text = choice.delta.content or ""
                        chunk.reasoning = reasoning_from(model, choice.delta) or ""
                        if choice.finish_reason:
                            chunk.finish_reason = choice.finish_reason
                            finished = True
                    yield chunk
        if not finished:
            raise UpstreamError("connection", "upstream stream ended before the answer was complete")

    async def close(self) -> None:
        await self._client.close()


async def _ignore(chunk: StreamChunk) -> None:
    pass


def subjects(raw: OpenAICompatibleProvider, sdk: SdkWire) -> dict[str, Call]:
    return {
        "raw_answer": lambda: raw.generate(REQUEST, MODEL, OPTIONS),
        "sdk_answer": sdk.generate,
        "raw_stream": lambda: raw.generate(REQUEST, MODEL, OPTIONS, _ignore),
        "sdk_stream": lambda: collect_stream(sdk, REQUEST, MODEL, OPTIONS, _ignore),  # type: ignore[arg-type]
    }


async def block(call: Call, calls: int) -> tuple[float, list[float]]:
    """CPU seconds of this process for `calls` calls one after another, and each call's wall time."""
    walls = []
    cpu = time.process_time()
    for _ in range(calls):
        started = time.perf_counter()
        answer = await call()
        walls.append(time.perf_counter() - started)
        assert answer.text, "the simulator answered nothing"
    return time.process_time() - cpu, walls


async def run(rounds: int, calls: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as data:
        servers = Servers(Path(data))
        try:
            servers.start_sim()
            base_url = f"{servers.sim_url}/v1"
            raw, sdk = OpenAICompatibleProvider("custom", base_url, None), SdkWire(base_url)
            calling = subjects(raw, sdk)
            for call in calling.values():  # warm: connections open, modules and caches loaded
                await block(call, 5)
            cpu: dict[str, float] = dict.fromkeys(calling, 0.0)
            walls: dict[str, list[float]] = {name: [] for name in calling}
            for _ in range(rounds):
                order = list(calling)
                random.shuffle(order)
                for name in order:
                    seconds, times = await block(calling[name], calls)
                    cpu[name] += seconds
                    walls[name].extend(times)
            await raw.close()
            await sdk.close()
        finally:
            servers.close()
    total = rounds * calls
    rows = {
        name: {
            "cpu_ms_per_call": round(cpu[name] / total * 1000, 3),
            "wall_p50_ms": round(statistics.median(walls[name]) * 1000, 3),
        }
        for name in calling
    }
    ratios = {
        f"{kind}_sdk_over_raw": {
            "cpu": round(rows[f"sdk_{kind}"]["cpu_ms_per_call"] / rows[f"raw_{kind}"]["cpu_ms_per_call"], 2),
            "wall_p50": round(rows[f"sdk_{kind}"]["wall_p50_ms"] / rows[f"raw_{kind}"]["wall_p50_ms"], 2),
        }
        for kind in ("answer", "stream")
    }
    return {
        "calls_per_subject": total,
        "subjects": rows,
        "ratios": ratios,
        "load_average_1m": round(os.getloadavg()[0], 2),
        "python": platform.python_version(),
        "openai": openai.__version__,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--calls", type=int, default=50, help="calls per block")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    result = asyncio.run(run(args.rounds, args.calls))
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    sys.exit(main())

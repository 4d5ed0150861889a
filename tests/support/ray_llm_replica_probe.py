"""A Ray Serve LLM replica's vLLM engine, in-process, with voltana's routing-stats mixin on top (probe).

Run as ``python -m tests.support.ray_llm_replica_probe MODEL_DIR`` with the replica's environment (the
``runtime_env.env_vars`` that ``voltana_llm_config`` gives a deployment). It starts vLLM the way Ray Serve
LLM 2.60's ``VLLMEngine`` does in its replica process (``AsyncEngineArgs`` -> ``create_engine_config`` ->
``AsyncLLM``, EngineCore in a child process), serves a few requests, and prints one JSON line: the
``record_routing_stats()`` of a server class built like voltana's (``VoltanaRoutingStatsMixin`` over a base
whose ``record_routing_stats`` returns its engine's routing stats, as ``LLMServer``'s does) before and after.

Ray Serve LLM itself is not installed next to vLLM in the test environments (see docs/guides/ray.md): the
base class here stands in for ``LLMServer``; the engine, voltana's plugin, hook and publisher are real.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from typing import Any

from voltana.integrations.ray_serve.vllm_replica import VoltanaRoutingStatsMixin

BASE_ROUTING_STATS = {"kv_events_endpoint": "tcp://127.0.0.1:5557"}
"""What the stand-in base returns (Ray Serve LLM's own stats: the KV-events endpoint of KV-aware routing)."""


class EngineServer:
    """Stands in for ``LLMServer``: ``record_routing_stats`` returns the engine's routing stats."""

    async def record_routing_stats(self) -> dict[str, Any]:
        return dict(BASE_ROUTING_STATS)


class ProbeServer(VoltanaRoutingStatsMixin, EngineServer):
    """Built as :class:`voltana.integrations.ray_serve.llm_server.VoltanaLLMServer` is."""


async def serve(model_dir: str) -> dict[str, Any]:
    from vllm import SamplingParams
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.usage.usage_lib import UsageContext
    from vllm.v1.engine.async_llm import AsyncLLM
    from vllm.v1.executor.abstract import Executor

    args = AsyncEngineArgs(
        model=model_dir, max_model_len=512, max_num_seqs=16, dtype="float32", enforce_eager=True
    )
    vllm_config = args.create_engine_config(usage_context=UsageContext.OPENAI_API_SERVER)
    engine = AsyncLLM(
        vllm_config=vllm_config, executor_class=Executor.get_class(vllm_config), log_stats=False
    )
    server = ProbeServer()
    try:
        before = await server.record_routing_stats()

        async def one(index: int) -> int:
            params = SamplingParams(max_tokens=16, temperature=0.0, ignore_eos=True)
            tokens = 0
            async for output in engine.generate(
                f"request {index}: tell me about energy", params, f"r{index}"
            ):
                tokens = len(output.outputs[0].token_ids)
            return tokens

        generated = await asyncio.gather(*(one(i) for i in range(4)))
        await asyncio.sleep(0.5)  # the publisher writes on its own thread
        after = await server.record_routing_stats()
    finally:
        engine.shutdown()
    return {
        "before": before,
        "after": after,
        "generated": generated,
        "pid": os.getpid(),
        "state_dir_exported": bool(os.environ.get("_VOLTANA_VLLM_STATE_DIR")),
    }


if __name__ == "__main__":
    print(json.dumps(asyncio.run(serve(sys.argv[1]))), flush=True)

"""Ray Serve LLM's vLLM servers publishing voltana's state, and a P/D app of them behind voltana's routers.

:class:`VoltanaLLMServer`, :class:`VoltanaPDPrefillServer` and :class:`VoltanaPDDecodeServer` are Ray Serve
LLM's ``LLMServer``, ``PDPrefillServer`` and ``PDDecodeServer`` whose ``record_routing_stats()`` also returns
the vLLM engine's voltana state (:class:`~.vllm_replica.VoltanaRoutingStatsMixin`).
Use ``VoltanaLLMServer`` as an ``LLMConfig``'s ``server_cls`` (``build_openai_app``); the P/D builder of Ray
Serve LLM 2.60 picks its own server classes, so :func:`build_vllm_pd_app` builds the same graph (ingress ->
decode server -> prefill server) with voltana's.

Needs Ray Serve LLM (``pip install 'ray[llm]'``, which brings vLLM): importing this module without it raises
``ImportError``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ray import serve
from ray.llm._internal.common.dict_utils import maybe_apply_llm_deployment_config_defaults
from ray.llm._internal.serve.core.configs.openai_api_models import to_model_metadata
from ray.llm._internal.serve.serving_patterns.prefill_decode.builder import PDServingArgs
from ray.llm._internal.serve.serving_patterns.prefill_decode.pd_server import (
    PDDecodeServer,
    PDPrefillServer,
)
from ray.serve.deployment import Application
from ray.serve.llm import LLMServer, build_llm_deployment
from ray.serve.llm.ingress import make_fastapi_ingress

from voltana.core.config import ConfigError
from voltana.integrations.ray_serve.vllm_replica import VoltanaRoutingStatsMixin


class VoltanaLLMServer(VoltanaRoutingStatsMixin, LLMServer):
    """Ray Serve LLM's ``LLMServer`` whose routing stats carry voltana's engine state."""


class VoltanaPDPrefillServer(VoltanaRoutingStatsMixin, PDPrefillServer):
    """Ray Serve LLM's P/D prefill server whose routing stats carry voltana's engine state."""


class VoltanaPDDecodeServer(VoltanaRoutingStatsMixin, PDDecodeServer):
    """Ray Serve LLM's P/D decode server (it orchestrates the prefill) with voltana's engine state."""


def build_vllm_pd_app(pd_serving_args: Mapping[str, Any]) -> Application:
    """Ray Serve LLM's P/D app (``build_pd_openai_app``'s arguments: ``prefill_config``, ``decode_config``,
    ``ingress_cls_config``, ``ingress_deployment_config``) with voltana's server classes.

    Data parallelism inside a deployment (``data_parallel_size`` > 1) is not supported here. Raises
    :class:`ConfigError` (one line) for it and for arguments Ray Serve LLM rejects.
    """
    try:
        args = PDServingArgs.model_validate(dict(pd_serving_args))
    except ValueError as exc:
        raise ConfigError(f"invalid Ray Serve LLM P/D arguments: {str(exc).splitlines()[0]}") from None
    for config in (args.prefill_config, args.decode_config):
        if int(config.engine_kwargs.get("data_parallel_size", 1)) > 1:
            raise ConfigError("voltana's vLLM P/D app does not support data_parallel_size > 1 yet")
    prefill = build_llm_deployment(
        args.prefill_config, name_prefix="Prefill:", deployment_cls=VoltanaPDPrefillServer
    )
    decode = build_llm_deployment(
        args.decode_config,
        name_prefix="Decode:",
        bind_kwargs={"prefill_server": prefill},
        deployment_cls=VoltanaPDDecodeServer,
    )
    ingress_cls = args.ingress_cls_config.ingress_cls
    options = maybe_apply_llm_deployment_config_defaults(
        ingress_cls.get_deployment_options([args.decode_config]), args.ingress_deployment_config
    )
    model_id = args.decode_config.model_id
    lora = args.decode_config.lora_config
    app: Application = serve.deployment(make_fastapi_ingress(ingress_cls), **options).bind(
        llm_deployments={model_id: decode},
        model_cards={model_id: to_model_metadata(model_id, args.decode_config)},
        lora_paths={model_id: lora.dynamic_lora_loading_path} if lora is not None else {},
        **args.ingress_cls_config.ingress_extra_kwargs,
    )
    return app

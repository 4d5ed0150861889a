"""voltana on Ray Serve (extra ``voltana[ray]``): request routers calling voltana's registered routing
policies for the prefill and decode deployments, replicas publishing voltana's state through
``record_routing_stats``, and a builder of a P/D app with voltana on every replica. See
``docs/guides/ray.md``.

Modules: :mod:`.stats` (the routing-stats payload and its :class:`~voltana.core.types.InstanceState`; no Ray
import), :mod:`.engine` (the emulated engine with voltana's per-iteration clock control; no Ray import),
:mod:`.routing` (the ``RequestRouter`` subclasses), :mod:`.replica`, :mod:`.ingress`, :mod:`.budget` (the
power-budget coordinator) and :mod:`.app` (the deployments and the builder), :mod:`.vllm_replica` (Ray Serve
LLM's vLLM replicas: their voltana state and configs; no Ray import) and :mod:`.llm_server` (Ray Serve LLM's
server classes with that state, and their P/D app; needs ``ray[llm]``).
"""

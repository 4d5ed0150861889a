"""voltana on Ray Serve (extra ``voltana[ray]``): request routers calling voltana's registered routing
policies for the prefill and decode deployments, replicas publishing voltana's state through
``record_routing_stats``, and a builder of a P/D app with voltana on every replica. See ``docs/ray.md``.

Modules: :mod:`.stats` (the routing-stats payload and its :class:`~voltana.core.types.InstanceState`; no Ray
import), :mod:`.engine` (the emulated engine with voltana's per-iteration clock control; no Ray import),
:mod:`.routing` (the ``RequestRouter`` subclasses), :mod:`.replica`, :mod:`.ingress` and :mod:`.app` (the
deployments and the builder).
"""

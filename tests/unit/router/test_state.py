"""Instance state: parsing vLLM /metrics and SGLang /v1/loads, staleness, ejection bookkeeping, and the
routing decision through the plugin hook (a tiny local plugin here; the built-in policies are plugins too)."""

from __future__ import annotations

import time

import pytest

from voltana.core.contexts import PolicyInfo
from voltana.core.hookspecs import hookimpl
from voltana.core.plugin_manager import make_plugin_manager
from voltana.core.policies import UnknownPolicyError
from voltana.core.types import Phase, RouteRequest, Slo
from voltana.plugins import DEFAULT_PLUGINS
from voltana.plugins.ecoroute import decode_snapshot
from voltana.router.choice import InstanceChooser, NoInstanceError
from voltana.router.instances import InstanceRegistry, parse_endpoint
from voltana.router.load_parsing import LoadReport, parse_sglang_loads, parse_vllm_metrics

VLLM_METRICS = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="tiny"} 3.0
vllm:num_requests_running{engine="1",model_name="tiny"} 2.0
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="tiny"} 4.0
vllm:num_requests_waiting{engine="1",model_name="tiny"} 0.0
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="tiny"} 0.25
vllm:kv_cache_usage_perc{engine="1",model_name="tiny"} 0.75
# TYPE vllm:cache_config_info gauge
vllm:cache_config_info{block_size="16",cache_dtype="auto",engine="0",num_gpu_blocks="1000"} 1.0
vllm:cache_config_info{block_size="16",cache_dtype="auto",engine="1",num_gpu_blocks="1000"} 1.0
vllm:num_requests_running_garbage not-a-number
vllm:prompt_tokens_total{engine="0",model_name="tiny"} 1234.0
"""


def test_parse_vllm_metrics_sums_engines() -> None:
    report = parse_vllm_metrics(VLLM_METRICS)
    assert report == LoadReport(num_running=5, num_waiting=4, kv_tokens=16000, kv_capacity_tokens=32000)


def test_parse_vllm_metrics_old_names_and_no_cache_info() -> None:
    text = 'vllm:num_requests_running{model_name="m"} 1\nvllm:gpu_cache_usage_perc{model_name="m"} 0.5\n'
    assert parse_vllm_metrics(text) == LoadReport(1, 0, 0, 0)


def test_parse_vllm_metrics_escaped_label_values() -> None:
    # A model name holding an escaped quote (`a"k=`) made the hand-written label regex read
    # `,block_size=` as a label value and lose the KV capacity; prometheus_client's parser reads it right.
    text = (
        'vllm:num_requests_running{model_name="a\\"k=",engine="0"} 2.0\n'
        'vllm:cache_config_info{model_name="a\\"k=",block_size="16",num_gpu_blocks="10"} 1.0\n'
        'vllm:kv_cache_usage_perc{model_name="a\\"k=",engine="0"} 0.5\n'
    )
    assert parse_vllm_metrics(text) == LoadReport(
        num_running=2, num_waiting=0, kv_tokens=80, kv_capacity_tokens=160
    )


def test_parse_sglang_loads() -> None:
    payload = {
        "loads": [
            {"dp_rank": 0, "num_running_reqs": 3, "num_waiting_reqs": 1, "num_used_tokens": 500,
             "max_total_num_tokens": 10000, "memory": {}, "queues": {}},
            {"dp_rank": 1, "num_running_reqs": 2, "num_waiting_reqs": 0, "num_used_tokens": 100,
             "max_total_num_tokens": 10000},
        ]
    }  # fmt: skip
    assert parse_sglang_loads(payload) == LoadReport(5, 1, 600, 20000)
    with pytest.raises(ValueError, match="loads"):
        parse_sglang_loads({"oops": 1})


def test_parse_endpoint() -> None:
    assert parse_endpoint("http://10.0.0.1:30000/", 8998).bootstrap_port == 8998
    endpoint = parse_endpoint("http://10.0.0.1:30000 8999")
    assert (endpoint.url, endpoint.host, endpoint.bootstrap_port) == (
        "http://10.0.0.1:30000",
        "10.0.0.1",
        8999,
    )
    for bad in ("10.0.0.1:30000", "http://h:1 x", "http://h:1 70000", "", "a b c"):
        with pytest.raises(ValueError, match="instance"):
            parse_endpoint(bad)


def registry(n_decode: int = 3, **kwargs) -> InstanceRegistry:  # type: ignore[no-untyped-def]
    return InstanceRegistry(
        [parse_endpoint("http://127.0.0.1:1")],
        [parse_endpoint(f"http://127.0.0.1:{10 + i}") for i in range(n_decode)],
        **kwargs,
    )


def test_view_combines_own_inflight_with_fresh_poll_and_drops_stale_poll() -> None:
    reg = registry(1, stale_after_s=0.05)
    inst = reg.by_phase[Phase.DECODE][0]
    reg.acquire(inst)
    reg.record_poll(inst, LoadReport(num_running=4, num_waiting=2, kv_tokens=900, kv_capacity_tokens=1000))
    reg.acquire(inst)  # one more of ours since the poll
    view = reg.views([inst])[0]
    # 4 running at poll time, 1 of them ours -> 3 from elsewhere; plus our 2 now.
    assert (view.num_running, view.num_waiting, view.kv_tokens, view.kv_capacity_tokens) == (5, 2, 900, 1000)
    time.sleep(0.06)
    stale = reg.views([inst])[0]
    assert (stale.num_running, stale.num_waiting, stale.kv_tokens, stale.kv_capacity_tokens) == (
        2,
        0,
        0,
        1000,
    )


def test_ejection_quarantine_probation() -> None:
    reg = registry(1, eject_after_failures=2, readmit_after_successes=2, readmit_backoff_s=0.05)
    inst = reg.by_phase[Phase.DECODE][0]
    reg.record_failure(inst, "boom")
    assert inst.admitted
    reg.record_failure(inst, "boom")
    assert not inst.admitted and reg.routable(Phase.DECODE) == []
    reg.record_probe(inst, True)
    reg.record_probe(inst, True)
    assert not inst.admitted  # still in quarantine
    time.sleep(0.06)
    reg.record_probe(inst, True)
    reg.record_probe(inst, True)
    assert inst.admitted
    reg.record_failure(inst, "again")  # probation: one failure is enough
    assert not inst.admitted and inst.quarantine_until_s - time.monotonic() > 0.05  # doubled quarantine
    for _ in range(3):
        reg.record_poll(inst, None, "poll failed")
    assert not inst.admitted


class PickLast:
    """A tiny routing policy plugin: "pick-last" answers the last candidate and records what it was shown;
    "pick-none" answers nothing."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, ...]] = []

    def pick_last(self, request, candidates, ctx):  # type: ignore[no-untyped-def]
        self.seen.append(tuple(c.instance_id for c in candidates))
        return candidates[-1].instance_id

    @hookimpl
    def voltana_register_policies(self, register):  # type: ignore[no-untyped-def]
        register(PolicyInfo("route", "pick-last", "the last candidate", self.pick_last))
        register(PolicyInfo("route", "pick-none", "no answer", lambda request, candidates, ctx: None))


def test_choice_goes_through_the_hook_and_skips_ejected_draining_saturated() -> None:
    pm = make_plugin_manager(DEFAULT_PLUGINS, load_entry_points=False)
    plugin = PickLast()
    pm.register(plugin)
    reg = registry(4, max_inflight_per_instance=1)
    chooser = InstanceChooser(
        pm.hook, reg, prefill_policy="random", decode_policy="pick-last", slo=Slo(1, 0.1)
    )
    request = RouteRequest("r", 10, 5)
    assert chooser.choose(Phase.DECODE, request).instance_id == "decode-3"
    reg.by_id["decode-3"].draining = True
    reg.by_id["decode-2"].admitted = False
    reg.acquire(reg.by_id["decode-1"])  # saturated at 1 in flight
    assert chooser.choose(Phase.DECODE, request).instance_id == "decode-0"
    assert plugin.seen == [
        ("decode-0", "decode-1", "decode-2", "decode-3")
    ]  # one candidate left: no hook call
    reg.acquire(reg.by_id["decode-0"])
    with pytest.raises(NoInstanceError, match="saturated") as saturated:
        chooser.choose(Phase.DECODE, request)
    assert saturated.value.saturated
    assert chooser.choose(Phase.PREFILL, request).instance_id == "prefill-0"


def test_unknown_policy_is_refused_at_start_and_on_switch() -> None:
    pm = make_plugin_manager(DEFAULT_PLUGINS, load_entry_points=False)
    with pytest.raises(
        UnknownPolicyError, match=r"^unknown routing policy 'nobody-has-it'; registered: .*ecoroute"
    ):
        InstanceChooser(
            pm.hook, registry(3), prefill_policy="random", decode_policy="nobody-has-it", slo=Slo(1, 0.1)
        )
    chooser = InstanceChooser(
        pm.hook, registry(3), prefill_policy="random", decode_policy="round-robin", slo=Slo(1, 0.1)
    )
    with pytest.raises(UnknownPolicyError):
        chooser.set_policy(Phase.DECODE, "nobody-has-it")
    assert chooser.policy(Phase.DECODE) == "round-robin"


def test_a_policy_answering_nothing_falls_back_to_least_loaded_and_counts() -> None:
    pm = make_plugin_manager(DEFAULT_PLUGINS, load_entry_points=False)
    pm.register(PickLast())
    reg = registry(3)
    chooser = InstanceChooser(
        pm.hook, reg, prefill_policy="random", decode_policy="pick-none", slo=Slo(1, 0.1)
    )
    reg.acquire(reg.by_id["decode-0"])
    assert chooser.choose(Phase.DECODE, RouteRequest("r", 1)).instance_id == "decode-1"
    assert chooser.fallbacks == 1


def test_builtin_policies_via_hook() -> None:
    pm = make_plugin_manager(DEFAULT_PLUGINS, load_entry_points=False)
    reg = registry(3)
    chooser = InstanceChooser(
        pm.hook, reg, prefill_policy="random", decode_policy="round-robin", slo=Slo(1, 0.1)
    )
    picks = [chooser.choose(Phase.DECODE, RouteRequest(str(i), 1)).instance_id for i in range(6)]
    assert picks == ["decode-0", "decode-1", "decode-2"] * 2
    chooser.set_policy(Phase.DECODE, "least-loaded")
    reg.acquire(reg.by_id["decode-0"])
    reg.acquire(reg.by_id["decode-1"])
    assert chooser.choose(Phase.DECODE, RouteRequest("x", 1)).instance_id == "decode-2"
    chooser.set_policy(Phase.DECODE, "ecoroute")
    assert chooser.choose(Phase.DECODE, RouteRequest("y", 1)).instance_id in reg.by_id
    assert chooser.fallbacks == 0


def test_clock_aware_routing_gets_predictors_when_seeded() -> None:
    from voltana.core.config import VoltanaConfig
    from voltana.router.predictors import route_predictors

    assert route_predictors(VoltanaConfig()) is None  # real GPUs and no profile: load and boundaries only
    seeded = route_predictors(VoltanaConfig(hardware={"vendor": "simulated"}, clocks={"min_mhz": 1005}))
    assert seeded is not None and seeded.clocks_mhz[0] >= 1005 and seeded.clocks_mhz[-1] == 1410
    pm = make_plugin_manager(DEFAULT_PLUGINS, load_entry_points=False)
    reg = registry(4)
    for i, inst in enumerate(reg.by_phase[Phase.DECODE]):
        reg.record_poll(
            inst, LoadReport(num_running=40 * i, kv_tokens=40 * i * 600, kv_capacity_tokens=400000)
        )
        inst.sm_clock_mhz = 1410
    chooser = InstanceChooser(
        pm.hook,
        reg,
        prefill_policy="predicted-ttft",
        decode_policy="ecoroute",
        slo=Slo(0.8, 0.05),
        predictors=seeded,
    )
    ctx = chooser.contexts[Phase.DECODE]
    assert (
        ctx.predictor is seeded.by_phase[Phase.DECODE]
        and ctx.options["allowed_clocks_mhz"] == seeded.clocks_mhz
    )
    assert ctx.power_model is seeded.energy_by_phase[Phase.DECODE] and ctx.options["idle_power_w"] > 0
    predicted = ctx.predictor.predict_latency_s(decode_snapshot(40, 24000), 1410)
    assert 0.005 < predicted < 0.1  # a 40-request decode step of Llama-3.1-8B on an A100, in seconds
    assert chooser.choose(Phase.DECODE, RouteRequest("r", 200, 100)).instance_id in reg.by_id
    assert chooser.choose(Phase.PREFILL, RouteRequest("p", 2000)).instance_id == "prefill-0"
    assert chooser.fallbacks == 0

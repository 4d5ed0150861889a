"""voltana is found and installed by SGLang's own plugin loader, and does nothing unless enabled."""

from __future__ import annotations

import multiprocessing
from typing import Any

import pytest
import sglang.srt.plugins as sglang_plugins
from sglang.srt.managers.scheduler import Scheduler
from sglang.srt.plugins.hook_registry import HookRegistry

from voltana.adapters.sglang import binding, plugin

pytestmark = pytest.mark.sglang

# Kept in a dict: SGLang's HookRegistry rebinds every *module attribute* that refers to a patched function.
ORIGINAL = {name: Scheduler.__dict__[name] for name in plugin.HOOKED_METHODS}


def test_sglang_loader_discovers_voltana_through_its_entry_point(clean_sglang_hooks: None) -> None:
    found = sglang_plugins.load_plugins_by_group(sglang_plugins.GENERAL_PLUGINS_GROUP)
    func, dist = found["voltana"]
    assert func is plugin.register
    assert dist == "voltana"


def test_sglang_plugins_allowlist_can_leave_voltana_out(
    clean_sglang_hooks: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SGLANG_PLUGINS", "some_other_plugin")
    assert "voltana" not in sglang_plugins.load_plugins_by_group(sglang_plugins.GENERAL_PLUGINS_GROUP)
    monkeypatch.setenv("SGLANG_PLUGINS", "voltana")
    assert "voltana" in sglang_plugins.load_plugins_by_group(sglang_plugins.GENERAL_PLUGINS_GROUP)


def test_disabled_voltana_changes_nothing(clean_sglang_hooks: None) -> None:
    sglang_plugins.load_plugins()
    assert Scheduler.__dict__["run_batch"] is ORIGINAL["run_batch"]
    assert Scheduler.__dict__["process_batch_result"] is ORIGINAL["process_batch_result"]
    assert binding.RUN_BATCH_TARGET not in HookRegistry._hooks


def test_enabled_voltana_wraps_the_real_scheduler_methods(
    clean_sglang_hooks: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VOLTANA_ENABLED", "1")
    sglang_plugins.load_plugins()
    run_batch = Scheduler.__dict__["run_batch"]
    process = Scheduler.__dict__["process_batch_result"]
    assert run_batch is not ORIGINAL["run_batch"] and run_batch.__wrapped__ is ORIGINAL["run_batch"]
    assert (
        process is not ORIGINAL["process_batch_result"]
        and process.__wrapped__ is ORIGINAL["process_batch_result"]
    )
    assert run_batch.__name__ == "run_batch"
    # The pytest process is a "main" process: the HTTP server hook that serves /voltana/state is there too.
    assert plugin.HTTP_LAUNCH_TARGET in HookRegistry._patched


def test_register_is_idempotent(clean_sglang_hooks: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOLTANA_ENABLED", "1")
    plugin.register()
    plugin.register()
    assert len(HookRegistry._hooks[binding.RUN_BATCH_TARGET]) == 1
    HookRegistry.apply_hooks()
    HookRegistry.apply_hooks()
    assert Scheduler.__dict__["run_batch"].__wrapped__ is ORIGINAL["run_batch"]


def test_broken_config_leaves_sglang_alone_with_one_message(
    clean_sglang_hooks: None, monkeypatch: pytest.MonkeyPatch, voltana_errors
) -> None:
    monkeypatch.setenv("VOLTANA_ENABLED", "1")
    monkeypatch.setenv("VOLTANA_SLO__TTFT_S", "-3")
    sglang_plugins.load_plugins()
    assert Scheduler.__dict__["run_batch"] is ORIGINAL["run_batch"]
    errors = voltana_errors()
    assert len(errors) == 1
    assert "slo.ttft_s" in errors[0].getMessage() and "without voltana" in errors[0].getMessage()


def test_unsupported_sglang_version_is_refused_with_a_clear_message(
    clean_sglang_hooks: None, monkeypatch: pytest.MonkeyPatch, voltana_errors
) -> None:
    import sglang

    monkeypatch.setenv("VOLTANA_ENABLED", "1")
    monkeypatch.setattr(sglang, "__version__", "0.6.1")
    plugin.register()
    assert binding.RUN_BATCH_TARGET not in HookRegistry._hooks
    [error] = voltana_errors()
    assert "SGLang 0.6.1 is not supported" in error.getMessage()
    assert plugin.SUPPORTED_SGLANG in error.getMessage()


def test_missing_hook_target_is_named(clean_sglang_hooks: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(Scheduler, "process_batch_result")
    assert "has no Scheduler.process_batch_result to hook" in plugin.sglang_problem()
    monkeypatch.undo()
    assert plugin.sglang_problem() == ""


def _child_loads_plugins(results: Any) -> None:
    """What an SGLang scheduler process does first (``run_scheduler_process`` -> ``load_plugins``)."""
    import sglang.srt.plugins as plugins_in_child
    from sglang.srt.managers.scheduler import Scheduler as ChildScheduler
    from sglang.srt.plugins.hook_registry import HookRegistry as ChildRegistry

    plugins_in_child.load_plugins()
    results.put(
        {
            "run_batch_wrapped": hasattr(ChildScheduler.__dict__["run_batch"], "__wrapped__"),
            "process_wrapped": hasattr(ChildScheduler.__dict__["process_batch_result"], "__wrapped__"),
            "patched": sorted(ChildRegistry._patched),
        }
    )


@pytest.mark.slow
def test_a_spawned_child_process_gets_the_scheduler_hooks_but_no_http_hook(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("VOLTANA_ENABLED", "1")
    context = multiprocessing.get_context("spawn")  # how SGLang starts its scheduler processes
    results = context.Queue()
    child = context.Process(target=_child_loads_plugins, args=(results,))
    child.start()
    try:
        outcome = results.get(timeout=240)
    finally:
        child.join(30)
    assert outcome["run_batch_wrapped"] and outcome["process_wrapped"]
    assert outcome["patched"] == sorted([binding.RUN_BATCH_TARGET, binding.PROCESS_RESULT_TARGET])

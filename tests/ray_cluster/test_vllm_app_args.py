"""``build_pd_app(engine="vllm")``: the Ray Serve LLM P/D arguments voltana builds, checked against Ray's own
``RequestRouterConfig`` (its class import and cloudpickling, as Serve does at deploy time). No cluster: the
vLLM servers need Ray Serve LLM with vLLM, which this environment does not have (see docs/guides/ray.md)."""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Any

import pytest

from voltana.core.config import ConfigError
from voltana.core.types import Phase

# Ray is imported inside the tests: the session fixture installs the amdsmi guard first (conftest.py).

pytestmark = [pytest.mark.ray, pytest.mark.filterwarnings("ignore::DeprecationWarning")]

CONFIG = {"hardware": {"vendor": "simulated"}, "policy": {"decode_route": "ecoroute"}}


def llm_config(role: str) -> dict[str, Any]:
    connector = {"kv_connector": "NixlConnector", "kv_role": "kv_both"}
    return {
        "model_loading_config": {"model_id": "qwen-0.5b", "model_source": "Qwen/Qwen2.5-0.5B-Instruct"},
        "engine_kwargs": {"kv_transfer_config": connector, "tensor_parallel_size": 1},
        "runtime_env": {"env_vars": {"ROLE_NOTE": role}},
    }


def test_both_deployments_get_voltanas_router_as_ray_serve_loads_it(tmp_path: Path) -> None:
    from ray.serve.config import RequestRouterConfig

    from voltana.integrations.ray_serve.app import PDAppSettings, config_dict, vllm_pd_args
    from voltana.integrations.ray_serve.routing import VoltanaDecodeRouter, VoltanaPrefillRouter

    decode_file = tmp_path / "decode.yaml"
    decode_file.write_text(json.dumps(llm_config("decode")))  # JSON is YAML
    shape = PDAppSettings(
        engine="vllm", prefill_llm_config=llm_config("prefill"), decode_llm_config=str(decode_file),
        num_decode=2, decode_policy="ecoroute", seed=7,
        role_overrides={"decode": {"clocks": {"min_mhz": 1005}}},
    )  # fmt: skip
    args = vllm_pd_args(config_dict(CONFIG), shape)
    for phase, router in ((Phase.PREFILL, VoltanaPrefillRouter), (Phase.DECODE, VoltanaDecodeRouter)):
        config = args[f"{phase.value}_config"]
        assert config["engine_kwargs"] == llm_config(phase.value)["engine_kwargs"]
        assert config["runtime_env"]["env_vars"]["ROLE_NOTE"] == phase.value
        assert json.loads(config["runtime_env"]["env_vars"]["VOLTANA_ENGINE"])["role"] == phase.value
        routing = RequestRouterConfig(**config["deployment_config"]["request_router_config"])
        routing._serialize_request_router_cls()  # what Serve does when the deployment is built
        loaded = routing.get_request_router_class()
        assert loaded.__name__ == router.__name__ and loaded.phase is phase
        assert routing.request_router_kwargs["seed"] == 7
        assert routing.request_router_kwargs["config"]["hardware"]["vendor"] == "simulated"
    decode = args["decode_config"]
    assert decode["deployment_config"]["num_replicas"] == 2
    assert "num_replicas" not in args["prefill_config"]["deployment_config"]  # not set: the LLMConfig's own
    assert (
        decode["deployment_config"]["request_router_config"]["request_router_kwargs"]["policy"] == "ecoroute"
    )
    assert json.loads(decode["runtime_env"]["env_vars"]["VOLTANA_CLOCKS"])["min_mhz"] == 1005


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"engine": "vllm"}, "needs prefill_llm_config"),
        (
            {"engine": "vllm", "prefill_llm_config": "/nonexistent/p.yaml", "decode_llm_config": {}},
            "cannot read",
        ),
        (
            {"engine": "vllm", "time_scale": 2.0, "prefill_llm_config": {}, "decode_llm_config": {}},
            "time_scale",
        ),
    ],
)
def test_bad_vllm_settings_are_one_line(settings: dict[str, Any], message: str) -> None:
    from voltana.integrations.ray_serve.app import build_pd_app

    with pytest.raises(ConfigError, match=message) as caught:
        build_pd_app(CONFIG, settings)
    assert "\n" not in str(caught.value)


def test_without_ray_serve_llm_the_vllm_app_says_what_to_install() -> None:
    # The ray tier's environment has no vLLM, so Ray Serve LLM cannot be imported (when it can, this test
    # must become one that builds the app).
    with pytest.raises(ImportError):
        import ray.serve.llm  # noqa: F401
    from voltana.integrations.ray_serve.app import build_pd_app

    with pytest.raises(ConfigError, match=r"ray\[llm\]") as caught:
        build_pd_app(CONFIG, {"engine": "vllm", "prefill_llm_config": llm_config("prefill"),
                              "decode_llm_config": llm_config("decode")})  # fmt: skip
    assert "\n" not in str(caught.value)


def _defined_names(path: Path) -> set[str]:
    """Top-level names ``path`` defines or imports (classes, functions, assignments, imports)."""
    names: set[str] = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.ImportFrom | ast.Import):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
    return names


def test_the_ray_serve_llm_names_llm_server_uses_exist_in_the_installed_ray() -> None:
    """``llm_server`` cannot be imported here (Ray Serve LLM needs vLLM), so its Ray imports are checked
    against the installed Ray's source: every imported name is defined where it is imported from."""
    import ray

    from voltana.integrations.ray_serve import vllm_replica

    ray_root = Path(ray.__file__).parent.parent
    source = Path(vllm_replica.__file__).with_name("llm_server.py")
    checked = 0
    for node in ast.parse(source.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("ray."):
            base = ray_root.joinpath(*node.module.split("."))
            module_file = base / "__init__.py" if base.is_dir() else base.with_suffix(".py")
            defined = _defined_names(module_file)
            for alias in node.names:
                assert alias.name in defined or (base / f"{alias.name}.py").exists(), (
                    node.module,
                    alias.name,
                )
                checked += 1
    assert checked >= 8

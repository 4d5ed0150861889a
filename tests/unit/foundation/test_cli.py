"""The ``voltana`` console script, run as a user runs it (a subprocess)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import voltana


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("VOLTANA_")}
    full_env.update(env or {})
    full_env["COLUMNS"] = "200"
    return subprocess.run(
        [sys.executable, "-m", "voltana.cli", *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=120,
        check=False,
    )


def test_version() -> None:
    result = run_cli("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"voltana {voltana.__version__}"


def test_python_dash_m_voltana_is_the_same_entry_point() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "voltana", "--version"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout.strip() == f"voltana {voltana.__version__}"


def test_doctor_reports_and_exits_zero_without_gpu() -> None:
    result = run_cli("doctor")
    assert result.returncode == 0, result.stderr
    assert "voltana doctor" in result.stdout
    assert "engines" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr


def test_config_show_lists_file_and_env_sources(tmp_path: Path) -> None:
    config = tmp_path / "v.toml"
    config.write_text('[hardware]\nvendor = "simulated"\n')
    result = run_cli("--config", str(config), "config", "show", "--json", env={"VOLTANA_SLO__TTFT_S": "1.2"})
    assert result.returncode == 0, result.stderr
    rows = {row["key"]: row for row in json.loads(result.stdout)}
    assert rows["hardware.vendor"] == {
        "key": "hardware.vendor",
        "value": "simulated",
        "source": f"file {config}",
    }
    assert rows["slo.ttft_s"]["value"] == 1.2
    assert rows["slo.ttft_s"]["source"] == "env VOLTANA_SLO__TTFT_S"
    assert rows["slo.itl_s"]["source"] == "default"


def test_bad_value_exits_nonzero_with_one_line() -> None:
    result = run_cli("config", "show", env={"VOLTANA_HARDWARE__VENDOR": "nvidea"})
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "hardware.vendor" in lines[0]
    assert "nvidea" in lines[0]
    assert "'auto', 'nvidia', 'amd' or 'simulated'" in lines[0]
    assert "Traceback" not in result.stderr


def test_unknown_policy_is_one_line() -> None:
    result = run_cli("config", "show", env={"VOLTANA_POLICY__CLOCK": "turbo"})
    assert result.returncode == 2
    assert "policy.clock = 'turbo'" in result.stderr
    assert "static-max" in result.stderr
    # the core's wording (voltana.core.policies.lookup_policy), as the engines and the simulator print it
    assert "unknown clock policy 'turbo'; registered: " in result.stderr


@pytest.mark.parametrize(
    ("env", "line"),
    [
        (
            {"VOLTANA_POLICY__OPTIONS__DECODE_WINDOW_S": "soon"},
            "policy.options.decode_window_s must be a number",
        ),
        (
            {"VOLTANA_POLICY__OPTIONS__ECOROUTE_PACK_LIMIT": "5.5", "VOLTANA_POLICY__CLOCK": "static-max"},
            "policy.options.ecoroute_pack_limit must be a whole number",
        ),
        (
            {"VOLTANA_POLICY__OPTIONS__STATIC_CLOCK_MHZ": "abc", "VOLTANA_POLICY__CLOCK": "static"},
            "policy.options.static_clock_mhz must be a whole number",
        ),
    ],
)
def test_a_bad_policy_option_is_one_line(env: dict[str, str], line: str) -> None:
    """``config show`` listed a bad knob that ``simulate``, the router and the engines then refused."""
    result = run_cli("config", "show", env=env)
    assert result.returncode == 2, result.stdout
    lines = [text for text in result.stderr.splitlines() if text.strip()]
    assert len(lines) == 1 and line in lines[0], result.stderr


def test_another_policys_option_is_not_checked() -> None:
    """EcoFreq's knobs are not read when the clock policy is static: ``config show`` does not refuse them."""
    env = {"VOLTANA_POLICY__OPTIONS__HYSTERESIS": "lots", "VOLTANA_POLICY__CLOCK": "static-max"}
    result = run_cli("config", "show", env=env)
    assert result.returncode == 0, result.stderr

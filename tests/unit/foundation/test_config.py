from __future__ import annotations

import typing
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import BaseModel

from tests.support.cli import simulate_with_config
from voltana.core.config import ConfigError, VoltanaConfig, effective_items, load_config


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "voltana.toml"
    path.write_text(text)
    return path


def test_defaults_without_file_or_env() -> None:
    loaded = load_config()
    assert loaded.config.enabled is False
    assert loaded.config.hardware.vendor == "auto"
    assert loaded.config.slo.ttft_s == pytest.approx(0.8)
    assert loaded.source_of("slo.itl_s") == "default"


def test_file_and_env_are_merged_with_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, '[hardware]\nvendor = "simulated"\n[slo]\nttft_s = 1.5\nitl_s = 0.04\n')
    monkeypatch.setenv("VOLTANA_SLO__ITL_S", "0.03")
    loaded = load_config(path)
    assert loaded.config.hardware.vendor == "simulated"
    assert loaded.config.slo.ttft_s == pytest.approx(1.5)
    assert loaded.config.slo.itl_s == pytest.approx(0.03)
    assert loaded.source_of("hardware.vendor") == f"file {path}"
    assert loaded.source_of("slo.itl_s") == "env VOLTANA_SLO__ITL_S"
    rows = {key: (value, source) for key, value, source in effective_items(loaded)}
    assert rows["slo.ttft_s"] == (1.5, f"file {path}")


def test_config_path_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, "enabled = true\n")
    monkeypatch.setenv("VOLTANA_CONFIG", str(path))
    assert load_config().config.enabled is True


@pytest.mark.parametrize(
    ("env", "value", "expected"),
    [
        (
            "VOLTANA_HARDWARE__VENDOR",
            "nvidea",
            "hardware.vendor = 'nvidea' (from env VOLTANA_HARDWARE__VENDOR)",
        ),
        ("VOLTANA_SLO__TTFT_S", "-1", "slo.ttft_s"),
        ("VOLTANA_ROUTER__PORT", "70000", "router.port"),
        # values pydantic-settings cannot even parse (broken JSON), and a bad element of a comma list
        ("VOLTANA_CLOCKS", "{bad", "invalid config: clocks (from env VOLTANA_CLOCKS)"),
        ("VOLTANA_POLICY__OPTIONS", "not json", "(from env VOLTANA_POLICY__OPTIONS)"),
        ("VOLTANA_CLOCKS__ALLOWED_MHZ", "1005,fast", "clocks.allowed_mhz.1 = 'fast'"),
    ],
)
def test_bad_env_value_is_one_clear_line(
    monkeypatch: pytest.MonkeyPatch, env: str, value: str, expected: str
) -> None:
    monkeypatch.setenv(env, value)
    with pytest.raises(ConfigError) as info:
        load_config()
    message = str(info.value)
    assert expected in message
    assert "\n" not in message


def test_unknown_key_in_file_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, "[hardware]\nvendr = 'amd'\n")
    with pytest.raises(ConfigError, match=r"hardware\.vendr .*unknown key"):
        load_config(path)


def test_missing_and_garbled_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "[slo\n"))


def test_clock_range_must_be_ordered(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOLTANA_CLOCKS__MIN_MHZ", "1400")
    monkeypatch.setenv("VOLTANA_CLOCKS__MAX_MHZ", "1000")
    with pytest.raises(ConfigError, match="min_mhz"):
        load_config()


def test_admin_token_is_masked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOLTANA_ROUTER__ADMIN_TOKEN", "s3cret")
    rows = {key: value for key, value, _ in effective_items(load_config())}
    assert rows["router.admin_token"] == "**********"


@pytest.mark.parametrize(
    ("env", "value", "expected"),
    [
        ("VOLTANA_CLOCKS__ALLOWED_MHZ", "1005,1410", ("clocks", "allowed_mhz", [1005, 1410])),
        ("VOLTANA_CLOCKS__ALLOWED_MHZ", "[1005, 1410]", ("clocks", "allowed_mhz", [1005, 1410])),
        ("VOLTANA_CLOCKS__ALLOWED_MHZ", "1005", ("clocks", "allowed_mhz", [1005])),
        ("VOLTANA_ROUTER__DECODE", "http://h:1", ("router", "decode", ["http://h:1"])),
        ("VOLTANA_ROUTER__DECODE", "http://h:1, http://h:2", ("router", "decode", ["http://h:1", "http://h:2"])),
        ("VOLTANA_ROUTER__DECODE", '["http://h:1"]', ("router", "decode", ["http://h:1"])),
        ("VOLTANA_ROUTER__PREFILL", "http://h:1 8998,http://h:2", ("router", "prefill", ["http://h:1 8998", "http://h:2"])),
    ],
)  # fmt: skip
def test_list_settings_take_comma_separated_or_json(
    monkeypatch: pytest.MonkeyPatch, env: str, value: str, expected: tuple[str, str, list[object]]
) -> None:
    section, key, wanted = expected
    monkeypatch.setenv(env, value)
    loaded = load_config()
    assert getattr(getattr(loaded.config, section), key) == wanted
    assert loaded.source_of(f"{section}.{key}") == f"env {env}"


def test_qa_config_show_sources_masking_and_broken_json_lists(monkeypatch: pytest.MonkeyPatch) -> None:
    """QA report on issue 18: a section set as one JSON env value showed source ``default``; an empty admin
    token (admin API off) showed as ``**********``; a malformed JSON list was silently comma-split."""
    monkeypatch.setenv("VOLTANA_ROUTER", '{"port": 1}')
    monkeypatch.setenv("VOLTANA_ROUTER__ADMIN_TOKEN", "")
    rows = {key: (value, source) for key, value, source in effective_items(load_config())}
    assert rows["router.port"] == (1, "env VOLTANA_ROUTER")
    assert rows["router.admin_token"][0] in ("", None)
    monkeypatch.delenv("VOLTANA_ROUTER")
    monkeypatch.setenv("VOLTANA_ROUTER__DECODE", '["http://h:1", "http://h:2"')
    with pytest.raises(ConfigError) as info:
        load_config()
    assert "VOLTANA_ROUTER__DECODE" in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("env", "value"),
    [
        ("VOLTANA_CLUSTER__POWER_BUDGET_W", "inf"),
        ("VOLTANA_CLUSTER__POWER_BUDGET_W", "nan"),
        ("VOLTANA_HARDWARE__POWER_LIMIT_W", "inf"),
        ("VOLTANA_SLO__TTFT_S", "inf"),
        ("VOLTANA_ROUTER__REQUEST_TIMEOUT_S", "nan"),
    ],
)
def test_non_finite_watts_and_seconds_are_one_line_errors(
    monkeypatch: pytest.MonkeyPatch, env: str, value: str
) -> None:
    monkeypatch.setenv(env, value)
    with pytest.raises(ConfigError) as info:
        load_config()
    message = str(info.value)
    assert env.removeprefix("VOLTANA_").lower().replace("__", ".") in message
    assert "finite" in message
    assert "\n" not in message


def test_non_finite_budget_in_toml_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, "[cluster]\npower_budget_w = inf\n[hardware]\npower_limit_w = nan\n")
    with pytest.raises(ConfigError, match=r"power_budget_w.*finite|power_limit_w.*finite"):
        load_config(path)


@pytest.mark.parametrize("period_s", ["0.05", "21", "3600"])
def test_budget_period_is_bounded_so_leases_never_lapse(
    monkeypatch: pytest.MonkeyPatch, period_s: str
) -> None:
    monkeypatch.setenv("VOLTANA_CLUSTER__BUDGET_PERIOD_S", period_s)
    with pytest.raises(ConfigError, match=r"cluster\.budget_period_s"):
        load_config()


def test_budget_period_bounds_are_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    for period_s in ("0.1", "20"):
        monkeypatch.setenv("VOLTANA_CLUSTER__BUDGET_PERIOD_S", period_s)
        assert load_config().config.cluster.budget_period_s == float(period_s)


@pytest.mark.parametrize("blank", ["", " ", "  "])
@pytest.mark.parametrize("key", ["clock", "prefill_route", "decode_route"])
def test_an_empty_policy_name_is_refused_not_replaced_by_the_default(
    tmp_path: Path, key: str, blank: str
) -> None:
    path = tmp_path / "voltana.toml"
    path.write_text(f'[policy]\n{key} = "{blank}"\n')
    line = rf"^invalid config: policy\.{key} = '{blank}' \(from file .*\): must not be empty or blank$"
    with pytest.raises(ConfigError, match=line) as info:
        load_config(path)
    assert "\n" not in str(info.value)


def test_spaces_around_a_policy_name_are_dropped(tmp_path: Path) -> None:
    path = tmp_path / "voltana.toml"
    path.write_text('[policy]\nclock = " static-max "\n')
    assert load_config(path).config.policy.clock == "static-max"


def _number_keys() -> Iterator[tuple[str, str, bool, str]]:
    """(section, key, is a list, pydantic's word for the type) for every number setting of every section
    (plain, optional or a list of numbers)."""

    def numbers_in(annotation: object) -> set[object]:
        if annotation in (int, float):
            return {annotation}
        return set().union(*(numbers_in(arg) for arg in typing.get_args(annotation)))

    for section, field in VoltanaConfig.model_fields.items():
        model = field.annotation
        if isinstance(model, type) and issubclass(model, BaseModel):
            for key, sub in model.model_fields.items():
                found = numbers_in(sub.annotation)
                if found:
                    is_list = typing.get_origin(sub.annotation) is list
                    yield section, key, is_list, "integer" if found == {int} else "number"


NUMBER_KEYS = list(_number_keys())


def test_the_number_settings_are_found() -> None:
    keys = {f"{section}.{key}" for section, key, _, _ in NUMBER_KEYS}
    assert {"slo.itl_s", "policy.safety_margin", "clocks.allowed_mhz", "clocks.min_mhz", "router.port",
            "hardware.power_limit_w", "cluster.budget_margin", "engine.iteration_buffer"} <= keys  # fmt: skip
    assert not keys & {"enabled", "hardware.watchdog", "router.host"}


@pytest.mark.parametrize(("section", "key", "is_list", "wanted"), NUMBER_KEYS)
@pytest.mark.parametrize("flag", ["true", "false"])
def test_true_or_false_for_a_number_is_a_config_error(
    tmp_path: Path, section: str, key: str, is_list: bool, wanted: str, flag: str
) -> None:
    """pydantic's lax numbers read a bool as 1 or 0: ``slo.itl_s = true`` was a 1 s ITL SLO, silently."""
    value = f"[{flag}]" if is_list else flag
    path = write(tmp_path, f"[{section}]\n{key} = {value}\n")
    dotted = f"{section}.{key}.0" if is_list else f"{section}.{key}"
    line = (
        rf"^invalid config: {dotted} = {flag.capitalize()} \(from file .*\): "
        rf"Input should be a valid {wanted}, not true or false$"
    )
    with pytest.raises(ConfigError, match=line):
        load_config(path)


@pytest.mark.parametrize(
    ("text", "shown", "wanted"),
    [
        ("[slo]\nitl_s = true\n", "slo.itl_s = True", "number"),
        ("[policy]\nsafety_margin = false\n", "policy.safety_margin = False", "number"),
        ("[clocks]\nallowed_mhz = [1005, true]\n", "clocks.allowed_mhz.1 = True", "integer"),
        ("[clocks]\nmin_mhz = true\n", "clocks.min_mhz = True", "integer"),
    ],
)
def test_a_bool_number_is_one_line_for_simulate(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    text: str,
    shown: str,
    wanted: str,
) -> None:
    code, lines = simulate_with_config(tmp_path, monkeypatch, capsys, text, "ecofreq+ecoroute")
    assert code == 2
    source = tmp_path / "config.toml"
    line = f"{shown} (from file {source}): Input should be a valid {wanted}, not true or false"
    assert lines == ["error: invalid config: " + line]


def test_ints_and_numeric_env_strings_still_pass_for_numbers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(
        tmp_path, "[slo]\nitl_s = 1\n[clocks]\nallowed_mhz = [1005, 1410]\n[cluster]\npower_budget_w = 900\n"
    )
    monkeypatch.setenv("VOLTANA_ROUTER__PORT", "9000")
    monkeypatch.setenv("VOLTANA_HARDWARE__POWER_LIMIT_W", "250")
    monkeypatch.setenv("VOLTANA_CLOCKS__MIN_MHZ", "900")
    monkeypatch.setenv("VOLTANA_POLICY__SAFETY_MARGIN", "0.2")
    config = load_config(path).config
    assert config.slo.itl_s == 1.0 and isinstance(config.slo.itl_s, float)
    assert config.clocks.allowed_mhz == [1005, 1410] and config.clocks.min_mhz == 900
    assert config.cluster.power_budget_w == 900.0 and config.hardware.power_limit_w == 250.0
    assert (config.router.port, config.policy.safety_margin) == (9000, 0.2)


def _bool_keys() -> Iterator[str]:
    """Every true/false setting, top level and in the sections."""
    for name, field in VoltanaConfig.model_fields.items():
        model = field.annotation
        if isinstance(model, type) and issubclass(model, BaseModel):
            yield from (f"{name}.{key}" for key, sub in model.model_fields.items() if sub.annotation is bool)
        elif model is bool:
            yield name


BOOL_KEYS = list(_bool_keys())


def test_the_bool_settings_are_found() -> None:
    assert {"enabled", "hardware.watchdog", "router.report_energy", "telemetry.prometheus"} <= set(BOOL_KEYS)


@pytest.mark.parametrize("key", BOOL_KEYS)
@pytest.mark.parametrize("number", ["1", "0"])
def test_a_number_for_a_bool_setting_is_a_config_error(tmp_path: Path, key: str, number: str) -> None:
    """As in ``policy.options`` (``plan_for_newcomer = 0`` is refused): pydantic's lax bool read 1 and 0."""
    section, _, name = key.rpartition(".")
    path = write(tmp_path, (f"[{section}]\n" if section else "") + f"{name} = {number}\n")
    line = (
        rf"^invalid config: {key} = {number} \(from file .*\): Input should be a valid boolean, not a number$"
    )
    with pytest.raises(ConfigError, match=line):
        load_config(path)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("1", True), ("0", False), ("true", True), ("FALSE", False), ("yes", True), ("Off", False)],
)
def test_bool_settings_from_the_environment_take_pydantics_words(
    monkeypatch: pytest.MonkeyPatch, text: str, expected: bool
) -> None:
    """Environment variables arrive as text: ``VOLTANA_ENABLED=1`` is the documented way to enable voltana."""
    monkeypatch.setenv("VOLTANA_ENABLED", text)
    monkeypatch.setenv("VOLTANA_HARDWARE__WATCHDOG", text)
    config = load_config().config
    assert config.enabled is expected and config.hardware.watchdog is expected


def test_a_word_that_is_not_a_bool_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOLTANA_ROUTER__REPORT_ENERGY", "maybe")
    line = (
        "invalid config: router.report_energy = 'maybe' (from env VOLTANA_ROUTER__REPORT_ENERGY): "
        "Input should be a valid boolean, unable to interpret input"
    )
    with pytest.raises(ConfigError) as info:
        load_config()
    assert str(info.value) == line

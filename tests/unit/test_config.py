"""Configuration: the example loads, and every broken file gets its golden, line-numbered error."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent.cli.main import main
from agent.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parents[2]
CASES = Path(__file__).parent / "config_cases"


def test_example_config_loads() -> None:
    loaded = load_config(ROOT / "config" / "example.yaml", environ={})
    assert loaded.config.mqtt.tls.enabled, "TLS must be the default towards the cloud"
    assert loaded.config.mqtt.effective_port == 8883
    assert len(loaded.sha256) == 64
    [machine] = loaded.config.machines
    assert machine.device == "compressor-1" and machine.energy_counter_tag == "energy_kwh"


@pytest.mark.parametrize(
    "case", sorted(p.name for p in CASES.iterdir() if (p / "expected.err").exists())
)
def test_broken_config_gives_golden_error(case: str) -> None:
    path = CASES / case / "config.yaml"
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})
    got = "".join(line.replace(str(path), "config.yaml") + "\n" for line in caught.value.lines)
    assert got == (CASES / case / "expected.err").read_text()


def test_env_substitution_fills_secrets_and_defaults() -> None:
    path = CASES / "env_var_not_set" / "config.yaml"
    loaded = load_config(path, environ={"EDGE_AGENT_TEST_UNSET_VAR": "broker.local"})
    assert loaded.config.mqtt.host == "broker.local"


def test_password_never_shows_in_repr(tmp_path: Path) -> None:
    text = (CASES / "valid_minimal" / "config.yaml").read_text()
    text = text.replace("  tls:\n", "  username: u\n  password: ${PW}\n  tls:\n")
    (tmp_path / "c.yaml").write_text(text)
    config = load_config(tmp_path / "c.yaml", environ={"PW": "hunter2-secret"}).config
    assert config.mqtt.password is not None
    assert config.mqtt.password.get_secret_value() == "hunter2-secret"
    assert "hunter2-secret" not in repr(config) and "hunter2-secret" not in str(config)


def test_dollar_dollar_is_a_literal_dollar(tmp_path: Path) -> None:
    text = (CASES / "valid_minimal" / "config.yaml").read_text()
    (tmp_path / "c.yaml").write_text(text.replace("site: test", "site: a$$b"))
    with pytest.raises(ConfigError, match=r"'a\$b'"):
        load_config(tmp_path / "c.yaml", environ={})


def test_check_exits_0_on_example_and_2_on_broken(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "-c", str(ROOT / "config" / "example.yaml")]) == 0
    assert "compressor-1" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exited:
        main(["check", "-c", str(CASES / "type_typo" / "config.yaml")])
    assert exited.value.code == 2
    assert "config.yaml:20: devices[0].tags[1].type: 'flaot32'" in capsys.readouterr().err


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the configuration"):
        load_config(tmp_path / "nope.yaml")


def test_unquoted_mqtt_version_means_the_same(tmp_path: Path) -> None:
    text = (CASES / "valid_minimal" / "config.yaml").read_text()
    (tmp_path / "c.yaml").write_text(text.replace("  tls:\n", "  version: 5\n  tls:\n"))
    assert load_config(tmp_path / "c.yaml", environ={}).config.mqtt.version == "5"


def test_check_warns_about_datasheet_addresses(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    text = (CASES / "valid_minimal" / "config.yaml").read_text()
    (tmp_path / "c.yaml").write_text(text.replace("address: 10", "address: 40101"))
    assert main(["check", "-c", str(tmp_path / "c.yaml")]) == 0
    err = capsys.readouterr().err
    assert "m1.b: address 40101 looks like datasheet notation" in err
    assert "`register: 40101` (= holding 100)" in err
    # A number of another table than the tag's, or none at all: no fix that changes the table.
    (tmp_path / "c.yaml").write_text(text.replace("address: 10", "address: 30005"))
    assert main(["check", "-c", str(tmp_path / "c.yaml")]) == 0
    assert "would be the input table (input 4), not holding" in capsys.readouterr().err
    (tmp_path / "c.yaml").write_text(text.replace("address: 10", "address: 50000"))
    assert main(["check", "-c", str(tmp_path / "c.yaml")]) == 0
    assert "holding register 50000 is read" in capsys.readouterr().err


def test_example_config_builds_every_detector_it_asks_for() -> None:
    from agent.detect.base import DetectorChain
    from agent.detect.device import make_detector

    config = load_config(ROOT / "config" / "example.yaml", environ={}).config
    [device] = config.devices
    detector = make_detector(config, device)
    assert isinstance(detector, DetectorChain)
    names = {key.split(":")[0] for key in detector.scores()}
    assert names == {"discharge-spec", "novelty-2", "drift-3", "stuck-4", "compressor-health"}


def test_compressor_monitoring_profile_loads() -> None:
    """The technicians' example for the compressor model (the e2e fault test runs it)."""
    config = load_config(ROOT / "config" / "compressor-monitoring.yaml", environ={}).config
    assert {rule.kind for rule in config.detectors} == {"limits", "zscore", "pca", "stuck"}
    assert [rule.name for rule in config.detectors if rule.while_states] == [
        "bearing-trend-loaded", "bearing-trend-idle", "flow-vs-load"]
    assert [machine.device for machine in config.machines] == ["compressor-1"]


def test_compressor_vibration_profile_is_accepted_and_builds_its_band_rule(
        capsys: pytest.CaptureFixture[str]) -> None:
    """The OPC UA vibration example (the e2e band test runs it against the simulator)."""
    from agent.config.detection import BandRmsRule
    from agent.detect.device import make_detector

    path = ROOT / "config" / "compressor-vibration.yaml"
    assert main(["check", "-c", str(path)]) == 0
    assert "vibration_waveform_mm_s: ns=2;s=compressor.vibration_waveform_mm_s" in \
        capsys.readouterr().out
    config = load_config(path, environ={}).config
    [rule] = config.detectors
    assert isinstance(rule, BandRmsRule)
    assert (rule.sample_rate_hz, rule.fft_samples) == (2048.0, 1024)
    assert [(b.name, b.low_hz, b.high_hz) for b in rule.bands] == [
        ("running-speed", 40.0, 60.0), ("bearing-bpfo", 160.0, 200.0)]
    [device] = config.devices
    assert set(make_detector(config, device).scores()) == {
        "motor-bearing-spectrum:vibration_waveform_mm_s:running-speed",
        "motor-bearing-spectrum:vibration_waveform_mm_s:bearing-bpfo"}


def _problems(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})
    return caught.value.lines


@pytest.mark.timeout(20)
def test_a_fifo_or_a_device_is_refused_without_reading_it(tmp_path: Path) -> None:
    fifo = tmp_path / "config.yaml"
    os.mkfifo(fifo)  # nobody writes to it: reading would wait for ever
    assert _problems(fifo) == [f"{fifo}: not a regular file (a FIFO): give the YAML file itself"]
    assert "not a regular file (a device or socket)" in _problems(Path("/dev/zero"))[0]
    assert "not a regular file (a directory)" in _problems(tmp_path)[0]


def test_a_file_too_large_for_a_configuration_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("".join(f"key{i}: {i}\n" for i in range(40_000)))
    [problem] = _problems(path)
    assert problem.startswith(f"{path}: ") and "too large for a configuration" in problem


def test_thousands_of_problems_are_counted_not_all_listed(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("".join(f"key{i}: {i}\n" for i in range(3_000)))
    problems = _problems(path)
    assert len(problems) == 51
    assert f"{path}:1: key0: unknown key 'key0'" in problems
    assert problems[-1].startswith(f"{path}: ... and 2,9")  # and the required sections


def test_anchors_and_merge_keys_are_read_as_written(tmp_path: Path) -> None:
    text = (CASES / "yaml_merge_key_typo" / "config.yaml").read_text()
    path = tmp_path / "config.yaml"
    path.write_text(text.replace("poll_intervall_s", "poll_interval_s"))
    [device] = load_config(path, environ={}).config.devices
    assert device.name == "m1" and device.poll_interval_s == 5  # type: ignore[union-attr]


def test_a_numeric_password_is_not_shown(tmp_path: Path) -> None:
    text = (CASES / "mqtt_password_is_a_number" / "config.yaml").read_text()
    assert "918273645501" in text
    assert not any("918273645501" in line
                   for line in _problems(CASES / "mqtt_password_is_a_number" / "config.yaml"))


def test_a_plc_type_name_is_suggested_by_meaning(tmp_path: Path) -> None:
    text = (CASES / "valid_minimal" / "config.yaml").read_text()
    for written, meant in (("float", "float32"), ("REAL", "float32"), ("DINT", "int32")):
        (tmp_path / "c.yaml").write_text(text.replace("type: float32", f"type: {written}"))
        [problem] = _problems(tmp_path / "c.yaml")
        assert problem.endswith(f"({written} is {meant} here)"), problem


def test_tls_false_is_short_for_enabled_false(tmp_path: Path) -> None:
    text = (CASES / "valid_minimal" / "config.yaml").read_text()
    (tmp_path / "c.yaml").write_text(text.replace("  tls:\n    enabled: false\n", "  tls: false\n"))
    mqtt = load_config(tmp_path / "c.yaml", environ={}).config.mqtt
    assert not mqtt.tls.enabled and mqtt.effective_port == 1883


def test_check_warns_about_tls_towards_1883_and_a_password_in_the_file(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    text = (CASES / "valid_minimal" / "config.yaml").read_text()
    tls_1883 = text.replace("  tls:\n    enabled: false\n", "  port: 1883\n")
    (tmp_path / "c.yaml").write_text(tls_1883)
    assert main(["check", "-c", str(tmp_path / "c.yaml")]) == 0
    assert "mqtt: TLS towards port 1883" in capsys.readouterr().err
    literal = text.replace("  tls:\n", "  username: u\n  password: hunter2\n  tls:\n")
    (tmp_path / "c.yaml").write_text(literal)
    assert main(["check", "-c", str(tmp_path / "c.yaml")]) == 0
    err = capsys.readouterr().err
    assert "mqtt.password is written in the file" in err and "hunter2" not in err
    (tmp_path / "c.yaml").write_text(literal.replace("hunter2", "${PW}"))
    monkeypatch.setenv("PW", "hunter2")
    assert main(["check", "-c", str(tmp_path / "c.yaml")]) == 0
    assert "written in the file" not in capsys.readouterr().err


def test_commands_find_the_config_without_c(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("EDGE_AGENT_CONFIG", str(ROOT / "config" / "example.yaml"))
    assert main(["check"]) == 0
    assert "compressor-1" in capsys.readouterr().out
    monkeypatch.setenv("EDGE_AGENT_CONFIG", "/nonexistent/config.yaml")
    with pytest.raises(SystemExit) as exited:
        main(["check"])
    assert exited.value.code == 2
    assert "no -c given: the default is $EDGE_AGENT_CONFIG" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0 and capsys.readouterr().out.startswith("edge-agent ")


@pytest.mark.parametrize(("old", "new", "expected"), [
    ("address: 0\n", "address: 0\n        scale: .nan\n",
     "devices[0].tags[0].scale: input should be a finite number"),
    ("address: 0\n", "address: 0\n        valid_range: [0, .inf]\n",
     "devices[0].tags[0].valid_range[1]: input should be a finite number"),
    ("poll_interval_s", "poll_interval_s", None),  # the file as it is: valid
    ("mqtt:\n  host: 127.0.0.1", "mqtt:\n  host: ''",
     "mqtt.host: string should have at least 1 character"),
    ("    host: 127.0.0.1\n    tags:", "    host: ''\n    tags:",
     "devices[0].host: string should have at least 1 character"),
])
def test_numbers_are_finite_and_sensible_and_hosts_not_empty(
        tmp_path: Path, old: str, new: str, expected: str | None) -> None:
    text = (CASES / "valid_minimal" / "config.yaml").read_text()
    path = tmp_path / "c.yaml"
    path.write_text(text.replace(old, new, 1))
    if expected is None:
        load_config(path, environ={})
        return
    problems = _problems(path)
    assert any(expected in p for p in problems), problems


def test_a_rule_threshold_or_half_life_of_1e30_is_refused(tmp_path: Path) -> None:
    text = (CASES / "valid_minimal" / "config.yaml").read_text()
    path = tmp_path / "c.yaml"
    for rule, expected in (
            ("{device: m1, kind: zscore, tags: [a], baseline_halflife_samples: 1e30}",
             "detectors[0].baseline_halflife_samples: 1e+30 is beyond any sensible count"),
            ("{device: m1, kind: limits, tags: [a], high: 5, hysteresis: 1e30}",
             "detectors[0].hysteresis: 1e+30 is beyond any sensible value"),
            ("{device: m1, kind: stuck, tags: [a], stuck_after_s: 1e30}",
             "detectors[0].stuck_after_s: 1e+30 is beyond any sensible duration in seconds"),
            ("{device: m1, kind: limits, tags: [a], max_rate_per_s: 1e30}",
             "detectors[0].max_rate_per_s: 1e+30 is beyond any sensible value"),
            ("{device: m1, kind: limits, tags: [a], high: .nan}",
             "detectors[0].high: input should be a finite number")):
        path.write_text(text + f"detectors:\n  - {rule}\n")
        problems = _problems(path)
        assert any(expected in p for p in problems), problems

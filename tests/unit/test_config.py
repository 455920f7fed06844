"""Configuration: the example loads, and every broken file gets its golden, line-numbered error."""

from __future__ import annotations

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

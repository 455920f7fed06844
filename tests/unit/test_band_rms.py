"""`band_rms`: the RMS of a fast signal in frequency bands, from a short FFT. Its FFT against
numpy's, what it measures, what it catches that the broadband `rms` rule does not, and what
it leaves alone. Pure and fast; tests/integration/test_kernel_forms.py runs this file again
with numba's JIT and as plain Python, so every form of the kernel is tested.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from agent.config import ConfigError, load_config
from agent.config.detection import BandRmsRule, DetectorRule, RmsRule
from agent.detect.base import DetectorChain
from agent.detect.kernels import band as kb
from agent.detect.rules import rule_detectors
from agent.events import ANOMALY, Event
from drivers.samples import Quality, SampleBatch

S = 1_000_000_000
T0 = 1_700_000_000 * S
FS = 10240.0  # Hz: 10 Hz bins with 1,024-sample blocks
CAPTURE = 2048  # samples of one array value (an OPC UA array read once a second)


def chain(*rules: DetectorRule) -> DetectorChain:
    return DetectorChain(rule_detectors("m1", [(r.name or f"{r.kind}-{i}", r)
                                               for i, r in enumerate(rules, 1)]))


def band_rule(**kw: Any) -> BandRmsRule:
    settings_: dict[str, Any] = {"kind": "band_rms", "device": "m1", "tags": ["vib"],
                                 "sample_rate_hz": FS, "fft_samples": 1024,
                                 "bands": [{"name": "bearing", "low_hz": 500, "high_hz": 2000}]}
    settings_.update(kw)
    return BandRmsRule(**settings_)


def capture(det: DetectorChain, x: np.ndarray, t_s: float, tag: str = "vib",
            quality: np.ndarray | None = None) -> list[Event]:
    """One batch holding every sample of `x` (a burst of one tag, in time order)."""
    q = np.zeros(len(x), dtype=np.uint8) if quality is None else quality
    return det.on_batch(SampleBatch("m1", (tag,) * len(x), np.ascontiguousarray(x, dtype=float),
                                    q, T0 + int(t_s * S), int(t_s * S)))


def tone(freq_hz: float, amplitude: float, t_s: float, n: int = CAPTURE) -> np.ndarray:
    t = t_s + np.arange(n) / FS
    return amplitude * np.sin(2 * np.pi * freq_hz * t)


# --- the transform ----------------------------------------------------------------------------

@settings(max_examples=40, deadline=None)
@given(st.data())
def test_fft_matches_numpy_fft(data: st.DataObject) -> None:
    m = 2 ** data.draw(st.integers(1, 11), label="log2 length")
    values = hnp.arrays(np.float64, 2 * m, elements=st.floats(-1e6, 1e6, allow_nan=False))
    x = data.draw(values, label="re and im")
    z = x[:m] + 1j * x[m:]
    tw_re, tw_im, bitrev = kb.fft_tables(2 * m)  # a complex FFT of m points runs at stride 2
    re, im = np.ascontiguousarray(z.real), np.ascontiguousarray(z.imag)
    kb.fft_radix2(re, im, m, bitrev, tw_re, tw_im, 2)
    expected = np.fft.fft(z)
    np.testing.assert_allclose(re + 1j * im, expected, rtol=0,
                               atol=1e-12 * (1.0 + np.abs(x).sum()) * math.log2(2 * m))


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_real_fft_power_matches_numpy_rfft(data: st.DataObject) -> None:
    n = 2 ** data.draw(st.integers(2, 12), label="log2 length")
    x = data.draw(hnp.arrays(np.float64, n, elements=st.floats(-1e6, 1e6, allow_nan=False)),
                  label="signal")
    tw_re, tw_im, bitrev = kb.fft_tables(n)
    power = np.zeros(n // 2 + 1)
    kb.rfft_power(np.ascontiguousarray(x[0::2]), np.ascontiguousarray(x[1::2]), power, n,
                  bitrev, tw_re, tw_im)
    expected = np.abs(np.fft.rfft(x)) ** 2
    scale = (1.0 + np.abs(x).sum()) ** 2
    np.testing.assert_allclose(power, expected, rtol=0, atol=1e-12 * scale * math.log2(n))


# --- what it measures -------------------------------------------------------------------------

# Outside the band, what leaks from the tone 180 bins away or more: Hann's sidelobes fall
# fastest, Hamming's far ones slowly, the rectangular window's slowest.
@pytest.mark.parametrize(("window", "outside"), [("hann", 1e-5), ("hamming", 5e-3),
                                                 ("rectangular", 3e-2)])
@pytest.mark.parametrize("freq_hz", [1234.5, 1240.0], ids=["between-bins", "on-a-bin"])
def test_band_rms_of_a_sine_is_amplitude_over_root_two_in_its_band_and_zero_elsewhere(
        window: str, outside: float, freq_hz: float) -> None:
    bands = [{"name": "bearing", "low_hz": 500, "high_hz": 2000, "max_rms": 100},
             {"name": "high", "low_hz": 3000, "high_hz": 5120, "max_rms": 100},
             {"name": "low", "low_hz": 30, "high_hz": 300, "max_rms": 100}]
    det = chain(band_rule(window=window, bands=bands, average_blocks=1))
    amplitude = 2.0
    # An offset of 5 (an accelerometer's bias): the block's mean is removed, so the low band
    # does not see it through the window's leakage.
    capture(det, 5.0 + tone(freq_hz, amplitude, 0.0), 0.0)
    scores = det.scores()
    # Leakage: the tone is 70 bins or more inside the band, so what it loses is small.
    assert scores["band_rms-1:vib:bearing"] == pytest.approx(amplitude / math.sqrt(2), rel=2e-3)
    assert scores["band_rms-1:vib:high"] < outside * amplitude
    assert scores["band_rms-1:vib:low"] < outside * amplitude


def test_band_rms_of_white_noise_is_its_share_of_the_variance() -> None:
    """Parseval with the window's power correction: a band holding a fraction of the
    spectrum holds that fraction of a white signal's variance, whatever the window."""
    rng = np.random.default_rng(5)
    bands = [{"name": "a", "low_hz": 1280, "high_hz": 2560, "max_rms": 100},
             {"name": "all", "low_hz": 0, "high_hz": FS / 2, "max_rms": 100}]
    det = chain(band_rule(bands=bands, continuous=True, average_blocks=200))
    for k in range(50):  # 200 blocks
        capture(det, rng.normal(0.0, 2.0, CAPTURE), k)
    scores = det.scores()
    assert scores["band_rms-1:vib:a"] == pytest.approx(2.0 * math.sqrt(0.25), rel=0.05)
    assert scores["band_rms-1:vib:all"] == pytest.approx(2.0, rel=0.05)


# --- what it catches, and what it leaves alone --------------------------------------------------

def machine(t_s: float, rng: np.random.Generator, bearing: float = 0.0) -> np.ndarray:
    """A motor at 1,488 rpm: running speed (24.8 Hz) and its second harmonic, some noise;
    a bearing defect adds a tone at 1,370 Hz. The running-speed line gives up exactly the
    power the defect takes, so the broadband level stays the same."""
    first = math.sqrt(1.6 ** 2 - bearing ** 2)
    x = tone(24.8, first, t_s) + tone(49.6, 0.6, t_s) + tone(1370.0, bearing, t_s)
    return x + rng.normal(0.0, 0.05, CAPTURE)


def test_a_bearing_tone_is_caught_by_band_rms_while_the_broadband_rms_at_its_defaults_is_not() -> None:
    rng = np.random.default_rng(7)
    det = chain(RmsRule(kind="rms", device="m1", tags=["vib"]), band_rule(name="bearing-band"))
    events: list[Event] = []
    healthy = [machine(k, rng) for k in range(10)]
    for k, x in enumerate(healthy):
        events += capture(det, x, k)
    assert events == []
    faulty = [machine(10 + k, rng, bearing=0.2) for k in range(10)]
    for k, x in enumerate(faulty):
        events += capture(det, x, 10 + k)
    # The broadband level really did not move: the point of a band.
    overall = [float(np.std(np.concatenate(xs))) for xs in (healthy, faulty)]
    assert overall[1] == pytest.approx(overall[0], rel=0.01)
    assert [(e.data["detector"], e.data["phase"]) for e in events] == [("band_rms", "start")]
    start = events[0]
    assert start.kind == ANOMALY and start.data["rule"] == "bearing-band"
    assert start.data["band"] == "bearing" and start.data["band_hz"] == [500.0, 2000.0]
    assert start.data["score"] > start.data["threshold"]
    # Its value is the block's broadband RMS: the tone is a small part of it.
    assert start.data["peak_value"] == pytest.approx(overall[1], rel=0.05)
    assert math.isfinite(det.scores()["rms-1:vib"])


@pytest.mark.parametrize("min_limit_rms", [None, 0.5])
def test_a_band_learned_on_a_machine_at_rest_alarms_on_running_unless_its_limit_has_a_floor(
        min_limit_rms: float | None) -> None:
    """Learned while the motor stood (the sensor's noise alone), 3 x the band's level is a
    hair trigger for the running machine's normal vibration; `min_limit_rms` keeps the
    learned limit above it and still catches a defect."""
    rng = np.random.default_rng(5)
    det = chain(band_rule(bands=[{"name": "bearing", "low_hz": 500, "high_hz": 2000,
                                  "min_limit_rms": min_limit_rms}]))
    events = []
    for k in range(12):  # at rest: 24 blocks of noise (learned on the first 20)
        events += capture(det, rng.normal(0.0, 0.005, CAPTURE), k)
    assert events == []
    for k in range(12, 20):  # running, healthy: some of the noise falls in the band
        events += capture(det, machine(k, rng), k)
    if min_limit_rms is None:
        assert [e.data["phase"] for e in events] == ["start"]
        assert events[0].data["threshold"] < 0.01
        return
    assert events == []
    for k in range(20, 25):  # a bearing defect: over the floor
        events += capture(det, machine(k, rng, bearing=1.0), k)
    assert [e.data["phase"] for e in events] == ["start"]
    assert events[0].data["threshold"] == 0.5


def test_stationary_noise_raises_no_alarm_even_in_a_one_bin_band() -> None:
    rng = np.random.default_rng(11)
    bands = [{"name": "one-bin", "low_hz": 1000, "high_hz": 1040},
             {"name": "bearing", "low_hz": 500, "high_hz": 2000},
             {"name": "all", "low_hz": 0, "high_hz": FS / 2}]
    det = chain(band_rule(fft_samples=256, bands=bands, continuous=True))
    events: list[Event] = []
    for k in range(50):  # 400 blocks of 256 samples, half overlapping
        events += capture(det, machine(k, rng)[:1024], k)
    assert events == []
    assert all(math.isfinite(v) for v in det.scores().values())


@pytest.mark.parametrize(("average_blocks", "end_s"), [(1, 20), (4, 22)])
def test_an_episode_ends_once_the_band_is_back_under_its_clear_level(
        average_blocks: float, end_s: int) -> None:
    """Averaging over blocks (4 by default) rises within a block of a strong tone but takes a
    few blocks (here two captures of 3 blocks) to forget it."""
    rng = np.random.default_rng(3)
    det = chain(band_rule(context_samples=4, min_duration_s=1.0, average_blocks=average_blocks))
    events: list[tuple[int, Event]] = []
    for k in range(30):
        bearing = 0.3 if 10 <= k < 20 else 0.0
        events += [(k, e) for e in capture(det, machine(k, rng, bearing), k)]
    assert [(k, e.data["phase"]) for k, e in events] == [(11, "start"), (end_s, "end")]
    start, end = events[0][1], events[1][1]
    assert start.data["episode"] == end.data["episode"]
    assert start.data["start_ns"] == T0 + 10 * S  # the first block over, in its batch
    assert end.data["end_ns"] == T0 + end_s * S and end.data["duration_s"] == end_s - 10
    assert end.data["band"] == "bearing"
    # Context: the tag's last good samples before the start, and those after the end.
    assert len(start.data["tags"]["vib"]["before"]) == 4
    assert len(end.data["tags"]["vib"]["after"]) == 4


def test_scores_are_keyed_rule_tag_band_and_nan_while_learning_without_an_absolute_limit() -> None:
    rng = np.random.default_rng(1)
    bands = [{"name": "bearing", "low_hz": 500, "high_hz": 2000},
             {"name": "gear", "low_hz": 2000, "high_hz": 4000, "max_rms": 1.0}]
    det = chain(band_rule(name="pump", bands=bands, warmup_blocks=6))
    capture(det, machine(0, rng), 0)  # 3 blocks
    scores = det.scores()
    assert set(scores) == {"pump:vib:bearing", "pump:vib:gear"}
    assert math.isnan(scores["pump:vib:bearing"]) and math.isfinite(scores["pump:vib:gear"])
    capture(det, machine(1, rng), 1)  # 6 blocks: learned
    assert math.isfinite(det.scores()["pump:vib:bearing"])


# --- what never enters ------------------------------------------------------------------------

def test_bad_quality_and_nan_samples_never_enter_and_no_block_spans_them() -> None:
    rng = np.random.default_rng(2)
    x = machine(0, rng)
    quality = np.zeros(CAPTURE, dtype=np.uint8)
    x_bad = x.copy()
    x_bad[100], quality[100] = 1e6, Quality.BAD
    x_bad[1500] = math.nan  # marked good, but not a number
    det = chain(band_rule(bands=[{"name": "bearing", "low_hz": 500, "high_hz": 2000,
                                  "max_rms": 100}], average_blocks=1))
    assert capture(det, x_bad, 0, quality=quality) == []
    # The only run of 1,024 good samples is 101..1124: one block, that one.
    clean = chain(band_rule(bands=[{"name": "bearing", "low_hz": 500, "high_hz": 2000,
                                    "max_rms": 100}], average_blocks=1))
    capture(clean, x[101:1125], 0)
    # (the ring holds them in another place: its sums run in another order)
    assert det.scores()["band_rms-1:vib:bearing"] == pytest.approx(
        clean.scores()["band_rms-1:vib:bearing"], rel=1e-12)
    assert math.isfinite(det.scores()["band_rms-1:vib:bearing"])


def test_a_block_spans_batches_only_when_they_continue_one_stream() -> None:
    rng = np.random.default_rng(4)
    x = np.concatenate([machine(k, rng) for k in range(2)])
    pieces = np.array_split(x, 16)  # 256 samples each: shorter than a block
    limit = [{"name": "bearing", "low_hz": 500, "high_hz": 2000, "max_rms": 100}]
    captures = chain(band_rule(bands=limit))
    stream = chain(band_rule(bands=limit, continuous=True))
    whole = chain(band_rule(bands=limit, continuous=True))
    for k, piece in enumerate(pieces):
        capture(captures, piece, k * 0.025)
        capture(stream, piece, k * 0.025)
    capture(whole, x, 0.0)
    assert math.isnan(captures.scores()["band_rms-1:vib:bearing"])
    assert stream.scores()["band_rms-1:vib:bearing"] == pytest.approx(
        whole.scores()["band_rms-1:vib:bearing"], rel=1e-12)


def test_captures_that_arrive_together_are_still_captures_of_their_own() -> None:
    """A subscription's publish can bring two captures of an array tag (a queue of 2, or two
    publishes read at once): two batches of two source times with one monotonic time of
    reception. No block may span them: here each is 768 samples, short of a block, and a
    block across the phase jump between them would leak into a band the tones are far from."""
    limit = [{"name": "bearing", "low_hz": 500, "high_hz": 2000, "max_rms": 100}]
    first, second = tone(24.8, 1.0, 0.0, 768), tone(24.8, 1.0, 0.3, 768)
    together = chain(band_rule(bands=limit, average_blocks=1))
    for k, x in enumerate((first, second)):
        together.on_batch(SampleBatch("m1", ("vib",) * 768, x, np.zeros(768, dtype=np.uint8),
                                      T0 + k * S, 5 * S))
    assert math.isnan(together.scores()["band_rms-1:vib:bearing"]), "a block spanned both"


def test_rules_of_several_block_lengths_and_tags_share_one_detector() -> None:
    rng = np.random.default_rng(6)
    bands = [{"name": "bearing", "low_hz": 500, "high_hz": 2000, "max_rms": 100}]
    short = band_rule(name="short", tags=["vib", "vib2"], fft_samples=256, bands=bands,
                      average_blocks=1)
    long = band_rule(name="long", fft_samples=4096, bands=bands, average_blocks=1)
    det = chain(short, long)
    noise = rng.normal(0.0, 0.01, 4096)
    batch_tags = ("vib", "vib2") * 4096
    values = np.empty(8192)
    values[0::2] = tone(1000.0, 1.0, 0.0, 4096) + noise
    values[1::2] = noise
    det.on_batch(SampleBatch("m1", batch_tags, values, np.zeros(8192, dtype=np.uint8), T0, 0))
    scores = det.scores()
    assert scores["short:vib:bearing"] == pytest.approx(1 / math.sqrt(2), rel=0.01)
    assert scores["long:vib:bearing"] == pytest.approx(1 / math.sqrt(2), rel=0.01)
    assert scores["short:vib2:bearing"] < 0.01


def test_bins_are_those_whose_centre_lies_in_the_band_and_the_top_band_keeps_nyquist() -> None:
    rule = band_rule(bands=[{"name": "a", "low_hz": 500, "high_hz": 2000},
                            {"name": "b", "low_hz": 4995, "high_hz": 5120}])
    assert rule.resolution_hz == 10.0
    assert rule.bins(rule.bands[0]) == (50, 199)
    assert rule.bins(rule.bands[1]) == (500, 512)


# --- what the device can deliver ------------------------------------------------------------

CASES = Path(__file__).parent / "config_cases"


def test_a_modbus_stream_is_accepted_at_its_poll_rate_and_refused_at_another(
        tmp_path: Path) -> None:
    text = (CASES / "band_rms_modbus_not_continuous" / "config.yaml").read_text()
    path = tmp_path / "config.yaml"
    path.write_text(text.replace("    fft_samples: 256\n", "    fft_samples: 256\n    continuous: true\n"))
    [rule] = load_config(path, environ={}).config.detectors
    assert isinstance(rule, BandRmsRule) and rule.resolution_hz == 100 / 256
    path.write_text(path.read_text().replace("sample_rate_hz: 100", "sample_rate_hz: 1000"))
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})
    assert caught.value.lines == [
        (f"{path}:24: detectors[0].sample_rate_hz: tag 'pressure' is polled at 100 Hz, not at "
         "sample_rate_hz 1000 Hz (a sample per poll)")]


def test_an_opcua_stream_in_short_arrays_is_accepted_when_continuous(tmp_path: Path) -> None:
    text = (CASES / "band_rms_array_shorter_than_a_block" / "config.yaml").read_text()
    path = tmp_path / "config.yaml"
    path.write_text(text.replace("    fft_samples: 1024\n",
                                 "    fft_samples: 1024\n    continuous: true\n"))
    [rule] = load_config(path, environ={}).config.detectors
    assert isinstance(rule, BandRmsRule) and rule.continuous


def test_a_bands_learned_level_is_kept_across_a_restart_and_another_block_learns_again() -> None:
    """`learned()`/`restore()` (agent.detect.learned_state): the level learned over the
    warm-up blocks comes back for the same rule; another block length is another level."""
    from agent.detect.band import BandRmsDetector

    rule = band_rule(warmup_blocks=4, name="b")
    rng = np.random.default_rng(2)
    (first,) = rule_detectors("m1", [("b", rule)])
    assert isinstance(first, BandRmsDetector)
    for i in range(6):
        first.on_batch(SampleBatch("m1", ("vib",) * CAPTURE, rng.normal(0, 1, CAPTURE),
                                   np.zeros(CAPTURE, dtype=np.uint8), T0 + i * S, i * S))
    saved = first.learned()
    (again,) = rule_detectors("m1", [("b", rule)])
    assert isinstance(again, BandRmsDetector) and again.restore(saved) == 1
    assert again.learned() == saved
    (other,) = rule_detectors("m1", [("b", band_rule(warmup_blocks=4, name="b",
                                                      fft_samples=512))])
    assert isinstance(other, BandRmsDetector) and other.restore(saved) == 0

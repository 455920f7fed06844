"""The fleet view's login hashes and its SVG plots."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from fleet.auth import hash_password, verify_password
from fleet.cli import main
from fleet.plots import series_plot, state_timeline
from fleet.queries import Point, Segment

T0 = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
H = dt.timedelta(hours=1)


def test_a_hash_verifies_its_password_only() -> None:
    stored = hash_password("correct horse battery")
    assert stored.startswith("scrypt$16384$8$1$") and "correct" not in stored
    assert verify_password("correct horse battery", stored)
    assert not verify_password("correct horse batterY", stored)
    assert not verify_password("x", "not a hash") and not verify_password("x", "md5$1$2$3$4$5")
    assert hash_password("same") != hash_password("same")  # salted


def test_the_timeline_spans_the_width_and_escapes_names() -> None:
    svg = state_timeline([Segment("running", T0, T0 + H), Segment("<idle>", T0 + H, T0 + 2 * H)],
                         T0, T0 + 2 * H, width=100)
    assert 'x="0.00" y="0" width="50.00"' in svg and 'x="50.00"' in svg
    assert "<idle>" not in svg and "&lt;idle&gt;" in svg


def test_the_series_plot_draws_the_mean_over_its_band() -> None:
    points = [Point(T0 + k * H, 10.0 + k, 9.0 + k, 11.0 + k) for k in range(3)]
    svg = series_plot(points, T0, T0 + 2 * H, "<°C>")
    assert svg.count("<polyline") == 1 and svg.count("<polygon") == 1
    assert "&lt;°C&gt;" in svg
    assert "no windows" in series_plot([], T0, T0 + H, "")


def test_serve_refuses_to_start_without_a_login(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "fleet.yaml"
    path.write_text("mqtt: {host: b, tls: false}\ndatabase: {dsn: x}\n")
    assert main(["serve", "-c", str(path)]) == 2
    assert "serve.users: give at least one login" in capsys.readouterr().err

"""The Sparkplug B payload codec: the committed protobuf module matches the official .proto,
values keep their type through the wire, and topics are named as the spec says."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from agent.uplink.sparkplug import codec, topics
from agent.uplink.sparkplug.codec import DataType, Metric, Payload

SPB = Path(__file__).resolve().parents[2] / "agent" / "uplink" / "sparkplug"


def test_committed_protobuf_module_is_generated_from_the_committed_proto(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{SPB}",
                    f"--python_out={tmp_path}", f"--pyi_out={tmp_path}",
                    str(SPB / "sparkplug_b.proto")], check=True)
    for name in ("sparkplug_b_pb2.py", "sparkplug_b_pb2.pyi"):
        assert (tmp_path / name).read_bytes() == (SPB / name).read_bytes(), (
            f"{name} is out of date with sparkplug_b.proto: run `make sparkplug-proto`")


def test_proto_keeps_its_licence_header() -> None:
    head = (SPB / "sparkplug_b.proto").read_text().splitlines()[:8]
    assert "SPDX-License-Identifier: EPL-2.0" in "\n".join(head)


_values = st.one_of(
    st.tuples(st.just(DataType.INT64), st.integers(-(2**63), 2**63 - 1)),
    st.tuples(st.just(DataType.UINT64), st.integers(0, 2**64 - 1)),
    st.tuples(st.just(DataType.DOUBLE), st.floats(allow_nan=False)),
    st.tuples(st.just(DataType.BOOLEAN), st.booleans()),
    st.tuples(st.just(DataType.STRING), st.text()),
    st.tuples(st.sampled_from(list(DataType)), st.none()),
)


@given(st.lists(_values, max_size=5), st.integers(0, 255), st.booleans())
def test_metrics_keep_value_and_type_through_the_wire(
    values: list[tuple[DataType, object]], seq: int, historical: bool
) -> None:
    metrics = [Metric(f"m{i}", i + 1, dtype, value, 1_700_000_000_000 + i, historical)  # type: ignore[arg-type]
               for i, (dtype, value) in enumerate(values)]
    decoded = codec.decode(codec.encode(Payload(1_700_000_000_000, seq, metrics)))
    assert decoded.seq == seq and list(decoded.metrics) == metrics


def test_ndeath_carries_no_seq_and_properties_survive() -> None:
    metric = Metric("power/mean", 7, DataType.DOUBLE, 1.5,
                    properties={"engUnit": "W", "engLow": 0.0, "engHigh": 9000.0})
    decoded = codec.decode(codec.encode(Payload(5, None, [metric])))
    assert decoded.seq is None and decoded.metrics[0].properties == metric.properties


def test_topic_names_follow_the_spec() -> None:
    assert topics.node_topic("lab", "NBIRTH", "gw-1") == "spBv1.0/lab/NBIRTH/gw-1"
    assert topics.device_topic("lab", "DDATA", "gw-1", "press") == "spBv1.0/lab/DDATA/gw-1/press"
    assert topics.state_topic("scada") == "spBv1.0/STATE/scada"
    assert topics.parse("spBv1.0/lab/DDATA/gw-1/press") == ("lab", "DDATA", "gw-1", "press")
    assert topics.parse("spBv1.0/lab/NCMD/gw-1") == ("lab", "NCMD", "gw-1", None)
    assert topics.parse("spBv1.0/STATE/scada") == ("", "STATE", "scada", None)
    assert topics.parse("lab/gw-1/press/window") is None
    assert topics.parse("spBv1.0/lab/DDATA/gw-1") is None, "DDATA names a device"

"""Logging in to an OPC UA server with a user certificate (X509IdentityToken), against
firmware-sim's asyncua server with security switched on and one user certificate registered.

The certificates are throw-away ones made here; the registered one is written as PEM under the
names technicians get from a customer's PKI (`.crt`, `.key`), not `.pem`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from drivers.errors import SecurityRejected
from drivers.opcua import OpcUaDevice, OpcUaDriver, pki
from drivers.samples import Quality
from plc_sim.opcua_server import OpcUaSimServer
from plc_sim.scenarios import SCENARIOS, ScenarioOptions

pytestmark = pytest.mark.asyncio(loop_scope="module")


def user_certificate(folder: Path, name: str) -> tuple[Path, Path]:
    """A self-signed RSA user certificate and its unencrypted key, both PEM (`.crt`, `.key`)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder()
            .subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    folder.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = folder / f"{name}.crt", folder / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


@pytest.fixture(scope="module")
def operator(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The user certificate the server has registered."""
    return user_certificate(tmp_path_factory.mktemp("operator"), "operator")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def sim(tmp_path_factory: pytest.TempPathFactory,
              operator: tuple[Path, Path]) -> AsyncIterator[OpcUaSimServer]:
    machine = SCENARIOS["compressor"].factory(ScenarioOptions())
    server = OpcUaSimServer("compressor", machine.trace_record, advance=machine.advance,
                            tick_s=0.05, security=True,
                            pki_dir=tmp_path_factory.mktemp("server-pki"),
                            user_certificates={"operator": operator[0]})
    await server.start()
    yield server
    await server.stop()


def driver(sim: OpcUaSimServer, state_dir: Path, cert: Path, key: Path,
           **security: str) -> OpcUaDriver:
    """A driver of a device logging in with (cert, key), the server's certificate pinned."""
    assert sim.certificate_path is not None
    pki.pin(pki.load_certificate(sim.certificate_path.read_bytes()), pki.pki_dir(state_dir))
    config = OpcUaDevice.model_validate({
        "name": "comp", "protocol": "opcua", "endpoint": sim.endpoint, "timeout_s": 2,
        "security": {"policy": "Basic256Sha256", "mode": "SignAndEncrypt",
                     "user_certificate": str(cert), "user_private_key": str(key), **security},
        "tags": [{"name": "power", "node": sim.node_id("active_power_w"), "mode": "poll"}]})
    return OpcUaDriver(config, state_dir)


async def connect_refused(device: OpcUaDriver) -> SecurityRejected:
    try:
        with pytest.raises(SecurityRejected) as refused:
            await device.connect()
    finally:
        await device.close()
    assert refused.value.reason == "security"
    return refused.value


async def test_registered_user_certificate_logs_in_and_reads_values(
        sim: OpcUaSimServer, operator: tuple[Path, Path], tmp_path: Path) -> None:
    device = driver(sim, tmp_path, *operator)
    try:
        await device.connect()  # anonymous sessions are refused: the certificate let it in
        batch = await device.read(device.plans[0])
    finally:
        await device.close()
    assert batch.tags == ("power",)
    assert batch.quality[0] == Quality.GOOD
    assert batch.values[0] > 0


async def test_application_certificate_issued_as_pem_crt_and_key_files_is_used(
        sim: OpcUaSimServer, operator: tuple[Path, Path], tmp_path: Path) -> None:
    # Any certificate will do for this server (it trusts every client application).
    app_cert, app_key = user_certificate(tmp_path / "app", "gateway")
    device = driver(sim, tmp_path, *operator, certificate=str(app_cert),
                    private_key=str(app_key))
    try:
        await device.connect()
        batch = await device.read(device.plans[0])
    finally:
        await device.close()
    assert batch.quality[0] == Quality.GOOD
    assert not (tmp_path / "pki" / pki.CERT_FILE).exists()  # none made: the given one is used


async def test_unregistered_user_certificate_is_refused_as_a_security_error(
        sim: OpcUaSimServer, tmp_path: Path) -> None:
    stranger = user_certificate(tmp_path / "stranger", "stranger")
    refused = await connect_refused(driver(sim, tmp_path, *stranger))
    assert "BadUserAccessDenied" in refused.detail
    assert "does not accept the user certificate" in refused.detail and "registered" in refused.detail


async def test_user_key_of_another_certificate_is_refused_naming_both_files(
        sim: OpcUaSimServer, operator: tuple[Path, Path], tmp_path: Path) -> None:
    _, other_key = user_certificate(tmp_path / "other", "other")
    refused = await connect_refused(driver(sim, tmp_path, operator[0], other_key))
    assert (f"security.user_private_key {other_key} is not the key of "
            f"security.user_certificate {operator[0]} (SHA-256 ") in refused.detail


async def test_unreadable_or_unusable_user_files_are_refused_naming_the_file(
        sim: OpcUaSimServer, operator: tuple[Path, Path], tmp_path: Path) -> None:
    cert, key = operator
    missing = tmp_path / "missing.crt"
    refused = await connect_refused(driver(sim, tmp_path, missing, key))
    assert (f"cannot read security.user_certificate {missing}: No such file or directory"
            in refused.detail)

    garbage = tmp_path / "garbage.key"
    garbage.write_text("-----BEGIN PRIVATE KEY-----\nsecret-looking garbage\n")
    refused = await connect_refused(driver(sim, tmp_path, cert, garbage))
    assert f"cannot read security.user_private_key {garbage}: " in refused.detail
    assert "unencrypted PEM or DER key" in refused.detail
    assert "secret-looking" not in refused.detail

    refused = await connect_refused(driver(sim, tmp_path, cert, key, certificate=str(missing),
                                           private_key=str(key)))
    assert (f"cannot read security.certificate {missing}: No such file or directory"
            in refused.detail)

    ec_key = tmp_path / "ec.key"
    ec_key.write_bytes(ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    refused = await connect_refused(driver(sim, tmp_path, cert, ec_key))
    assert f"security.user_private_key {ec_key} is not an RSA key" in refused.detail

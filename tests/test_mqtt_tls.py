"""The gateway reaches a broker that demands TLS and a password, as the shipped configs do."""

from __future__ import annotations

import datetime
import ipaddress
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from simulators.broker import Mosquitto
from simulators.daemon import GatewayProcess

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parent.parent


def _pem(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    path.chmod(0o644)
    return path


def _certificates(tmp: Path) -> tuple[Path, Path, Path]:
    """A private CA and a broker certificate for 127.0.0.1 signed by it."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "store test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(1)
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "broker")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(2)
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    return (
        _pem(tmp / "ca.crt", ca.public_bytes(pem)),
        _pem(tmp / "broker.crt", cert.public_bytes(pem)),
        _pem(
            tmp / "broker.key",
            key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
        ),
    )


@pytest.fixture
def secure_broker(tmp_path: Path) -> Mosquitto:
    if shutil.which("mosquitto_passwd") is None:
        pytest.fail("mosquitto_passwd missing; scripts/test installs mosquitto")
    ca, cert, key = _certificates(tmp_path)
    passwd = tmp_path / "passwd"
    passwd.touch()
    # As scripts/setup-host makes them: the scanner nodes' connection's user has the password too.
    for user in ("store-gateway", "store-gateway-nodes"):
        subprocess.run(["mosquitto_passwd", "-b", str(passwd), user, "s3cret"], check=True)
    return Mosquitto(
        tmp_path / "broker",
        extra_conf=(
            f"cafile {ca}\ncertfile {cert}\nkeyfile {key}\n"
            f"allow_anonymous false\npassword_file {passwd}\n"
        ),
    )


def _gateway(tmp_path: Path, broker: Mosquitto, password: str) -> GatewayProcess:
    (tmp_path / "mqtt.password").write_text(password + "\n")
    return GatewayProcess(
        REPO / "examples" / "demo.toml",
        tmp_path,
        overrides={
            "mqtt.port": str(broker.port),
            "mqtt.tls": "true",
            "mqtt.ca_file": str(tmp_path / "ca.crt"),
            "mqtt.username": "store-gateway",
            "mqtt.password_file": str(tmp_path / "mqtt.password"),
            "store.state_dir": str(tmp_path / "state"),
            "health.enabled": "false",
            "logging.format": "json",
        },
    )


def test_tls_with_password_connects(tmp_path: Path, secure_broker: Mosquitto) -> None:
    with secure_broker:
        gateway = _gateway(tmp_path, secure_broker, "s3cret")
        gateway.start()
        try:
            gateway.wait_ready(timeout=15)
        finally:
            assert gateway.stop() == 0
    assert "s3cret" not in gateway.log(tail=None)


def test_a_wrong_password_keeps_retrying_and_says_why(
    tmp_path: Path, secure_broker: Mosquitto
) -> None:
    with secure_broker:
        gateway = _gateway(tmp_path, secure_broker, "Wr0ng-Pa55")
        gateway.start()
        try:
            with pytest.raises(TimeoutError):
                gateway.wait_ready(timeout=3)
            assert gateway.alive
        finally:
            assert gateway.stop() == 0
    log = gateway.log(tail=None)
    assert "Not authorized" in log
    assert "Wr0ng-Pa55" not in log


def test_a_broker_without_the_nodes_user_still_serves_and_says_what_to_add(
    tmp_path: Path, secure_broker: Mosquitto
) -> None:
    """A broker set up before the scanner nodes' connection existed: the gateway serves (that
    connection is not critical) and its log says which user to add, or what to turn off."""
    passwd = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-D", str(passwd), "store-gateway-nodes"], check=True)
    with secure_broker:
        gateway = _gateway(tmp_path, secure_broker, "s3cret")
        gateway.start()
        try:
            gateway.wait_ready(timeout=15)  # the store and the devices' connection are up
            deadline = time.monotonic() + 10
            while "mqtt.nodes_connection = false" not in gateway.log(tail=None):
                assert time.monotonic() < deadline, gateway.log()
                time.sleep(0.1)
        finally:
            assert gateway.stop() == 0
    log = gateway.log(tail=None)
    assert "Not authorized: this connection logs in as 'store-gateway-nodes'" in log
    assert "s3cret" not in log

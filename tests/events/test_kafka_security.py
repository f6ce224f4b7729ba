"""Kafka connection security: what each KAFKA_SECURITY_PROTOCOL gives every producer, consumer and admin client,
checked against kafka-python itself (its option names, its SASL mechanisms, the TLS context it builds)."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.net.sasl import get_sasl_mechanism
from kafka.net.transport import KafkaSSLTransport

from arbiter.config.typed_settings import KafkaSecuritySettings, SettingsError, load_settings
from arbiter.events import clients


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _cert(
    subject: str, key: Any, issuer: tuple[str, Any] | None = None, *, ca: bool = False
) -> x509.Certificate:
    issuer_name, issuer_key = issuer or (subject, key)
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_name)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False
        )
    return builder.sign(issuer_key, hashes.SHA256())


def _pem(path: Path, thing: Any) -> Path:
    if isinstance(thing, x509.Certificate):
        path.write_bytes(thing.public_bytes(serialization.Encoding.PEM))
    else:
        path.write_bytes(
            thing.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
    return path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A CA, and a client certificate and key it signed, as PEM files."""
    where = tmp_path_factory.mktemp("pki")
    ca_key, client_key, stranger_key = _key(), _key(), _key()
    ca = _cert("arbiter-test-ca", ca_key, ca=True)
    return {
        "ca": _pem(where / "ca.pem", ca),
        "cert": _pem(where / "client.pem", _cert("arbiter-relay", client_key, ("arbiter-test-ca", ca_key))),
        "key": _pem(where / "client.key", client_key),
        "other_key": _pem(where / "other.key", stranger_key),
    }


def _security(**variables: Any) -> KafkaSecuritySettings:
    return load_settings(variables).kafka


def test_plaintext_adds_nothing_but_the_protocol() -> None:
    assert clients.connection_config(_security()) == {"security_protocol": "PLAINTEXT"}


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_sasl_gives_kafka_python_its_mechanism_and_credentials(mechanism: str) -> None:
    config = clients.connection_config(
        _security(
            KAFKA_SECURITY_PROTOCOL="SASL_PLAINTEXT",
            KAFKA_SASL_MECHANISM=mechanism,
            KAFKA_SASL_USERNAME="arbiter",
            KAFKA_SASL_PASSWORD="s3cret",
        )
    )
    assert config == {
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": mechanism,
        "sasl_plain_username": "arbiter",
        "sasl_plain_password": "s3cret",
    }
    # kafka-python's own mechanism accepts these credentials (it refuses a missing user or password).
    get_sasl_mechanism(mechanism)(host="broker", **config)


def test_mutual_tls_builds_the_context_kafka_python_connects_with(pki: dict[str, Path]) -> None:
    config = clients.connection_config(
        _security(
            KAFKA_SECURITY_PROTOCOL="SSL",
            KAFKA_SSL_CAFILE=str(pki["ca"]),
            KAFKA_SSL_CERTFILE=str(pki["cert"]),
            KAFKA_SSL_KEYFILE=str(pki["key"]),
        )
    )
    assert config == {
        "security_protocol": "SSL",
        "ssl_check_hostname": True,
        "ssl_cafile": str(pki["ca"]),
        "ssl_certfile": str(pki["cert"]),
        "ssl_keyfile": str(pki["key"]),
    }
    context = KafkaSSLTransport._build_ssl_context({**KafkaSSLTransport.DEFAULT_CONFIG, **config})
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert [c["subject"] for c in context.get_ca_certs()] == [((("commonName", "arbiter-test-ca"),),)]


def test_a_key_that_is_not_the_certificates_is_refused_by_the_tls_context(pki: dict[str, Path]) -> None:
    config = clients.connection_config(
        _security(
            KAFKA_SECURITY_PROTOCOL="SASL_SSL",
            KAFKA_SASL_USERNAME="arbiter",
            KAFKA_SASL_PASSWORD="s3cret",
            KAFKA_SSL_CERTFILE=str(pki["cert"]),
            KAFKA_SSL_KEYFILE=str(pki["other_key"]),
        )
    )
    assert config["sasl_mechanism"] == "PLAIN" and "ssl_cafile" not in config  # no CA: the system's
    with pytest.raises(ssl.SSLError):
        KafkaSSLTransport._build_ssl_context({**KafkaSSLTransport.DEFAULT_CONFIG, **config})


def test_every_option_is_one_each_kafka_python_client_knows(pki: dict[str, Path]) -> None:
    config = clients.connection_config(
        _security(
            KAFKA_SECURITY_PROTOCOL="SASL_SSL",
            KAFKA_SASL_MECHANISM="SCRAM-SHA-256",
            KAFKA_SASL_USERNAME="arbiter",
            KAFKA_SASL_PASSWORD="s3cret",
            KAFKA_SSL_CAFILE=str(pki["ca"]),
            KAFKA_SSL_CERTFILE=str(pki["cert"]),
            KAFKA_SSL_KEYFILE=str(pki["key"]),
        )
    )
    for client in (KafkaProducer, KafkaConsumer, KafkaAdminClient):
        unknown = set(config) - set(client.DEFAULT_CONFIG)
        assert not unknown, f"{client.__name__} does not know {unknown}"


@pytest.mark.parametrize(
    ("variables", "complaint"),
    [
        ({"KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}, "needs KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD"),
        (
            {"KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_USERNAME": "a"},
            "KAFKA_SECURITY_PROTOCOL=SASL_SSL needs KAFKA_SASL_PASSWORD",
        ),
        (
            {"KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_MECHANISM": "GSSAPI"},
            "KAFKA_SASL_MECHANISM: input should be 'PLAIN', 'SCRAM-SHA-256' or 'SCRAM-SHA-512', got 'GSSAPI'",
        ),
        ({"KAFKA_SECURITY_PROTOCOL": "TLS"}, "KAFKA_SECURITY_PROTOCOL: input should be 'PLAINTEXT'"),
        (
            {"KAFKA_SASL_USERNAME": "a", "KAFKA_SASL_PASSWORD": "b"},
            "KAFKA_SECURITY_PROTOCOL=PLAINTEXT does not use",
        ),
        ({"KAFKA_SSL_CAFILE": "/ca.pem"}, "KAFKA_SSL_CAFILE set but KAFKA_SECURITY_PROTOCOL=PLAINTEXT"),
        (
            {"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CERTFILE": "/c.pem"},
            "KAFKA_SSL_CERTFILE and KAFKA_SSL_KEYFILE go together",
        ),
    ],
)
def test_incomplete_or_contradictory_settings_are_refused(variables: dict[str, str], complaint: str) -> None:
    with pytest.raises(SettingsError, match=complaint.replace("(", r"\(").replace(")", r"\)")):
        load_settings(variables)


def test_the_password_never_appears_in_the_settings_repr() -> None:
    security = _security(
        KAFKA_SECURITY_PROTOCOL="SASL_SSL", KAFKA_SASL_USERNAME="a", KAFKA_SASL_PASSWORD="hunter2"
    )
    assert "hunter2" not in repr(security) and "hunter2" not in str(load_settings({}))


def test_the_embedded_broker_is_not_started_for_a_secured_cluster(override_arbiter_settings: Any) -> None:
    from arbiter.events.broker import ensure_broker

    override_arbiter_settings(
        KAFKA_BOOTSTRAP_SERVERS=None,
        KAFKA_SECURITY_PROTOCOL="SASL_SSL",
        KAFKA_SASL_USERNAME="a",
        KAFKA_SASL_PASSWORD="b",
    )
    with pytest.raises(
        SettingsError, match="needs KAFKA_BOOTSTRAP_SERVERS: the embedded broker speaks PLAINTEXT"
    ):
        ensure_broker(topics=[])


def test_clients_use_the_process_settings(override_arbiter_settings: Any) -> None:
    override_arbiter_settings(
        KAFKA_SECURITY_PROTOCOL="SASL_PLAINTEXT", KAFKA_SASL_USERNAME="u", KAFKA_SASL_PASSWORD="p"
    )
    assert clients.connection_config()["sasl_plain_username"] == "u"

"""The relay's TLS listener, without a proxy: which names get a certificate, what the certificate
is, and that a handshake gets the certificate of the host it names (real TLS, in memory)."""

from __future__ import annotations

import ssl

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from kimi_intercept.relay.direct import (
    Certificates,
    cert_path,
    has_cert,
    server_context,
    write_cert,
)


@pytest.mark.parametrize(
    ("host", "named"),
    [
        ("api.openai.com", "api.openai.com.pem"),
        ("API.Anthropic.com", "api.anthropic.com.pem"),
        ("localhost", "localhost.pem"),
        ("*.openai.com", None),
        ("127.0.0.1", None),
        ("::1", None),
        ("../etc/passwd", None),
        ("a..b", None),
        ("", None),
    ],
)
def test_only_plain_dns_names_get_a_certificate(tmp_path, host, named):
    path = cert_path(tmp_path, host)
    assert (path.name if path else None) == named


def _ca(ec_key: bool = False) -> tuple[trustme.CA, bytes, object]:
    ca = trustme.CA(key_type=trustme.KeyType.ECDSA if ec_key else trustme.KeyType.RSA)
    key = serialization.load_pem_private_key(ca.private_key_pem.bytes(), None)
    return ca, ca.cert_pem.bytes(), key


@pytest.mark.parametrize("ec_key", [False, True], ids=["RSA CA", "ECDSA CA"])
def test_a_certificate_is_the_cas_for_its_host_with_a_key_of_its_own(tmp_path, ec_key):
    ca, ca_pem, ca_key = _ca(ec_key)
    path = write_cert(tmp_path, "api.openai.com", ca_pem, ca_key)
    assert path is not None and has_cert(tmp_path, "api.openai.com")
    pem = path.read_bytes()
    leaf, chained = x509.load_pem_x509_certificates(pem)
    assert chained == x509.load_pem_x509_certificate(ca_pem)
    leaf.verify_directly_issued_by(chained)
    key = serialization.load_pem_private_key(pem[pem.index(b"-----BEGIN PRIVATE KEY") :], None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert key.public_key() == leaf.public_key() != chained.public_key()
    assert path.stat().st_mode & 0o077 == 0
    first = pem
    assert write_cert(tmp_path, "api.openai.com", ca_pem, ca_key) == path
    assert path.read_bytes() == first  # kept: the relay may have loaded it already
    assert not list(tmp_path.glob("*.part"))


def _handshake(server: ssl.SSLContext, client: ssl.SSLContext, name: str) -> x509.Certificate:
    """A TLS handshake in memory; the certificate the client was given."""
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    c = client.wrap_bio(c_in, c_out, server_hostname=name)
    s = server.wrap_bio(s_in, s_out, server_side=True)
    for _ in range(10):
        for side in (c, s):
            try:
                side.do_handshake()
            except ssl.SSLWantReadError:
                pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if c.version() and s.version():
            break
    c.do_handshake()
    return x509.load_der_x509_certificate(c.getpeercert(binary_form=True))


def test_each_client_gets_the_certificate_of_the_host_it_names(tmp_path):
    ca, ca_pem, ca_key = _ca()
    for host in ("api.openai.com", "api.anthropic.com"):
        write_cert(tmp_path, host, ca_pem, ca_key)
    server = server_context(Certificates(tmp_path))
    client = ssl.create_default_context()
    ca.configure_trust(client)
    for host in ("api.openai.com", "api.anthropic.com"):
        got = _handshake(server, client, host)
        names = got.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert names.get_values_for_type(x509.DNSName) == [host]
    with pytest.raises(ssl.SSLError):
        _handshake(server, client, "example.com")  # no certificate here: refused, not served

"""Mutual TLS inside the mesh: every part proves who it is with a certificate of the mesh's CA.

A service's port accepts only callers with such a certificate, and the certificate's common
name is the caller's role:

    edge        Envoy, the only part clients talk to; the only one whose identity headers
                (x-tiermesh-user / -segment) the Router honours
    router      the only caller whose x-tiermesh-* metadata Inference honours
    inference, knowledge, analytics, ratelimit   the services themselves
    operator    the CLI, tests and jobs run by whoever administers the mesh

Settings (`tls`):

    enabled     true: every service port requires a certificate of the mesh CA (default).
                false trusts any process that can reach a port: only for one machine whose
                ports are loopback-only
    dir         development certificates, under data_dir: ca.pem and <role>.pem / <role>-key.pem,
                made by `tiermesh up` (and the test mesh) when missing or about to expire
    ca_file, cert_file, key_file
                explicit files instead (in Kubernetes, a mounted Secret): each process is given
                its own certificate and key
    cert_days   lifetime of development certificates

Health (grpc.health.v1) is also served without TLS on `services.<name>.health_port`, for probes
that cannot present a certificate (kubelet's gRPC probe); that port serves nothing else.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import ssl
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from services.runtime import config, identity
from services.runtime.config import ConfigError

ROLES = ("edge", "router", "inference", "knowledge", "analytics", "ratelimit", "operator", "openai")
EDGE, ROUTER, INFERENCE, OPERATOR = "edge", "router", "inference", "operator"
# The OpenAI-compatible API: behind the edge, it calls the Router with the identity the edge verified.
OPENAI = "openai"
_RENEW_BEFORE = datetime.timedelta(days=7)


@dataclass(frozen=True)
class TlsSettings:
    enabled: bool
    ca_file: Path
    cert_file: Path
    key_file: Path
    dir: Path
    cert_days: int


def settings(tree: Mapping[str, Any], role: str) -> TlsSettings:
    """The TLS files `role` uses: explicit `tls.*_file` settings, else the development ones."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; roles are {', '.join(ROLES)}")
    node = config.section(tree, "tls")
    where = "tls"
    folder = Path(config.get_str(node, "dir", "tls", where=where))
    folder = folder if folder.is_absolute() else config.data_dir(tree) / folder

    def file(key: str, default: Path) -> Path:
        raw = config.get_str(node, key, "", where=where)
        return Path(raw) if raw else default

    return TlsSettings(
        enabled=config.get_bool(node, "enabled", True, where=where),
        ca_file=file("ca_file", folder / "ca.pem"),
        cert_file=file("cert_file", folder / f"{role}.pem"),
        key_file=file("key_file", folder / f"{role}-key.pem"),
        dir=folder,
        cert_days=config.get_int(node, "cert_days", 365, where=where, lo=8, hi=3650),
    )


def enabled(tree: Mapping[str, Any]) -> bool:
    return config.get_bool(config.section(tree, "tls"), "enabled", True, where="tls")


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(
            f"tls: no {what} at {path}; `tiermesh up` makes development certificates, or set "
            "tls.ca_file / tls.cert_file / tls.key_file (or tls.enabled: false on a single machine)"
        ) from None


def server_credentials(tree: Mapping[str, Any], role: str) -> grpc.ServerCredentials | None:
    """Credentials for `role`'s port (None when TLS is off): its certificate, and a demand for
    a client certificate of the mesh CA."""
    s = settings(tree, role)
    if not s.enabled:
        return None
    return grpc.ssl_server_credentials(
        [(_read(s.key_file, "private key"), _read(s.cert_file, "certificate"))],
        root_certificates=_read(s.ca_file, "CA certificate"),
        require_client_auth=True,
    )


def server_ssl_context(
    tree: Mapping[str, Any], role: str, alpn: Sequence[str] = ("http/1.1",)
) -> ssl.SSLContext | None:
    """The same demand as `server_credentials`, for an HTTP server (the OpenAI-compatible API):
    `role`'s certificate, and a client certificate of the mesh CA (None when TLS is off)."""
    s = settings(tree, role)
    if not s.enabled:
        return None
    for path, what in ((s.cert_file, "certificate"), (s.key_file, "private key"), (s.ca_file, "CA certificate")):
        _read(path, what)  # a clear ConfigError for a missing file
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(s.ca_file))
    context.load_cert_chain(str(s.cert_file), str(s.key_file))
    context.verify_mode = ssl.CERT_REQUIRED
    context.set_alpn_protocols(list(alpn))
    return context


def cert_role(peercert: Mapping[str, Any] | None) -> str:
    """The role (common name) in a verified peer certificate as `ssl` reports it; empty for none."""
    for rdn in (peercert or {}).get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return ""


def channel_credentials(tree: Mapping[str, Any], role: str) -> grpc.ChannelCredentials | None:
    """Credentials for calls made as `role` (None when TLS is off)."""
    s = settings(tree, role)
    if not s.enabled:
        return None
    return grpc.ssl_channel_credentials(
        root_certificates=_read(s.ca_file, "CA certificate"),
        private_key=_read(s.key_file, "private key"),
        certificate_chain=_read(s.cert_file, "certificate"),
    )


def channel(
    tree: Mapping[str, Any], name: str, role: str, options: Sequence[tuple[str, Any]] = (), target: str = ""
) -> grpc.aio.Channel:
    """A channel to mesh service `name` (at `target`, default every replica the config lists)
    that calls as `role`. The server's certificate must name `name`, wherever it runs. Across
    replicas calls go round robin, and only to replicas whose health says SERVING: one that
    drains (SIGTERM) leaves the rotation at once, before it refuses anything."""
    address, balanced = (target, False) if target else config.balanced_target(tree, name)
    if balanced:
        options = [("grpc.service_config", BALANCED), *options]
    creds = channel_credentials(tree, role)
    if creds is None:
        made = grpc.aio.insecure_channel(address, options=list(options))
    else:
        made = grpc.aio.secure_channel(address, creds, options=[("grpc.ssl_target_name_override", name), *options])
    return made if wrap_channel is None else wrap_channel(made)


# Set by `observability.setup` when it propagates traces without client instrumentation: every
# channel made afterwards is wrapped to carry the current trace.
wrap_channel: Callable[[grpc.aio.Channel], Any] | None = None


def edge_reader(context: Any) -> tuple[str, bool] | None:
    """Who reads through the edge on this call (see identity.reader): (user, operator?), or None
    for a caller that is not the edge."""
    return identity.reader(peer_role(context), EDGE, identity.metadata_dict(context.invocation_metadata()))


BALANCED = json.dumps({"loadBalancingConfig": [{"round_robin": {}}], "healthCheckConfig": {"serviceName": ""}})


def peer_role(context: Any) -> str:
    """The role in the caller's certificate; empty for a caller without one, which a port with
    TLS never lets in: an empty role means TLS is off."""
    names = context.auth_context().get("x509_common_name") or ()
    return names[0].decode("utf-8", "replace") if names else ""


# --- development certificates -------------------------------------------------------------------


def _valid_until(path: Path) -> datetime.datetime | None:
    from cryptography import x509

    try:
        return x509.load_pem_x509_certificate(path.read_bytes()).not_valid_after_utc
    except (OSError, ValueError):
        return None


def _write_private(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    tmp.replace(path)


def ensure_dev_certs(tree: Mapping[str, Any]) -> Path | None:
    """Make the development CA and a certificate per role under `tls.dir`, unless every file is
    there and valid for another week. Returns the folder (None when TLS is off, or when explicit
    files are configured: those are the operator's to provide)."""
    node = config.section(tree, "tls")
    if not enabled(tree) or any(config.get_str(node, k, "", where="tls") for k in ("ca_file", "cert_file", "key_file")):
        return None
    s = settings(tree, OPERATOR)
    folder = s.dir
    folder.mkdir(parents=True, exist_ok=True)
    horizon = datetime.datetime.now(datetime.UTC) + _RENEW_BEFORE
    files = [folder / "ca.pem", folder / "ca-key.pem"]
    files += [folder / f"{r}.pem" for r in ROLES] + [folder / f"{r}-key.pem" for r in ROLES]
    certs_ok = all((_valid_until(p) or horizon) > horizon for p in files if p.suffix == ".pem" and "-key" not in p.name)
    if all(p.exists() for p in files) and certs_ok:
        return folder
    _make_all(folder, s.cert_days)
    return folder


def _make_all(folder: Path, days: int) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    # The CA goes first and comes back last: a run cut short leaves no CA, so the next one starts over.
    (folder / "ca.pem").unlink(missing_ok=True)
    now = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5)
    until = now + datetime.timedelta(days=days)
    pem = serialization.Encoding.PEM

    def key_bytes(key: ec.EllipticCurvePrivateKey) -> bytes:
        return key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tiermesh development CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(until)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    for role in ROLES:
        key = ec.generate_private_key(ec.SECP256R1())
        names: list[x509.GeneralName] = [
            x509.DNSName(role),
            x509.DNSName("localhost"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.IPAddress(ipaddress.ip_address("::1")),
            x509.UniformResourceIdentifier(f"spiffe://tiermesh/{role}"),
        ]
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, role)]))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(until)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
            .sign(ca_key, hashes.SHA256())
        )
        _write_private(folder / f"{role}-key.pem", key_bytes(key))
        (folder / f"{role}.pem").write_bytes(cert.public_bytes(pem))
    _write_private(folder / "ca-key.pem", key_bytes(ca_key))
    (folder / "ca.pem").write_bytes(ca.public_bytes(pem))

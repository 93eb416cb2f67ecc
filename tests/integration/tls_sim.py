"""A simulated engine replica served over TLS by uvicorn (for the ``https://`` worker tests).

``python -m tests.integration.tls_sim MODEL_DIR PORT CERTFILE KEYFILE [TIME_SCALE]``;
:func:`self_signed_cert` writes a certificate for 127.0.0.1 and localhost.
"""

from __future__ import annotations

import datetime
import ipaddress
import sys
from pathlib import Path

import uvicorn

from engines.sim.clock import ScaledClock
from engines.sim.cluster import ClusterConfig
from engines.sim.replica import ReplicaConfig, SimReplica
from engines.sim.server import build_app
from engines.sim.tokenizer import load_tokenizer


def self_signed_cert(directory: Path) -> tuple[Path, Path]:
    """(certificate, key) PEM files of a self-signed certificate for 127.0.0.1/localhost."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "llmserve test engine")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"),
                x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = directory / "engine.crt", directory / "engine.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file


def main(argv: list[str]) -> None:
    model_dir, port, cert_file, key_file = argv[:4]
    time_scale = float(argv[4]) if len(argv) > 4 else 1.0
    config = ClusterConfig(model_dir=model_dir, port=int(port), time_scale=time_scale)
    replica = SimReplica(
        ReplicaConfig(served_model_name=config.model_name, engine=config.engine_config(),
                      model_path=model_dir, host="127.0.0.1", port=int(port)),
        load_tokenizer(model_dir), ScaledClock(time_scale))
    uvicorn.run(build_app(replica), host="127.0.0.1", port=int(port), log_level="warning",
                ssl_certfile=cert_file, ssl_keyfile=key_file, lifespan="on")


if __name__ == "__main__":
    main(sys.argv[1:])

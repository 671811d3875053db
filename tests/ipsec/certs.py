"""A throwaway PKI made at test time with the openssl command: an ECDSA CA
and node certificates whose subjectAltName is the node's tunnel address.
Nothing here is a secret worth keeping; nothing is committed."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@dataclass(frozen=True, slots=True)
class Ca:
    dir: Path
    name: str

    @property
    def cert(self) -> Path:
        return self.dir / f"{self.name}.pem"

    @property
    def key(self) -> Path:
        return self.dir / f"{self.name}.key"


def make_ca(dir: Path, name: str = "ca") -> Ca:
    dir.mkdir(parents=True, exist_ok=True)
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        f"{name}.key",
        "-out",
        f"{name}.pem",
        "-days",
        "2",
        "-subj",
        f"/CN=dmvpn test {name}",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
        cwd=dir,
    )
    return Ca(dir, name)


def make_cert(ca: Ca, node: str, ip: str) -> tuple[Path, Path]:
    """(certificate, private key) for ``node``, subjectAltName IP:``ip``."""
    d = ca.dir
    ext = d / f"{node}.ext"
    ext.write_text(f"subjectAltName=IP:{ip}\nkeyUsage=critical,digitalSignature\n")
    _openssl(
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        f"{node}.key",
        "-out",
        f"{node}.csr",
        "-subj",
        f"/CN={node}",
        cwd=d,
    )
    _openssl(
        "x509",
        "-req",
        "-in",
        f"{node}.csr",
        "-CA",
        ca.cert.name,
        "-CAkey",
        ca.key.name,
        "-CAcreateserial",
        "-out",
        f"{node}.pem",
        "-days",
        "2",
        "-extfile",
        ext.name,
        cwd=d,
    )
    return d / f"{node}.pem", d / f"{node}.key"

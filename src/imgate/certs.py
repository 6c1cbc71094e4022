"""``imgate cert dev``: a local certificate authority and a server certificate signed by it, for trying
TLS (wss, goim over TLS, HTTPS) on one machine. Made with the ``openssl`` command; never for production.

Writes ``ca.crt``/``ca.key`` (kept when they exist, so clients that trust the CA keep trusting it) and
``server.crt``/``server.key`` for the given names (default ``localhost``, ``127.0.0.1``, ``::1``).
Clients trust the CA: ``curl --cacert DIR/ca.crt``, ``ssl.create_default_context(cafile=...)``.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import subprocess
from pathlib import Path


def _run(args: list[str]) -> None:
    res = subprocess.run(args, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:3])} failed: {res.stderr.strip()}")


def make_dev_certs(out: str | os.PathLike, names=("localhost", "127.0.0.1", "::1"), days: int = 30) -> dict:
    """Make (or renew) the dev CA and a server certificate in ``out``; returns the four paths."""
    openssl = shutil.which("openssl")
    if openssl is None:
        raise RuntimeError("imgate cert dev needs the openssl command")
    d = Path(out)
    d.mkdir(parents=True, exist_ok=True)
    ca_crt, ca_key, crt, key = d / "ca.crt", d / "ca.key", d / "server.crt", d / "server.key"
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    if not (ca_crt.exists() and ca_key.exists()):
        _run([openssl, "req", "-x509", *ec, "-keyout", str(ca_key), "-out", str(ca_crt), "-days", str(days),
              "-subj", "/CN=imgate dev CA", "-addext", "basicConstraints=critical,CA:TRUE",
              "-addext", "keyUsage=critical,keyCertSign,cRLSign"])
    csr = d / "server.csr"
    _run([openssl, "req", *ec, "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={names[0]}"])
    sans = []
    for n in names:
        try:
            ipaddress.ip_address(n)
            sans.append(f"IP:{n}")
        except ValueError:
            sans.append(f"DNS:{n}")
    ext = d / "server.ext"
    ext.write_text(f"subjectAltName={','.join(sans)}\nbasicConstraints=CA:FALSE\n"
                   "keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n")
    _run([openssl, "x509", "-req", "-in", str(csr), "-CA", str(ca_crt), "-CAkey", str(ca_key), "-CAcreateserial",
          "-out", str(crt), "-days", str(days), "-extfile", str(ext)])
    csr.unlink()
    ext.unlink()
    for secret in (ca_key, key):
        secret.chmod(0o600)
    return {"ca_cert": str(ca_crt), "ca_key": str(ca_key), "cert": str(crt), "key": str(key)}

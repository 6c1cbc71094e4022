"""TLS for the internal RPC between roles (optional): the listening role presents ``tls_cert`` /
``tls_key``; the calling role trusts only the CA in ``rpc_tls_ca`` (the pin: a certificate from any
other authority is refused, whatever public CAs would say). Peers are addressed by IP, so the name in
the certificate is not checked; the CA is what identifies the cluster."""

from __future__ import annotations

import ssl


def server_context(config) -> ssl.SSLContext | None:
    """The listening side's context, or None when the config does not ask for RPC over TLS."""
    if not config.rpc_tls:
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(config.tls_cert, config.tls_key)
    return ctx


def client_context(config) -> ssl.SSLContext | None:
    """The calling side's context (trusting ``rpc_tls_ca`` alone), or None without RPC over TLS."""
    if not config.rpc_tls:
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = False   # peers are IP addresses from the config; the pinned CA identifies them
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(config.rpc_tls_ca)
    return ctx

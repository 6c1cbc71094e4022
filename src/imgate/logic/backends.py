"""The business's own services behind logic, from the config: the auth service (``auth = "http"``),
the upstream routes and the webhooks (docs/upstream.md). The embedded node and the logic role both
call :func:`authenticator` and :func:`attach`, so they are wired the same way."""

from __future__ import annotations

from imgate.auth import Authenticator, make_authenticator
from imgate.config import Config


def authenticator(cfg: Config) -> Authenticator:
    if cfg.auth == "http":
        from imgate.auth.http import HttpAuth

        return HttpAuth(cfg.auth_url, timeout=cfg.auth_timeout, cache_ttl=cfg.auth_cache_ttl,
                        cache_size=cfg.auth_cache_size, server=cfg.server_id)
    return make_authenticator(cfg.auth, cfg.jwt_secret, require_exp=cfg.jwt_require_exp,
                              max_ttl=cfg.jwt_max_ttl or None)


class Backends:
    """What :func:`attach` set up on a logic; ``stats`` is a metrics source, ``close`` ends it all."""

    def __init__(self, logic):
        self.logic = logic

    def stats(self) -> dict:
        out: dict = {}
        for part in (self.logic.upstream, self.logic.webhooks, self.logic.auth):
            if part is not None and hasattr(part, "stats"):
                out.update(part.stats())
        return out

    async def close(self, grace: float = 0.0) -> None:
        """Stop; the webhooks get up to ``grace`` seconds to deliver what is queued."""
        logic = self.logic
        if logic.webhooks is not None:
            await logic.webhooks.stop(grace)
        if logic.upstream is not None:
            await logic.upstream.close()
        if hasattr(logic.auth, "close"):
            await logic.auth.close()


def attach(logic, cfg: Config) -> Backends:
    """Give ``logic`` its upstream routes and webhooks when the config names them (call on its loop)."""
    if cfg.upstream_url or cfg.upstream_routes:
        from imgate.logic.upstream import Upstream

        logic.upstream = Upstream(cfg.upstream_url, cfg.upstream_routes, timeout=cfg.upstream_timeout,
                                  total=cfg.upstream_limit,
                                  max_body=cfg.max_frame_body, pool=cfg.upstream_pool)
    if cfg.webhook_url:
        from imgate.logic.webhooks import Webhooks

        logic.webhooks = Webhooks(cfg.webhook_url, batch=cfg.webhook_batch, queue=cfg.webhook_queue,
                                  timeout=cfg.webhook_timeout, max_backoff=cfg.webhook_max_backoff)
        logic.webhooks.start()
    return Backends(logic)

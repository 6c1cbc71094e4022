"""The HTTP client session imgate uses towards the business's services (auth, upstream, webhooks)."""

from __future__ import annotations

__all__ = ["HttpClient"]


class HttpClient:
    """One aiohttp session with keep-alive, opened at first use (aiohttp wants a running loop) and
    closed by :meth:`close`. ``timeout`` bounds a request from connect to its last byte; ``pool``, if
    given, bounds the sockets (else aiohttp's default); ``decompress=False`` hands bodies on as sent.

    No cookies: each request stands alone (and the jar's work per request is saved). No User-Agent.
    """

    def __init__(self, timeout: float, *, pool: int | None = None, decompress: bool = True):
        self.timeout = timeout
        self.pool = pool
        self.decompress = decompress
        self._session = None

    def session(self):
        """The ``aiohttp.ClientSession``, made on the first call."""
        if self._session is None:
            import aiohttp

            connector = None
            if self.pool is not None:
                connector = aiohttp.TCPConnector(limit=self.pool, limit_per_host=0, enable_cleanup_closed=True)
            self._session = aiohttp.ClientSession(connector=connector, auto_decompress=self.decompress,
                                                  cookie_jar=aiohttp.DummyCookieJar(),
                                                  timeout=aiohttp.ClientTimeout(total=self.timeout),
                                                  skip_auto_headers=("User-Agent",))
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

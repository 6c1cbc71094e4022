"""The small HTTP/1.1 server under the logic HTTP API (httptools + asyncio)."""

from imgate.http.server import (
    HttpError as HttpError,
    HttpServer as HttpServer,
    Request as Request,
    Response as Response,
    Router as Router,
    error as error,
    json_response as json_response,
    ok as ok,
    static_file as static_file,
    static_handler as static_handler,
)

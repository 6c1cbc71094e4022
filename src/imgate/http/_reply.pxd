# Cython contract of the reply encoder (imgate.http._reply): the connection calls it at C level.

# ``resp`` (an imgate.http.messages.Response) as bytes on the wire: status line, headers, body.
cpdef bytes encode_response(object resp, bint keep_alive, bint head_only, bint http10)

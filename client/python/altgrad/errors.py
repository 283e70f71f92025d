"""The one exception family of the package (docs/python.md, "Errors").

Every failure is an `Error` carrying the server's own `code`, `field` and `message` when the
server answered, or a local code when it did not. The local codes are those of the C client
(client/transport.c): "connect_failed", "timeout", "tls_error", "bad_url", "aborted",
"bad_response", plus "job_failed"/"cancelled" style codes copied from a failed job and
"unsupported" for something the torch bridge or the server cannot represent.
"""


class Error(Exception):
    """An altgrad failure.

    status      HTTP status of the answer at fault, 0 when there was none
    code        the server's error code ("invalid_shape") or a local one ("connect_failed")
    field       the path of the value at fault ("layers[0].wq", "model.d_ff"), "" when none
    message     what went wrong, in words
    attempts    HTTP exchanges made for the call (1 + retries), 0 when none was made
    retry_after the last answer's Retry-After in seconds (429, 503), None when absent
    request_id  the server's X-Request-Id of the answer at fault, "" when none
    """

    def __init__(self, message, code="error", field="", status=0, attempts=0,
                 retry_after=None, request_id=""):
        super().__init__(message)
        self.message = message
        self.code = code
        self.field = field
        self.status = status
        self.attempts = attempts
        self.retry_after = retry_after
        self.request_id = request_id

    def __str__(self):
        head = "HTTP %d %s" % (self.status, self.code) if self.status else self.code
        where = " at %s" % self.field if self.field else ""
        return "%s%s: %s" % (head, where, self.message)

    def __repr__(self):
        return "%s(code=%r, field=%r, status=%r, message=%r)" % (
            type(self).__name__, self.code, self.field, self.status, self.message)


class HTTPError(Error):
    """The server answered with a 4xx or 5xx status (after retries for 429 and 503)."""


class ConnectError(Error):
    """The server could not be reached, or the connection broke (code "connect_failed")."""


class Timeout(ConnectError):
    """A connect or read timeout, or Job.wait's own limit (code "timeout")."""


class TLSError(ConnectError):
    """Certificate verification or the TLS handshake failed (code "tls_error")."""


class ProtocolError(Error):
    """The answer is not what docs/api.md promises (code "bad_response")."""


class JobError(Error):
    """An async job ended failed or cancelled; code, field and status are the job's own."""


class UnsupportedError(Error):
    """Something the wire format (or this server) cannot represent; field names the
    attribute or argument at fault (code "unsupported", or "unsupported_feature" when the
    wire format has it but the server does not list the feature in /v1/info)."""

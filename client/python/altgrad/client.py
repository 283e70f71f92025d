"""The HTTP client of the altgrad service (docs/python.md; wire format docs/api.md).

Standard library only. One `Client` keeps one persistent connection per thread, so a Client
may be shared by threads (each talks on its own connection).

Retries follow the C client (client/transport.c) exactly:
- a connection that could not be made (refused, unreachable: nothing was sent) is retried
  for every call;
- HTTP 429 and 503 are retried for every call, waiting at least the server's Retry-After;
  a Retry-After longer than max_retry_after ends the call at once;
- a send or receive failure or a timeout after the request may have reached the server is
  retried only for calls without side effects (POST /v1/gradients and /v1/forward, GET,
  DELETE); never for POST /v1/jobs, which could queue the job twice;
- no other status is retried; health probes are never retried.
Waits grow exponentially from backoff_initial (doubling, capped at backoff_max) with equal
jitter: each is drawn from [base/2, base].
"""
import email.utils
import http.client
import json
import random
import re
import select
import socket
import ssl
import threading
import time
import urllib.parse

from .version import __version__
from .errors import (ConnectError, Error, HTTPError, JobError, ProtocolError, TLSError,
                     Timeout)
from .wire import Result, as_method, to_wire

TERMINAL_STATES = ("done", "failed", "cancelled")
_JOB_ID = re.compile(r"^[0-9A-Za-z_-]{1,79}$")
_GRADIENT_RETURNS = ("grad_input", "grad_weights")


class _Failure(Exception):
    """A transport failure, classified: kind is "connect" (nothing was sent), "io" (the
    request may have been sent) or "final" (never retried)."""

    def __init__(self, kind, error):
        super().__init__(str(error))
        self.kind = kind
        self.error = error


def parse_retry_after(value, now=None):
    """Seconds a Retry-After header asks for (delta-seconds or an HTTP date); None when
    absent or unparsable."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return min(int(value), 86400)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    left = when.timestamp() - (time.time() if now is None else now)
    return min(max(0, int(left + 0.999)), 86400)


def backoff_delay(attempt, initial, cap, rng):
    """Wait before retry number attempt (1-based): equal jitter in [base/2, base] of
    base = initial * 2^(attempt-1), capped at cap."""
    base = initial
    for _ in range(1, attempt):
        if base >= cap:
            break
        base *= 2
    base = min(base, cap)
    return base / 2 + rng.uniform(0, base / 2)


def _http_error(status, headers, body, attempts):
    """An HTTPError from an error answer ({"error": {"code", "message", "field"}} or not)."""
    code, field, message = "http_%d" % status, "", ""
    try:
        e = json.loads(body.decode("utf-8"))["error"]
        code = e.get("code") or code
        field = e.get("field") or ""
        message = e.get("message") or ""
    except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError):
        # not our JSON (a proxy's page, say): keep its start, minus line breaks
        message = body[:200].decode("utf-8", "replace").replace("\r", " ").replace("\n", " ")
    return HTTPError(message, code=code, field=field, status=status, attempts=attempts,
                     retry_after=parse_retry_after(headers.get("Retry-After")),
                     request_id=headers.get("X-Request-Id", ""))


class JobStatus:
    """GET /v1/jobs/<id>: id, state ("queued", "running", "done", "failed", "cancelled"),
    progress (0..1), error (an Error for a failed job, else None), raw (the answer)."""

    def __init__(self, body):
        state = body.get("state") if isinstance(body, dict) else None
        if state not in ("queued", "running") + TERMINAL_STATES:
            raise ProtocolError("job status without a known state: %.200r" % (body,),
                                code="bad_response", field="state")
        self.raw = body
        self.id = body.get("id", "")
        self.state = state
        p = body.get("progress", 0.0)
        self.progress = min(max(float(p), 0.0), 1.0) if isinstance(p, (int, float)) else 0.0
        e = body.get("error")
        if isinstance(e, dict):
            self.error = Error(e.get("message", ""), code=e.get("code") or state,
                               field=e.get("field", ""), status=e.get("status", 0))
        elif isinstance(e, str):
            self.error = Error(e, code=state)
        else:
            self.error = None

    @property
    def terminal(self):
        return self.state in TERMINAL_STATES

    def __repr__(self):
        return "JobStatus(id=%r, state=%r, progress=%.3f)" % (self.id, self.state,
                                                              self.progress)


class Job:
    """An async job (POST /v1/jobs). Client.submit makes one; Client.job(id) names one."""

    def __init__(self, client, id):
        if not isinstance(id, str) or not _JOB_ID.match(id):
            raise Error("job id must be 1..79 characters of [0-9A-Za-z_-], got %r" % (id,),
                        code="bad_argument", field="id")
        self.client = client
        self.id = id

    def __repr__(self):
        return "Job(%r)" % self.id

    def status(self):
        """GET /v1/jobs/<id> -> JobStatus."""
        return JobStatus(self.client._call("GET", "/v1/jobs/" + self.id))

    def result(self):
        """GET /v1/jobs/<id>/result -> Result. HTTPError 409 "not_ready" while queued or
        running, 409 "cancelled" for a cancelled job, the job's own error when it failed."""
        return Result(self.client._call("GET", "/v1/jobs/%s/result" % self.id))

    def cancel(self):
        """DELETE /v1/jobs/<id> -> JobStatus (a finished job is left as it is)."""
        return JobStatus(self.client._call("DELETE", "/v1/jobs/" + self.id))

    def wait(self, timeout=None, progress=None, poll_interval=None):
        """Polls the job every poll_interval seconds (default the client's) until it ends,
        then returns its Result. progress(JobStatus) is called after every poll; a true
        return value stops the wait (Error "aborted"). Raises JobError (code, field and
        status of the job's error, or "cancelled") when the job failed or was cancelled,
        Timeout when timeout seconds passed first. The job is not cancelled by a stopped
        or timed-out wait (Client.run does that)."""
        interval = self.client.poll_interval if poll_interval is None else poll_interval
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            st = self.status()
            if progress is not None and progress(st):
                raise Error("job %s: wait stopped by the progress callback" % self.id,
                            code="aborted")
            if st.state == "done":
                return self.result()
            if st.terminal:
                e = st.error
                raise JobError("job %s %s%s" % (self.id, st.state,
                                                ": " + e.message if e and e.message else ""),
                               code=e.code if e else st.state, field=e.field if e else "",
                               status=e.status if e else 0)
            wait = interval
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise Timeout("job %s still %s after %g s" % (self.id, st.state, timeout),
                                  code="timeout")
                wait = min(wait, left)
            time.sleep(wait)


class Client:
    """A client of one altgrad server.

    url               "http://127.0.0.1:8080" or "https://host:port" (an optional path prefix
                      is kept, for a server behind a proxy)
    token             Bearer token, or None
    timeout           seconds a connection may stay silent while an answer is awaited
                      (default 330: the server may compute for its --timeout of 300 s before
                      it sends a byte); None = no limit
    retries           retries after the first attempt (default 4), by the rules above
    verify_tls        verify an https server's certificate and host name (default True)
    ca_file           PEM bundle to verify it with (default: the system's)
    encoding          "b64" (default) or "json": request tensors and the answer's
    connect_timeout   seconds to establish a connection (default 10)
    backoff_initial, backoff_max, max_retry_after   seconds (0.2, 10, 60)
    poll_interval     Job.wait's polling period in seconds (0.2)
    max_response_bytes  larger answers fail with Error "response_too_large" (4 GiB)
    seed              jitter seed (None: from the system)
    """

    def __init__(self, url="http://127.0.0.1:8080", token=None, timeout=330.0, retries=4,
                 verify_tls=True, ca_file=None, encoding="b64", connect_timeout=10.0,
                 backoff_initial=0.2, backoff_max=10.0, max_retry_after=60.0,
                 poll_interval=0.2, max_response_bytes=4 << 30, seed=None):
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise Error("url must be http://HOST[:PORT] or https://..., got %r" % (url,),
                        code="bad_url", field="url")
        if parts.query or parts.fragment:
            raise Error("url must not have a query or fragment: %r" % (url,), code="bad_url",
                        field="url")
        if encoding not in ("b64", "json"):
            raise Error("encoding must be 'b64' or 'json', got %r" % (encoding,),
                        code="invalid_value", field="encoding")
        self.url = url.rstrip("/")
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        try:
            self._port = parts.port or (443 if self._https else 80)
        except ValueError:
            raise Error("bad port in url %r" % (url,), code="bad_url", field="url") from None
        self._prefix = parts.path.rstrip("/")
        self.set_token(token)
        self.timeout = timeout
        self.retries = retries
        self.encoding = encoding
        self.connect_timeout = connect_timeout
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.max_retry_after = max_retry_after
        self.poll_interval = poll_interval
        self.max_response_bytes = max_response_bytes
        self._ca_file = ca_file
        self._verify_tls = verify_tls
        self._rng = random.Random(seed)
        self._features = None
        self._setup()

    def _setup(self):
        """The parts that are never copied: TLS context, connections, their lock."""
        self._ssl = None
        if self._https:
            self._ssl = ssl.create_default_context(cafile=self._ca_file)
            if not self._verify_tls:
                self._ssl.check_hostname = False
                self._ssl.verify_mode = ssl.CERT_NONE
        self._local = threading.local()
        self._lock = threading.Lock()
        self._conns = set()  # every thread's open connection, for close()

    def __getstate__(self):
        # pickled (torch.save of a whole module, say): no connections, and never the token,
        # so that no secret lands in a checkpoint file; set it again with set_token
        state = {k: v for k, v in self.__dict__.items()
                 if k not in ("_ssl", "_local", "_lock", "_conns")}
        state["_token"] = None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._setup()

    def __deepcopy__(self, memo):
        # an in-memory copy (copy.deepcopy of a Remote) keeps the token
        twin = self.__class__.__new__(self.__class__)
        twin.__setstate__(dict(self.__getstate__(), _token=self._token,
                               _rng=random.Random(self._rng.random())))
        return twin

    def set_token(self, token):
        """Replaces the Bearer token (None for none)."""
        if token is not None and (not token or any(c in token for c in "\r\n")):
            raise Error("token must be a non-empty string without line breaks",
                        code="bad_argument", field="token")
        self._token = token

    def __repr__(self):
        return "Client(%r, token=%s)" % (self.url, "set" if self._token else "None")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        """Closes the client's connections, every thread's (call it when no call is in
        progress); a later call opens a new one."""
        with self._lock:
            conns, self._conns = self._conns, set()
        for conn in conns:
            conn.close()

    def __del__(self):
        if getattr(self, "_conns", None):
            self.close()

    # ---- the service's calls ------------------------------------------------------------

    def gradients(self, request=None, **fields):
        """POST /v1/gradients -> Result. request is a request dict (docs/api.md; tensors may
        be Tensor objects) and/or its fields as keywords (returns= for "return")."""
        body = self._request_body(request, fields)
        return Result(self._call("POST", "/v1/gradients", body, idempotent=True))

    def forward(self, request=None, **fields):
        """The model's output only -> Result (its output). "return" defaults to ["output"]
        and must not ask for gradients. POST /v1/forward when the server lists the
        "forward" feature; otherwise POST /v1/gradients, adding the loss {"type": "sum"}
        that a v1 server requires when the request has none (it changes no output)."""
        body = self._request_body(request, fields)
        returns = body.setdefault("return", ["output"])
        bad = [i for i, r in enumerate(returns) if r in _GRADIENT_RETURNS]
        if bad:
            raise Error("forward asks for no gradient; return[%d] is %r"
                        % (bad[0], returns[bad[0]]), code="invalid_value",
                        field="return[%d]" % bad[0])
        if "forward" in self.features():
            return Result(self._call("POST", "/v1/forward", body, idempotent=True))
        body.setdefault("loss", {"type": "sum"})
        return Result(self._call("POST", "/v1/gradients", body, idempotent=True))

    def submit(self, request=None, **fields):
        """POST /v1/jobs -> Job (queued). Not retried once the request may have reached the
        server (it could queue the job twice); 429/503 and refused connections are."""
        body = self._request_body(request, fields)
        answer = self._call("POST", "/v1/jobs", body, idempotent=False)
        job_id = answer.get("id") if isinstance(answer, dict) else None
        if not isinstance(job_id, str) or not _JOB_ID.match(job_id):
            raise ProtocolError("job submission answered without a valid id: %.200r"
                                % (answer,), code="bad_response", field="id")
        return Job(self, job_id)

    def job(self, id):
        """The Job with this id (no request is made)."""
        return Job(self, id)

    def run(self, request=None, timeout=None, progress=None, poll_interval=None, **fields):
        """submit + Job.wait -> Result. The job is cancelled on the server when the wait
        times out, is stopped by progress, or is interrupted (KeyboardInterrupt)."""
        job = self.submit(request, **fields)
        try:
            return job.wait(timeout=timeout, progress=progress, poll_interval=poll_interval)
        except JobError:
            raise
        except BaseException:
            try:
                job.cancel()
            except Error:
                pass  # keep the wait's own error
            raise

    def health(self):
        """GET /health/live -> its JSON ({"status": "live"}). Never retried."""
        return self._call("GET", "/health/live", retries=0)

    def ready(self):
        """GET /health/ready: True on 200, False on 503 (draining or queue full); other
        failures raise. Never retried."""
        try:
            self._call("GET", "/health/ready", retries=0)
            return True
        except HTTPError as e:
            if e.status == 503:
                return False
            raise

    def info(self):
        """GET /v1/info -> dict (version, limits, methods, "features" when the server has
        them)."""
        info = self._call("GET", "/v1/info")
        if not isinstance(info, dict):
            raise ProtocolError("/v1/info is not an object", code="bad_response")
        self._features = frozenset(info.get("features", ()))
        return info

    def features(self, refresh=False):
        """The server's /v1/info "features" as a frozenset (empty for a server from before
        they were listed); fetched once, then cached."""
        if self._features is None or refresh:
            self.info()
        return self._features

    # ---- requests -----------------------------------------------------------------------

    def _request_body(self, request, fields):
        body = dict(request or {})
        if "returns" in fields:
            fields["return"] = fields.pop("returns")
        for key, value in fields.items():
            if value is not None:
                body[key] = value
        if "method" in body:
            body["method"] = as_method(body["method"])
        if "return" in body:
            body["return"] = list(body["return"])
        body.setdefault("encoding", self.encoding)
        return to_wire(body, self.encoding)

    def _call(self, method, path, body=None, idempotent=True, retries=None):
        """One call with the retry rules; returns the 2xx answer's parsed JSON."""
        raw = None
        if body is not None:
            try:
                raw = json.dumps(body, separators=(",", ":"), allow_nan=False).encode()
            except ValueError as e:
                raise Error("the request holds NaN or infinity, which JSON cannot carry (%s);"
                            " with encoding 'b64' the server names the element" % e,
                            code="invalid_value") from None
        status, headers, data, attempts = self._exchange(method, path, raw, idempotent,
                                                          self.retries if retries is None
                                                          else retries)
        try:
            return json.loads(data.decode("utf-8")) if data else {}
        except (ValueError, UnicodeDecodeError):
            raise ProtocolError("%s %s answered %d with a body that is not JSON: %.120r"
                                % (method, path, status, data), code="bad_response",
                                attempts=attempts) from None

    def _exchange(self, method, path, raw, idempotent, retries):
        attempts = 0
        while True:
            attempts += 1
            retry_after = None
            try:
                status, headers, data = self._once(method, path, raw, fresh=not idempotent)
            except _Failure as f:
                err = f.error
                retryable = f.kind == "connect" or (f.kind == "io" and idempotent)
            else:
                if 200 <= status < 300:
                    return status, headers, data, attempts
                err = _http_error(status, headers, data, attempts)
                retry_after = err.retry_after
                retryable = status in (429, 503)
            if retryable and attempts <= retries:
                delay = backoff_delay(attempts, self.backoff_initial, self.backoff_max,
                                      self._rng)
                if retry_after is not None and retry_after > self.max_retry_after:
                    retryable = False
                elif retry_after is not None:
                    delay = max(delay, retry_after)
                if retryable:
                    time.sleep(delay)
                    continue
            err.attempts = attempts
            raise err

    def _connection(self, fresh):
        conn = getattr(self._local, "conn", None)
        if conn is not None and (fresh or conn.sock is None or _stale(conn.sock)):
            self._drop(conn)
            conn = None
        if conn is None:
            if self._https:
                conn = http.client.HTTPSConnection(self._host, self._port,
                                                   timeout=self.connect_timeout,
                                                   context=self._ssl)
            else:
                conn = http.client.HTTPConnection(self._host, self._port,
                                                  timeout=self.connect_timeout)
            self._local.conn = conn
            with self._lock:
                self._conns.add(conn)
            try:
                conn.connect()
            except ssl.SSLError as e:
                self._drop(conn)
                raise _Failure("final", TLSError("%s: %s" % (self.url, e), code="tls_error"))
            except socket.timeout as e:
                self._drop(conn)
                raise _Failure("io", Timeout("%s: connect: %s" % (self.url, e),
                                             code="timeout"))
            except socket.gaierror as e:
                self._drop(conn)
                raise _Failure("final", ConnectError("%s: %s" % (self.url, e),
                                                     code="connect_failed"))
            except OSError as e:
                self._drop(conn)  # refused, unreachable: nothing was sent
                raise _Failure("connect", ConnectError("%s: %s" % (self.url, e),
                                                       code="connect_failed"))
            conn.sock.settimeout(self.timeout)
        return conn

    def _drop(self, conn):
        conn.close()
        with self._lock:
            self._conns.discard(conn)
        if getattr(self._local, "conn", None) is conn:
            self._local.conn = None

    def _once(self, method, path, raw, fresh):
        conn = self._connection(fresh)
        headers = {"Accept": "application/json",
                   "User-Agent": "altgrad-python/" + __version__}
        if raw is not None:
            headers["Content-Type"] = "application/json"
        if self._token is not None:
            headers["Authorization"] = "Bearer " + self._token
        try:
            try:
                conn.request(method, self._prefix + path, body=raw, headers=headers)
            except (BrokenPipeError, ConnectionResetError):
                # the server may have answered early (413 for a body over --max-body, say)
                # and closed while the body was still going out: read that answer if it is
                # there; if not, getresponse fails and this is a send failure as before
                pass
            resp = conn.getresponse()
            data = self._read(resp)
        except ssl.SSLError as e:
            self._drop(conn)
            raise _Failure("final", TLSError("%s: %s" % (self.url, e), code="tls_error"))
        except socket.timeout as e:
            self._drop(conn)
            raise _Failure("io", Timeout("%s%s: no answer within %s s (%s)"
                                         % (self.url, path, self.timeout, e), code="timeout"))
        except Error as e:
            self._drop(conn)
            raise _Failure("final", e)
        except (OSError, http.client.HTTPException) as e:
            self._drop(conn)
            raise _Failure("io", ConnectError("%s%s: %s: %s" % (self.url, path,
                                                                type(e).__name__, e),
                                              code="connect_failed"))
        if resp.will_close:
            self._drop(conn)
        return resp.status, resp.headers, data

    def _read(self, resp):
        declared = resp.getheader("Content-Length")
        if declared is not None and declared.isdigit() and int(declared) > \
                self.max_response_bytes:
            raise Error("the answer declares %s bytes, over max_response_bytes %d"
                        % (declared, self.max_response_bytes), code="response_too_large")
        chunks, total = [], 0
        while True:
            chunk = resp.read(1 << 20)
            if not chunk:
                return b"".join(chunks)
            total += len(chunk)
            if total > self.max_response_bytes:
                raise Error("the answer is over max_response_bytes %d"
                            % self.max_response_bytes, code="response_too_large")
            chunks.append(chunk)


def _stale(sock):
    """Whether a kept-alive socket was closed by the server (readable while idle)."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)

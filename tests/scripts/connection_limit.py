"""The server keeps accepting after its connection limit was reached (issue 17, finding 1).

libmicrohttpd 0.9.75 takes its listening socket out of its epoll set when --max-connections
is reached and puts it back only inside a later MHD_run; a loop that runs MHD only on epoll
readiness or MHD's own timeout never runs it again once every connection is gone, and the
server stops accepting for good. Each phase fills the limit with idle sockets, lets them go
(cut by the header deadline, or closed by the clients), and then requires /health/live to be
answered within a second. It fails on the code before the fix (tests/scripts/test_*.sh).
"""
import socket
import sys
import time

from hardening_lib import Server, request

LIMIT = 40  # the default 512 wedged the same way


def fail(msg):
    print("connection_limit: FAIL: " + msg)
    sys.exit(1)


def fill(port, n):
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        socks.append(s)
    return socks


def wait_all_closed(socks, seconds):
    """Waits until the server has closed every socket (reads end of input or a reset)."""
    end = time.time() + seconds
    open_ = list(socks)
    while open_ and time.time() < end:
        still = []
        for s in open_:
            s.settimeout(0.05)
            try:
                if s.recv(1) == b"":
                    continue
            except socket.timeout:
                still.append(s)
                continue
            except OSError:
                continue
        open_ = still
    return len(open_)


def live_within(port, seconds):
    """Seconds until /health/live answers 200 (each try bounded), or None."""
    t0 = time.time()
    while time.time() - t0 < seconds:
        try:
            r = request(port, "GET", "/health/live", timeout=max(0.05, seconds - (time.time() - t0)))
            if r.status == 200:
                return time.time() - t0
        except OSError:
            time.sleep(0.02)
    return None


def phase(srv, what, release):
    socks = fill(srv.port, LIMIT)
    time.sleep(0.3)  # every socket accepted: the limit is reached
    release(socks)
    dt = live_within(srv.port, 1.0)
    for s in socks:
        s.close()
    if dt is None:
        fail("%s: /health/live not answered within 1 s after the %d idle connections went "
             "away (the server stopped accepting)" % (what, LIMIT))
    print("connection_limit: %s: accepting again %.0f ms after the flood ended" % (what, dt * 1e3))


def main():
    srv = Server("--max-connections", str(LIMIT), "--max-connections-per-ip", str(LIMIT),
                 "--connection-timeout", "1")
    try:
        def cut_by_server(socks):
            left = wait_all_closed(socks, 5.0)
            if left:
                fail("header deadline: %d of %d idle sockets still open after 5 s" % (left, LIMIT))

        def closed_by_clients(socks):
            for s in socks:
                s.close()

        for round_ in range(3):
            phase(srv, "round %d, cut by the header deadline" % round_, cut_by_server)
            phase(srv, "round %d, closed by the clients" % round_, closed_by_clients)
        if not srv.alive():
            fail("the server died")
        errs = srv.sanitizer_errors()
        if errs:
            fail("sanitizer: %s" % errs)
    finally:
        srv.stop()
        srv.cleanup()
    print("connection_limit: ok")


if __name__ == "__main__":
    main()

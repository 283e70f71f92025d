#!/usr/bin/env bash
# Docker test (issue 7, `make docker-test`): builds deploy/Dockerfile, runs the image, sends a
# real gradient request to it, checks HEALTHCHECK, the non-root user, the runtime libraries
# and a graceful stop, and validates deploy/compose.yaml and deploy/haproxy.cfg.
#
# Uses the Docker daemon DOCKER_HOST (or the default socket) points at when one answers;
# otherwise, as root, installs docker.io (Debian) when missing and starts a private daemon:
# its own socket, data root /var/lib/altgrad-docker (kept, so the base image and the build
# cache survive between runs), no bridge and no iptables rules (every container here uses
# the host network and listens on 127.0.0.1 only). When debian:bookworm-slim cannot be had
# (no registry is reachable), it is made locally with debootstrap from the Debian mirror of
# /etc/apt and `docker import`, under a name of its own (altgrad-local/debian:bookworm-slim)
# so that it never shadows the real image. On exit it removes what it started: the
# container, the private daemon, and a docker0 bridge or DOCKER iptables chains that did not
# exist before.
#
# When Docker cannot run here the script prints "SKIPPED: <reason>" and exits 0; it never
# passes silently. Environment: IMAGE (tag to build, default altgrad:test), ALTGRAD_SERVER
# (host altgradd: its answer to the same request is the reference when present),
# DOCKER_TEST_BUILD_TIMEOUT (s, default 1200).
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
IMAGE=${IMAGE:-altgrad:test}
[ "$IMAGE" = altgrad:latest ] && IMAGE=altgrad:test # never overwrite a user's image tag
BASE_LOCAL=altgrad-local/debian:bookworm-slim
BUILD_TIMEOUT=${DOCKER_TEST_BUILD_TIMEOUT:-1200}
PRIVATE_SOCK=/run/altgrad-docker.sock
PRIVATE_ROOT=/var/lib/altgrad-docker
PRIVATE_EXEC=/run/altgrad-docker

say() { echo "docker-test: $*"; }
WORK=$(mktemp -d /tmp/altgrad-docker.XXXXXX)
DAEMON_PID=""
CONTAINER=""
HAD_DOCKER0=0
HAD_DOCKER_CHAINS=0

skip() {
    echo "######################################################################"
    echo "docker-test: SKIPPED: $*"
    echo "######################################################################"
    echo "docker-test: 0 passed, 0 failed, 1 skipped"
    exit 0
}
fail() {
    say "FAIL: $*"
    say "0 passed, 1 failed"
    exit 1
}

remove_docker_iptables() {
    local t rule c
    command -v iptables >/dev/null || return 0
    for t in filter nat; do
        iptables -t "$t" -S 2>/dev/null |
            grep -E '^-A (INPUT|OUTPUT|FORWARD|PREROUTING|POSTROUTING) .*(DOCKER|docker0)' |
            sed 's/^-A/-D/' | while read -r rule; do
                # shellcheck disable=SC2086
                eval iptables -t "$t" $rule 2>/dev/null || true
            done
        for c in $(iptables -t "$t" -S 2>/dev/null | awk '$1 == "-N" && $2 ~ /^DOCKER/ {print $2}'); do
            iptables -t "$t" -F "$c" 2>/dev/null || true
        done
        for c in $(iptables -t "$t" -S 2>/dev/null | awk '$1 == "-N" && $2 ~ /^DOCKER/ {print $2}'); do
            iptables -t "$t" -X "$c" 2>/dev/null || true
        done
    done
}

cleanup() {
    if [ -n "$CONTAINER" ]; then docker rm -f "$CONTAINER" >/dev/null 2>&1 || true; fi
    if [ -n "$DAEMON_PID" ]; then
        # Old copies of the image left untagged by this build; the base image, the tagged
        # image and its layers (the build cache) stay for the next run.
        docker image prune -f >/dev/null 2>&1 || true
        kill -TERM "$DAEMON_PID" 2>/dev/null || true
        for _ in $(seq 1 100); do kill -0 "$DAEMON_PID" 2>/dev/null || break; sleep 0.2; done
        kill -KILL "$DAEMON_PID" 2>/dev/null || true
        wait "$DAEMON_PID" 2>/dev/null || true
        # Leftovers a daemon with a bridge would leave (this one is started without).
        if [ "$HAD_DOCKER0" = 0 ] && ip link show docker0 >/dev/null 2>&1; then
            ip link delete docker0 2>/dev/null || true
        fi
        [ "$HAD_DOCKER_CHAINS" = 0 ] && remove_docker_iptables
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'say "interrupted"; exit 130' INT TERM

apt_install() { # quietly installs Debian packages; 0 on success
    [ "$(id -u)" = 0 ] || return 1
    local log="$WORK/apt.log"
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" \
            >"$log" 2>&1; then
        apt-get update -q >>"$log" 2>&1 &&
            DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" \
                >>"$log" 2>&1 || { tail -n 5 "$log"; return 1; }
    fi
}

# ---- static checks: compose file, HAProxy configurations, Kubernetes manifests ----------
# They need no daemon, so they run (and can fail) even when Docker itself is SKIPPED.
static_checks() {
    local compose=""
    if docker compose version >/dev/null 2>&1; then
        compose="docker compose"
    elif command -v docker-compose >/dev/null; then
        compose=docker-compose
    elif [ "$(id -u)" = 0 ] && apt_install docker-compose && command -v docker-compose >/dev/null; then
        compose=docker-compose
    fi
    if [ -n "$compose" ]; then
        $compose -f "$ROOT/deploy/compose.yaml" config -q 2>"$WORK/compose.err" ||
            { cat "$WORK/compose.err"; fail "$compose config rejects deploy/compose.yaml"; }
        say "deploy/compose.yaml valid ($compose config)"
    else
        echo "######## docker-test: compose validation SKIPPED: neither 'docker compose' nor docker-compose ########"
    fi
    local cfg
    if command -v haproxy >/dev/null; then
        # Replica names resolve only inside compose / the cluster: init-addr lets -c pass.
        for cfg in deploy/haproxy.cfg deploy/k8s/haproxy.cfg; do
            haproxy -c -q -f "$ROOT/$cfg" >"$WORK/haproxy.log" 2>&1 ||
                { cat "$WORK/haproxy.log"; fail "haproxy -c rejects $cfg"; }
        done
        say "deploy/haproxy.cfg and deploy/k8s/haproxy.cfg valid (haproxy -c)"
    else
        echo "######## docker-test: haproxy configuration check SKIPPED: no haproxy ########"
    fi
    if command -v kubectl >/dev/null; then
        mkdir -p "$WORK/overlay"
        ln -s "$ROOT/deploy" "$WORK/overlay/deploy"
        printf 'resources: [deploy/k8s]\ncomponents: [deploy/k8s/tls]\n' >"$WORK/overlay/kustomization.yaml"
        kubectl kustomize "$ROOT/deploy/k8s" >"$WORK/k8s.yaml" 2>"$WORK/k8s.err" ||
            { cat "$WORK/k8s.err"; fail "kubectl kustomize deploy/k8s fails"; }
        kubectl kustomize --load-restrictor LoadRestrictionsNone "$WORK/overlay" >"$WORK/k8s-tls.yaml" 2>"$WORK/k8s.err" ||
            { cat "$WORK/k8s.err"; fail "kubectl kustomize with the tls component fails"; }
        say "deploy/k8s builds with kubectl kustomize ($(grep -c '^kind:' "$WORK/k8s.yaml") objects; with tls/: $(grep -c 'scheme: HTTPS' "$WORK/k8s-tls.yaml") HTTPS probes)"
    else
        echo "######## docker-test: Kubernetes manifest check SKIPPED: no kubectl ########"
    fi
}
static_checks

# ---- a daemon ---------------------------------------------------------------------------
if ! command -v docker >/dev/null; then
    say "installing docker.io (Debian)"
    apt_install docker.io || skip "no docker client, and docker.io could not be installed"
fi
if docker info >/dev/null 2>&1; then
    say "using the running Docker daemon ${DOCKER_HOST:-(default socket)}"
elif [ -S "$PRIVATE_SOCK" ] && DOCKER_HOST=unix://$PRIVATE_SOCK docker info >/dev/null 2>&1; then
    export DOCKER_HOST=unix://$PRIVATE_SOCK
    say "using a private daemon left running on $PRIVATE_SOCK (not started here: not stopped)"
else
    [ "$(id -u)" = 0 ] || skip "no Docker daemon answers, and starting one needs root"
    if ! command -v dockerd >/dev/null; then
        say "installing docker.io (Debian) for dockerd"
        apt_install docker.io || skip "dockerd is missing and docker.io could not be installed"
    fi
    ip link show docker0 >/dev/null 2>&1 && HAD_DOCKER0=1
    iptables -S 2>/dev/null | grep -q DOCKER && HAD_DOCKER_CHAINS=1
    mkdir -p "$PRIVATE_ROOT" "$PRIVATE_EXEC"
    dockerd --host "unix://$PRIVATE_SOCK" --data-root "$PRIVATE_ROOT" --exec-root "$PRIVATE_EXEC" \
        --pidfile "$PRIVATE_EXEC/dockerd.pid" --bridge=none --iptables=false --ip-masq=false \
        >"$WORK/dockerd.log" 2>&1 &
    DAEMON_PID=$!
    export DOCKER_HOST=unix://$PRIVATE_SOCK
    for _ in $(seq 1 150); do
        docker info >/dev/null 2>&1 && break
        kill -0 "$DAEMON_PID" 2>/dev/null || break
        sleep 0.2
    done
    if ! docker info >/dev/null 2>&1; then
        tail -n 15 "$WORK/dockerd.log"
        skip "dockerd does not start on this machine (log above)"
    fi
    say "started a private dockerd (pid $DAEMON_PID, $PRIVATE_SOCK, no bridge, no iptables)"
fi
say "daemon $(docker version --format '{{.Server.Version}}' 2>/dev/null), client $(docker version --format '{{.Client.Version}}' 2>/dev/null)"

# ---- the base image ---------------------------------------------------------------------
BASE=debian:bookworm-slim
if ! docker image inspect "$BASE" >/dev/null 2>&1; then
    BASE=$BASE_LOCAL
fi
if ! docker image inspect "$BASE" >/dev/null 2>&1; then
    [ "$(id -u)" = 0 ] || fail "no $BASE image, and debootstrap needs root"
    command -v debootstrap >/dev/null || apt_install debootstrap || fail "cannot install debootstrap"
    MIRROR=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null)
    [ -n "$MIRROR" ] || MIRROR=$(awk '$1 == "deb" && $3 == "bookworm" {print $2; exit}' /etc/apt/sources.list 2>/dev/null)
    [ -n "$MIRROR" ] || MIRROR=http://deb.debian.org/debian
    say "making $BASE with debootstrap --variant=minbase bookworm from $MIRROR"
    t0=$SECONDS
    debootstrap --variant=minbase bookworm "$WORK/rootfs" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 ||
        { tail -n 10 "$WORK/debootstrap.log"; fail "debootstrap failed"; }
    rm -rf "$WORK"/rootfs/var/cache/apt/archives/*.deb "$WORK"/rootfs/var/lib/apt/lists/*
    tar -C "$WORK/rootfs" -c . | docker import --change 'CMD ["bash"]' - "$BASE" >/dev/null ||
        fail "docker import failed"
    rm -rf "$WORK/rootfs"
    say "base image ready in $((SECONDS - t0)) s"
fi

# ---- build ------------------------------------------------------------------------------
say "docker build -f deploy/Dockerfile -t $IMAGE (base $BASE)"
t0=$SECONDS
# Legacy builder (no buildx here); the build's RUN steps use the host network because the
# private daemon has no bridge.
if ! DOCKER_BUILDKIT=0 timeout "$BUILD_TIMEOUT" docker build --network host \
        --build-arg "DEBIAN_IMAGE=$BASE" -f "$ROOT/deploy/Dockerfile" -t "$IMAGE" "$ROOT" \
        >"$WORK/build.log" 2>&1; then
    tail -n 30 "$WORK/build.log"
    fail "docker build failed"
fi
say "built in $((SECONDS - t0)) s; image $(docker image inspect --format '{{.Size}}' "$IMAGE" | awk '{printf "%.0f MB", $1/1e6}')"

# ---- static checks of the image ----------------------------------------------------------
user=$(docker image inspect --format '{{.Config.User}}' "$IMAGE")
[ -n "$user" ] && [ "${user%%:*}" != 0 ] && [ "${user%%:*}" != root ] || fail "image runs as root ('$user')"
missing=$(docker run --rm --network none --entrypoint ldd "$IMAGE" /usr/local/bin/altgradd /usr/local/bin/altgrad 2>&1 | grep 'not found')
[ -z "$missing" ] || fail "runtime libraries missing: $missing"
docker run --rm --network none "$IMAGE" --help >"$WORK/help.txt" 2>&1 || fail "altgradd --help fails in the image: $(head -3 "$WORK/help.txt")"
say "image: user $user, every shared library present, altgradd --help runs"

# ---- run it and send a real gradient request ---------------------------------------------
PORT=""
for _ in $(seq 1 100); do
    p=$((20000 + RANDOM % 40000))
    [ -z "$(ss -Htln "sport = :$p" 2>/dev/null)" ] && { PORT=$p; break; }
done
[ -n "$PORT" ] || fail "no free loopback port"
CONTAINER=altgrad-docker-test-$$
docker run -d --name "$CONTAINER" --network host --read-only --tmpfs /tmp --cap-drop ALL \
    --security-opt no-new-privileges \
    -e "ALTGRAD_LISTEN=127.0.0.1:$PORT" -e "ALTGRAD_SERVER_URL=http://127.0.0.1:$PORT" \
    -e ALTGRAD_WORKERS=1 -e ALTGRAD_CALIBRATE=0 \
    --health-interval 1s --health-start-period 2s "$IMAGE" >/dev/null || fail "docker run failed"
ready=0
for _ in $(seq 1 100); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "http://127.0.0.1:$PORT/health/ready")" = 200 ] && { ready=1; break; }
    sleep 0.2
done
[ "$ready" = 1 ] || { docker logs "$CONTAINER" 2>&1 | tail -n 20; fail "the container never became ready"; }

/usr/bin/python3 - "$WORK/request.json" <<'EOF'
import json, math, sys
# A small deterministic model: 2 layers, layernorm, MLP, causal attention, mse loss.
d, n, ff, L = 8, 6, 16, 2
def t(shape, k):
    cnt = 1
    for s in shape: cnt *= s
    return {"shape": shape, "data": [round(math.sin(0.37 * (i + 1) + k) * 0.5, 6) for i in range(cnt)]}
layers = []
for l in range(L):
    w = {nm: t([d, d], 10 * l + j) for j, nm in enumerate(["wq", "wk", "wv", "wo"])}
    w.update({"ln1_gamma": {"shape": [d], "data": [1.0] * d}, "ln1_beta": t([d], 5 + l),
              "ln2_gamma": {"shape": [d], "data": [1.0] * d}, "ln2_beta": t([d], 7 + l),
              "w1": t([d, ff], 11 + l), "b1": t([ff], 13 + l), "w2": t([ff, d], 17 + l), "b2": t([d], 19 + l)})
    layers.append(w)
req = {"model": {"d_model": d, "n_heads": 2, "n_layers": L, "d_ff": ff, "causal": True,
                 "norm": "layernorm", "activation": "gelu", "residual": True},
       "layers": layers, "input": t([n, d], 3), "loss": {"type": "mse", "target": t([n, d], 4)},
       "method": {"name": "exact"}}
json.dump(req, open(sys.argv[1], "w"))
EOF
code=$(curl -s -o "$WORK/response.json" -w '%{http_code}' --max-time 60 \
    -H 'Content-Type: application/json' --data-binary @"$WORK/request.json" \
    "http://127.0.0.1:$PORT/v1/gradients")
[ "$code" = 200 ] || { head -c 600 "$WORK/response.json"; echo; fail "POST /v1/gradients answered $code"; }

# The reference: the host's own altgradd on the same request, when it is built.
REF=""
HOST_SERVER=${ALTGRAD_SERVER:-$ROOT/build/altgradd}
if [ -x "$HOST_SERVER" ]; then
    HPORT=""
    for _ in $(seq 1 100); do
        p=$((20000 + RANDOM % 40000))
        [ "$p" != "$PORT" ] && [ -z "$(ss -Htln "sport = :$p" 2>/dev/null)" ] && { HPORT=$p; break; }
    done
    OPENBLAS_NUM_THREADS=1 "$HOST_SERVER" --listen "127.0.0.1:$HPORT" --workers 1 --calibrate 0 \
        >"$WORK/host-server.log" 2>&1 &
    hpid=$!
    for _ in $(seq 1 100); do
        [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "http://127.0.0.1:$HPORT/health/ready")" = 200 ] && break
        sleep 0.1
    done
    hcode=$(curl -s -o "$WORK/reference.json" -w '%{http_code}' --max-time 60 \
        -H 'Content-Type: application/json' --data-binary @"$WORK/request.json" \
        "http://127.0.0.1:$HPORT/v1/gradients")
    kill -TERM "$hpid" 2>/dev/null; wait "$hpid" 2>/dev/null
    [ "$hcode" = 200 ] && REF="$WORK/reference.json"
fi
/usr/bin/python3 - "$WORK/response.json" "$REF" <<'EOF' || fail "the container's gradients are wrong"
import json, math, sys
r = json.load(open(sys.argv[1]))
def flat(t):
    assert "data" in t, "tensor not in JSON numbers"
    return t["data"]
assert isinstance(r.get("loss"), (int, float)) and math.isfinite(r["loss"]), "no finite loss"
gi = flat(r["grad_input"]); assert len(gi) == 48 and all(math.isfinite(v) for v in gi)
gw = r["grad_weights"]; assert len(gw) == 2
for l in gw:
    assert set(l) == {"wq", "wk", "wv", "wo", "ln1_gamma", "ln1_beta", "ln2_gamma", "ln2_beta",
                      "w1", "b1", "w2", "b2"}, sorted(l)
    assert l["w1"]["shape"] == [8, 16]
    assert any(v != 0 for v in flat(l["wq"])), "zero wq gradient"
if sys.argv[2]:
    ref = json.load(open(sys.argv[2]))
    def rel(a, b):
        num = sum((x - y) ** 2 for x, y in zip(a, b)); den = sum(y * y for y in b)
        return math.sqrt(num / max(den, 1e-30))
    errs = [(rel(gi, flat(ref["grad_input"])), "grad_input")]
    for i, (l, lr) in enumerate(zip(gw, ref["grad_weights"])):
        errs += [(rel(flat(l[k]), flat(lr[k])), "layers[%d].%s" % (i, k)) for k in l]
    worst, where = max(errs)
    assert abs(r["loss"] - ref["loss"]) <= 1e-5 * max(1, abs(ref["loss"])), (r["loss"], ref["loss"])
    assert worst <= 1e-4, "relative error %.3g in %s against the host build" % (worst, where)
    print("docker-test: gradients equal the host build's (worst relative error %.2e, %s), loss %.6f" % (worst, where, r["loss"]))
else:
    print("docker-test: response well formed, loss %.6f (no host build to compare with)" % r["loss"])
EOF

health=""
for _ in $(seq 1 40); do
    health=$(docker inspect --format '{{if .State.Health}}{{.State.Health.Status}}{{end}}' "$CONTAINER")
    [ "$health" = healthy ] && break
    sleep 0.5
done
[ "$health" = healthy ] || { docker inspect --format '{{json .State.Health}}' "$CONTAINER" | head -c 800; echo; fail "HEALTHCHECK status '$health'"; }
uid=$(docker exec "$CONTAINER" id -u)
[ "$uid" != 0 ] || fail "the server runs as root"
say "container ready, HEALTHCHECK healthy, running as uid $uid"

# SIGTERM drains and exits 0.
docker stop -t 40 "$CONTAINER" >/dev/null
exit_code=$(docker inspect --format '{{.State.ExitCode}}' "$CONTAINER")
[ "$exit_code" = 0 ] || { docker logs "$CONTAINER" 2>&1 | tail -n 10; fail "docker stop: exit code $exit_code"; }
docker rm "$CONTAINER" >/dev/null && CONTAINER=""
say "docker stop: drained and exited 0"

say "1 passed, 0 failed"

#!/bin/bash
# The Python package client/python (docs/python.md): installs it offline with pip into a
# temporary --target directory (the command docs/python.md gives), then runs its unittest
# suite (client/python/tests/run.py) from that installed copy against live altgradd servers
# ($ALTGRAD_SERVER, started by the tests on ephemeral ports). Needs /usr/bin/python3 with
# Debian's python3-setuptools, python3-wheel, python3-pip and python3-torch.
set -u
cd "$(dirname "$0")/../.."
PY=/usr/bin/python3
export ALTGRAD_SERVER=${ALTGRAD_SERVER:-$PWD/build/altgradd}
tmp=$(mktemp -d /tmp/altgrad-pyclient-XXXXXX)
trap 'rm -rf "$tmp"' EXIT

# pip builds a local project in its own directory (build/, *.egg-info): build from a copy
cp -r client/python "$tmp/src"
if ! PIP_DISABLE_PIP_VERSION_CHECK=1 timeout 120 "$PY" -m pip install --quiet \
        --no-build-isolation --no-index --target "$tmp/site" "$tmp/src" >"$tmp/pip.log" 2>&1; then
    echo "FAIL: pip install --no-build-isolation --no-index client/python"
    cat "$tmp/pip.log"
    exit 1
fi
[ -f "$tmp/site/altgrad/__init__.py" ] || { echo "FAIL: pip installed no altgrad package"; exit 1; }

# run from the installed copy, not from the source tree
cd "$tmp"
# -W: show ResourceWarnings (unclosed sockets), except hardening_lib's own
PYTHONPATH="$tmp/site" OPENBLAS_NUM_THREADS=1 timeout 600 "$PY" -W default \
    -W ignore::ResourceWarning:hardening_lib "$OLDPWD/client/python/tests/run.py" "$@"

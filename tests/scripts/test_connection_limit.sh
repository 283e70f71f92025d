#!/bin/bash
# Runs tests/scripts/connection_limit.py against $ALTGRAD_SERVER (docs/hardening.md): the
# server accepts again within a second after its connection limit was filled and released.
set -u
cd "$(dirname "$0")/../.."
exec timeout 120 /usr/bin/python3 tests/scripts/connection_limit.py

#!/bin/bash
# Runs tests/scripts/bad_requests.py against $ALTGRAD_SERVER (docs/hardening.md).
set -u
cd "$(dirname "$0")/../.."
exec timeout 600 /usr/bin/python3 tests/scripts/bad_requests.py

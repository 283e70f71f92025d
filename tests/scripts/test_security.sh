#!/bin/bash
# Runs tests/scripts/security.py against $ALTGRAD_SERVER and $ALTGRAD_CLI (docs/hardening.md).
set -u
cd "$(dirname "$0")/../.."
exec timeout 300 /usr/bin/python3 tests/scripts/security.py

#!/bin/bash
# Runs tests/scripts/faults.py against $ALTGRAD_SERVER (docs/hardening.md).
set -u
cd "$(dirname "$0")/../.."
exec timeout 300 /usr/bin/python3 tests/scripts/faults.py

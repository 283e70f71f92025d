#!/bin/bash
# The 20-second variant of `make load` (tests/load/load.py): 64 connections of mixed traffic,
# zero unexpected errors, every job accounted for, RSS back within 10% of its warm-up level.
set -u
cd "$(dirname "$0")/../.."
exec timeout 300 /usr/bin/python3 tests/load/load.py --server "${ALTGRAD_SERVER:-build/altgradd}" \
    --seconds 20 --warmup 5 --connections 64

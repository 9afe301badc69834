#!/usr/bin/env bash
# The project's test command (README, .ci/run): installs everything the tests need on a
# fresh Debian machine, then lint, type-check and the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."

# System packages: Chromium (browser tests of the HTML report, kaleido PNG export) and
# PostgreSQL (distributed-search tests against a real server). Installed only when missing.
if ! command -v chromium >/dev/null 2>&1 || ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  if [ "$(id -u)" = "0" ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq chromium postgresql >/dev/null
  else
    echo "scripts/test.sh: chromium or postgresql missing and not root; those tests will skip" >&2
  fi
fi

python -m pip install -q --disable-pip-version-check -c constraints.txt -e ".[test]"
python -m ruff check autoprune tests scripts
python -m mypy autoprune
python -m pytest -q -n auto --dist loadgroup "$@"  # pytest-xdist: a worker per core (tests/conftest.py); a zoo model's tests on one worker

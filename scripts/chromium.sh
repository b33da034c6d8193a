#!/usr/bin/env bash
# Headless Chromium and its WebDriver for the dashboard's browser tests
# (tests/tests/suite/dashboard.rs): Debian's `chromium` and `chromium-driver`. Idempotent;
# installs as root (or through sudo) on a fresh machine, does nothing when both are there.
set -euo pipefail
if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
  exit 0
fi
sudo=""
if [ "$(id -u)" != 0 ]; then sudo=sudo; fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y --no-install-recommends chromium chromium-driver

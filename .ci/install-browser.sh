#!/usr/bin/env bash
# Installs what the browser tests (tests/browser.rs) drive: Debian's chromium and
# chromium-driver, from the distribution's packages only (no tool downloads a browser of its
# own). Idempotent: does nothing when /usr/bin/chromedriver is already there.
set -euo pipefail

if [ -x /usr/bin/chromedriver ] && [ -x /usr/bin/chromium ]; then
  exit 0
fi
sudo_if_needed() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}
export DEBIAN_FRONTEND=noninteractive
sudo_if_needed apt-get update -qq
sudo_if_needed apt-get install -y -qq --no-install-recommends chromium chromium-driver
/usr/bin/chromedriver --version

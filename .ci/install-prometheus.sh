#!/usr/bin/env bash
# Installs what the metric-gate tests (tests/metric_gates.rs) query: Debian's prometheus, from
# the distribution's packages only. Idempotent: does nothing when /usr/bin/prometheus is
# already there.
set -euo pipefail

if [ -x /usr/bin/prometheus ]; then
  exit 0
fi
sudo_if_needed() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}
export DEBIAN_FRONTEND=noninteractive
sudo_if_needed apt-get update -qq
sudo_if_needed apt-get install -y -qq --no-install-recommends prometheus
/usr/bin/prometheus --version

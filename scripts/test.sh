#!/usr/bin/env bash
# The test command of the README: sets up what the tests need, then runs them.
set -euo pipefail
cd "$(dirname "$0")/.."
# Tests start private Mosquitto brokers on free loopback ports.
if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && apt-get install -y -qq mosquitto
  else
    sudo apt-get update -qq && sudo apt-get install -y -qq mosquitto
  fi
fi
# --all-features: the demo (an opt-in feature) is tested too.
cargo test --all-features "$@"

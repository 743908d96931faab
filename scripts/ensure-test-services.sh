#!/usr/bin/env bash
# Makes sure the programs the integration tests start are installed.
# Tests start their own instances on free loopback ports (or use the ones
# named in PREDICTFLOW_TEST_REDIS / PREDICTFLOW_TEST_KAFKA, as .ci/run does).
set -euo pipefail

missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
# Kafka's broker runs on Java; Maven resolves its jars (scripts/kafka.sh).
command -v java >/dev/null 2>&1 || missing+=(default-jre-headless)
command -v mvn >/dev/null 2>&1 || missing+=(maven)
# The canary tests run scripts/canary_promote.py against a real Prometheus.
command -v prometheus >/dev/null 2>&1 || missing+=(prometheus)

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing ${missing[*]} with apt-get" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
elif command -v sudo >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  echo "installing ${missing[*]} with sudo apt-get" >&2
  sudo DEBIAN_FRONTEND=noninteractive apt-get update -qq
  sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
else
  echo "the integration tests need: ${missing[*]} (install them, or set" \
       "PREDICTFLOW_TEST_REDIS=host:port and PREDICTFLOW_TEST_KAFKA=host:port" \
       "to use running services)" >&2
  exit 1
fi

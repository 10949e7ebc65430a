#!/usr/bin/env bash
# Installs the Debian packages whose programs the test suite drives as real peers.
# As root it installs what is missing; otherwise it prints the exact command and fails.
set -euo pipefail

# command:package pairs (an absolute path stands for a package without a command)
PEERS=(
    "logger:bsdutils"
    "initdb:postgresql"
    "pg_ctl:postgresql"
    "prometheus:prometheus"
    "promtool:prometheus"
    "node:nodejs"
    "npm:npm"
    "docker-compose:docker-compose"
    "rsyslogd:rsyslog"
    "snmpd:snmpd"
    "softflowd:softflowd"
    "gpsfake:gpsd-clients"
    "gpsd:gpsd"
    "nats-server:nats-server"
    "chromium:chromium"
    "/usr/share/fonts/truetype/liberation:fonts-liberation"
)

# Debian keeps the PostgreSQL server binaries out of PATH.
found() {
    [[ "$1" == /* ]] && { [ -e "$1" ]; return; }
    command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] ||
        compgen -G "/usr/lib/postgresql/*/bin/$1" >/dev/null
}

missing=()
for pair in "${PEERS[@]}"; do
    command_name="${pair%%:*}"
    package="${pair##*:}"
    if ! found "$command_name" && [[ ! " ${missing[*]} " == *" $package "* ]]; then
        missing+=("$package")
    fi
done

if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi

install_cmd="apt-get update && apt-get install -y --no-install-recommends ${missing[*]}"
if [ "$(id -u)" -ne 0 ]; then
    echo "The test suite needs these Debian packages: ${missing[*]}" >&2
    echo "Run as root:  $install_cmd" >&2
    exit 1
fi
echo "Installing test peers: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get -o DPkg::Lock::Timeout=900 update -qq
apt-get -o DPkg::Lock::Timeout=900 install -y -qq --no-install-recommends "${missing[@]}"

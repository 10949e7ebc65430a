#!/usr/bin/env bash
# Installs the Debian packages only the benchmark needs (`make bench`): the PostgreSQL
# server binaries and rsyslog with its PostgreSQL output module (ompgsql), the peer the
# benchmark compares against. As root it installs what is missing; otherwise it prints the
# exact command and fails.
set -euo pipefail

missing=()
compgen -G "/usr/lib/postgresql/*/bin/postgres" >/dev/null || missing+=("postgresql")
[ -x /usr/sbin/rsyslogd ] || missing+=("rsyslog")
compgen -G "/usr/lib/*/rsyslog/ompgsql.so" >/dev/null || missing+=("rsyslog-pgsql")

if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi

install_cmd="apt-get update && apt-get install -y --no-install-recommends ${missing[*]}"
if [ "$(id -u)" -ne 0 ]; then
    echo "The benchmark needs these Debian packages: ${missing[*]}" >&2
    echo "Run as root:  $install_cmd" >&2
    exit 1
fi
echo "Installing benchmark peers: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get -o DPkg::Lock::Timeout=900 update -qq
# rsyslog-pgsql asks dbconfig-common questions unless told not to configure a database.
echo "rsyslog-pgsql rsyslog-pgsql/dbconfig-install boolean false" | debconf-set-selections
apt-get -o DPkg::Lock::Timeout=900 install -y -qq --no-install-recommends "${missing[@]}"

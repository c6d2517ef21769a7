#!/usr/bin/env bash
# Install the Debian packages the tests use, only those missing, and make sure PostgreSQL runs.
set -euo pipefail

need=()
have() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
for pkg in chromium dovecot-imapd dovecot-pop3d postfix; do
  have "$pkg" || need+=("$pkg")
done
command -v pg_dump >/dev/null 2>&1 || need+=(postgresql-client)
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)  # checks deploy/*.service
if ! have postgresql && ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
  need+=(postgresql)
fi

if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "install-test-deps: missing Debian packages: ${need[*]}; run as root or: sudo apt-get install ${need[*]}" >&2
    exit 1
  fi
  echo "install-test-deps: installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # The tests run private Postfix instances (tests/peers); the system one needs no configuration.
  echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# Debian starts its own dovecot/postfix on install; the tests run private instances on other ports.
for svc in dovecot postfix; do
  if pgrep -x "$svc" >/dev/null 2>&1 || pgrep -f "/usr/lib/postfix/sbin/master" >/dev/null 2>&1; then
    (service "$svc" stop || true) >/dev/null 2>&1
  fi
done

if ! pg_isready -q -h 127.0.0.1 -p 5432; then
  echo "install-test-deps: starting PostgreSQL"
  cluster=$(ls /etc/postgresql | sort -V | tail -n 1)
  pg_ctlcluster --skip-systemctl-redirect "$cluster" main start
  for _ in $(seq 1 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done
fi
pg_isready -h 127.0.0.1 -p 5432

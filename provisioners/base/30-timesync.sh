#!/bin/bash
# base: keep the clock right (TLS, logs and AWS request signing depend on it): chrony,
# with the Amazon Time Sync Service first and Debian's pool as fallback.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
apt-get -y -q install --no-install-recommends chrony
install -d -m 0755 /etc/chrony/sources.d
cat > /etc/chrony/sources.d/factory.sources <<'CONF'
# ami-factory base: Amazon Time Sync Service (link-local on every EC2 instance)
server 169.254.169.123 prefer iburst minpoll 4 maxpoll 4
CONF
grep -qsE '^(pool|server|sourcedir)' /etc/chrony/chrony.conf \
  || echo "pool 2.debian.pool.ntp.org iburst" >> /etc/chrony/chrony.conf
# enabled = wanted by multi-user.target (what systemctl enable does; chrony's postinst does
# it too, this makes sure of it without a running systemd)
install -d /etc/systemd/system/multi-user.target.wants
[ -e /etc/systemd/system/multi-user.target.wants/chrony.service ] \
  || ln -s /lib/systemd/system/chrony.service /etc/systemd/system/multi-user.target.wants/chrony.service

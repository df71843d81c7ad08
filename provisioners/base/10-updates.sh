#!/bin/bash
# base: bring the image up to date and keep it so: all updates now, security updates
# installed automatically later (unattended-upgrades), the packages other families rely on.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
# no daemon starts while the image is built (the builder is not the instance that will run it)
printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
chmod 0755 /usr/sbin/policy-rc.d

APT="apt-get -y -q -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold"

# the security archive must be a package source (Debian's AMIs have it; debootstrap does not)
if ! grep -rqs "security.debian.org\|debian-security" /etc/apt/sources.list /etc/apt/sources.list.d/; then
  echo "deb http://security.debian.org/debian-security bookworm-security main" \
    > /etc/apt/sources.list.d/debian-security.list
fi
if ! grep -rqs "bookworm-updates" /etc/apt/sources.list /etc/apt/sources.list.d/; then
  echo "deb http://deb.debian.org/debian bookworm-updates main" \
    > /etc/apt/sources.list.d/debian-updates.list
fi

$APT update
$APT dist-upgrade
# shellcheck disable=SC2086 # a space-separated package list on purpose
$APT install --no-install-recommends unattended-upgrades apt-listchanges ca-certificates \
  python3 sudo openssh-server ${FACTORY_EXTRA_PACKAGES:-}

cat > /etc/apt/apt.conf.d/20auto-upgrades <<'CONF'
// ami-factory base: refresh package lists and install security updates every day
APT::Periodic::Update-Package-Lists "1";
APT::Periodic::Unattended-Upgrade "1";
APT::Periodic::AutocleanInterval "7";
CONF
cat > /etc/apt/apt.conf.d/52factory-unattended-upgrades <<'CONF'
// ami-factory base: security updates only; never reboot on our own
Unattended-Upgrade::Origins-Pattern {
        "origin=Debian,codename=${distro_codename}-security,label=Debian-Security";
};
Unattended-Upgrade::Automatic-Reboot "false";
CONF
chmod 0644 /etc/apt/apt.conf.d/20auto-upgrades /etc/apt/apt.conf.d/52factory-unattended-upgrades

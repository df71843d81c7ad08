#!/bin/bash
# every family, last: remove what must not be captured: SSH keys (the build's
# key in authorized_keys, the host keys: each instance makes its own at first boot), shell
# history, logs, package lists and caches, scratch files. Every instance inherits the image.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
apt-get -y -q autoremove --purge || true
apt-get -y -q clean
rm -f /usr/sbin/policy-rc.d  # from 10-updates.sh: services may start again
rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin
find /root /home -name authorized_keys -o -name authorized_keys2 | xargs -r rm -f
rm -f /etc/ssh/ssh_host_*
for home in /root /home/*; do
  rm -f "$home"/.bash_history "$home"/.python_history "$home"/.lesshst "$home"/.viminfo \
    "$home"/.wget-hsts "$home"/.sudo_as_admin_successful
  rm -rf "$home"/.cache
done
find /var/log -type f \( -name '*.gz' -o -name '*.[0-9]' -o -name '*.old' \) -delete
find /var/log -type f -exec truncate -s 0 {} +
# Packer removes its own uploaded script after this one exits
find /tmp /var/tmp -mindepth 1 -maxdepth 1 ! -name 'script_*.sh' ! -name 'packer-shell*' -exec rm -rf {} +
rm -f /var/lib/dbus/machine-id
truncate -s 0 /etc/machine-id 2>/dev/null || true
sync

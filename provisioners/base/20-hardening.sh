#!/bin/bash
# base: harden SSH (keys only, no root login) and lock passwords: keys are the only way in.
set -euo pipefail

# sshd takes the first value it reads and Debian's sshd_config includes sshd_config.d/*.conf
# first, so this file (sorting first) wins over any later line.
install -d -m 0755 -o root -g root /etc/ssh/sshd_config.d
cat > /etc/ssh/sshd_config.d/00-factory-hardening.conf <<'CONF'
# ami-factory base: keys only, no root login
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin no
PermitEmptyPasswords no
CONF
chown root:root /etc/ssh/sshd_config.d/*.conf /etc/ssh/sshd_config
chmod 0644 /etc/ssh/sshd_config.d/*.conf /etc/ssh/sshd_config
/usr/sbin/sshd -t

# no usable password for root or the login user (an empty or hashed one becomes "*")
for user in root admin; do
  field=$(getent shadow "$user" | cut -d: -f2 || true)
  case "$field" in
    '!'*|'*'*) ;;
    *) usermod -p '*' "$user" ;;
  esac
done
chmod 0640 /etc/shadow
chown root:shadow /etc/shadow

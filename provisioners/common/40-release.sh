#!/bin/bash
# every family: /etc/factory-release says what this image is; verify checks it against the AMI tags.
set -euo pipefail
: "${FACTORY_FAMILY:?}" "${FACTORY_VERSION:?}" "${FACTORY_BUILD_ID:?}"
umask 022
cat > /etc/factory-release <<REL
# written by ami-factory at build time
FACTORY_FAMILY=${FACTORY_FAMILY}
FACTORY_VERSION=${FACTORY_VERSION}
FACTORY_BUILD_ID=${FACTORY_BUILD_ID}
REL
chown root:root /etc/factory-release
chmod 0444 /etc/factory-release

#!/bin/bash
# app: a small HTTP service (python3's http.server) on port 8080, answering /health and /
# with the image's release. Started by systemd on EC2, and by /etc/rc.local where no systemd
# runs (the local cloud's sandboxes); /usr/local/sbin/factory-app-start starts it by hand.
set -euo pipefail
PORT="${FACTORY_APP_PORT:-8080}"

id factory-app >/dev/null 2>&1 \
  || useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin factory-app

install -d -m 0755 -o root -g root /usr/local/lib/factory-app
cat > /usr/local/lib/factory-app/server.py <<'PY'
"""ami-factory app: answers GET /health ("ok") and GET / (the image's /etc/factory-release)."""
import http.server
import os
import socket

RELEASE = "/etc/factory-release"


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - http.server's naming
        if self.path == "/health":
            body = b"ok\n"
        elif self.path == "/":
            with open(RELEASE, "rb") as handle:
                body = handle.read()
        else:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt, *args):
        pass


if __name__ == "__main__":
    bind = os.environ.get("BIND", "")
    if not bind:  # this instance's own address (its hostname's), so instances never share one
        try:
            bind = socket.gethostbyname(socket.gethostname())
        except OSError:
            bind = "0.0.0.0"
    address = (bind, int(os.environ.get("PORT", "8080")))
    http.server.ThreadingHTTPServer(address, Handler).serve_forever()
PY
chmod 0644 /usr/local/lib/factory-app/server.py

cat > /etc/default/factory-app <<CONF
# ami-factory app: where the service listens (user data may rewrite this at launch);
# an empty BIND means this instance's own address (what its hostname resolves to)
BIND=
PORT=${PORT}
CONF
chmod 0644 /etc/default/factory-app

cat > /etc/systemd/system/factory-app.service <<'UNIT'
[Unit]
Description=ami-factory app (HTTP on $PORT)
After=network-online.target

[Service]
EnvironmentFile=/etc/default/factory-app
ExecStart=/usr/bin/python3 /usr/local/lib/factory-app/server.py
User=factory-app
Restart=always
NoNewPrivileges=true
ProtectSystem=strict
ProtectHome=true

[Install]
WantedBy=multi-user.target
UNIT
chmod 0644 /etc/systemd/system/factory-app.service
install -d /etc/systemd/system/multi-user.target.wants
ln -sf /etc/systemd/system/factory-app.service \
  /etc/systemd/system/multi-user.target.wants/factory-app.service

# without systemd: start it in the background, once (idempotent)
cat > /usr/local/sbin/factory-app-start <<'SH'
#!/bin/sh
# ami-factory app: start the service without systemd (idempotent)
PIDFILE=/run/factory-app.pid
if [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
  exit 0
fi
set -a
. /etc/default/factory-app
set +a
setpriv --reuid=factory-app --regid=factory-app --clear-groups \
  /usr/bin/python3 /usr/local/lib/factory-app/server.py </dev/null >/dev/null 2>&1 &
echo $! > "$PIDFILE"
SH
chmod 0755 /usr/local/sbin/factory-app-start

# rc.local: run at boot by systemd's rc-local compatibility, or by an init that has no units
cat > /etc/rc.local <<'SH'
#!/bin/sh
# ami-factory app: start the service when no systemd manages it
if [ ! -d /run/systemd/system ]; then
  /usr/local/sbin/factory-app-start
fi
exit 0
SH
chmod 0755 /etc/rc.local

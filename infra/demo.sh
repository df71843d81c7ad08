#!/usr/bin/env bash
# `make demo`: the main job on the embedded local cloud, end to end.
# Start the local cloud, build `base` with real Packer (provisioners run in a sandbox), verify it
# with its testinfra suite, publish it to the `dev` channel, and check its signed provenance.
set -euo pipefail
cd "$(dirname "$0")/.."
F=${FACTORY:-.venv/bin/factory}
STATE=${FACTORY_LOCAL_STATE_DIR:-.factory/local}
CACHE=${FACTORY_LOCAL_IMAGE_CACHE:-.factory/cache/images}
OUT=.factory/demo
mkdir -p "$OUT"

echo "== local cloud"
"$F" local up --state-dir "$STATE" --image-cache "$CACHE"
eval "$("$F" local env --state-dir "$STATE")"

echo "== build + verify: base"
"$F" build base --verify --rebuild -O json > "$OUT/build.json"
AMI=$(.venv/bin/python - "$OUT/build.json" <<'PY'
import json, sys
report = json.load(open(sys.argv[1]))
build = report
ami = build["images"][0]["ami_id"]
print(f"AMI:        {ami}  ({build['name']}, built in {build['seconds']:.1f}s)", file=sys.stderr)
print(f"build log:  {build['log_file']}", file=sys.stderr)
for r in report["verify"]["results"]:
    print(f"tests:      {r['outcome']}: {r['passed']} passed, {r['failed']} failed, "
          f"{r['skipped']} skipped of {r['total']} in {r['test_seconds']:.1f}s", file=sys.stderr)
    print(f"junit:      {r['junit_path']}", file=sys.stderr)
print(ami)
PY
)

echo "== publish: base/dev"
"$F" channel set base dev "$AMI" --reason "make demo"
"$F" channel show base

echo "== provenance"
"$F" provenance verify "$AMI"

echo
echo "demo done: $AMI is verified, in channel base/dev, with verified provenance."
echo "the local cloud is still running: eval \"\$($F local env --state-dir $STATE)\"; stop it with: $F local down --state-dir $STATE"

"""Benchmark: catalog listing, attestation recording and provenance verification.

    .venv/bin/python -m bench.provenance [--images 1000] [--families 20] [--depth 3] [--rounds 10]

Starts a control-plane-only local cloud (no instances) in a temporary directory and talks to
it over HTTP. Seeds N factory-tagged AMIs (not timed) with a channel per family, then times:
- `list_images` over all of them (wall time, API calls);
- `record_build` + `record_verification` for one image, signed by the local cloud's KMS
  (ECDSA P-256, MessageType=DIGEST) and by a key file;
- `verify_provenance` of an image at the end of a lineage `--depth` attested images deep,
  with KMS public keys fetched online and with a pinned public key (offline signatures).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization

from factory.aws import AwsClients, AwsTarget, tag_list
from factory.catalog import list_images
from factory.channels import set_channel
from factory.config import load_config
from factory.localcloud import control
from factory.provenance import (
    Signer,
    generate_key_file,
    record_build,
    record_verification,
    signer_from_config,
    verify_provenance,
)

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
from imagekit import (  # noqa: E402 - the tests' image helpers, found through the path above
    JUNIT_PASS,
    build_tags,
    facts_for,
    make_repo,
    register,
    register_base,
)

IMAGE_CACHE = Path(
    os.environ.get("FACTORY_LOCAL_IMAGE_CACHE", REPO / ".factory" / "cache" / "images")
).resolve()


def _timed(fn: Callable[[], Any], clients: AwsClients) -> tuple[float, int, Any]:
    before = clients.counter.total
    started = time.perf_counter()
    value = fn()
    return time.perf_counter() - started, clients.counter.total - before, value


def _seed(clients: AwsClients, images: int, families: int) -> None:
    ec2 = clients.client("ec2")
    base = register_base(clients)
    snapshot = ec2.describe_images(ImageIds=[base])["Images"][0]["BlockDeviceMappings"][0]
    for i in range(images):
        family = f"fam{i % families:02d}"
        ami = ec2.register_image(
            Name=f"{family}-{i}",
            Architecture="x86_64",
            RootDeviceName="/dev/xvda",
            VirtualizationType="hvm",
            BlockDeviceMappings=[snapshot],
        )["ImageId"]
        ec2.create_tags(Resources=[ami], Tags=tag_list(build_tags(family, str(i), base)))
        if i < families:
            set_channel(clients, ("prod",), family, "prod", ami)


def _lineage(clients: AwsClients, repo: Path, signer: Signer, depth: int) -> tuple[str, float, int]:
    """An attested chain `depth` deep; returns the tip and the mean record time/calls."""
    files = make_repo(repo, "web")
    parent = register_base(clients)
    junit = repo / "junit.xml"
    junit.write_bytes(JUNIT_PASS)
    times, calls = [], []
    for level in range(depth):
        tags = build_tags("web", f"chain{level}", parent)
        ami = register(clients, f"web-chain{level}", tags)
        facts = facts_for(repo, files, "web", f"chain{level}", parent, tags)
        clients.client("ec2").create_tags(
            Resources=[ami], Tags=tag_list({"factory:result-digest": "ab" * 32})
        )

        def _record(ami: str = ami, facts: Any = facts) -> None:
            record_build(clients, signer, ami, facts)
            record_verification(clients, signer, ami, "ab" * 32, junit)

        seconds, n, _ = _timed(_record, clients)
        times.append(seconds)
        calls.append(n)
        parent = ami
    return parent, statistics.mean(times), round(statistics.mean(calls))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.provenance")
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--families", type=int, default=20)
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args(argv)
    results: dict[str, Any] = {"images": args.images, "families": args.families}
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp) / "cloud"
        status = control.up(state, instances=False, image_cache=IMAGE_CACHE)
        os.environ.update(control.env_vars(status))
        try:
            clients = AwsClients(AwsTarget("us-east-1", endpoint_url=status.endpoint_url))
            started = time.perf_counter()
            _seed(clients, args.images, args.families)
            results["seed_seconds"] = round(time.perf_counter() - started, 1)

            samples = [_timed(lambda: list_images(clients), clients) for _ in range(3)]
            results["list_images_seconds"] = round(min(s[0] for s in samples), 3)
            results["list_images_api_calls"] = samples[0][1]
            results["list_images_found"] = len(samples[0][2])

            repo = Path(tmp) / "repo"
            kms = signer_from_config(load_config(repo, environ={}), clients)
            file_signer = generate_key_file(Path(tmp) / "key.pem")
            for name, signer in (("kms", kms), ("file", file_signer)):
                tip, seconds, calls = _lineage(clients, repo / name, signer, args.depth)
                results[f"record_build_and_verification_{name}_seconds"] = round(seconds, 3)
                results[f"record_build_and_verification_{name}_api_calls"] = calls
                pinned = serialization.load_pem_public_key(signer.public_key_pem())
                for mode, key in (("online_keys", None), ("pinned_key", pinned)):
                    runs = [
                        _timed(
                            lambda key=key, tip=tip, name=name: verify_provenance(
                                clients,
                                tip,
                                repo=repo / name,
                                public_key=key,  # type: ignore[arg-type]
                                key_file=Path(tmp) / "key.pem",
                            ),
                            clients,
                        )
                        for _ in range(args.rounds)
                    ]
                    assert all(r[2].ok for r in runs), runs[0][2].failures
                    results[f"verify_depth{args.depth}_{name}_{mode}_seconds_median"] = round(
                        statistics.median(r[0] for r in runs), 3
                    )
                    results[f"verify_depth{args.depth}_{name}_{mode}_api_calls"] = runs[0][1]
        finally:
            control.down(state)
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

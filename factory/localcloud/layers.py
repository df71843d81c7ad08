"""The image store: every local AMI is an ordered list of filesystem layers (directories).

An instance's root is an overlay of its AMI's layers (top first) plus its own writable
upper directory. CreateImage makes that upper directory a new layer on top of the source's;
CopyImage shares the layers; a layer is deleted when the last AMI and the last instance
using it are gone. Layers are reference-counted by holder ("ami:ami-..." or "instance:i-...").
The base layer lives in the shared image cache and is never deleted.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
import uuid
from collections import Counter
from pathlib import Path

from factory.errors import FactoryError

BASE_LAYER = "base"


class ImageStore:
    """AMI id -> layer ids, layer id -> directory, with reference counts (thread-safe)."""

    def __init__(self, root: Path, base_rootfs: Path) -> None:
        self.root = root
        self._paths: dict[str, Path] = {BASE_LAYER: base_rootfs}
        self._holders: dict[str, tuple[str, ...]] = {}
        self._refs: Counter[str] = Counter()
        self._lock = threading.RLock()

    # --- holders ---------------------------------------------------------------------------

    def hold(self, holder: str, layers: tuple[str, ...]) -> None:
        """Record that `holder` (an AMI or an instance) uses `layers`, top first."""
        with self._lock:
            previous = self._holders.get(holder)
            self._holders[holder] = layers
            self._refs.update(layers)
            if previous is not None:
                self._drop(previous)

    def release(self, holder: str) -> list[str]:
        """Forget `holder`; delete and return the layers nobody uses any more."""
        with self._lock:
            layers = self._holders.pop(holder, None)
            return self._drop(layers) if layers is not None else []

    def layers_of(self, holder: str) -> tuple[str, ...] | None:
        with self._lock:
            return self._holders.get(holder)

    def paths(self, layers: tuple[str, ...]) -> list[Path]:
        with self._lock:
            return [self._paths[layer] for layer in layers]

    def layer_count(self) -> int:
        with self._lock:
            return len(self._paths)

    def image_count(self) -> int:
        with self._lock:
            return sum(1 for holder in self._holders if holder.startswith("ami:"))

    def _drop(self, layers: tuple[str, ...]) -> list[str]:
        freed = []
        self._refs.subtract(layers)
        for layer in set(layers):
            if self._refs[layer] <= 0 and layer != BASE_LAYER:
                del self._refs[layer]
                path = self._paths.pop(layer, None)
                if path is not None:
                    shutil.rmtree(path, ignore_errors=True)
                freed.append(layer)
        return freed

    # --- new layers ------------------------------------------------------------------------

    def add_layer(self, upper: Path, *, move: bool) -> str:
        """Turn an instance's upper directory into a layer (moved, or copied as it is)."""
        layer = f"layer-{uuid.uuid4().hex[:12]}"
        target = self.root / layer
        self.root.mkdir(parents=True, exist_ok=True)
        if move:
            upper.rename(target)
        else:
            copy_tree(upper, target)
        with self._lock:
            self._paths[layer] = target
        return layer

    def clear(self) -> None:
        """Delete every layer this store made (the base layer stays in the cache)."""
        with self._lock:
            for layer, path in list(self._paths.items()):
                if layer != BASE_LAYER:
                    shutil.rmtree(path, ignore_errors=True)
            self._paths = {BASE_LAYER: self._paths[BASE_LAYER]}
            self._holders.clear()
            self._refs.clear()


def copy_tree(source: Path, target: Path) -> None:
    """Copy an overlay upper directory keeping whiteouts (0/0 devices), xattrs and owners."""
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    proc = subprocess.run(
        ["cp", "-a", "--reflink=auto", f"{source}/.", str(tmp)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        raise FactoryError(f"copying {source} failed: {proc.stderr.strip()[:300]}")
    tmp.rename(target)

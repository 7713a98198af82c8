"""Write scikit-image's bundled sample photos to a folder, so the demo needs no download.

``python -m srtool.samples DIR`` writes astronaut, chelsea, coffee and rocket as PNG.
"""

from __future__ import annotations

import sys
from pathlib import Path

SAMPLES = ("astronaut", "chelsea", "coffee", "rocket")


def write_samples(folder: Path) -> list[Path]:
    from skimage import data

    from .imageio import write_png

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in SAMPLES:
        path = folder / f"{name}.png"
        if not path.exists():
            write_png(path, getattr(data, name)())
        paths.append(path)
    return paths


if __name__ == "__main__":
    for p in write_samples(Path(sys.argv[1] if len(sys.argv) > 1 else "demo/input")):
        print(p)

"""Time a model pull (download + hash + install) and a verify on this machine.

A file of the DEX VGG-16's size (538,703,692 bytes) of random bytes is served from a
loopback HTTP server, so the numbers are the store's own cost (HTTP client, sha256,
disk), not a network's. Run: PYTHONPATH=src python benchmarks/store_throughput.py [--bytes N]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from modelserver import serve

from agegender import store
from agegender.cards import parse_card


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bytes", type=int, default=538_703_692)
    args = parser.parse_args()
    data = os.urandom(args.bytes)
    with tempfile.TemporaryDirectory() as home, serve(data) as (url, _):
        os.environ["AGEGENDER_HOME"] = home
        card = parse_card(
            {
                "id": "bench",
                "task": "gender",
                "source": {
                    "url": f"{url}/redirect",
                    "file": "bench.onnx",
                    "bytes": len(data),
                    "sha256": hashlib.sha256(data).hexdigest(),
                },
                "input": {"size": [224, 224]},
                "crop": {"kind": "margin"},
                "output": {"labels": ["female", "male"]},
            }
        )
        del data
        start = time.perf_counter()
        store.pull(card, progress=False)
        pulled = time.perf_counter() - start
        start = time.perf_counter()
        result = store.verify(card)
        verified = time.perf_counter() - start
        assert result.status == "ok", result
        mib = card.source.bytes / 2**20
        print(f"file: {mib:.1f} MiB")
        print(
            f"pull over loopback (GET + sha256 + write + fsync + rename): {pulled:.2f} s, "
            f"{mib / pulled:.0f} MiB/s"
        )
        print(f"verify (re-hash): {verified:.2f} s, {mib / verified:.0f} MiB/s")


if __name__ == "__main__":
    main()

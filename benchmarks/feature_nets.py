"""Retrain the feature networks of the sample-quality metrics (dgm.eval.features).

    python benchmarks/feature_nets.py --data digits [--seed 0] [--write]
    python benchmarks/feature_nets.py --data mnist

Training is seeded and runs on one thread, so the same command on the same kind of CPU gives
the same bytes. For digits the script compares the digest of the fresh weights with the shipped
file's (``SHIPPED_SHA256`` in dgm/eval/features.py); ``--write`` replaces the shipped file
(then update ``SHIPPED_SHA256`` with the printed digest). For MNIST and Fashion-MNIST it
(re)writes the cache under ``$DGM_DATA_DIR/features`` with its checksum file, which
``feature_net(name)`` would otherwise do on first use.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from dgm.core.errors import DgmError
from dgm.eval.features import (
    FEATURE_NET_CONFIGS,
    SHIPPED_SHA256,
    WEIGHTS_DIR,
    cache_feature_net,
    save_feature_net,
    train_feature_net,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, choices=sorted(FEATURE_NET_CONFIGS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--write", action="store_true", help="digits: replace the shipped file")
    args = parser.parse_args()

    start = time.process_time()
    try:
        net = train_feature_net(args.data, args.seed)
    except DgmError as e:
        sys.exit(f"error: {e}")
    seconds = time.process_time() - start
    info = net.info
    print(
        f"{args.data}: test accuracy {info['test_accuracy']:.4f}, validation "
        f"{info['val_accuracy']:.4f} (best epoch {info['best_epoch']}), {seconds:.1f} CPU s"
    )
    if args.data in SHIPPED_SHA256:
        target = WEIGHTS_DIR / f"{args.data}.safetensors"
        with tempfile.TemporaryDirectory() as tmp:
            digest = save_feature_net(net, Path(tmp) / "net.safetensors")
        same = digest == SHIPPED_SHA256[args.data]
        print(f"sha256 {digest} ({'identical to' if same else 'differs from'} the shipped file)")
        if args.write:
            save_feature_net(net, target)
            print(f"wrote {target}; set SHIPPED_SHA256[{args.data!r}] = {digest!r}")
    else:
        path = cache_feature_net(net)
        print(f"wrote {path}, sha256 {net.sha256}")


if __name__ == "__main__":
    main()

"""Parameters, FLOPs, throughput and latency per model config (see attnkit.bench.models)."""

import sys

from attnkit.bench.models import main
from attnkit.errors import AttnkitError

if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except AttnkitError as err:
        print(f"bench_models: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None

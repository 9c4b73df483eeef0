"""Streamed attention analysis vs a plain eval pass; PAIBB fast path vs pixel-level."""

from attnkit.bench.analysis import main

if __name__ == "__main__":
    raise SystemExit(main())

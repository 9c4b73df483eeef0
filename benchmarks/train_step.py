"""Images/s of a full DETR training step and an eval pass (see attnkit.bench.train_step)."""

from attnkit.bench.train_step import main

if __name__ == "__main__":
    raise SystemExit(main())

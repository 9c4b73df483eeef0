"""Speed and memory of the attnkit normalizers vs the entmax package and softmax (see --help)."""

from attnkit.bench.normalizers import main

raise SystemExit(main())

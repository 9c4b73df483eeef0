"""MaxViT forward + backward beside timm and torchvision (see attnkit.bench.maxvit)."""

from attnkit.bench.maxvit import main

if __name__ == "__main__":
    raise SystemExit(main())

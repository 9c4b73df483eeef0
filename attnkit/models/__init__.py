"""Models built from attnkit attention: DETR, dense-prediction encoders/decoders, MaxViT, ..."""

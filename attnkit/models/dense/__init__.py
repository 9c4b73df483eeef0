"""Efficient attention for dense prediction: encoders x decoders x attention mechanisms."""

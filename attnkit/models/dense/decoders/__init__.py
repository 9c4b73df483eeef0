"""Decoders of the dense family: stage maps in, one prediction map at 1/4 of the input out."""

"""Self-attention versus convolution (Cordonnier, Loukas & Jaggi, ICLR 2020): positional attention
layers whose heads can express convolutions."""

"""MaxViT (Tu et al. 2022): multi-axis attention (block and grid) with MBConv, timm-identical."""

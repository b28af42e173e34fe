"""Evaluation: FID with the TF-FID Inception of pytorch-fid, and the seam ratio (no pretrained network)."""

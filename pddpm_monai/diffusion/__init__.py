"""Simplex noise, the patch grid and masks, the (patched) forward process and losses."""

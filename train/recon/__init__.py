"""Recon job: AD reconstruction from frozen CLIP text features (Table A.1)."""

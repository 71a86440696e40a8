"""Recon job: AD reconstruction from frozen CLIP text features (supplementary A, Table A.1).

``config`` (dataclasses, torch-free) · ``data`` (the ADs) · ``model`` (frozen CLIP → projector → frozen LM) · ``lm``
(the tiny stand-in LM) · ``evaluate`` (reconstruct and score) · ``table`` (Table A.1 and its command) · ``task`` (the
job: :func:`~distinctad.train.recon.task.build_task`).
"""

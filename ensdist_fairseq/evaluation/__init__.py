"""Evaluation of translation models and ensembles: in-process decoding (decoding.py), BLEU,
calibration, the ECE scorer for fairseq-generate and the reports built on them.

Importing this package imports no fairseq; the fairseq glue modules import it themselves.
"""

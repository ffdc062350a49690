"""Uncertainty the systems keep: token and sequence measures (pure), OOD sets, OOD detection and
error rejection, the `ensdist-uncertainty` and `ensdist-ood-sets` commands. See docs/uncertainty.md.
"""

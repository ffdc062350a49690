"""fairseq inference glue: in-process decoding (decoding), BLEU, the ensemble's teacher-forced
scoring for calibration (ensemble_scoring), the ECE scorer of fairseq-generate (ece_scorer),
validation ECE logging (calibration_logging). The decoding options are cli/generation_options.py.
The metric math is in metrics/, the reports built on results in report/."""

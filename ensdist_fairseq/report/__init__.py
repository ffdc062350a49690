"""The report: tables and verdicts built from result files (no fairseq): Table 2 and reliability
diagrams (table2), the papers' claims (paper_pattern), the training regime (regime, train_logs,
learning_curves) and the uncertainty section (uncertainty_section)."""

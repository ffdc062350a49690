"""fairseq datasets of the plugin: the teacher-store wrapper and the split fingerprint."""

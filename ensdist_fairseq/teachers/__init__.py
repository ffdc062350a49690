"""The teacher ensemble: its one teacher-forced pass over a split (teacher_forcing) and the run
that memoizes it into a store (memoize). fairseq glue above the pure store format (store/)."""

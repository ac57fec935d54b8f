"""Stage 4, select: step scores -> response scores -> the chosen candidate, one rule for the run and
the report (strategies), and BoN@k for every k from one run (bon_at_k)."""

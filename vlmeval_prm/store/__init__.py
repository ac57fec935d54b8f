"""Stage 5, store: the append-only candidate store (one JSONL file per model x dataset)."""

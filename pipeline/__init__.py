"""callscope pipeline: OTLP ingest, Parquet segments, per-call timelines and verdicts."""

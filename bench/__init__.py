"""The harness: matrix spec, runner, metrics, store, reports and the CLI (``python -m samplerbench``)."""

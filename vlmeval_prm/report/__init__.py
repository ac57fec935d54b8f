"""Stage 6, report: judge every stored candidate by VLMEvalKit's own scoring of its dataset (the
``benchmarks`` registry for the paper's seven, the dataset's ``evaluate()`` otherwise) and tabulate
BoN@k for every strategy, per dataset and as the paper's table."""

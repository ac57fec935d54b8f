"""Stage 6, report: judge every stored candidate with the dataset's own evaluate() and tabulate
BoN@k for every strategy."""

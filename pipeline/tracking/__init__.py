"""MLflow: the store (store.py: the one way to reach it), run setup and its end (run.py), the
buffered logger, checkpoints, artifacts and plots, the pyfunc model, and promotion (champion.py)."""

"""MLflow: run setup, artifacts and plots, the pyfunc model, registry and promotion."""

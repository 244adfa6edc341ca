"""LSTM-family time-series pipeline: fetch -> DataModule -> LightningModule -> MLflow."""

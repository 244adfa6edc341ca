"""Data stages: sources -> fetch (validate, cache) -> windows -> LightningDataModule."""

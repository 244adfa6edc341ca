"""Data stages: sources -> fetch (validate, cache) -> prepare (split, scale, window) -> DataModule.

sources/     one function per source, registered by name (@source)
validation   the checks every fetched frame passes, as one-line DataErrors
cache        Parquet + JSON manifest per source and parameters, written atomically
fetch        config -> FetchResult (validated frame, content digest, where it came from)
windowing    sliding windows as strided views; chronological splits by fraction or date
scaling      affine scalers fit on training rows only
transforms   price targets as changes (log_return, diff) and back to levels
prepare      FetchResult -> PreparedData (series or samples layout)
universe     many series as one long frame: a common date split, per-series scalers, an index
             of windows gathered per batch (not yet wired into training)
datamodule   PreparedData -> LightningDataModule; build_datamodule(config) for every caller
"""

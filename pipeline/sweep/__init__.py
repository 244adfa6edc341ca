"""`make sweep`: an Optuna study over a search space from conf/hparams_search/, one MLflow parent
run per study with every trial a child run, pruning by a Lightning callback, the best trial
registered and offered to promotion.

    space.py    the search space: read, checked against the training schema, sampled, digested
    storage.py  where the study lives: a journal file beside mlflow.db, or an SQLAlchemy URL
    study.py    the study (created once, joined by other workers) and its MLflow parent run
    pruning.py  the Lightning callback that reports each epoch's metric and prunes
    trials.py   one trial: sampled overrides -> the normal training, as a child run
    orphans.py  trials a dead worker left running (kill -9): failed by the next worker
    summary.py  the end: best trial on the parent, plots, CSV, registration and promotion
    runner.py   the worker loop over trials, until the study's budget is spent
"""

"""Retraining: fetch -> check the candidates -> train each variant -> score them on the same
test windows -> offer the best to the champion.

A retrain is described by Hydra overrides of conf/retrain.yaml (plain strings), because each
variant is composed from its own model config. Each stage in `stages` is one Airflow task
(dags/retrain_dag.py) and one step of `make retrain`; they hand each other only the small records
in `records` (digests, run ids, versions), never data frames. `triggers` turns a DAG trigger's
params into overrides, and refuses what a trigger may not set; `table` prints the outcome.
"""

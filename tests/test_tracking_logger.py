from mlflow.tracking import MlflowClient

from pipeline.tracking.logger import BufferedMLFlowLogger


def test_buffered_logger_writes_in_batches_and_on_finalize(tmp_path) -> None:
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    logger = BufferedMLFlowLogger(experiment_name="buf", tracking_uri=uri, flush_every_s=3600)
    client = MlflowClient(uri)
    for step in range(5):
        logger.log_metrics({"train/loss": 1.0 / (step + 1), "epoch": step}, step=step)
    assert client.get_metric_history(logger.run_id, "train/loss") == []  # still buffered
    logger.finalize("failed")  # Lightning calls this when training stops on an error
    history = client.get_metric_history(logger.run_id, "train/loss")
    assert [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)] == [
        (s, 1.0 / (s + 1)) for s in range(5)]
    assert client.get_run(logger.run_id).info.status == "FAILED"


def test_zero_interval_writes_every_call(tmp_path) -> None:
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    logger = BufferedMLFlowLogger(experiment_name="buf", tracking_uri=uri, flush_every_s=0)
    logger.log_metrics({"val/loss": 0.5}, step=7)
    history = MlflowClient(uri).get_metric_history(logger.run_id, "val/loss")
    assert [(m.step, m.value) for m in history] == [(7, 0.5)]

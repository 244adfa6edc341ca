"""A Lightning logger that writes metrics to the run's store in batches, and keeps them while the
tracking server is away.

Lightning's stock MLFlowLogger makes one store round-trip per logging call (several per epoch).
On a small model an epoch takes a fraction of a second, so those writes cost a fifth of the
training time (benchmarks/results/tracking_overhead.md). Buffering them and writing at most
every `flush_every_s` seconds, and always when training ends or stops, keeps the curves
identical while the overhead falls to a few percent.

What a stop can lose: SIGTERM, Ctrl-C and errors flush the buffer (Lightning calls `finalize`
on every way out of fit); a kill -9 loses the metrics logged since the last flush, at most
`flush_every_s` seconds of them. While the server does not answer, metrics stay buffered and
each flush is retried with backoff (Store.outage), training going on; past tracking.retry_for_s
the training stops, and what could not be sent is written beside the checkpoint
(unsent_metrics.jsonl) and sent by the resumed training.

The logger writes only to an existing run (the one run.open_run made) and never sets its
status: run.run_guard does, knowing why the training ended.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers.logger import Logger, rank_zero_experiment
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from mlflow.entities import Metric
from mlflow.utils.validation import MAX_METRICS_PER_BATCH

from pipeline.tracking.run import RunHandle, flatten, log_params, params_from_config

UNSENT_FILE = "unsent_metrics.jsonl"
_MAX_BACKOFF_S = 30.0


class BufferedMLFlowLogger(Logger):
    def __init__(self, handle: RunHandle | None, flush_every_s: float = 5.0,
                 spill_dir: str | Path | None = None) -> None:
        """`handle`: the run on global rank zero, None on the other ranks (they log nothing).
        `spill_dir`: where metrics the server never took are kept (the checkpoint directory)."""
        super().__init__()
        self.handle = handle
        self.flush_every_s = flush_every_s
        self.spill = Path(spill_dir) / UNSENT_FILE if spill_dir else None
        self._pending: list[Metric] = []
        self._last_flush = time.monotonic()
        self._next_try = 0.0  # after a failed flush: not before this (monotonic seconds)
        self._backoff = 1.0
        self._spill_loaded = False
        if handle is not None:
            self._pending.extend(self._load_spill())

    # --- what Lightning asks of a logger ----------------------------------------------------------

    @property
    def name(self) -> str | None:
        return self.handle.experiment_name if self.handle else None

    @property
    def version(self) -> str | None:
        return self.handle.run_id if self.handle else None

    @property
    def run_id(self) -> str | None:
        return self.version

    @property
    @rank_zero_experiment
    def experiment(self):
        return self.handle.client if self.handle else None

    @rank_zero_only
    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        """The LightningModule's hparams, beside the config params open_run logged; on a resumed
        run only the ones it does not have yet (MLflow params never change)."""
        if self.handle is None:
            return
        values = dict(params) if isinstance(params, Mapping) else vars(params)
        flat = params_from_config(flatten(values, sep="/"))
        logged = self.handle.client.get_run(self.handle.run_id).data.params
        log_params(self.handle.client, self.handle.run_id,
                   {k: v for k, v in flat.items() if k not in logged})

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        if self.handle is None:
            return
        now_ms = int(time.time() * 1000)
        for key, value in metrics.items():
            if isinstance(value, str):
                continue
            self._pending.append(Metric(key=key, value=float(value), timestamp=now_ms, step=step or 0))
        if time.monotonic() - self._last_flush >= self.flush_every_s:
            self.flush()

    @rank_zero_only
    def finalize(self, status: str = "success") -> None:
        """End of fit: everything is written. On a stop ("failed": an error, SIGTERM, Ctrl-C,
        the server lost) one last try, and what is still unsent goes to the spill file."""
        if self.handle is None:
            return
        if status == "failed":
            try:
                self.flush(force=True)
            except Exception:  # noqa: BLE001 - the error that stopped training is the one to report
                pass
            self._write_spill()
        else:
            self.flush(wait=True)

    # --- writing --------------------------------------------------------------------------------

    @rank_zero_only
    def flush(self, force: bool = False, wait: bool = False) -> bool:
        """Send the buffer; True when it is empty afterwards. A server that does not answer keeps
        the buffer for the next flush (backoff 1, 2, 4 ... 30 s); `wait` rides the outage out;
        either raises ServerLost once tracking.retry_for_s has passed."""
        if self.handle is None or not self._pending:
            return True
        now = time.monotonic()
        if not (force or wait) and now < self._next_try:
            return False
        store = self.handle.store
        if wait:
            store.outage.call(self._send)
            sent = True
        else:
            sent = store.outage.attempt(self._send)
        self._last_flush = time.monotonic()
        if sent:
            self._backoff = 1.0
        else:
            self._next_try = self._last_flush + self._backoff
            self._backoff = min(2 * self._backoff, _MAX_BACKOFF_S)
        return sent

    def _send(self) -> None:
        client, run_id = self.handle.store.raw_client, self.handle.run_id
        while self._pending:
            batch = self._pending[:MAX_METRICS_PER_BATCH]
            client.log_batch(run_id, metrics=batch)
            del self._pending[:len(batch)]  # only what the store took
        if self._spill_loaded and self.spill is not None:
            self.spill.unlink(missing_ok=True)
            self._spill_loaded = False

    def _write_spill(self) -> None:
        if not (self._pending and self.spill is not None):
            return
        self.spill.parent.mkdir(parents=True, exist_ok=True)
        with open(self.spill, "w") as out:
            for m in self._pending:
                out.write(json.dumps({"run_id": self.handle.run_id, "key": m.key, "value": m.value,
                                      "timestamp": m.timestamp, "step": m.step}) + "\n")

    def _load_spill(self) -> list[Metric]:
        """What a stopped training of this run could not send. Steps after its last checkpoint
        are dropped: the resumed training does them again and logs them itself."""
        if self.spill is None or not self.spill.is_file():
            return []
        rows = [json.loads(line) for line in self.spill.read_text().splitlines() if line.strip()]
        last_step = _checkpoint_step(self.spill.parent / "last.ckpt")
        mine = [Metric(r["key"], r["value"], r["timestamp"], r["step"]) for r in rows
                if r.get("run_id") == self.handle.run_id and (last_step is None or r["step"] <= last_step)]
        self._spill_loaded = True
        return mine


def _checkpoint_step(path: Path) -> int | None:
    if not path.is_file():
        return None
    import torch

    return int(torch.load(path, map_location="cpu", weights_only=True).get("global_step", 0))

"""The plain torch model users deploy: scalers + backbone + head, rebuilt from a JSON-able spec.

It imports no Lightning or MLflow, so the logged pyfunc model loads it with torch alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from pipeline.data.transforms import to_levels
from pipeline.models.backbones import Backbone, State, build_backbone
from pipeline.models.distributions import DEFAULT_QUANTILES, DistributionLayer
from pipeline.models.heads import ForecastHead, SequenceHead
from pipeline.models.seq2seq import Seq2SeqDecoder


@dataclass
class NetworkSpec:
    """Everything that rebuilds a Forecaster: JSON-able, logged beside the weights.

    Args:
        variant: a backbone of pipeline.models.backbones.BACKBONES, or "seq2seq".
        inputs: input columns, in window order.
        targets: target columns, in prediction order.
        lookback: input steps per window.
        horizon: future steps predicted (forecast mode).
        mode: "sequence" (one prediction per input step) or "forecast" (`horizon` steps after
            the window).
        hidden_size: units per layer and direction.
        num_layers: stacked recurrent layers.
        dropout: dropout between stacked layers.
        bidirectional: the backbone (seq2seq: the encoder) also reads the window backwards.
        init_state: "zeros", or "learned" (a trained initial state shared by all windows).
        task: "regression" (raw-scale values out) or "classification" (probabilities out).
        cell: seq2seq only: the backbone variant of encoder and decoder (default lstm).
        x_scaler: {"center": [...], "scale": [...]} per input column; identity if empty.
        y_scaler: the same per target column.
        head: "point", "quantile", "gaussian" or "student_t" (pipeline.models.distributions).
        quantiles: the levels a quantile head predicts and every non-point head reports.
        target_transform: "none", "log_return" or "diff": the network predicts the targets'
            changes and its raw-scale readers turn them into levels from each window's last
            observed value (pipeline.data.transforms).
        series: a universe model's series codes; a window's series id is its position here.
            Empty for a one-series model. With series, x_scaler and y_scaler hold one row per
            series ({"center": [[...], ...], ...}) and every raw-scale reader takes the ids.
        series_encoding: "embedding", "onehot" or "none": what the backbone reads beside each
            input step to tell the series apart (SeriesEncoder).
        series_embedding_dim: the embedding's length.
    """

    variant: str
    inputs: list[str]
    targets: list[str]
    lookback: int
    horizon: int = 1
    mode: str = "forecast"
    hidden_size: int = 32
    num_layers: int = 1
    dropout: float = 0.0
    bidirectional: bool = False
    init_state: str = "zeros"
    task: str = "regression"
    cell: str | None = None
    x_scaler: dict = field(default_factory=dict)
    y_scaler: dict = field(default_factory=dict)
    # After the scalers, with defaults: specs logged before heads existed load as point heads.
    head: str = "point"
    quantiles: list[float] = field(default_factory=lambda: list(DEFAULT_QUANTILES))
    target_transform: str = "none"  # specs logged before transforms existed load as levels
    series: list[str] = field(default_factory=list)
    series_encoding: str = "none"
    series_embedding_dim: int = 8

    @property
    def is_seq2seq(self) -> bool:
        return self.variant == "seq2seq"

    @property
    def is_universe(self) -> bool:
        return bool(self.series)

    @property
    def label(self) -> str:
        """How runs and versions name the variant: seq2seq names its cell too."""
        return f"seq2seq-{self.backbone_variant}" if self.is_seq2seq else self.variant

    @property
    def backbone_variant(self) -> str:
        return (self.cell or "lstm") if self.is_seq2seq else self.variant

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> NetworkSpec:
        return cls(**data)


def _affine_buffers(scaler: dict, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    center = torch.tensor(scaler.get("center", [0.0] * width), dtype=torch.float32)
    scale = torch.tensor(scaler.get("scale", [1.0] * width), dtype=torch.float32)
    return center, scale


class SeriesEncoder(nn.Module):
    """Series ids (batch,) -> features (batch, width) the backbone reads beside every input
    step: a learned embedding (series with similar dynamics can share what they learn) or a
    one-hot vector (no parameters, width = number of series)."""

    def __init__(self, kind: str, n_series: int, dim: int) -> None:
        super().__init__()
        self.kind = kind
        self.n_series = n_series
        self.embedding = nn.Embedding(n_series, dim) if kind == "embedding" else None
        self.width = dim if kind == "embedding" else n_series

    def forward(self, series: torch.Tensor) -> torch.Tensor:
        if self.embedding is not None:
            return self.embedding(series)
        return nn.functional.one_hot(series.long(), self.n_series).float()


def series_encoder(spec: NetworkSpec) -> SeriesEncoder | None:
    if not spec.is_universe or spec.series_encoding == "none":
        return None
    return SeriesEncoder(spec.series_encoding, len(spec.series), spec.series_embedding_dim)


class LearnedInitialState(nn.Module):
    """A trained initial (h0[, c0]) shared by all sequences, instead of zeros."""

    def __init__(self, layers_x_directions: int, hidden_size: int, with_cell: bool) -> None:
        super().__init__()
        self.h0 = nn.Parameter(torch.zeros(layers_x_directions, 1, hidden_size))
        self.c0 = nn.Parameter(torch.zeros(layers_x_directions, 1, hidden_size)) if with_cell else None

    def forward(self, batch: int) -> State:
        # (layers * directions, 1, hidden) -> (layers * directions, batch, hidden)
        h0 = self.h0.expand(-1, batch, -1).contiguous()
        if self.c0 is None:
            return h0
        return h0, self.c0.expand(-1, batch, -1).contiguous()


def _build_head(spec: NetworkSpec, backbone: Backbone, distribution: DistributionLayer) -> nn.Module:
    if spec.is_seq2seq:
        return Seq2SeqDecoder(spec.backbone_variant, len(spec.targets), spec.hidden_size,
                              spec.num_layers, spec.dropout, backbone.num_directions, spec.horizon,
                              distribution)
    if spec.mode == "sequence":
        return SequenceHead(backbone.output_size, len(spec.targets), distribution)
    return ForecastHead(backbone.output_size, backbone.num_directions, len(spec.targets),
                        spec.horizon, distribution)


class Forecaster(nn.Module):
    """Scalers + backbone + head. forward() works in scaled space (training); predict_raw()
    takes and returns raw values. With a non-point head, forward() gives the distribution's
    parameters and to_output() their median, so every point consumer reads the same shapes;
    to_quantiles()/predict_quantiles() give the intervals.

    Args:
        spec: the architecture and scalers (see NetworkSpec). Its values are not checked here:
            pipeline.config checks the config a spec is built from.
    """

    def __init__(self, spec: NetworkSpec) -> None:
        super().__init__()
        self.spec = spec
        self.series_encoder = series_encoder(spec)
        extra = self.series_encoder.width if self.series_encoder is not None else 0
        self.backbone = build_backbone(spec.backbone_variant, len(spec.inputs) + extra,
                                       spec.hidden_size, spec.num_layers, spec.dropout,
                                       spec.bidirectional)
        self.initial_state = (
            LearnedInitialState(spec.num_layers * self.backbone.num_directions, spec.hidden_size,
                                self.backbone.carries_cell_state)
            if spec.init_state == "learned" else None)
        # Shared by the head (which emits its parameters) and the readers below.
        self.distribution = DistributionLayer(spec.head, spec.quantiles)
        self.head = _build_head(spec, self.backbone, self.distribution)
        # Where each target sits among the inputs: seq2seq starts decoding from its last value.
        self._target_columns = [spec.inputs.index(t) for t in spec.targets if t in spec.inputs]
        for prefix, scaler, width in (("x", spec.x_scaler, len(spec.inputs)),
                                      ("y", spec.y_scaler, len(spec.targets))):
            center, scale = _affine_buffers(scaler, width)
            self.register_buffer(f"{prefix}_center", center)
            self.register_buffer(f"{prefix}_scale", scale)

    def _affine(self, prefix: str, series: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """The x or y scaler's (center, scale), shaped to broadcast over (batch, steps, columns):
        (columns,) for one series, (batch, 1, columns) picked by each window's series id."""
        center, scale = getattr(self, f"{prefix}_center"), getattr(self, f"{prefix}_scale")
        if center.dim() == 1:
            return center, scale
        if series is None:
            raise ValueError("a universe model scales each window by its series: pass the series ids")
        series = series.to(center.device).long()
        return center[series][:, None, :], scale[series][:, None, :]

    def series_ids(self, codes) -> torch.Tensor:
        """Series codes -> ids; KeyError naming the first code the model was not trained on."""
        index = {code: i for i, code in enumerate(self.spec.series)}
        unknown = [c for c in codes if c not in index]
        if unknown:
            raise KeyError(unknown[0])
        return torch.tensor([index[c] for c in codes], dtype=torch.long)

    def _last_targets(self, x: torch.Tensor) -> torch.Tensor:
        # Same column, same scaler kind, same training rows: its x and y scaling coincide.
        if len(self._target_columns) == len(self.spec.targets):
            return x[:, -1, self._target_columns]
        return x.new_zeros(len(x), len(self.spec.targets))

    def forward(self, x: torch.Tensor, teacher: torch.Tensor | None = None,
                teacher_forcing: float = 0.0, series: torch.Tensor | None = None) -> torch.Tensor:
        """Scaled windows (batch, lookback, inputs) -> scaled predictions (regression) or logits
        (classification), (batch, steps, targets): steps = lookback (sequence) or horizon. A
        non-point head gives scaled distribution parameters (batch, steps, targets, channels).

        teacher (batch, horizon, targets), scaled, and teacher_forcing only apply to seq2seq.
        series (batch,): a universe model's series ids (read by its SeriesEncoder, if any).
        """
        state = self.initial_state(len(x)) if self.initial_state is not None else None
        outputs, final = self.backbone(self._with_series(x, series), state)
        if self.spec.is_seq2seq:
            return self.head(final, self._last_targets(x), teacher, teacher_forcing)
        return self.head(outputs)

    def _with_series(self, x: torch.Tensor, series: torch.Tensor | None) -> torch.Tensor:
        # The series' features beside every step: the backbone learns per-series dynamics.
        if self.series_encoder is None:
            return x
        if series is None:
            raise ValueError("this universe model reads each window's series: pass the series ids")
        features = self.series_encoder(series.to(x.device)).to(x.dtype)
        return torch.cat([x, features[:, None, :].expand(-1, x.shape[1], -1)], dim=-1)

    def to_output(self, y: torch.Tensor, x: torch.Tensor | None = None,
                  series: torch.Tensor | None = None) -> torch.Tensor:
        """Network output -> what users read: raw-scale values (a distribution head's median),
        or probabilities for classes; (batch, steps, targets) for every head. `x`, the scaled
        windows the output came from, is needed with a target transform (see _levels);
        `series`, the windows' series ids, by a universe model."""
        if self.spec.task == "classification":
            return torch.sigmoid(y)
        center, scale = self._affine("y", series)
        return self._levels(self.distribution.median(y) * scale + center, x, series)

    def _levels(self, values: torch.Tensor, x: torch.Tensor | None,
                series: torch.Tensor | None = None) -> torch.Tensor:
        # Raw-scale targets, or raw-scale changes turned into levels from each window's last
        # observed value of the target (an input column too: the config check makes it one).
        if self.spec.target_transform == "none":
            return values
        if x is None:
            raise ValueError(f"target_transform={self.spec.target_transform}: levels need the windows (x)")
        columns = self._target_columns
        center, scale = self._affine("x", series)
        last = (x[:, -1:, columns] * scale[..., columns] + center[..., columns])[:, 0]
        return to_levels(values, last, self.spec.target_transform)

    @property
    def levels(self) -> tuple[float, ...]:
        """The quantile levels this network reports (its spec's), empty for a point head."""
        return () if self.distribution.is_point else self.distribution.levels

    def to_quantiles(self, y: torch.Tensor, levels: Sequence[float] | None = None,
                     x: torch.Tensor | None = None,
                     series: torch.Tensor | None = None) -> torch.Tensor:
        """forward()'s parameters -> raw-scale quantiles (batch, steps, targets, levels) at
        `levels` (default: the spec's); `x` and `series` as for to_output. A point head raises
        ValueError."""
        wanted = self.levels if levels is None else levels
        scaled = self.distribution.quantiles(y, wanted)
        center, scale = self._affine("y", series)
        # The scalers are affine with a positive scale, and one step's level is monotone in its
        # change, so quantiles map through both.
        return self._levels(scaled * scale[..., None] + center[..., None], x, series)

    def to_parameters(self, y: torch.Tensor,
                      series: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """forward()'s parameters -> raw-scale (batch, steps, targets) tensors: gaussian mu and
        sigma, student_t also df (unitless). Other heads raise ValueError."""
        if self.spec.head not in ("gaussian", "student_t"):
            raise ValueError(f"the {self.spec.head} head has no mu/sigma: use to_quantiles")
        center, scale = self._affine("y", series)
        out = {"mu": y[..., 0] * scale + center, "sigma": y[..., 1] * scale}
        if self.spec.head == "student_t":
            out["df"] = y[..., 2]
        return out

    def unscale_y(self, y: torch.Tensor, x: torch.Tensor | None = None,
                  series: torch.Tensor | None = None) -> torch.Tensor:
        """Scaled targets -> raw targets (levels, with `x` as for to_output, under a target
        transform; `series` for a universe model). Class labels are never scaled."""
        if self.spec.task == "classification":
            return y
        center, scale = self._affine("y", series)
        return self._levels(y * scale + center, x, series)

    def scale_x(self, x_raw: torch.Tensor, series: torch.Tensor | None = None) -> torch.Tensor:
        """Raw windows (batch, lookback, inputs) -> what forward() reads."""
        center, scale = self._affine("x", series)
        return (x_raw - center) / scale

    @torch.no_grad()
    def predict_raw(self, x_raw: torch.Tensor, series: torch.Tensor | None = None) -> torch.Tensor:
        """(batch, lookback, inputs) raw values -> (batch, steps, targets) raw-scale predictions
        (`series`: a universe model's series id of each window)."""
        x = self.scale_x(x_raw, series)
        return self.to_output(self(x, series=series), x, series)

    @torch.no_grad()
    def predict_quantiles(self, x_raw: torch.Tensor, levels: Sequence[float] | None = None,
                          series: torch.Tensor | None = None) -> torch.Tensor:
        """(batch, lookback, inputs) raw values -> (batch, steps, targets, levels) raw-scale
        quantiles at `levels` (default: the spec's)."""
        x = self.scale_x(x_raw, series)
        return self.to_quantiles(self(x, series=series), levels, x, series)

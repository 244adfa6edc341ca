"""Fast peephole LSTM and coupled input-forget-gate (CIFG) LSTM.

Both modules mirror ``torch.nn.LSTM(batch_first=True)``: same call signature,
same parameter names and layout (so weights can be copied from an
``nn.LSTM``), same ``(output, (h_n, c_n))`` result.

Why a hand-written kernel: a plain Python per-step loop pays dispatcher and
autograd overhead for every elementwise op of every step, and
``torch.jit.script``/``torch.compile`` did not remove enough of it on a small
CPU.  Each layer and direction therefore runs as one ``autograd.Function``:

* forward projects the inputs of all time steps with one matmul, then loops
  over time doing only the small recurrent matmul and in-place gate arithmetic
  on preallocated buffers (per-step tensor views are created in bulk with
  ``unbind`` because creating a view costs about as much as a small op);
* backward uses the fact that backpropagation through one cell is *linear* in
  the incoming ``(dh, dc)``.  The coefficients of that linear map depend only on
  saved activations, so they are computed for all steps at once before the
  loop, leaving four small elementwise ops plus one matmul per step.  Weight
  gradients are then one large matmul over all steps.

Only pure torch ops are used, so the same code runs on CPU and CUDA and in any
floating dtype (float64 for gradcheck).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

__all__ = ["PeepholeLSTM", "CoupledLSTM"]

State = tuple[Tensor, Tensor]


class _Activations(NamedTuple):
    """Everything the forward loop produced, time-major.

    ``hs``/``cs`` have ``steps + 1`` slots: the initial state sits in slot 0
    (slot ``steps`` for a reverse direction) and step ``t`` writes its new state
    next to it, so "previous state of every step" is a single contiguous slice.
    """

    gates: Tensor  # (T, B, G*H) activated gates
    hs: Tensor  # (T+1, B, H)
    cs: Tensor  # (T+1, B, H)
    tanh_c: Tensor  # (T, B, H)


class _BackwardCoefficients(NamedTuple):
    """Per-step coefficients of the (linear) backward map of one cell.

    With ``dh``, ``dc_next`` the incoming gradients of a step:
    ``dz_out = dh * out_gate``; ``dc = dc_next + dh * cell_from_h``;
    ``dz_lead = dc * lead`` (the gate blocks before the output gate);
    ``dc_prev = dc * decay``.
    """

    lead: Tensor  # (T, B, n_lead, H)
    out_gate: Tensor  # (T, B, H)
    cell_from_h: Tensor  # (T, B, H)
    decay: Tensor  # (T, B, H)


def _in_order(buffer: Tensor, reverse: bool) -> Sequence[Tensor]:
    """Per-step views of a time-major buffer, in processing order."""
    views = buffer.unbind(0)
    return views[::-1] if reverse else views


def _prev_and_current(buffer: Tensor, reverse: bool) -> tuple[Tensor, Tensor]:
    """Split a ``(T+1, ...)`` state buffer into time-aligned previous/current states."""
    if reverse:
        return buffer[1:], buffer[:-1]
    return buffer[:-1], buffer[1:]


# The coefficient maths runs over whole (T, B, H) tensors, where it is memory
# bound, so each helper is a single fused op (s - s*s rather than s * (1 - s)).


def _sigmoid_slope(s: Tensor, out: Tensor | None = None) -> Tensor:
    """d sigmoid / dz expressed with the activation ``s``."""
    return torch.addcmul(s, s, s, value=-1, out=out)


def _tanh_slope(t: Tensor, out: Tensor | None = None) -> Tensor:
    """d tanh / dz expressed with the activation ``t``."""
    return torch.addcmul(t.new_ones(()), t, t, value=-1, out=out)


def _tanh_via_sigmoid(device: torch.device) -> bool:
    """Whether the forward loop computes tanh(c) through sigmoid (see ``_StepOps``).

    Only on CPU: on CUDA both are cheap and the identity costs extra launches.
    """
    return device.type == "cpu"


class _StepOps:
    """Per-call helpers for the forward loop.

    On CPU, torch's float tanh measured about 6x slower than sigmoid (1M
    elements: 1.8 ms vs 0.3 ms on the 2-core benchmark machine), so tanh is
    computed as ``2 * sigmoid(2x) - 1`` there.  For the candidate gate g the
    factor 2 is folded into its weight rows (see ``_run_forward``) so that the
    gate sigmoid covers g as well and only ``2s - 1`` is left per step.
    """

    def __init__(self, like: Tensor, reverse: bool) -> None:
        self.reverse = reverse
        self._minus_one = like.new_full((), -1.0)
        self._tanh_via_sigmoid = _tanh_via_sigmoid(like.device)

    def order(self, buffer: Tensor) -> Sequence[Tensor]:
        return _in_order(buffer, self.reverse)

    def tanh_from_sigmoid(self, s: Tensor) -> None:
        """In place: sigmoid(2x) -> tanh(x)."""
        torch.add(self._minus_one, s, alpha=2, out=s)

    def tanh_into(self, src: Tensor, out: Tensor) -> None:
        if self._tanh_via_sigmoid:
            torch.add(src, src, out=out).sigmoid_()
            self.tanh_from_sigmoid(out)
        else:
            torch.tanh(src, out=out)


class _PeepholeCell:
    """Gers & Schmidhuber peephole LSTM; gate blocks i, f, g, o."""

    gate_count = 4
    has_peephole = True
    lead_blocks = 3  # i, f, g: their gradients are dc times a coefficient
    candidate_block = 2
    gate_names = ("input", "forget", "cell_candidate", "output")

    @staticmethod
    def run_steps(acts: _Activations, w_hh_t: Tensor, peephole: Tensor, ops: _StepOps) -> None:
        steps, batch, _ = acts.gates.shape
        hidden = acts.hs.shape[-1]
        # i and f read the same peephole input (c_{t-1}); treating them as one
        # (B, 2, H) block halves the number of ops for them.
        in_forget = acts.gates[..., : 2 * hidden].view(steps, batch, 2, hidden)
        peep_if, peep_o = peephole[:2], peephole[2]
        order = ops.order

        z = order(acts.gates)
        zif = order(in_forget)
        zifg = order(acts.gates[..., : 3 * hidden])
        i = order(acts.gates[..., :hidden])
        f = order(acts.gates[..., hidden : 2 * hidden])
        g = order(acts.gates[..., 2 * hidden : 3 * hidden])
        o = order(acts.gates[..., 3 * hidden :])
        h = order(acts.hs)
        c = order(acts.cs)
        c_bcast = order(acts.cs.unsqueeze(2))
        tc = order(acts.tanh_c)
        for k in range(steps):
            z[k].addmm_(h[k], w_hh_t)
            zif[k].addcmul_(c_bcast[k], peep_if)
            zifg[k].sigmoid_()
            ops.tanh_from_sigmoid(g[k])
            c_new = torch.mul(f[k], c[k], out=c[k + 1])
            c_new.addcmul_(i[k], g[k])
            o[k].addcmul_(c_new, peep_o).sigmoid_()
            ops.tanh_into(c_new, tc[k])
            torch.mul(o[k], tc[k], out=h[k + 1])

    @staticmethod
    def coefficients(acts: _Activations, peephole: Tensor, reverse: bool) -> _BackwardCoefficients:
        steps, batch, _ = acts.gates.shape
        hidden = acts.hs.shape[-1]
        i, f, g, o = acts.gates.chunk(4, dim=-1)
        in_forget = acts.gates[..., : 2 * hidden].view(steps, batch, 2, hidden)
        c_prev, _ = _prev_and_current(acts.cs, reverse)
        tc = acts.tanh_c

        lead = acts.gates.new_empty(steps, batch, 3, hidden)
        lead_i, lead_f, lead_g = lead.unbind(2)
        _sigmoid_slope(in_forget, out=lead[:, :, :2])
        lead_i.mul_(g)
        lead_f.mul_(c_prev)
        _tanh_slope(g, out=lead_g).mul_(i)
        out_gate = _sigmoid_slope(o).mul_(tc)
        cell_from_h = _tanh_slope(tc).mul_(o).addcmul_(out_gate, peephole[2])
        decay = torch.addcmul(f, lead_i, peephole[0]).addcmul_(lead_f, peephole[1])
        return _BackwardCoefficients(lead, out_gate, cell_from_h, decay)

    @staticmethod
    def peephole_grad(dz: Tensor, acts: _Activations, reverse: bool) -> Tensor:
        steps, batch, _ = dz.shape
        hidden = acts.hs.shape[-1]
        c_prev, c_cur = _prev_and_current(acts.cs, reverse)
        dz_if = dz[..., : 2 * hidden].view(steps, batch, 2, hidden)
        grad_if = (dz_if * c_prev.unsqueeze(2)).sum(dim=(0, 1))
        grad_o = (dz[..., 3 * hidden :] * c_cur).sum(dim=(0, 1))
        return torch.cat((grad_if, grad_o.unsqueeze(0)))


class _CoupledCell:
    """CIFG LSTM: input gate is 1 - f; gate blocks f, g, o; no peepholes."""

    gate_count = 3
    has_peephole = False
    lead_blocks = 2  # f, g
    candidate_block = 1
    gate_names = ("forget", "cell_candidate", "output")

    @staticmethod
    def run_steps(acts: _Activations, w_hh_t: Tensor, peephole: None, ops: _StepOps) -> None:
        steps = acts.gates.shape[0]
        hidden = acts.hs.shape[-1]
        order = ops.order

        z = order(acts.gates)
        f = order(acts.gates[..., :hidden])
        g = order(acts.gates[..., hidden : 2 * hidden])
        o = order(acts.gates[..., 2 * hidden :])
        h = order(acts.hs)
        c = order(acts.cs)
        tc = order(acts.tanh_c)
        scratch = acts.hs.new_empty(acts.hs.shape[1:])
        for k in range(steps):
            z[k].addmm_(h[k], w_hh_t)
            z[k].sigmoid_()
            ops.tanh_from_sigmoid(g[k])
            # c = f*c_prev + (1-f)*g rewritten as g + f*(c_prev - g): two ops.
            torch.sub(c[k], g[k], out=scratch)
            c_new = torch.addcmul(g[k], f[k], scratch, out=c[k + 1])
            ops.tanh_into(c_new, tc[k])
            torch.mul(o[k], tc[k], out=h[k + 1])

    @staticmethod
    def coefficients(acts: _Activations, peephole: None, reverse: bool) -> _BackwardCoefficients:
        steps, batch, _ = acts.gates.shape
        hidden = acts.hs.shape[-1]
        f, g, o = acts.gates.chunk(3, dim=-1)
        c_prev, _ = _prev_and_current(acts.cs, reverse)
        tc = acts.tanh_c

        lead = acts.gates.new_empty(steps, batch, 2, hidden)
        lead_f, lead_g = lead.unbind(2)
        torch.sub(c_prev, g, out=lead_f).mul_(_sigmoid_slope(f))
        torch.sub(f.new_ones(()), f, out=lead_g).mul_(_tanh_slope(g))
        out_gate = _sigmoid_slope(o).mul_(tc)
        cell_from_h = _tanh_slope(tc).mul_(o)
        return _BackwardCoefficients(lead, out_gate, cell_from_h, f)

    @staticmethod
    def peephole_grad(dz: Tensor, acts: _Activations, reverse: bool) -> None:
        return None


_Cell = type[_PeepholeCell] | type[_CoupledCell]


def _run_forward(
    cell: _Cell,
    reverse: bool,
    x: Tensor,
    h0: Tensor,
    c0: Tensor,
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Tensor,
    b_hh: Tensor,
    peephole: Tensor | None,
) -> _Activations:
    """Run one layer-direction over a time-major ``x`` of shape (T, B, F)."""
    steps, batch, _ = x.shape
    hidden = h0.shape[-1]
    # Pre-activations of the candidate gate are doubled so that one sigmoid
    # gives tanh via 2*sigmoid(2z) - 1 (see ``_StepOps``).
    scale = x.new_ones(w_ih.shape[0], 1)
    block = cell.candidate_block
    scale[block * hidden : (block + 1) * hidden] = 2
    # One big matmul for the input contribution of every step; the loop then
    # accumulates the recurrent part into these rows in place.
    gates = torch.addmm(
        (b_ih + b_hh) * scale[:, 0], x.reshape(steps * batch, -1), (w_ih * scale).t()
    )
    w_hh_t = (w_hh * scale).t().contiguous()
    acts = _Activations(
        gates=gates.view(steps, batch, -1),
        hs=x.new_empty(steps + 1, batch, hidden),
        cs=x.new_empty(steps + 1, batch, hidden),
        tanh_c=x.new_empty(steps, batch, hidden),
    )
    first = steps if reverse else 0
    acts.hs[first].copy_(h0)
    acts.cs[first].copy_(c0)
    cell.run_steps(acts, w_hh_t, peephole, _StepOps(x, reverse))
    return acts


def _final_state(acts: _Activations, reverse: bool) -> State:
    last = 0 if reverse else acts.hs.shape[0] - 1
    return acts.hs[last].clone(), acts.cs[last].clone()


def _outputs(acts: _Activations, reverse: bool) -> Tensor:
    return _prev_and_current(acts.hs, reverse)[1]


def _backward_through_time(
    cell: _Cell,
    reverse: bool,
    acts: _Activations,
    coef: _BackwardCoefficients,
    w_hh: Tensor,
    grad_out: Tensor | None,
    grad_hn: Tensor | None,
    grad_cn: Tensor | None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Return (dz for every step (T, B, G*H), grad h0, grad c0)."""
    steps, batch, _ = acts.gates.shape
    hidden = acts.hs.shape[-1]
    n_lead = cell.lead_blocks

    # dh in the same slot layout as ``hs``: output gradients sit in the
    # "current" slots and every step adds its recurrent contribution into the
    # "previous" slot, which for the first step is the gradient of h0.
    dh_all = acts.hs.new_zeros(acts.hs.shape)
    dh_prev_slots, dh_cur_slots = _prev_and_current(dh_all, reverse)
    if grad_out is not None:
        dh_cur_slots.copy_(grad_out)
    last = 0 if reverse else steps
    if grad_hn is not None:
        dh_all[last] += grad_hn
    dc = (
        grad_cn.clone(memory_format=torch.contiguous_format)
        if grad_cn is not None
        else acts.cs.new_zeros(acts.cs.shape[1:])
    )
    dc_bcast = dc.unsqueeze(1)

    dz = acts.gates.new_empty(acts.gates.shape)
    dz_lead = dz[..., : n_lead * hidden].view(steps, batch, n_lead, hidden)

    def backward_order(buffer: Tensor) -> Sequence[Tensor]:
        return _in_order(buffer, not reverse)

    dh = backward_order(dh_cur_slots)
    dh_prev = backward_order(dh_prev_slots)
    dz_steps = backward_order(dz)
    dz_lead_steps = backward_order(dz_lead)
    dz_out_steps = backward_order(dz[..., n_lead * hidden :])
    lead = backward_order(coef.lead)
    out_gate = backward_order(coef.out_gate)
    cell_from_h = backward_order(coef.cell_from_h)
    decay = backward_order(coef.decay)
    for k in range(steps):
        torch.mul(dh[k], out_gate[k], out=dz_out_steps[k])
        dc.addcmul_(dh[k], cell_from_h[k])
        torch.mul(lead[k], dc_bcast, out=dz_lead_steps[k])
        dc.mul_(decay[k])
        dh_prev[k].addmm_(dz_steps[k], w_hh)
    first = steps if reverse else 0
    return dz, dh_all[first], dc


def _input_grad(dz_flat: Tensor, weight: Tensor) -> Tensor:
    """dz @ W.  With few input features BLAS measured 2x faster when the
    skinny right operand is column-major; no difference for wide inputs."""
    return dz_flat @ weight.t().contiguous().t()


def _weight_grad(dz_flat: Tensor, inputs_flat: Tensor) -> Tensor:
    """dz^T @ inputs, computed as (inputs^T @ dz)^T: measured 5x faster with
    few input features and no slower otherwise."""
    return (inputs_flat.t() @ dz_flat).t()


class _FusedLayer(torch.autograd.Function):
    """One layer and direction of a peephole or coupled LSTM, time-major."""

    @staticmethod
    def forward(ctx, cell, reverse, x, h0, c0, w_ih, w_hh, b_ih, b_hh, peephole):
        acts = _run_forward(cell, reverse, x, h0, c0, w_ih, w_hh, b_ih, b_hh, peephole)
        ctx.cell, ctx.reverse = cell, reverse
        ctx.save_for_backward(x, w_ih, w_hh, peephole, *acts)
        h_n, c_n = _final_state(acts, reverse)
        return _outputs(acts, reverse), h_n, c_n

    @staticmethod
    @once_differentiable  # the hand-written backward is not itself differentiable
    def backward(ctx, grad_out, grad_hn, grad_cn):
        cell, reverse = ctx.cell, ctx.reverse
        x, w_ih, w_hh, peephole, *saved = ctx.saved_tensors
        acts = _Activations(*saved)
        coef = cell.coefficients(acts, peephole, reverse)
        dz, grad_h0, grad_c0 = _backward_through_time(
            cell, reverse, acts, coef, w_hh, grad_out, grad_hn, grad_cn
        )

        steps, batch, n_inputs = x.shape
        dz_flat = dz.view(steps * batch, -1)
        need = ctx.needs_input_grad
        grad_x = _input_grad(dz_flat, w_ih).view(steps, batch, n_inputs) if need[2] else None
        grad_w_ih = _weight_grad(dz_flat, x.reshape(steps * batch, n_inputs)) if need[5] else None
        grad_w_hh = None
        if need[6]:
            h_prev, _ = _prev_and_current(acts.hs, reverse)
            grad_w_hh = _weight_grad(dz_flat, h_prev.reshape(steps * batch, -1))
        grad_bias = dz_flat.sum(0) if need[7] or need[8] else None
        grad_peephole = cell.peephole_grad(dz, acts, reverse) if need[9] else None
        return (
            None,
            None,
            grad_x,
            grad_h0 if need[3] else None,
            grad_c0 if need[4] else None,
            grad_w_ih,
            grad_w_hh,
            grad_bias if need[7] else None,
            # A separate tensor, so that the two .grad buffers never alias.
            grad_bias.clone() if need[8] else None,
            grad_peephole,
        )


def _needs_autograd(tensors: Sequence[Tensor | None]) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


class _FusedLSTMBase(nn.Module):
    """Shared module logic; subclasses pick the cell."""

    _cell: _Cell

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        dropout: float = 0.0,
        bidirectional: bool = False,
    ) -> None:
        super().__init__()
        if input_size <= 0 or hidden_size <= 0 or num_layers <= 0:
            raise ValueError("input_size, hidden_size and num_layers must be positive")
        if not 0.0 <= dropout <= 1.0:
            raise ValueError(f"dropout must be in [0, 1], got {dropout}")
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.dropout = float(dropout)
        self.bidirectional = bidirectional
        self.num_directions = 2 if bidirectional else 1
        self.output_size = self.num_directions * hidden_size
        self._suffixes = ("", "_reverse")[: self.num_directions]
        gate_rows = self._cell.gate_count * hidden_size
        for layer in range(num_layers):
            layer_inputs = input_size if layer == 0 else self.output_size
            for suffix in self._suffixes:
                name = f"l{layer}{suffix}"
                self.register_parameter(
                    f"weight_ih_{name}", nn.Parameter(torch.empty(gate_rows, layer_inputs))
                )
                self.register_parameter(
                    f"weight_hh_{name}", nn.Parameter(torch.empty(gate_rows, hidden_size))
                )
                self.register_parameter(f"bias_ih_{name}", nn.Parameter(torch.empty(gate_rows)))
                self.register_parameter(f"bias_hh_{name}", nn.Parameter(torch.empty(gate_rows)))
                if self._cell.has_peephole:
                    self.register_parameter(
                        f"weight_peephole_{name}", nn.Parameter(torch.empty(3, hidden_size))
                    )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Uniform(-1/sqrt(H), 1/sqrt(H)) like ``nn.LSTM``; peepholes start at zero.

        Zero peepholes make a freshly initialised PeepholeLSTM behave exactly like
        an ``nn.LSTM`` with the same gate weights; training moves them away from
        zero because their gradient is not zero.
        """
        bound = 1.0 / math.sqrt(self.hidden_size)
        for name, param in self.named_parameters():
            if name.startswith("weight_peephole_"):
                nn.init.zeros_(param)
            else:
                nn.init.uniform_(param, -bound, bound)

    def extra_repr(self) -> str:
        return (
            f"{self.input_size}, {self.hidden_size}, num_layers={self.num_layers}, "
            f"dropout={self.dropout}, bidirectional={self.bidirectional}"
        )

    def _layer_weights(self, layer: int, direction: int) -> tuple[Tensor, ...]:
        name = f"l{layer}{self._suffixes[direction]}"
        peephole = getattr(self, f"weight_peephole_{name}", None)
        return (
            getattr(self, f"weight_ih_{name}"),
            getattr(self, f"weight_hh_{name}"),
            getattr(self, f"bias_ih_{name}"),
            getattr(self, f"bias_hh_{name}"),
            peephole,
        )

    def _initial_state(self, x: Tensor, state: State | None) -> State:
        expected = (self.num_layers * self.num_directions, x.shape[0], self.hidden_size)
        if state is None:
            zeros = x.new_zeros(expected)
            return zeros, zeros
        h0, c0 = state
        if tuple(h0.shape) != expected or tuple(c0.shape) != expected:
            got = (tuple(h0.shape), tuple(c0.shape))
            raise ValueError(f"state tensors must have shape {expected}, got {got}")
        return h0, c0

    def _check_input(self, x: Tensor) -> None:
        if x.dim() != 3 or x.shape[2] != self.input_size:
            raise ValueError(
                f"expected input of shape (batch, time, {self.input_size}), got {tuple(x.shape)}"
            )

    def _run_direction(
        self, seq: Tensor, h0: Tensor, c0: Tensor, layer: int, direction: int, trace: list | None
    ) -> tuple[Tensor, Tensor, Tensor]:
        weights = self._layer_weights(layer, direction)
        reverse = direction == 1
        if trace is None and _needs_autograd((seq, h0, c0, *weights)):
            return _FusedLayer.apply(self._cell, reverse, seq, h0, c0, *weights)
        # Inference: same kernel, but nothing is saved for backward.
        acts = _run_forward(self._cell, reverse, seq, h0, c0, *weights)
        if trace is not None:
            trace.append(self._describe(acts, reverse))
        return (_outputs(acts, reverse), *_final_state(acts, reverse))

    def _describe(self, acts: _Activations, reverse: bool) -> dict[str, Tensor]:
        def batch_first(t: Tensor) -> Tensor:
            return t.transpose(0, 1).clone()

        gates = acts.gates.chunk(self._cell.gate_count, dim=-1)
        described = {
            name: batch_first(gate) for name, gate in zip(self._cell.gate_names, gates, strict=True)
        }
        c_prev, c_cur = _prev_and_current(acts.cs, reverse)
        described["cell_prev"] = batch_first(c_prev)
        described["cell"] = batch_first(c_cur)
        return described

    def _forward_layers(
        self, x: Tensor, state: State | None, trace: list | None
    ) -> tuple[Tensor, State]:
        self._check_input(x)
        h0, c0 = self._initial_state(x, state)
        seq = x.transpose(0, 1).contiguous()  # kernels are time-major
        h_n, c_n = [], []
        for layer in range(self.num_layers):
            outputs = []
            for direction in range(self.num_directions):
                index = layer * self.num_directions + direction
                out, h, c = self._run_direction(seq, h0[index], c0[index], layer, direction, trace)
                outputs.append(out)
                h_n.append(h)
                c_n.append(c)
            seq = outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=2)
            if self.training and self.dropout > 0 and layer < self.num_layers - 1:
                seq = F.dropout(seq, self.dropout, training=True)
        return seq.transpose(0, 1), (torch.stack(h_n), torch.stack(c_n))

    def forward(self, x: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        """x: (B, T, input_size); state: (h0, c0), each (layers*directions, B, H).

        Runs in the parameters' dtype with autocast off: the kernels accumulate
        into preallocated buffers in place, which mixed-dtype matmul results
        from autocast would break, so under autocast the result is float32.
        """
        dtype = self.weight_ih_l0.dtype
        if state is not None:
            state = (state[0].to(dtype), state[1].to(dtype))
        with torch.autocast(device_type=x.device.type, enabled=False):
            return self._forward_layers(x.to(dtype), state, trace=None)

    @torch.no_grad()
    def trace_gates(self, x: Tensor, state: State | None = None) -> list[dict[str, Tensor]]:
        """Debug hook: the kernel's own gate activations and cell states.

        One dict per layer and direction (order as in ``h_n``), each tensor
        batch-first (B, T, H); keys are the cell's gate names plus ``cell_prev``
        and ``cell``.
        """
        trace: list[dict[str, Tensor]] = []
        self._forward_layers(x, state, trace)
        return trace


class PeepholeLSTM(_FusedLSTMBase):
    """Peephole LSTM (Gers & Schmidhuber 2000) with diagonal peepholes.

    Parameters per layer ``k`` and direction suffix (``""``/``"_reverse"``), as in
    ``nn.LSTM``: ``weight_ih_l{k}`` (4H, in), ``weight_hh_l{k}`` (4H, H),
    ``bias_ih_l{k}``, ``bias_hh_l{k}`` (4H,), gate order i, f, g, o; plus
    ``weight_peephole_l{k}`` (3, H) with rows p_i, p_f, p_o.
    """

    _cell = _PeepholeCell


class CoupledLSTM(_FusedLSTMBase):
    """Coupled input-forget gate LSTM: i = 1 - f, no peepholes.

    Same parameter names as ``nn.LSTM`` with three gate blocks in order f, g, o:
    ``weight_ih_l{k}`` (3H, in), ``weight_hh_l{k}`` (3H, H), biases (3H,).
    """

    _cell = _CoupledCell

"""Peephole LSTM and coupled input-forget-gate (CIFG) LSTM, one fused kernel per layer.

Both modules are called like ``torch.nn.LSTM(batch_first=True)``: input (B, T, input_size),
optional state ``(h_0, c_0)`` each (num_layers * num_directions, B, H), result
``(output, (h_n, c_n))``; ``num_layers``, ``dropout`` between layers and ``bidirectional`` work
as there.  Parameter names follow ``nn.LSTM`` (``weight_ih_l{k}``, ``weight_hh_l{k}``,
``bias_ih_l{k}``, ``bias_hh_l{k}``, suffix ``_reverse``).  Only :class:`PeepholeLSTM` also has
``nn.LSTM``'s shapes, so an ``nn.LSTM`` state dict loads into it with ``strict=False``; its
peepholes then stay zero and the two compute the same function.  :class:`CoupledLSTM` has three
gate blocks instead of four and cannot take ``nn.LSTM`` weights.

Each layer and direction runs as one ``torch.autograd.Function`` (:class:`_FusedLayer`):

* forward (``_run_forward``): one matmul projects the inputs of all steps, then the time loop
  does the recurrent matmul and the gate arithmetic in place on preallocated buffers;
* backward (``_backward_through_time``): backpropagation through one step is linear in the
  incoming ``(dh, dc)``, with coefficients -- partial derivatives of the cell, listed in each
  cell's docstring -- that depend only on saved activations; the loop applies them and does
  one matmul per step; weight gradients are one matmul over all steps.

The time loops exist twice.  On CPU tensors in float32/float64 they run in C++
(``csrc/fused_lstm.cpp``, built on first use by :mod:`pipeline.models._fused_ext`): per step
one ``addmm`` and one vectorised pass over the gates, forward and backward, the backward's
coefficients computed in that pass.  Elsewhere (CUDA, other dtypes), when the build fails, or
with ``PIPELINE_FUSED_BACKEND=python``, they are PyTorch ops: the cell's ``run_steps`` and
``_backward_loop_python`` over coefficients precomputed for all steps (``derivatives``).
Both fill the same buffers, so everything around the loops is shared.

The backward is written by hand because, on the CPU benchmark (``benchmarks/bench_rnn.py``,
recorded in ``benchmarks/results/rnn_cpu.md``), autograd through the same cells -- eager with
the input matmul hoisted out of the loop, or a ``torch.compile``'d step -- was clearly slower
for forward+backward than even the PyTorch loops at the two smaller shapes.  The PyTorch loops
also run on CUDA (``test_cuda_matches_cpu`` checks the result).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from pipeline.models import _fused_ext

__all__ = ["PeepholeLSTM", "CoupledLSTM"]

State = tuple[Tensor, Tensor]


class _Activations(NamedTuple):
    """Everything the forward loop produced, time-major.

    ``hs``/``cs`` have ``steps + 1`` slots: the initial state sits in slot 0
    (slot ``steps`` for a reverse direction) and step ``t`` writes its new state
    next to it, so "previous state of every step" is a single contiguous slice.
    """

    gates: Tensor  # (T, B, G*H) activated gates, block order as in the weights
    hs: Tensor  # (T+1, B, H)
    cs: Tensor  # (T+1, B, H)
    tanh_c: Tensor  # (T, B, H)


class _CellDerivatives(NamedTuple):
    """Partial derivatives of one cell at every step: the coefficients of the backward map.

    "Cell gates" are the gate blocks that reach ``h_t`` only through ``c_t`` (i, f, g for the
    peephole cell; f, g for the coupled one); they come first in the gate layout, the output
    gate o last.  All derivatives are w.r.t. the unscaled pre-activations z (see
    ``_run_forward_python``).
    """

    dc_dz: Tensor  # (T, B, n_cell_gates, H): dc_t/dz for each cell gate
    dh_dzo: Tensor  # (T, B, H): dh_t/dz_o
    dh_dc: Tensor  # (T, B, H): dh_t/dc_t, including the path through o_t
    dc_dcprev: Tensor  # (T, B, H): dc_t/dc_{t-1}, including the paths through i_t and f_t


def _in_order(buffer: Tensor, reverse: bool) -> Sequence[Tensor]:
    """Per-step views of a time-major buffer, in processing order.

    Created in bulk with ``unbind`` because creating one view costs about as much as a small
    elementwise op.
    """
    views = buffer.unbind(0)
    return views[::-1] if reverse else views


def _prev_and_current(buffer: Tensor, reverse: bool) -> tuple[Tensor, Tensor]:
    """Split a ``(T+1, ...)`` state buffer into time-aligned previous/current states."""
    if reverse:
        return buffer[1:], buffer[:-1]
    return buffer[:-1], buffer[1:]


# Derivatives of the activations written with the activation itself.  They run over whole
# (T, B, H) tensors, where the work is memory bound, so each is one fused op (s - s*s rather
# than s * (1 - s)).


def _sigmoid_slope(s: Tensor, out: Tensor | None = None) -> Tensor:
    """sigma'(z) = s (1 - s) where s = sigma(z)."""
    return torch.addcmul(s, s, s, value=-1, out=out)


def _tanh_slope(t: Tensor, out: Tensor | None = None) -> Tensor:
    """tanh'(z) = 1 - t^2 where t = tanh(z)."""
    return torch.addcmul(t.new_ones(()), t, t, value=-1, out=out)


def _tanh_from_doubled_sigmoid(s: Tensor, minus_one: Tensor) -> None:
    """In place: sigma(2z) -> tanh(z) = 2 sigma(2z) - 1 (see ``_run_forward_python``)."""
    torch.add(minus_one, s, alpha=2, out=s)


class _PeepholeCell:
    """Peephole LSTM cell (Gers & Schmidhuber 2000); gate blocks i, f, g, o.

    Forward, one step (``*`` elementwise, sigma the sigmoid)::

        z     = W_ih x_t + b_ih + W_hh h_{t-1} + b_hh,   split into z_i, z_f, z_g, z_o
        i_t   = sigma(z_i + p_i * c_{t-1})
        f_t   = sigma(z_f + p_f * c_{t-1})
        g_t   = tanh(z_g)
        c_t   = f_t * c_{t-1} + i_t * g_t
        o_t   = sigma(z_o + p_o * c_t)
        h_t   = o_t * tanh(c_t)

    Backward, one step, given dh = dL/dh_t (from the output and from step t+1) and
    dc = dL/dc_t through step t+1 (or from c_n); the loop is ``_backward_loop_python``::

        dz_o       = dh * dh_dzo
        dc        += dh * dh_dc              now the full dL/dc_t
        dz_{i,f,g} = dc * dc_dz[i, f, g]
        dc_{t-1}   = dc * dc_dcprev          the dc of step t-1
        dh_{t-1}  += dz @ W_hh               dz = [dz_i, dz_f, dz_g, dz_o]

    with the coefficients (``derivatives``), where sigma'(s) = s (1 - s) and
    tanh'(t) = 1 - t^2 take the activation's value::

        dh_dzo    = sigma'(o_t) * tanh(c_t)
        dh_dc     = o_t * tanh'(tanh(c_t)) + p_o * dh_dzo
        dc_dz[i]  = sigma'(i_t) * g_t
        dc_dz[f]  = sigma'(f_t) * c_{t-1}
        dc_dz[g]  = tanh'(g_t) * i_t
        dc_dcprev = f_t + p_i * dc_dz[i] + p_f * dc_dz[f]

    and the peephole gradients ``sum(dz_i * c_{t-1})``, ``sum(dz_f * c_{t-1})``,
    ``sum(dz_o * c_t)`` over steps and batch (``peephole_grad``).
    """

    gate_count = 4
    has_peephole = True
    cell_gate_count = 3  # i, f, g
    candidate_block = 2
    gate_names = ("input", "forget", "cell_candidate", "output")

    @staticmethod
    def run_steps(acts: _Activations, w_hh_t: Tensor, peephole: Tensor, reverse: bool) -> None:
        """The forward equations, step by step, in place into ``acts``.

        ``acts.gates`` arrives holding the (scaled) input projection plus biases.
        """
        steps, batch, _ = acts.gates.shape
        hidden = acts.hs.shape[-1]
        # i and f read the same peephole input (c_{t-1}); treating them as one
        # (B, 2, H) block halves the number of ops for them.
        in_forget = acts.gates[..., : 2 * hidden].view(steps, batch, 2, hidden)
        peep_if, peep_o = peephole[:2], peephole[2]
        order = partial(_in_order, reverse=reverse)
        minus_one = acts.gates.new_full((), -1.0)

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
            _tanh_from_doubled_sigmoid(g[k], minus_one)
            c_new = torch.mul(f[k], c[k], out=c[k + 1])
            c_new.addcmul_(i[k], g[k])
            o[k].addcmul_(c_new, peep_o).sigmoid_()
            torch.tanh(c_new, out=tc[k])
            torch.mul(o[k], tc[k], out=h[k + 1])

    @staticmethod
    def derivatives(acts: _Activations, peephole: Tensor, reverse: bool) -> _CellDerivatives:
        steps, batch, _ = acts.gates.shape
        hidden = acts.hs.shape[-1]
        i, f, g, o = acts.gates.chunk(4, dim=-1)
        in_forget = acts.gates[..., : 2 * hidden].view(steps, batch, 2, hidden)
        c_prev, _ = _prev_and_current(acts.cs, reverse)
        p_i, p_f, p_o = peephole.unbind(0)

        dc_dz = acts.gates.new_empty(steps, batch, 3, hidden)
        dc_dzi, dc_dzf, dc_dzg = dc_dz.unbind(2)
        _sigmoid_slope(in_forget, out=dc_dz[:, :, :2])
        dc_dzi.mul_(g)
        dc_dzf.mul_(c_prev)
        _tanh_slope(g, out=dc_dzg).mul_(i)
        dh_dzo = _sigmoid_slope(o).mul_(acts.tanh_c)
        dh_dc = _tanh_slope(acts.tanh_c).mul_(o).addcmul_(dh_dzo, p_o)
        dc_dcprev = torch.addcmul(f, dc_dzi, p_i).addcmul_(dc_dzf, p_f)
        return _CellDerivatives(dc_dz, dh_dzo, dh_dc, dc_dcprev)

    @staticmethod
    def peephole_grad(dz: Tensor, acts: _Activations, reverse: bool) -> Tensor:
        """Rows p_i, p_f, p_o: each peephole times the cell state it reads, summed."""
        steps, batch, _ = dz.shape
        hidden = acts.hs.shape[-1]
        c_prev, c_cur = _prev_and_current(acts.cs, reverse)
        dz_if = dz[..., : 2 * hidden].view(steps, batch, 2, hidden)
        grad_if = (dz_if * c_prev.unsqueeze(2)).sum(dim=(0, 1))
        grad_o = (dz[..., 3 * hidden :] * c_cur).sum(dim=(0, 1))
        return torch.cat((grad_if, grad_o.unsqueeze(0)))


class _CoupledCell:
    """Coupled input-forget gate (CIFG) cell: i_t = 1 - f_t; gate blocks f, g, o; no peepholes.

    Forward, one step::

        z     = W_ih x_t + b_ih + W_hh h_{t-1} + b_hh,   split into z_f, z_g, z_o
        f_t   = sigma(z_f)
        g_t   = tanh(z_g)
        c_t   = f_t * c_{t-1} + (1 - f_t) * g_t
        o_t   = sigma(z_o)
        h_t   = o_t * tanh(c_t)

    Backward: the loop of :class:`_PeepholeCell` with the cell gates f, g and the
    coefficients::

        dh_dzo    = sigma'(o_t) * tanh(c_t)
        dh_dc     = o_t * tanh'(tanh(c_t))
        dc_dz[f]  = sigma'(f_t) * (c_{t-1} - g_t)
        dc_dz[g]  = tanh'(g_t) * (1 - f_t)
        dc_dcprev = f_t
    """

    gate_count = 3
    has_peephole = False
    cell_gate_count = 2  # f, g
    candidate_block = 1
    gate_names = ("forget", "cell_candidate", "output")

    @staticmethod
    def run_steps(acts: _Activations, w_hh_t: Tensor, peephole: None, reverse: bool) -> None:
        """The forward equations, step by step, in place into ``acts``."""
        steps = acts.gates.shape[0]
        hidden = acts.hs.shape[-1]
        order = partial(_in_order, reverse=reverse)
        minus_one = acts.gates.new_full((), -1.0)

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
            z[k].sigmoid_()  # f and o; g's block holds sigma(2 z_g)
            _tanh_from_doubled_sigmoid(g[k], minus_one)
            # c = f*c_prev + (1-f)*g rewritten as g + f*(c_prev - g): two ops.
            torch.sub(c[k], g[k], out=scratch)
            c_new = torch.addcmul(g[k], f[k], scratch, out=c[k + 1])
            torch.tanh(c_new, out=tc[k])
            torch.mul(o[k], tc[k], out=h[k + 1])

    @staticmethod
    def derivatives(acts: _Activations, peephole: None, reverse: bool) -> _CellDerivatives:
        steps, batch, _ = acts.gates.shape
        hidden = acts.hs.shape[-1]
        f, g, o = acts.gates.chunk(3, dim=-1)
        c_prev, _ = _prev_and_current(acts.cs, reverse)

        dc_dz = acts.gates.new_empty(steps, batch, 2, hidden)
        dc_dzf, dc_dzg = dc_dz.unbind(2)
        torch.sub(c_prev, g, out=dc_dzf).mul_(_sigmoid_slope(f))
        torch.sub(f.new_ones(()), f, out=dc_dzg).mul_(_tanh_slope(g))
        dh_dzo = _sigmoid_slope(o).mul_(acts.tanh_c)
        dh_dc = _tanh_slope(acts.tanh_c).mul_(o)
        return _CellDerivatives(dc_dz, dh_dzo, dh_dc, dc_dcprev=f)

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
    """Run one layer-direction over a time-major ``x`` of shape (T, B, F).

    One big matmul computes the input contribution of every step; the time loop then adds the
    recurrent part into these rows in place and activates them.  The loop is the C++ one
    (``_fused_ext``) where it applies, else the cell's ``run_steps``.
    """
    ops = _fused_ext.cpp_ops_for(x)
    if ops is None:
        return _run_forward_python(cell, reverse, x, h0, c0, w_ih, w_hh, b_ih, b_hh, peephole)
    steps, batch, _ = x.shape
    gates = torch.addmm(b_ih + b_hh, x.reshape(steps * batch, -1), w_ih.t())
    acts = _empty_activations(gates.view(steps, batch, -1), x, h0.shape[-1])
    _set_initial_state(acts, reverse, h0, c0)
    # A contiguous W_hh^T: faster per-step addmm than a transposed view of W_hh
    # (benchmarks/bench_kernel_choices.py, "recurrent addmm, one step").
    w_hh_t = w_hh.t().contiguous()
    ops.forward(acts.gates, w_hh_t, peephole, acts.hs, acts.cs, acts.tanh_c, reverse)
    return acts


def _empty_activations(gates: Tensor, x: Tensor, hidden: int) -> _Activations:
    steps, batch, _ = gates.shape
    return _Activations(
        gates=gates,
        hs=x.new_empty(steps + 1, batch, hidden),
        cs=x.new_empty(steps + 1, batch, hidden),
        tanh_c=x.new_empty(steps, batch, hidden),
    )


def _set_initial_state(acts: _Activations, reverse: bool, h0: Tensor, c0: Tensor) -> None:
    first = acts.gates.shape[0] if reverse else 0
    acts.hs[first].copy_(h0)
    acts.cs[first].copy_(c0)


def _run_forward_python(
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
    """``_run_forward`` with the loop in PyTorch ops (``run_steps``).

    The candidate block's rows of the weights and biases are doubled here, so that the loop's
    sigmoid over the gate blocks gives sigma(2 z_g) for g, turned into tanh(z_g) by one
    ``2s - 1``; one sigmoid call thus covers g together with its neighbouring blocks.  The
    scaling stays inside the forward: ``acts.gates`` holds g_t = tanh(z_g) of the *unscaled*
    z_g, and the backward differentiates w.r.t. the unscaled z with the unscaled weights.
    """
    steps, batch, _ = x.shape
    hidden = h0.shape[-1]
    scale = x.new_ones(w_ih.shape[0], 1)
    block = cell.candidate_block
    scale[block * hidden : (block + 1) * hidden] = 2
    gates = torch.addmm(
        (b_ih + b_hh) * scale[:, 0], x.reshape(steps * batch, -1), (w_ih * scale).t()
    )
    w_hh_t = (w_hh * scale).t().contiguous()
    acts = _empty_activations(gates.view(steps, batch, -1), x, hidden)
    _set_initial_state(acts, reverse, h0, c0)
    cell.run_steps(acts, w_hh_t, peephole, reverse)
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
    peephole: Tensor | None,
    w_hh: Tensor,
    grad_out: Tensor | None,
    grad_hn: Tensor | None,
    grad_cn: Tensor | None,
) -> tuple[Tensor, Tensor, Tensor]:
    """The backward loop of the cell docstrings.  Returns (dz (T, B, G*H), dL/dh0, dL/dc0).

    ``dz`` is w.r.t. the unscaled pre-activations z (see ``_run_forward_python``), hence the
    unscaled ``w_hh`` for dh_{t-1} here and in the weight gradients.  The loop is the C++ one
    where it applies (it computes the cell's derivatives on the fly), else
    ``_backward_loop_python``.
    """
    steps = acts.gates.shape[0]
    # dh in the same slot layout as ``hs``: output gradients sit in the "current" slots and
    # each step adds dz @ W_hh into its "previous" slot.  The previous slot of one step is the
    # current slot of the step processed next, so it already holds the recurrent part when
    # that step is reached; the previous slot of the last step processed is dL/dh0.
    dh_all = acts.hs.new_zeros(acts.hs.shape)
    if grad_out is not None:
        _prev_and_current(dh_all, reverse)[1].copy_(grad_out)
    last = 0 if reverse else steps
    if grad_hn is not None:
        dh_all[last] += grad_hn
    dc = (
        grad_cn.clone(memory_format=torch.contiguous_format)
        if grad_cn is not None
        else acts.cs.new_zeros(acts.cs.shape[1:])
    )
    dz = acts.gates.new_empty(acts.gates.shape)
    ops = _fused_ext.cpp_ops_for(dz)
    if ops is None:
        derivs = cell.derivatives(acts, peephole, reverse)
        _backward_loop_python(cell, reverse, derivs, w_hh, dh_all, dc, dz)
    else:
        ops.backward(acts.gates, acts.cs, acts.tanh_c, w_hh, peephole, dh_all, dc, dz, reverse)
    first = steps if reverse else 0
    return dz, dh_all[first], dc


def _backward_loop_python(
    cell: _Cell,
    reverse: bool,
    derivs: _CellDerivatives,
    w_hh: Tensor,
    dh_all: Tensor,
    dc: Tensor,
    dz: Tensor,
) -> None:
    """The backward loop in PyTorch ops, in place into ``dh_all``, ``dc`` and ``dz``."""
    steps, batch, _ = dz.shape
    hidden = dh_all.shape[-1]
    n_cell = cell.cell_gate_count
    dh_prev_slots, dh_cur_slots = _prev_and_current(dh_all, reverse)
    # A view of dc broadcast over the cell-gate axis of dc_dz.  It stays current only
    # because the loop updates dc in place (addcmul_, mul_): never rebind dc below.
    dc_bcast = dc.unsqueeze(1)
    dz_cell = dz[..., : n_cell * hidden].view(steps, batch, n_cell, hidden)

    order = partial(_in_order, reverse=not reverse)
    dh = order(dh_cur_slots)
    dh_prev = order(dh_prev_slots)
    dz_steps = order(dz)
    dz_cell_steps = order(dz_cell)
    dz_o_steps = order(dz[..., n_cell * hidden :])
    dc_dz, dh_dzo, dh_dc, dc_dcprev = (order(t) for t in derivs)
    for k in range(steps):
        torch.mul(dh[k], dh_dzo[k], out=dz_o_steps[k])
        dc.addcmul_(dh[k], dh_dc[k])  # dc is now the full dL/dc_t
        torch.mul(dc_dz[k], dc_bcast, out=dz_cell_steps[k])
        dc.mul_(dc_dcprev[k])  # dc is now dL/dc_{t-1} through this step
        dh_prev[k].addmm_(dz_steps[k], w_hh)


def _weight_grad(dz_flat: Tensor, inputs_flat: Tensor) -> Tensor:
    """dz^T @ inputs, computed as (inputs^T @ dz)^T.

    ``benchmarks/bench_kernel_choices.py`` measured this order faster for both weights at the
    two larger benchmark shapes and for W_hh at the third, and about a microsecond slower
    for W_ih at the third (one input feature).
    """
    return (inputs_flat.t() @ dz_flat).t()


class _FusedLayer(torch.autograd.Function):
    """One layer and direction of a peephole or coupled LSTM, time-major.

    forward: ``_run_forward`` (the cell's forward equations).  backward:
    ``_backward_through_time`` for dz, dh0, dc0, then matmuls of dz for the input and weight
    gradients.
    """

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
        # One flag per argument of forward; cell and reverse are not tensors.
        flags = ctx.needs_input_grad[2:]
        need_x, need_h0, need_c0, need_w_ih, need_w_hh, need_b_ih, need_b_hh, need_p = flags
        acts = _Activations(*saved)
        dz, grad_h0, grad_c0 = _backward_through_time(
            cell, reverse, acts, peephole, w_hh, grad_out, grad_hn, grad_cn
        )

        steps, batch, n_inputs = x.shape
        dz_flat = dz.view(steps * batch, -1)
        grad_x = (dz_flat @ w_ih).view(steps, batch, n_inputs) if need_x else None
        grad_w_ih = _weight_grad(dz_flat, x.reshape(steps * batch, n_inputs)) if need_w_ih else None
        grad_w_hh = None
        if need_w_hh:
            h_prev, _ = _prev_and_current(acts.hs, reverse)
            grad_w_hh = _weight_grad(dz_flat, h_prev.reshape(steps * batch, -1))
        # Both biases are added to z unchanged, so both gradients are sum(dz).
        grad_bias = dz_flat.sum(0) if need_b_ih or need_b_hh else None
        return (
            None,
            None,
            grad_x,
            grad_h0 if need_h0 else None,
            grad_c0 if need_c0 else None,
            grad_w_ih,
            grad_w_hh,
            grad_bias if need_b_ih else None,
            # A separate tensor, so that the two .grad buffers never alias.
            grad_bias.clone() if need_b_hh else None,
            cell.peephole_grad(dz, acts, reverse) if need_p else None,
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

        Zero peepholes make a freshly initialised PeepholeLSTM compute the same function as an
        ``nn.LSTM`` with the same gate weights; their gradient is not zero, so training moves
        them.
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
    r"""Peephole LSTM (Gers & Schmidhuber 2000) with diagonal peepholes.

    For each element of the input sequence each layer computes::

        i_t = sigma(W_ii x_t + b_ii + W_hi h_{t-1} + b_hi + p_i * c_{t-1})
        f_t = sigma(W_if x_t + b_if + W_hf h_{t-1} + b_hf + p_f * c_{t-1})
        g_t = tanh(W_ig x_t + b_ig + W_hg h_{t-1} + b_hg)
        c_t = f_t * c_{t-1} + i_t * g_t
        o_t = sigma(W_io x_t + b_io + W_ho h_{t-1} + b_ho + p_o * c_t)
        h_t = o_t * tanh(c_t)

    where ``*`` is the elementwise product and the output gate looks at the new cell state.

    Parameters per layer ``k`` and direction suffix (``""``/``"_reverse"``), as in
    ``nn.LSTM``: ``weight_ih_l{k}`` (4H, in) = [W_ii | W_if | W_ig | W_io],
    ``weight_hh_l{k}`` (4H, H), ``bias_ih_l{k}``, ``bias_hh_l{k}`` (4H,); plus
    ``weight_peephole_l{k}`` (3, H) with rows p_i, p_f, p_o, initialised to zero.
    """

    _cell = _PeepholeCell


class CoupledLSTM(_FusedLSTMBase):
    r"""Coupled input-forget gate (CIFG) LSTM: the input gate is 1 - f_t, no peepholes.

    For each element of the input sequence each layer computes::

        f_t = sigma(W_if x_t + b_if + W_hf h_{t-1} + b_hf)
        g_t = tanh(W_ig x_t + b_ig + W_hg h_{t-1} + b_hg)
        c_t = f_t * c_{t-1} + (1 - f_t) * g_t
        o_t = sigma(W_io x_t + b_io + W_ho h_{t-1} + b_ho)
        h_t = o_t * tanh(c_t)

    Parameter names as in ``nn.LSTM`` but with three gate blocks in order f, g, o:
    ``weight_ih_l{k}`` (3H, in), ``weight_hh_l{k}`` (3H, H), biases (3H,).
    """

    _cell = _CoupledCell

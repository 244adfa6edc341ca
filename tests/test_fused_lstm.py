"""Correctness of the fused peephole and coupled (CIFG) LSTMs.

References: ``torch.nn.LSTM`` (peephole LSTM with zero peepholes is a plain
LSTM) and straightforward eager per-step implementations written here.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.func import functional_call

from pipeline.models import _fused_ext
from pipeline.models.fused_lstm import CoupledLSTM, PeepholeLSTM

ATOL = RTOL = 1e-5
BATCH, STEPS, INPUTS, HIDDEN = 3, 7, 5, 6

STACKS = [(1, False), (1, True), (2, False), (2, True)]
STACK_IDS = [f"layers{n}-{'bi' if bi else 'uni'}" for n, bi in STACKS]


# --- eager references -------------------------------------------------------


def eager_peephole_step(x_t, h, c, w_ih, w_hh, b_ih, b_hh, peephole):
    z_i, z_f, z_g, z_o = (x_t @ w_ih.T + b_ih + h @ w_hh.T + b_hh).chunk(4, dim=1)
    i = torch.sigmoid(z_i + peephole[0] * c)
    f = torch.sigmoid(z_f + peephole[1] * c)
    c = f * c + i * torch.tanh(z_g)
    o = torch.sigmoid(z_o + peephole[2] * c)
    return o * torch.tanh(c), c


def eager_coupled_step(x_t, h, c, w_ih, w_hh, b_ih, b_hh, peephole=None):
    z_f, z_g, z_o = (x_t @ w_ih.T + b_ih + h @ w_hh.T + b_hh).chunk(3, dim=1)
    f = torch.sigmoid(z_f)
    i = 1 - f
    c = f * c + i * torch.tanh(z_g)
    return torch.sigmoid(z_o) * torch.tanh(c), c


def eager_layer(step, x, h, c, weights, reverse):
    times = range(x.shape[1] - 1, -1, -1) if reverse else range(x.shape[1])
    outputs = {}
    for t in times:
        h, c = step(x[:, t], h, c, *weights)
        outputs[t] = h
    return torch.stack([outputs[t] for t in range(x.shape[1])], dim=1), h, c


def eager_stack(model, step, x, state=None):
    """Run ``model``'s parameters through an eager per-step cell; same API as the model."""
    directions = 2 if model.bidirectional else 1
    shape = (model.num_layers * directions, x.shape[0], model.hidden_size)
    h0, c0 = state if state is not None else (x.new_zeros(shape), x.new_zeros(shape))
    h_n, c_n = [], []
    seq = x
    for layer in range(model.num_layers):
        outputs = []
        for direction, suffix in enumerate(["", "_reverse"][:directions]):
            name = f"l{layer}{suffix}"
            weights = [
                getattr(model, f"{kind}_{name}")
                for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
            ]
            weights.append(getattr(model, f"weight_peephole_{name}", None))
            index = layer * directions + direction
            out, h, c = eager_layer(step, seq, h0[index], c0[index], weights, direction == 1)
            outputs.append(out)
            h_n.append(h)
            c_n.append(c)
        seq = torch.cat(outputs, dim=2)
    return seq, (torch.stack(h_n), torch.stack(c_n))


# --- helpers ----------------------------------------------------------------


def random_state(model, batch, dtype=torch.float32):
    directions = 2 if model.bidirectional else 1
    shape = (model.num_layers * directions, batch, model.hidden_size)
    return (
        torch.randn(shape, dtype=dtype, requires_grad=True),
        torch.randn(shape, dtype=dtype, requires_grad=True),
    )


def randomise_peepholes(model):
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "peephole" in name:
                param.uniform_(-0.5, 0.5)


def loss_of(result, weights):
    """A loss that reaches every output: sequence, h_n and c_n."""
    output, (h_n, c_n) = result
    w_out, w_h, w_c = weights
    return (output * w_out).sum() + (h_n * w_h).sum() + (c_n * w_c).sum()


def loss_weights(result):
    # torch.randn(shape), not randn_like: the latter follows memory layout, and
    # the compared implementations return differently strided outputs.
    # Drawn on the CPU generator so that every device gets the same weights.
    output, (h_n, c_n) = result
    return tuple(torch.randn(t.shape).to(t.device) for t in (output, h_n, c_n))


def run_and_grad(model, x, state):
    """Forward, backward; return (outputs, grads of x, state and named parameters)."""
    x = x.detach().clone().requires_grad_(True)
    state = None if state is None else tuple(s.detach().clone().requires_grad_(True) for s in state)
    result = model(x, state)
    torch.manual_seed(1)
    loss_of(result, loss_weights(result)).backward()
    grads = {"input": x.grad}
    if state is not None:
        grads["h0"], grads["c0"] = state[0].grad, state[1].grad
    grads.update({name: p.grad.clone() for name, p in model.named_parameters()})
    output, (h_n, c_n) = result
    return (output.detach(), h_n.detach(), c_n.detach()), grads


def run_and_grad_eager(model, step, x, state):
    """``run_and_grad`` for the eager per-step cell fed with ``model``'s parameters."""

    class EagerReference(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, x, state=None):
            return eager_stack(model, step, x, state)

    outputs, grads = run_and_grad(EagerReference(), x, state)
    model.zero_grad()
    return outputs, {name.removeprefix("model."): grad for name, grad in grads.items()}


def assert_same_run(actual, expected):
    """Same outputs, and the same gradient for everything ``expected`` has one for."""
    (out_a, grads_a), (out_e, grads_e) = actual, expected
    for a, e in zip(out_a, out_e, strict=True):
        torch.testing.assert_close(a, e, atol=ATOL, rtol=RTOL)
    for name in grads_e:
        torch.testing.assert_close(
            grads_a[name],
            grads_e[name],
            atol=ATOL,
            rtol=RTOL,
            msg=lambda m, name=name: f"{name}: {m}",
        )


# --- peephole vs torch.nn.LSTM ---------------------------------------------


@pytest.mark.parametrize("with_state", [False, True], ids=["zero-state", "given-state"])
@pytest.mark.parametrize(("num_layers", "bidirectional"), STACKS, ids=STACK_IDS)
def test_zero_peephole_matches_nn_lstm(num_layers, bidirectional, with_state):
    torch.manual_seed(0)
    reference = nn.LSTM(INPUTS, HIDDEN, num_layers, batch_first=True, bidirectional=bidirectional)
    model = PeepholeLSTM(INPUTS, HIDDEN, num_layers, bidirectional=bidirectional)
    missing, unexpected = model.load_state_dict(reference.state_dict(), strict=False)
    assert not unexpected and all("peephole" in name for name in missing)
    assert all(torch.count_nonzero(getattr(model, name)) == 0 for name in missing)

    x = torch.randn(BATCH, STEPS, INPUTS)
    state = random_state(model, BATCH) if with_state else None
    actual = run_and_grad(model, x, state)
    expected = run_and_grad(reference, x, state)
    assert_same_run(actual, expected)
    # The peephole gradient is not zero even though the peepholes are.
    assert all(g.abs().sum() > 0 for name, g in actual[1].items() if "peephole" in name)


@settings(max_examples=15, deadline=None)
@given(
    batch=st.integers(1, 4),
    steps=st.integers(1, 6),
    inputs=st.integers(1, 5),
    hidden=st.integers(1, 7),
    num_layers=st.integers(1, 3),
    bidirectional=st.booleans(),
)
def test_zero_peephole_matches_nn_lstm_any_shape(
    batch, steps, inputs, hidden, num_layers, bidirectional
):
    torch.manual_seed(0)
    reference = nn.LSTM(inputs, hidden, num_layers, batch_first=True, bidirectional=bidirectional)
    model = PeepholeLSTM(inputs, hidden, num_layers, bidirectional=bidirectional)
    model.load_state_dict(reference.state_dict(), strict=False)
    x = torch.randn(batch, steps, inputs)
    assert_same_run(run_and_grad(model, x, None), run_and_grad(reference, x, None))


# --- eager references with the features nn.LSTM does not have --------------


@pytest.mark.parametrize("with_state", [False, True], ids=["zero-state", "given-state"])
@pytest.mark.parametrize(("num_layers", "bidirectional"), STACKS, ids=STACK_IDS)
def test_peephole_matches_eager_reference(num_layers, bidirectional, with_state):
    torch.manual_seed(0)
    model = PeepholeLSTM(INPUTS, HIDDEN, num_layers, bidirectional=bidirectional)
    randomise_peepholes(model)
    x = torch.randn(BATCH, STEPS, INPUTS)
    state = random_state(model, BATCH) if with_state else None
    expected = run_and_grad_eager(model, eager_peephole_step, x, state)
    assert_same_run(run_and_grad(model, x, state), expected)


@pytest.mark.parametrize("with_state", [False, True], ids=["zero-state", "given-state"])
@pytest.mark.parametrize(("num_layers", "bidirectional"), STACKS, ids=STACK_IDS)
def test_coupled_matches_eager_reference(num_layers, bidirectional, with_state):
    torch.manual_seed(0)
    model = CoupledLSTM(INPUTS, HIDDEN, num_layers, bidirectional=bidirectional)
    x = torch.randn(BATCH, STEPS, INPUTS)
    state = random_state(model, BATCH) if with_state else None
    expected = run_and_grad_eager(model, eager_coupled_step, x, state)
    assert_same_run(run_and_grad(model, x, state), expected)


# --- gradcheck in float64 --------------------------------------------------


def gradcheck_model(model, batch, steps, fast_mode=False):
    """gradcheck w.r.t. input, initial state and every parameter, in float64."""
    model = model.double()
    randomise_peepholes(model)
    names = [name for name, _ in model.named_parameters()]
    params = [p.detach().clone().requires_grad_(True) for p in model.parameters()]
    x = torch.randn(batch, steps, model.input_size, dtype=torch.float64, requires_grad=True)
    h0, c0 = random_state(model, batch, torch.float64)

    def run(x, h0, c0, *param_values):
        values = dict(zip(names, param_values, strict=True))
        output, (h_n, c_n) = functional_call(model, values, (x, (h0, c0)))
        return output, h_n, c_n

    return torch.autograd.gradcheck(run, (x, h0, c0, *params), fast_mode=fast_mode)


@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("model_cls", [PeepholeLSTM, CoupledLSTM])
def test_gradcheck_float64(model_cls, bidirectional):
    torch.manual_seed(0)
    model = model_cls(input_size=3, hidden_size=5, bidirectional=bidirectional)
    assert gradcheck_model(model, batch=2, steps=4)


@pytest.mark.parametrize("model_cls", [PeepholeLSTM, CoupledLSTM])
def test_gradcheck_float64_two_layers(model_cls):
    # fast_mode (random projections) keeps the bigger Jacobian affordable.
    torch.manual_seed(0)
    model = model_cls(input_size=3, hidden_size=4, num_layers=2, bidirectional=True)
    assert gradcheck_model(model, batch=2, steps=3, fast_mode=True)


# --- coupled gate structure ------------------------------------------------


def test_coupled_input_gate_is_one_minus_forget():
    torch.manual_seed(0)
    model = CoupledLSTM(INPUTS, HIDDEN, num_layers=2, bidirectional=True)
    x = torch.randn(BATCH, STEPS, INPUTS)
    traces = model.trace_gates(x)
    assert len(traces) == 4
    for trace in traces:
        assert set(trace) == {"forget", "cell_candidate", "output", "cell_prev", "cell"}
        f, g = trace["forget"], trace["cell_candidate"]
        # The input gate the kernel effectively applied: c = f*c_prev + i*g.
        usable = g.abs() > 0.05
        applied_input = (trace["cell"] - f * trace["cell_prev"])[usable] / g[usable]
        assert usable.sum() > 0.5 * usable.numel()
        torch.testing.assert_close(applied_input, 1 - f[usable], atol=1e-4, rtol=1e-4)


def test_trace_matches_forward_and_eager_gates():
    torch.manual_seed(0)
    model = PeepholeLSTM(INPUTS, HIDDEN)
    randomise_peepholes(model)
    x = torch.randn(BATCH, STEPS, INPUTS)
    (trace,) = model.trace_gates(x)
    weights = [model.weight_ih_l0, model.weight_hh_l0, model.bias_ih_l0, model.bias_hh_l0]
    peep = model.weight_peephole_l0
    with torch.no_grad():
        z_i, z_f, z_g, z_o = (x[:, 0] @ weights[0].T + weights[2] + weights[3]).chunk(4, dim=1)
        # First step from a zero state: c_prev = 0, so the peepholes of i, f see zero.
        torch.testing.assert_close(trace["input"][:, 0], torch.sigmoid(z_i))
        torch.testing.assert_close(trace["forget"][:, 0], torch.sigmoid(z_f))
        torch.testing.assert_close(trace["cell_candidate"][:, 0], torch.tanh(z_g))
        c1 = torch.sigmoid(z_i) * torch.tanh(z_g)
        torch.testing.assert_close(trace["output"][:, 0], torch.sigmoid(z_o + peep[2] * c1))
        _, (_, c_n) = model(x)
        torch.testing.assert_close(trace["cell"][:, -1], c_n[0])
        torch.testing.assert_close(trace["cell_prev"][:, 1:], trace["cell"][:, :-1])


def documented_peephole_step(model, name, x_t, h_prev, c_prev):
    """``PeepholeLSTM``'s docstring equations, line by line."""
    pre_i, pre_f, pre_g, pre_o = pre_activations(model, name, x_t, h_prev).chunk(4, dim=1)
    p_i, p_f, p_o = getattr(model, f"weight_peephole_{name}")
    i = torch.sigmoid(pre_i + p_i * c_prev)
    f = torch.sigmoid(pre_f + p_f * c_prev)
    g = torch.tanh(pre_g)
    c = f * c_prev + i * g
    o = torch.sigmoid(pre_o + p_o * c)
    h = o * torch.tanh(c)
    return {"input": i, "forget": f, "cell_candidate": g, "output": o, "cell": c, "h": h}


def documented_coupled_step(model, name, x_t, h_prev, c_prev):
    """``CoupledLSTM``'s docstring equations, line by line."""
    pre_f, pre_g, pre_o = pre_activations(model, name, x_t, h_prev).chunk(3, dim=1)
    f = torch.sigmoid(pre_f)
    g = torch.tanh(pre_g)
    c = f * c_prev + (1 - f) * g
    o = torch.sigmoid(pre_o)
    h = o * torch.tanh(c)
    return {"forget": f, "cell_candidate": g, "output": o, "cell": c, "h": h}


def pre_activations(model, name, x_t, h_prev):
    """W_i* x_t + b_i* + W_h* h_{t-1} + b_h* for every gate block *, side by side."""
    kinds = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
    w_ih, w_hh, b_ih, b_hh = (getattr(model, f"{kind}_{name}") for kind in kinds)
    return x_t @ w_ih.T + b_ih + h_prev @ w_hh.T + b_hh


@pytest.mark.parametrize(
    ("model_cls", "documented_step"),
    [(PeepholeLSTM, documented_peephole_step), (CoupledLSTM, documented_coupled_step)],
)
def test_every_step_follows_the_documented_equations(model_cls, documented_step):
    # Each step is checked on its own, from the kernel's own previous state, in both
    # directions and from a non-zero initial state.
    torch.manual_seed(0)
    model = model_cls(INPUTS, HIDDEN, bidirectional=True)
    randomise_peepholes(model)
    x = torch.randn(BATCH, STEPS, INPUTS)
    h0, c0 = (s.detach() for s in random_state(model, BATCH))
    traces = model.trace_gates(x, (h0, c0))
    with torch.no_grad():
        output, _ = model(x, (h0, c0))
    forward_times, reverse_times = list(range(STEPS)), list(range(STEPS - 1, -1, -1))
    for direction, times in enumerate((forward_times, reverse_times)):
        trace = traces[direction]
        name = f"l0{('', '_reverse')[direction]}"
        h_seq = output[..., direction * HIDDEN : (direction + 1) * HIDDEN]
        torch.testing.assert_close(trace["cell_prev"][:, times[0]], c0[direction])
        for prev_t, t in zip([None, *times], times, strict=False):
            h_prev = h0[direction] if prev_t is None else h_seq[:, prev_t]
            with torch.no_grad():
                expected = documented_step(model, name, x[:, t], h_prev, trace["cell_prev"][:, t])
            for key, value in expected.items():
                actual = h_seq[:, t] if key == "h" else trace[key][:, t]
                where = f"{name} {key} at t={t}"
                torch.testing.assert_close(actual, value, msg=lambda m, w=where: f"{w}: {m}")


# --- module behaviour ------------------------------------------------------


@pytest.mark.parametrize("model_cls", [PeepholeLSTM, CoupledLSTM])
def test_dropout_between_layers_only_in_training(model_cls):
    torch.manual_seed(0)
    model = model_cls(INPUTS, HIDDEN, num_layers=2, dropout=0.5)
    plain = model_cls(INPUTS, HIDDEN, num_layers=2)
    plain.load_state_dict(model.state_dict())
    x = torch.randn(BATCH, STEPS, INPUTS)

    model.train()
    first, second = model(x)[0], model(x)[0]
    assert not torch.equal(first, second)
    assert not torch.allclose(first, plain(x)[0])

    model.eval()
    torch.testing.assert_close(model(x)[0], model(x)[0], atol=0, rtol=0)
    torch.testing.assert_close(model(x)[0], plain(x)[0], atol=0, rtol=0)


@pytest.mark.parametrize("model_cls", [PeepholeLSTM, CoupledLSTM])
def test_no_dropout_after_last_layer(model_cls):
    torch.manual_seed(0)
    model = model_cls(INPUTS, HIDDEN, num_layers=1, dropout=0.5).train()
    x = torch.randn(BATCH, STEPS, INPUTS)
    torch.testing.assert_close(model(x)[0], model(x)[0], atol=0, rtol=0)


@pytest.mark.parametrize("model_cls", [PeepholeLSTM, CoupledLSTM])
def test_state_dict_round_trip(model_cls):
    torch.manual_seed(0)
    source = model_cls(INPUTS, HIDDEN, num_layers=2, bidirectional=True)
    randomise_peepholes(source)
    target = model_cls(INPUTS, HIDDEN, num_layers=2, bidirectional=True)
    target.load_state_dict(source.state_dict())
    x = torch.randn(BATCH, STEPS, INPUTS)
    state = random_state(source, BATCH)
    out_s, (h_s, c_s) = source(x, state)
    out_t, (h_t, c_t) = target(x, state)
    assert torch.equal(out_s, out_t) and torch.equal(h_s, h_t) and torch.equal(c_s, c_t)


def test_parameter_names_and_shapes_mirror_nn_lstm():
    reference = nn.LSTM(INPUTS, HIDDEN, 2, batch_first=True, bidirectional=True)
    peephole = PeepholeLSTM(INPUTS, HIDDEN, 2, bidirectional=True)
    coupled = CoupledLSTM(INPUTS, HIDDEN, 2, bidirectional=True)
    expected = {name: p.shape for name, p in reference.named_parameters()}
    peephole_shapes = {name: p.shape for name, p in peephole.named_parameters()}
    assert {n: s for n, s in peephole_shapes.items() if "peephole" not in n} == expected
    assert {n for n in peephole_shapes if "peephole" in n} == {
        f"weight_peephole_l{k}{s}" for k in (0, 1) for s in ("", "_reverse")
    }
    assert all(s == (3, HIDDEN) for n, s in peephole_shapes.items() if "peephole" in n)
    for name, param in coupled.named_parameters():
        assert param.shape[0] == 3 * HIDDEN and param.shape[1:] == expected[name][1:]
    assert peephole.output_size == coupled.output_size == 2 * HIDDEN
    bound = HIDDEN**-0.5
    assert all(p.abs().max() <= bound for p in coupled.parameters())


@pytest.mark.parametrize("model_cls", [PeepholeLSTM, CoupledLSTM])
def test_inference_path_matches_autograd_path(model_cls):
    torch.manual_seed(0)
    model = model_cls(INPUTS, HIDDEN, num_layers=2, bidirectional=True)
    randomise_peepholes(model)
    x = torch.randn(BATCH, STEPS, INPUTS)
    output, (h_n, c_n) = model(x)
    assert output.requires_grad
    with torch.no_grad():
        output_ng, (h_ng, c_ng) = model(x)
    assert not output_ng.requires_grad
    assert output.shape == (BATCH, STEPS, model.output_size)
    assert h_n.shape == c_n.shape == (4, BATCH, HIDDEN)
    for a, b in ((output, output_ng), (h_n, h_ng), (c_n, c_ng)):
        torch.testing.assert_close(a.detach(), b, atol=0, rtol=0)


def test_double_backward_is_refused():
    model = PeepholeLSTM(INPUTS, HIDDEN)
    x = torch.randn(BATCH, STEPS, INPUTS, requires_grad=True)
    (grad,) = torch.autograd.grad(model(x)[0].sum(), x, create_graph=True)
    with pytest.raises(RuntimeError):
        grad.sum().backward()


@pytest.mark.parametrize("model_cls", [PeepholeLSTM, CoupledLSTM])
def test_rejects_bad_shapes(model_cls):
    model = model_cls(INPUTS, HIDDEN)
    with pytest.raises(ValueError):
        model(torch.randn(BATCH, STEPS, INPUTS + 1))
    bad_state = (torch.zeros(2, BATCH, HIDDEN), torch.zeros(2, BATCH, HIDDEN))
    with pytest.raises(ValueError):
        model(torch.randn(BATCH, STEPS, INPUTS), bad_state)


@pytest.mark.parametrize("model_cls", [PeepholeLSTM, CoupledLSTM])
def test_gradients_accumulate_without_aliasing(model_cls):
    torch.manual_seed(0)
    model = model_cls(INPUTS, HIDDEN)
    x = torch.randn(BATCH, STEPS, INPUTS)
    model(x)[0].sum().backward()
    once = {name: p.grad.clone() for name, p in model.named_parameters()}
    model(x)[0].sum().backward()
    assert model.bias_ih_l0.grad.data_ptr() != model.bias_hh_l0.grad.data_ptr()
    for name, param in model.named_parameters():
        torch.testing.assert_close(param.grad, 2 * once[name], msg=name)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("model_cls", [PeepholeLSTM, CoupledLSTM])
def test_cuda_matches_cpu(model_cls):
    torch.manual_seed(0)
    cpu_model = model_cls(INPUTS, HIDDEN, num_layers=2, bidirectional=True)
    randomise_peepholes(cpu_model)
    cuda_model = model_cls(INPUTS, HIDDEN, num_layers=2, bidirectional=True).cuda()
    cuda_model.load_state_dict(cpu_model.state_dict())
    x = torch.randn(BATCH, STEPS, INPUTS)
    state = random_state(cpu_model, BATCH)
    outputs_cpu, grads_cpu = run_and_grad(cpu_model, x, state)
    outputs_cuda, grads_cuda = run_and_grad(
        cuda_model, x.cuda(), tuple(s.detach().cuda() for s in state)
    )
    # Different kernels sum in a different order; float32 rounding differs.
    for a, e in zip(outputs_cuda, outputs_cpu, strict=True):
        torch.testing.assert_close(a.cpu(), e, atol=1e-4, rtol=1e-4)
    for name, grad in grads_cpu.items():
        torch.testing.assert_close(grads_cuda[name].cpu(), grad, atol=1e-4, rtol=1e-4, msg=name)


@pytest.mark.parametrize("model_cls", [PeepholeLSTM, CoupledLSTM])
def test_runs_in_parameter_dtype_under_autocast(model_cls):
    torch.manual_seed(0)
    model = model_cls(INPUTS, HIDDEN, num_layers=2)
    x = torch.randn(BATCH, STEPS, INPUTS)
    expected, _ = model(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        output, (h_n, c_n) = model(x)
        from_bf16, _ = model(x.bfloat16())
    assert output.dtype == h_n.dtype == c_n.dtype == from_bf16.dtype == torch.float32
    torch.testing.assert_close(output, expected, atol=0, rtol=0)
    output.sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in model.parameters())


# --- C++ time loops vs PyTorch loops (pipeline/models/_fused_ext.py) ----------------

TIGHT = 1e-10  # float64: the two loops differ only in rounding

BACKENDS = ["cpp", "python"]


@pytest.fixture
def backend_env(monkeypatch):
    """Set ``PIPELINE_FUSED_BACKEND`` for one test."""

    def use(value: str) -> None:
        monkeypatch.setenv(_fused_ext.ENV_VAR, value)

    return use


def run_on_backend(backend_env, backend, model, x, state):
    backend_env(backend)
    return run_and_grad(model, x, state)


def assert_close_runs(actual, expected, tol):
    (out_a, grads_a), (out_e, grads_e) = actual, expected
    for a, e in zip(out_a, out_e, strict=True):
        torch.testing.assert_close(a, e, atol=tol, rtol=tol)
    assert set(grads_a) == set(grads_e)
    for name in grads_e:
        torch.testing.assert_close(
            grads_a[name], grads_e[name], atol=tol, rtol=tol, msg=lambda m, n=name: f"{n}: {m}"
        )


@pytest.mark.parametrize(("num_layers", "bidirectional"), STACKS, ids=STACK_IDS)
@pytest.mark.parametrize(
    ("model_cls", "step"),
    [(PeepholeLSTM, eager_peephole_step), (CoupledLSTM, eager_coupled_step)],
    ids=["peephole", "coupled"],
)
def test_cpp_and_python_loops_agree_with_eager_float64(
    backend_env, model_cls, step, num_layers, bidirectional
):
    torch.manual_seed(0)
    model = model_cls(INPUTS, HIDDEN, num_layers, bidirectional=bidirectional).double()
    randomise_peepholes(model)
    x = torch.randn(BATCH, STEPS, INPUTS, dtype=torch.float64)
    state = random_state(model, BATCH, torch.float64)
    cpp = run_on_backend(backend_env, "cpp", model, x, state)
    model.zero_grad()
    python = run_on_backend(backend_env, "python", model, x, state)
    model.zero_grad()
    eager = run_and_grad_eager(model, step, x, state)
    assert_close_runs(cpp, python, TIGHT)
    assert_close_runs(cpp, eager, TIGHT)


@pytest.mark.parametrize("model_cls", [PeepholeLSTM, CoupledLSTM])
def test_cpp_and_python_loops_agree_float32_at_a_training_shape(backend_env, model_cls):
    # A shape where the C++ gate pass covers full vector lanes and a remainder (H = 37).
    torch.manual_seed(0)
    model = model_cls(2, 37, num_layers=2, bidirectional=True)
    randomise_peepholes(model)
    x = torch.randn(9, 23, 2)
    state = random_state(model, 9)
    cpp = run_on_backend(backend_env, "cpp", model, x, state)
    model.zero_grad()
    python = run_on_backend(backend_env, "python", model, x, state)
    assert_close_runs(cpp, python, 2e-5)


@pytest.mark.parametrize("model_cls", [PeepholeLSTM, CoupledLSTM])
def test_cpp_loop_is_finite_and_agrees_with_saturated_gates(backend_env, model_cls):
    # Pre-activations in the hundreds: exp overflows to inf inside the sigmoids, which the
    # C++ loop's fast-math build must still turn into gates of exactly 0 or 1.
    torch.manual_seed(0)
    model = model_cls(INPUTS, HIDDEN)
    randomise_peepholes(model)
    x = 300 * torch.randn(BATCH, STEPS, INPUTS)
    cpp = run_on_backend(backend_env, "cpp", model, x, None)
    model.zero_grad()
    python = run_on_backend(backend_env, "python", model, x, None)
    assert all(torch.isfinite(t).all() for t in cpp[0])
    assert all(torch.isfinite(g).all() for g in cpp[1].values())
    assert_close_runs(cpp, python, 1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("model_cls", [PeepholeLSTM, CoupledLSTM])
def test_gradcheck_float64_on_each_backend(backend_env, model_cls, backend):
    backend_env(backend)
    torch.manual_seed(0)
    model = model_cls(input_size=2, hidden_size=3, bidirectional=True)
    assert gradcheck_model(model, batch=2, steps=3)


@pytest.mark.parametrize("model_cls", [PeepholeLSTM, CoupledLSTM])
def test_python_backend_never_builds_or_calls_the_extension(monkeypatch, backend_env, model_cls):
    backend_env("python")

    def refuse(strict):
        raise AssertionError("the C++ kernels were asked for under PIPELINE_FUSED_BACKEND=python")

    monkeypatch.setattr(_fused_ext, "cpp_ops", refuse)
    torch.manual_seed(0)
    model = model_cls(INPUTS, HIDDEN)
    x = torch.randn(BATCH, STEPS, INPUTS)
    model(x)[0].sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_auto_backend_uses_the_extension_where_it_applies(backend_env):
    backend_env("auto")
    ops = _fused_ext.cpp_ops_for(torch.zeros(1))
    assert ops is not None and hasattr(ops, "forward") and hasattr(ops, "backward")
    assert _fused_ext.cpp_ops_for(torch.zeros(1, dtype=torch.float64)) is ops
    # Other devices (CUDA) and dtypes take the PyTorch loops.
    assert _fused_ext.cpp_ops_for(torch.zeros(1, device="meta")) is None
    assert _fused_ext.cpp_ops_for(torch.zeros(1, dtype=torch.bfloat16)) is None


def test_unknown_backend_is_refused_naming_the_variable(backend_env):
    backend_env("fortran")
    model = CoupledLSTM(INPUTS, HIDDEN)
    with pytest.raises(ValueError, match="PIPELINE_FUSED_BACKEND='fortran'"):
        model(torch.randn(BATCH, STEPS, INPUTS))


def test_failed_build_falls_back_with_one_warning(monkeypatch, backend_env):
    def broken_build():
        raise OSError("no C++ compiler found")

    monkeypatch.setattr(_fused_ext, "_state", {})
    monkeypatch.setattr(_fused_ext, "_build", broken_build)
    torch.manual_seed(0)
    model = PeepholeLSTM(INPUTS, HIDDEN)
    randomise_peepholes(model)
    x = torch.randn(BATCH, STEPS, INPUTS)
    backend_env("auto")
    with pytest.warns(RuntimeWarning, match="no C.. compiler found.*pure-PyTorch") as caught:
        fallback = run_and_grad(model, x, None)
        model.zero_grad()
        run_and_grad(model, x, None)
        model.zero_grad()
    assert len([w for w in caught if "fused LSTM" in str(w.message)]) == 1
    backend_env("python")
    assert_close_runs(fallback, run_and_grad(model, x, None), 0)

    backend_env("cpp")
    with pytest.raises(RuntimeError, match="PIPELINE_FUSED_BACKEND=cpp.*no C.. compiler found"):
        model(x)


def test_build_folder_is_per_user_cache_torch_version_and_source(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    folder, name, _ = _fused_ext.build_directory()
    assert folder.is_relative_to(tmp_path / "lstm-pipeline" / "torch_extensions")
    assert torch.__version__.replace("+", "_") in folder.parent.name
    assert folder.name == name and name.startswith("fused_lstm_")
    monkeypatch.setattr(_fused_ext, "SOURCE", tmp_path / "changed.cpp")
    (tmp_path / "changed.cpp").write_text("// another source\n")
    assert _fused_ext.build_directory()[1] != name


BUILD_AND_RUN = """
import sys, torch
from pipeline.models import _fused_ext
ops = _fused_ext.cpp_ops(strict=True)
from pipeline.models.fused_lstm import CoupledLSTM
torch.manual_seed(0)
out, _ = CoupledLSTM(3, 4)(torch.randn(2, 5, 3))
print(repr(out.sum().item()))
"""


@pytest.mark.slow
def test_two_processes_building_at_once_both_get_the_extension(tmp_path):
    # A fresh cache folder, so both really compile; the file lock makes one wait for the other.
    import os
    import subprocess
    import sys

    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path), _fused_ext.ENV_VAR: "cpp"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", BUILD_AND_RUN], env=env, stdout=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    outputs = [proc.communicate(timeout=600)[0] for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0]
    assert outputs[0] == outputs[1] and outputs[0].strip()
    libraries = list(tmp_path.glob("lstm-pipeline/torch_extensions/*/fused_lstm_*/*.so"))
    assert len(libraries) == 1

    # A build killed while linking leaves a truncated library and no completion mark: the
    # next process rebuilds instead of loading it.
    libraries[0].write_bytes(libraries[0].read_bytes()[:1000])
    (libraries[0].parent / "build-complete").unlink()
    rebuilt = subprocess.run(
        [sys.executable, "-c", BUILD_AND_RUN], env=env, capture_output=True, text=True, timeout=600
    )
    assert rebuilt.returncode == 0, rebuilt.stderr[-2000:]
    assert rebuilt.stdout == outputs[0]
    assert libraries[0].stat().st_size > 1000

// Time loops of the peephole and coupled (CIFG) LSTM cells of pipeline/models/fused_lstm.py.
//
// Built on first use by pipeline/models/_fused_ext.py.  The Python side keeps everything that
// is one op for all steps (input projection, weight gradients); these loops replace its
// per-step Python loops: per step one addmm for the recurrent matmul and one pass over the
// gates.  All tensors are time-major, contiguous, CPU, and of one dtype (float or double);
// the layouts are those of fused_lstm.py's _Activations (state buffers have T+1 slots, the
// initial state in slot 0, or slot T for a reverse direction).
//
// The gate pass is written as plain loops over a row of H contiguous elements so that the
// compiler vectorises it, exp and tanh included (glibc's libmvec, enabled by -ffast-math).

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>

namespace {

// Gate elements a parallel chunk of a step must hold for waking a second thread to pay
// (measured with benchmarks/bench_rnn.py; overridable at build time for measuring it).
#ifndef FUSED_LSTM_MIN_ELEMENTS_PER_TASK
#define FUSED_LSTM_MIN_ELEMENTS_PER_TASK 16384
#endif
constexpr int64_t kMinElementsPerTask = FUSED_LSTM_MIN_ELEMENTS_PER_TASK;

template <typename T>
inline T sigmoid(T x) {
  return T(1) / (T(1) + std::exp(-x));
}

struct Slots {
  int64_t step_count;
  bool reverse;
  // Time index of the k-th processed step, and its previous / current state slots.
  int64_t time(int64_t k) const { return reverse ? step_count - 1 - k : k; }
  int64_t prev(int64_t k) const { return reverse ? time(k) + 1 : time(k); }
  int64_t cur(int64_t k) const { return reverse ? time(k) : time(k) + 1; }
};

void check_inputs(const at::Tensor& gates, const at::Tensor& hs, const at::Tensor& cs) {
  TORCH_CHECK(gates.device().is_cpu(), "fused_lstm C++ kernel: CPU tensors only");
  TORCH_CHECK(gates.dim() == 3 && hs.dim() == 3 && cs.dim() == 3, "time-major buffers expected");
  TORCH_CHECK(gates.is_contiguous() && hs.is_contiguous() && cs.is_contiguous(),
              "contiguous buffers expected");
  TORCH_CHECK(hs.size(0) == gates.size(0) + 1 && cs.sizes() == hs.sizes(), "state slots mismatch");
}

// Runs body(row_begin, row_end) over the batch rows, in parallel if the step is big enough.
template <typename F>
void over_rows(int64_t batch, int64_t elements_per_row, const F& body) {
  const int64_t grain =
      std::max<int64_t>(1, kMinElementsPerTask / std::max<int64_t>(1, elements_per_row));
  if (batch <= grain) {
    body(0, batch);
  } else {
    at::parallel_for(0, batch, grain, body);
  }
}

// --- forward ----------------------------------------------------------------------------
// The gate passes take __restrict pointers: with possible aliasing between so many buffers gcc
// does not vectorise them at all (checked with -fopt-info-vec).

template <typename T>
void peephole_gates(T* __restrict z, const T* __restrict c_prev, T* __restrict c,
                    T* __restrict tanh_c, T* __restrict h, const T* __restrict peep, int64_t H) {
  const T* p_i = peep;
  const T* p_f = peep + H;
  const T* p_o = peep + 2 * H;
  T* zi = z;
  T* zf = z + H;
  T* zg = z + 2 * H;
  T* zo = z + 3 * H;
  for (int64_t j = 0; j < H; ++j) {
    const T cp = c_prev[j];
    const T i = sigmoid(zi[j] + p_i[j] * cp);
    const T f = sigmoid(zf[j] + p_f[j] * cp);
    const T g = std::tanh(zg[j]);
    const T cn = f * cp + i * g;
    const T o = sigmoid(zo[j] + p_o[j] * cn);
    const T tc = std::tanh(cn);
    zi[j] = i;
    zf[j] = f;
    zg[j] = g;
    zo[j] = o;
    c[j] = cn;
    tanh_c[j] = tc;
    h[j] = o * tc;
  }
}

template <typename T>
void coupled_gates(T* __restrict z, const T* __restrict c_prev, T* __restrict c,
                   T* __restrict tanh_c, T* __restrict h, int64_t H) {
  T* zf = z;
  T* zg = z + H;
  T* zo = z + 2 * H;
  for (int64_t j = 0; j < H; ++j) {
    const T f = sigmoid(zf[j]);
    const T g = std::tanh(zg[j]);
    const T cn = g + f * (c_prev[j] - g);  // f*c_prev + (1-f)*g
    const T o = sigmoid(zo[j]);
    const T tc = std::tanh(cn);
    zf[j] = f;
    zg[j] = g;
    zo[j] = o;
    c[j] = cn;
    tanh_c[j] = tc;
    h[j] = o * tc;
  }
}

template <typename T>
void forward_loop(at::Tensor& gates, const at::Tensor& w_hh_t, const T* peep, at::Tensor& hs,
                  at::Tensor& cs, at::Tensor& tanh_c, bool reverse) {
  const int64_t steps = gates.size(0), batch = gates.size(1), width = gates.size(2);
  const int64_t H = hs.size(2);
  const Slots slots{steps, reverse};
  T* z_all = gates.data_ptr<T>();
  T* h_all = hs.data_ptr<T>();
  T* c_all = cs.data_ptr<T>();
  T* tc_all = tanh_c.data_ptr<T>();
  for (int64_t k = 0; k < steps; ++k) {
    const int64_t t = slots.time(k), prev = slots.prev(k), cur = slots.cur(k);
    at::Tensor z_t = gates.select(0, t);
    z_t.addmm_(hs.select(0, prev), w_hh_t);
    over_rows(batch, width, [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) {
        T* z = z_all + (t * batch + b) * width;
        const T* cp = c_all + (prev * batch + b) * H;
        T* cn = c_all + (cur * batch + b) * H;
        T* tc = tc_all + (t * batch + b) * H;
        T* h = h_all + (cur * batch + b) * H;
        if (peep != nullptr) {
          peephole_gates(z, cp, cn, tc, h, peep, H);
        } else {
          coupled_gates(z, cp, cn, tc, h, H);
        }
      }
    });
  }
}

// gates: (T, B, G*H) holding W_ih x_t + b_ih + b_hh on entry, the activated gates on exit.
// hs, cs: (T+1, B, H) with the initial state in its slot; tanh_c: (T, B, H).
void forward(at::Tensor gates, const at::Tensor& w_hh_t, const std::optional<at::Tensor>& peephole,
             at::Tensor hs, at::Tensor cs, at::Tensor tanh_c, bool reverse) {
  check_inputs(gates, hs, cs);
  const bool has_peephole = peephole.has_value() && peephole->defined();
  TORCH_CHECK(gates.size(2) == (has_peephole ? 4 : 3) * hs.size(2), "gate width mismatch");
  at::Tensor peep = has_peephole ? peephole->contiguous() : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES(gates.scalar_type(), "fused_lstm_forward", [&] {
    const scalar_t* p = has_peephole ? peep.data_ptr<scalar_t>() : nullptr;
    forward_loop<scalar_t>(gates, w_hh_t, p, hs, cs, tanh_c, reverse);
  });
}

// --- backward ---------------------------------------------------------------------------
// One step of the backward map in fused_lstm.py's cell docstrings, with the coefficients
// computed on the fly from the saved activations.  dh: dL/dh_t; dc: dL/dc_t through step
// t+1 on entry, dL/dc_{t-1} on exit; dz: the step's pre-activation gradients.

template <typename T>
void peephole_grads(const T* __restrict a, const T* __restrict c_prev, const T* __restrict tanh_c,
                    const T* __restrict dh, T* __restrict dc, T* __restrict dz,
                    const T* __restrict peep, int64_t H) {
  const T* p_i = peep;
  const T* p_f = peep + H;
  const T* p_o = peep + 2 * H;
  for (int64_t j = 0; j < H; ++j) {
    const T i = a[j], f = a[H + j], g = a[2 * H + j], o = a[3 * H + j];
    const T tc = tanh_c[j], cp = c_prev[j], d_h = dh[j];
    const T dzo = d_h * (o - o * o) * tc;
    const T dcv = dc[j] + d_h * o * (T(1) - tc * tc) + p_o[j] * dzo;
    const T dzi = dcv * (i - i * i) * g;
    const T dzf = dcv * (f - f * f) * cp;
    const T dzg = dcv * (T(1) - g * g) * i;
    dc[j] = dcv * f + p_i[j] * dzi + p_f[j] * dzf;
    dz[j] = dzi;
    dz[H + j] = dzf;
    dz[2 * H + j] = dzg;
    dz[3 * H + j] = dzo;
  }
}

template <typename T>
void coupled_grads(const T* __restrict a, const T* __restrict c_prev, const T* __restrict tanh_c,
                   const T* __restrict dh, T* __restrict dc, T* __restrict dz, int64_t H) {
  for (int64_t j = 0; j < H; ++j) {
    const T f = a[j], g = a[H + j], o = a[2 * H + j];
    const T tc = tanh_c[j], d_h = dh[j];
    const T dzo = d_h * (o - o * o) * tc;
    const T dcv = dc[j] + d_h * o * (T(1) - tc * tc);
    dz[j] = dcv * (f - f * f) * (c_prev[j] - g);
    dz[H + j] = dcv * (T(1) - g * g) * (T(1) - f);
    dz[2 * H + j] = dzo;
    dc[j] = dcv * f;
  }
}

template <typename T>
void backward_loop(const at::Tensor& gates, const at::Tensor& cs, const at::Tensor& tanh_c,
                   const at::Tensor& w_hh, const T* peep, at::Tensor& dh_all, at::Tensor& dc,
                   at::Tensor& dz, bool reverse) {
  const int64_t steps = gates.size(0), batch = gates.size(1), width = gates.size(2);
  const int64_t H = cs.size(2);
  const Slots slots{steps, reverse};
  const T* a_all = gates.data_ptr<T>();
  const T* c_all = cs.data_ptr<T>();
  const T* tc_all = tanh_c.data_ptr<T>();
  T* dh_ptr = dh_all.data_ptr<T>();
  T* dc_ptr = dc.data_ptr<T>();
  T* dz_all = dz.data_ptr<T>();
  // Processing order is the reverse of the forward's.
  for (int64_t k = steps - 1; k >= 0; --k) {
    const int64_t t = slots.time(k), prev = slots.prev(k), cur = slots.cur(k);
    over_rows(batch, width, [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) {
        const T* a = a_all + (t * batch + b) * width;
        const T* cp = c_all + (prev * batch + b) * H;
        const T* tc = tc_all + (t * batch + b) * H;
        const T* dh = dh_ptr + (cur * batch + b) * H;
        T* dcb = dc_ptr + b * H;
        T* dzb = dz_all + (t * batch + b) * width;
        if (peep != nullptr) {
          peephole_grads(a, cp, tc, dh, dcb, dzb, peep, H);
        } else {
          coupled_grads(a, cp, tc, dh, dcb, dzb, H);
        }
      }
    });
    dh_all.select(0, prev).addmm_(dz.select(0, t), w_hh);
  }
}

// gates, cs, tanh_c: the forward's activations.  dh_all: (T+1, B, H), output gradients in
// each step's current slot on entry; each step adds dz @ W_hh into its previous slot, so the
// first slot processed last ends up holding dL/dh0.  dc: (B, H), dL/dc_n on entry, dL/dc0 on
// exit.  dz: (T, B, G*H) output.
void backward(const at::Tensor& gates, const at::Tensor& cs, const at::Tensor& tanh_c,
              const at::Tensor& w_hh, const std::optional<at::Tensor>& peephole, at::Tensor dh_all,
              at::Tensor dc, at::Tensor dz, bool reverse) {
  check_inputs(gates, dh_all, cs);
  TORCH_CHECK(dc.is_contiguous() && dz.is_contiguous() && tanh_c.is_contiguous(),
              "contiguous buffers expected");
  const bool has_peephole = peephole.has_value() && peephole->defined();
  at::Tensor peep = has_peephole ? peephole->contiguous() : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES(gates.scalar_type(), "fused_lstm_backward", [&] {
    const scalar_t* p = has_peephole ? peep.data_ptr<scalar_t>() : nullptr;
    backward_loop<scalar_t>(gates, cs, tanh_c, w_hh, p, dh_all, dc, dz, reverse);
  });
}

}  // namespace

TORCH_LIBRARY(pipeline_fused_lstm, m) {
  m.def(
      "forward(Tensor(a!) gates, Tensor w_hh_t, Tensor? peephole, Tensor(b!) hs, Tensor(c!) cs, "
      "Tensor(d!) tanh_c, bool reverse) -> ()");
  m.def(
      "backward(Tensor gates, Tensor cs, Tensor tanh_c, Tensor w_hh, Tensor? peephole, "
      "Tensor(a!) dh_all, Tensor(b!) dc, Tensor(c!) dz, bool reverse) -> ()");
}

TORCH_LIBRARY_IMPL(pipeline_fused_lstm, CPU, m) {
  m.impl("forward", forward);
  m.impl("backward", backward);
}

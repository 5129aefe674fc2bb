"""CAP's two exponential kernels in C++ (ATen's vectorised ``exp_u20``), built once per machine.

Why: on a CPU with AMX the token–anchor matmuls are so fast that the two elementwise
passes of CAP (the softmax-weighted sums in the forward; the gradient coefficients
``w ⊙ (a + b·s)`` in the backward) cost as much as the matmuls.  Those passes are bound by
the exponential: torch.compile's code calls SLEEF's 1-ULP ``expf``; ATen's ``exp_u20`` (the
exponential PyTorch's own CPU flex-attention softmax uses, ≤ 2 ULP in float32, far below
the bf16 rounding of the similarities it is applied to) is several times cheaper.  Same
formulas, same float32 accumulation as :mod:`alignbench.cap_kernels`' eager and compiled kernels (tests compare them).

The extension is compiled with :func:`torch.utils.cpp_extension.load_inline` for the vector ISA
torch.compile picks on this CPU (AVX-512, AVX2, or plain C++), cached by torch under
``$TORCH_EXTENSIONS_DIR`` (default ``~/.cache/torch_extensions``) and shared by processes.
Anything failing (no compiler, no headers) means "not available": CAP uses the torch.compile
kernels instead, logged once.
"""
from __future__ import annotations

import functools
import logging
import os
import re
import time
from typing import Any, Callable

log = logging.getLogger(__name__)

#: Set to 0 to never build or use the C++ kernels (CAP then uses torch.compile's).
ENV_DISABLE = "ALIGNBENCH_CAP_NATIVE"

_SOURCE = r"""
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <ATen/cpu/vec/functional.h>
#include <cmath>

using at::vec::Vectorized;
using fVec = Vectorized<float>;

template <typename T>
static inline fVec load_f(const T* p) {
  if constexpr (std::is_same_v<T, float>) {
    return fVec::loadu(p);
  } else {
    return at::vec::convert<float>(Vectorized<T>::loadu(p, fVec::size()));
  }
}

template <typename T>
static void fwd_impl(const T* s, const bool* valid, int64_t m, int64_t Tn, int64_t K, float inv_tau, bool fixed,
                     float* prof, float* lse) {
  at::parallel_for(0, m, 1, [&](int64_t i0, int64_t i1) {
    std::vector<float> shift(K), norm(K), acc(K);
    const int64_t V = fVec::size();
    for (int64_t i = i0; i < i1; ++i) {
      const T* si = s + i * Tn * K;
      const bool* vi = valid ? valid + i * Tn : nullptr;
      std::fill(norm.begin(), norm.end(), 0.f);
      std::fill(acc.begin(), acc.end(), 0.f);
      if (fixed) {
        std::fill(shift.begin(), shift.end(), 1.f);
      } else {
        std::fill(shift.begin(), shift.end(), -INFINITY);
        for (int64_t t = 0; t < Tn; ++t) {
          if (vi && !vi[t]) continue;
          for (int64_t k = 0; k < K; ++k) shift[k] = std::max(shift[k], static_cast<float>(si[t * K + k]));
        }
      }
      const fVec vinv(inv_tau);
      for (int64_t t = 0; t < Tn; ++t) {
        if (vi && !vi[t]) continue;
        const T* row = si + t * K;
        int64_t k = 0;
        for (; k + V <= K; k += V) {
          fVec x = load_f(row + k);
          fVec e = ((x - fVec::loadu(shift.data() + k)) * vinv).exp_u20();
          (fVec::loadu(norm.data() + k) + e).store(norm.data() + k);
          at::vec::fmadd(e, x, fVec::loadu(acc.data() + k)).store(acc.data() + k);
        }
        for (; k < K; ++k) {
          float x = static_cast<float>(row[k]);
          float e = std::exp((x - shift[k]) * inv_tau);
          norm[k] += e; acc[k] += e * x;
        }
      }
      for (int64_t k = 0; k < K; ++k) {
        prof[i * K + k] = acc[k] / norm[k];
        lse[i * K + k] = std::log(norm[k]) + shift[k] * inv_tau;
      }
    }
  });
}

// Per row i and anchor k, over tokens t with valid[i, t]:  norm = sum exp((s - shift) / tau),
// profile = sum exp((s - shift) / tau) * s / norm,  lse = log(norm) + shift / tau;
// shift = 1 (cosines are <= 1) when `fixed`, else the max over valid tokens.
std::vector<torch::Tensor> cap_fwd(torch::Tensor s, c10::optional<torch::Tensor> valid, double inv_tau, bool fixed) {
  TORCH_CHECK(s.is_contiguous() && s.dim() == 3, "s must be a contiguous (m, T, K) tensor");
  TORCH_CHECK(s.scalar_type() == torch::kBFloat16 || s.scalar_type() == torch::kFloat, "s must be bf16 or float32");
  auto m = s.size(0), Tn = s.size(1), K = s.size(2);
  auto prof = torch::empty({m, K}, s.options().dtype(torch::kFloat));
  auto lse = torch::empty({m, K}, s.options().dtype(torch::kFloat));
  torch::Tensor v;
  const bool* vp = nullptr;
  if (valid.has_value()) { v = valid->contiguous(); vp = v.data_ptr<bool>(); }
  if (s.scalar_type() == torch::kBFloat16) {
    fwd_impl(s.data_ptr<at::BFloat16>(), vp, m, Tn, K, (float)inv_tau, fixed, prof.data_ptr<float>(), lse.data_ptr<float>());
  } else {
    fwd_impl(s.data_ptr<float>(), vp, m, Tn, K, (float)inv_tau, fixed, prof.data_ptr<float>(), lse.data_ptr<float>());
  }
  return {prof, lse};
}

template <typename T>
static void bwd_impl(const T* s, const bool* valid, const float* lse, const float* a, const float* b, int64_t m,
                     int64_t Tn, int64_t K, float inv_tau, T* out) {
  at::parallel_for(0, m * Tn, 1, [&](int64_t r0, int64_t r1) {
    const int64_t V = fVec::size();
    const fVec vinv(inv_tau);
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t i = r / Tn;
      T* o = out + r * K;
      if (valid && !valid[r]) { std::fill(o, o + K, T(0)); continue; }
      const T* row = s + r * K;
      const float *li = lse + i * K, *ai = a + i * K, *bi = b + i * K;
      int64_t k = 0;
      for (; k + V <= K; k += V) {
        fVec x = load_f(row + k);
        fVec w = at::vec::fmsub(x, vinv, fVec::loadu(li + k)).exp_u20();
        fVec g = w * at::vec::fmadd(fVec::loadu(bi + k), x, fVec::loadu(ai + k));
        if constexpr (std::is_same_v<T, float>) {
          g.store(o + k);
        } else {
          at::vec::convert<T>(g).store(o + k, V);
        }
      }
      for (; k < K; ++k) {
        float x = static_cast<float>(row[k]);
        float w = std::exp(x * inv_tau - li[k]);
        o[k] = static_cast<T>(w * (ai[k] + bi[k] * x));
      }
    }
  });
}

void cap_bwd(torch::Tensor s, c10::optional<torch::Tensor> valid, torch::Tensor lse, torch::Tensor a, torch::Tensor b,
             double inv_tau, torch::Tensor out) {
  TORCH_CHECK(s.is_contiguous() && s.dim() == 3, "s must be a contiguous (m, T, K) tensor");
  TORCH_CHECK(out.is_contiguous() && out.sizes() == s.sizes() && out.scalar_type() == s.scalar_type(),
              "out must be contiguous, shaped and typed like s");
  TORCH_CHECK(s.scalar_type() == torch::kBFloat16 || s.scalar_type() == torch::kFloat, "s must be bf16 or float32");
  auto m = s.size(0), Tn = s.size(1), K = s.size(2);
  torch::Tensor v;
  const bool* vp = nullptr;
  if (valid.has_value()) { v = valid->contiguous(); vp = v.data_ptr<bool>(); }
  auto l = lse.contiguous(), ac = a.contiguous(), bc = b.contiguous();
  if (s.scalar_type() == torch::kBFloat16) {
    bwd_impl(s.data_ptr<at::BFloat16>(), vp, l.data_ptr<float>(), ac.data_ptr<float>(), bc.data_ptr<float>(), m, Tn, K,
             (float)inv_tau, out.data_ptr<at::BFloat16>());
  } else {
    bwd_impl(s.data_ptr<float>(), vp, l.data_ptr<float>(), ac.data_ptr<float>(), bc.data_ptr<float>(), m, Tn, K,
             (float)inv_tau, out.data_ptr<float>());
  }
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, mod) {
  mod.def("fwd", &cap_fwd, "(profiles, log-normalisers) (m, K) float32 of similarities s (m, T, K)");
  mod.def("bwd", &cap_bwd, "out (m, T, K) <- w * (a + b s), w = exp(s / tau - lse), 0 at padded tokens");
}
"""


def _isa_flags() -> tuple[list[str], str]:
    """(compiler flags, ISA name) of the vector ISA torch.compile would use here; none if unknown."""
    try:
        from torch._inductor.cpu_vec_isa import pick_vec_isa

        isa = pick_vec_isa()
        if not isa:
            return [], "scalar"
        return [f"-D{m}" for m in isa.build_macro()] + isa.build_arch_flags().split(), str(isa)
    except Exception:  # noqa: BLE001 - a private torch API: without it, build portable code
        return [], "scalar"


@functools.lru_cache(maxsize=1)
def native_kernels() -> Any | None:
    """The built extension (``fwd``, ``bwd``), or None where it cannot be built (logged once)."""
    if os.environ.get(ENV_DISABLE, "1") == "0":
        return None
    flags, isa = _isa_flags()
    t0 = time.perf_counter()
    try:
        from torch.utils.cpp_extension import load_inline

        # the name carries the ISA: one cache entry per instruction set on a shared home directory
        mod = load_inline("alignbench_cap_" + re.sub(r"\W+", "_", isa), cpp_sources=_SOURCE,
                          extra_cflags=["-O3", *flags], verbose=False)
    except Exception as exc:  # noqa: BLE001 - any build failure means "use torch.compile's kernels"
        log.warning("CAP's C++ kernels could not be built (%s: %s); using torch.compile's",
                    type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
        return None
    log.info("CAP's C++ kernels ready (%s, %.1f s)", isa, time.perf_counter() - t0)
    return mod


def cap_kernels(fixed_shift_max_inv_tau: float) -> dict[str, Callable] | None:
    """CAP's ``fwd``/``bwd`` elementwise kernels with :mod:`alignbench.cap_kernels`' signatures, or None if unavailable.

    ``fixed_shift_max_inv_tau``: up to this 1/τ the softmax is shifted by 1 (cosines are ≤ 1), above it by
    the per-anchor max (the caller's rule, so both implementations shift alike).
    """
    ext = native_kernels()
    if ext is None:
        return None

    def fwd(s: Any, valid: Any, inv_tau: float) -> tuple[Any, Any]:
        prof, lse = ext.fwd(s, valid, inv_tau, inv_tau <= fixed_shift_max_inv_tau)
        return prof, lse

    def bwd(s: Any, valid: Any, lse: Any, a: Any, b: Any, inv_tau: float, out: Any) -> None:
        ext.bwd(s, valid, lse, a, b, inv_tau, out)

    return {"fwd": fwd, "bwd": bwd}


__all__ = ["ENV_DISABLE", "cap_kernels", "native_kernels"]

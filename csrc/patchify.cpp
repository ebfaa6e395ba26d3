// maskspec_fast._C: fused patchify and unpatchify on CPU.
//
// Contract (the reference is maskspec_fast.ops.patchify.patchify_ref / unpatchify):
//   patches[b, i*gt + j, u*p + v] = spec[b, i*p + u, j*p + v]       (frames past the last whole patch dropped)
//
// Tensors arrive as DLPack capsules (torch.utils.dlpack.to_dlpack), so nothing here links libtorch and one
// build works with any torch version. Every output is allocated by torch in Python and only filled here.
// 16-bit tensors are handled as raw uint16: patch copies are bit copies.
//
// Work is split over independent output pieces (batch x patch-row x chunk of patches, or output rows), each
// written by exactly one thread with the same arithmetic, so results do not depend on the thread count. Tasks
// are handed out dynamically in small chunks, so a core busy with other work does not hold up the rest.
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <sstream>
#include <string>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "dlpack_min.h"
#include "half.h"

namespace py = pybind11;

namespace maskspec {
namespace {

constexpr int kAbi = 2;  // bumped when a signature changes; the Python wrapper refuses a stale build

enum class Kind { F32, F16, BF16, I64 };

const char* kind_name(Kind k) {
  switch (k) {
    case Kind::F32: return "float32";
    case Kind::F16: return "float16";
    case Kind::BF16: return "bfloat16";
    case Kind::I64: return "int64";
  }
  return "?";
}

std::string dl_dtype_name(const dl::DataType& t) {
  std::ostringstream s;
  switch (t.code) {
    case dl::kInt: s << "int" << int(t.bits); break;
    case dl::kUInt: s << "uint" << int(t.bits); break;
    case dl::kFloat: s << "float" << int(t.bits); break;
    case dl::kBfloat: s << "bfloat" << int(t.bits); break;
    case 5: s << "complex" << int(t.bits); break;
    case 6: s << "bool"; break;
    default: s << "dtype(code=" << int(t.code) << ", bits=" << int(t.bits) << ")";
  }
  if (t.lanes != 1) s << "x" << t.lanes;
  return s.str();
}

std::string shape_str(const int64_t* shape, int ndim) {
  std::ostringstream s;
  s << "(";
  for (int d = 0; d < ndim; ++d) s << (d ? ", " : "") << shape[d];
  s << (ndim == 1 ? ",)" : ")");
  return s.str();
}

// A validated, non-owning view of one tensor. Strides are in elements.
struct Arg {
  std::string name;
  char* data = nullptr;
  Kind kind = Kind::F32;
  int ndim = 0;
  int64_t shape[4] = {0, 0, 0, 0};
  int64_t stride[4] = {0, 0, 0, 0};

  std::string shape_s() const { return shape_str(shape, ndim); }
  size_t esize() const { return (kind == Kind::F32) ? 4 : (kind == Kind::I64 ? 8 : 2); }
};

[[noreturn]] void value_error(const std::string& name, const std::string& msg) {
  throw py::value_error(name + ": " + msg);
}
[[noreturn]] void type_error(const std::string& name, const std::string& msg) {
  throw py::type_error(name + ": " + msg);
}

Arg unpack(py::handle obj, const std::string& name) {
  PyObject* o = obj.ptr();
  if (!PyCapsule_CheckExact(o)) {
    type_error(name, std::string("expected a DLPack capsule (torch.utils.dlpack.to_dlpack(t)), got ") +
                         Py_TYPE(o)->tp_name);
  }
  const char* cname = PyCapsule_GetName(o);
  dl::Tensor* t = nullptr;
  if (cname && std::strcmp(cname, "dltensor") == 0) {
    t = &static_cast<dl::ManagedTensor*>(PyCapsule_GetPointer(o, "dltensor"))->dl_tensor;
  } else if (cname && std::strcmp(cname, "dltensor_versioned") == 0) {
    auto* mt = static_cast<dl::ManagedTensorVersioned*>(PyCapsule_GetPointer(o, "dltensor_versioned"));
    if (mt->version.major != 1) {
      value_error(name, "unsupported DLPack major version " + std::to_string(mt->version.major));
    }
    t = &mt->dl_tensor;
  } else {
    value_error(name, std::string("DLPack capsule was already consumed or is not a tensor (capsule name '") +
                          (cname ? cname : "") + "')");
  }
  if (t->device.device_type != dl::kCPU) {
    value_error(name, "expected a CPU tensor, got DLPack device type " + std::to_string(t->device.device_type) +
                          (t->device.device_type == dl::kCUDA ? " (CUDA)" : ""));
  }
  Arg a;
  a.name = name;
  const dl::DataType& dt = t->dtype;
  if (dt.lanes == 1 && dt.code == dl::kFloat && dt.bits == 32) {
    a.kind = Kind::F32;
  } else if (dt.lanes == 1 && dt.code == dl::kFloat && dt.bits == 16) {
    a.kind = Kind::F16;
  } else if (dt.lanes == 1 && dt.code == dl::kBfloat && dt.bits == 16) {
    a.kind = Kind::BF16;
  } else if (dt.lanes == 1 && dt.code == dl::kInt && dt.bits == 64) {
    a.kind = Kind::I64;
  } else {
    type_error(name, "unsupported dtype " + dl_dtype_name(dt) + " (float32, float16, bfloat16 or int64)");
  }
  if (t->ndim < 0 || t->ndim > 4) {
    value_error(name, "expected at most 4 dimensions, got " + std::to_string(t->ndim) + "-D " +
                          shape_str(t->shape, std::max(t->ndim, 0)));
  }
  a.ndim = t->ndim;
  int64_t compact = 1;
  for (int d = a.ndim - 1; d >= 0; --d) {
    a.shape[d] = t->shape[d];
    a.stride[d] = t->strides ? t->strides[d] : compact;
    compact *= t->shape[d];
  }
  a.data = static_cast<char*>(t->data) + t->byte_offset;
  return a;
}

void expect_ndim(const Arg& a, int n, const char* layout) {
  if (a.ndim != n) {
    value_error(a.name, "expected " + std::to_string(n) + "-D " + layout + ", got " + std::to_string(a.ndim) +
                            "-D " + a.shape_s());
  }
}

void expect_float(const Arg& a) {
  if (a.kind == Kind::I64) {
    type_error(a.name, std::string("expected float32, float16 or bfloat16, got ") + kind_name(a.kind));
  }
}

void expect_kind(const Arg& a, Kind k, const std::string& why) {
  if (a.kind != k) {
    type_error(a.name, std::string("expected ") + kind_name(k) + why + ", got " + kind_name(a.kind));
  }
}

void expect_contiguous(const Arg& a) {
  for (int d = 0; d < a.ndim; ++d)
    if (a.shape[d] == 0) return;  // empty: nothing is addressed (torch's rule too)
  int64_t compact = 1;
  for (int d = a.ndim - 1; d >= 0; --d) {
    if (a.shape[d] != 1 && a.stride[d] != compact) {
      std::vector<int64_t> st(a.stride, a.stride + a.ndim);
      value_error(a.name, "expected a contiguous tensor, got strides " + shape_str(st.data(), a.ndim) +
                              " for shape " + a.shape_s() + " (call .contiguous())");
    }
    compact *= a.shape[d];
  }
}

void expect_shape(const Arg& a, std::initializer_list<int64_t> want) {
  std::vector<int64_t> w(want);
  bool ok = static_cast<int>(w.size()) == a.ndim;
  for (int d = 0; ok && d < a.ndim; ++d) ok = a.shape[d] == w[d];
  if (!ok) {
    value_error(a.name, "expected shape " + shape_str(w.data(), static_cast<int>(w.size())) + ", got " +
                            a.shape_s());
  }
}

// spec: (B, F, T) float with unit stride along time (batch and row strides are free, so crops and the
// channel-squeezed view of a (B, 1, F, T) image need no copy).
void check_spec(const Arg& s, int64_t patch) {
  expect_ndim(s, 3, "(B, F, T)");
  expect_float(s);
  if (s.shape[2] > 1 && s.stride[2] != 1) {
    value_error(s.name, "expected unit stride along time (last axis), got stride " + std::to_string(s.stride[2]) +
                            " (call .contiguous())");
  }
  if (patch < 1) value_error("patch", "must be >= 1, got " + std::to_string(patch));
  if (s.shape[1] < patch || s.shape[2] < patch) {
    value_error(s.name, "spectrogram " + std::to_string(s.shape[1]) + " x " + std::to_string(s.shape[2]) +
                            " is smaller than one " + std::to_string(patch) + " x " + std::to_string(patch) +
                            " patch");
  }
}

int resolve_threads(int num_threads, int64_t ntask) {
#ifdef _OPENMP
  int n = num_threads > 0 ? num_threads : omp_get_max_threads();
#else
  int n = 1;
  (void)num_threads;
#endif
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(n, ntask)));
}

template <Kind K> struct Elem;
template <> struct Elem<Kind::F32> {
  using T = float;
};
template <> struct Elem<Kind::F16> {
  using T = uint16_t;
};
template <> struct Elem<Kind::BF16> {
  using T = uint16_t;
};

// One task = one batch item x one patch row i x a chunk of up to kChunk patches along time. P > 0 fixes
// the patch size at compile time (the common 16) so the row copies become fixed-size vector moves.
constexpr int64_t kChunk = 8;

template <Kind K, int P>
void patchify_kernel(const Arg& spec, int64_t p_rt, typename Elem<K>::T* out, int nt) {
  using T = typename Elem<K>::T;
  const int64_t p = P > 0 ? P : p_rt;
  const int64_t pp = p * p;
  const int64_t B = spec.shape[0], gf = spec.shape[1] / p, gt = spec.shape[2] / p, L = gf * gt;
  const int64_t sB = spec.stride[0], sF = spec.stride[1];
  const T* src = reinterpret_cast<const T*>(spec.data);
  const int64_t nch = (gt + kChunk - 1) / kChunk;
  const int64_t ntask = B * gf * nch;
  (void)nt;
#pragma omp parallel num_threads(nt)
  {
#pragma omp for schedule(dynamic, 8)
    for (int64_t task = 0; task < ntask; ++task) {
      const int64_t b = task / (gf * nch), rem = task % (gf * nch), i = rem / nch, c = rem % nch;
      const int64_t j0 = c * kChunk, j1 = std::min(gt, j0 + kChunk);
      const T* base = src + b * sB + i * p * sF;
      T* obase = out + (b * L + i * gt) * pp;
      for (int64_t u = 0; u < p; ++u) {
        const T* row = base + u * sF;
        for (int64_t j = j0; j < j1; ++j) std::memcpy(obase + j * pp + u * p, row + j * p, p * sizeof(T));
      }
    }
  }
}

// One task = one output row; rows/frames outside the patch grid are zero (the gradient of a crop).
template <typename T>
void unpatchify_kernel(const T* patches, int64_t B, int64_t gf, int64_t gt, int64_t p, T* out, int64_t Fo,
                       int64_t To, int nt) {
  const int64_t pp = p * p, L = gf * gt;
  (void)nt;
#pragma omp parallel for schedule(dynamic, 8) num_threads(nt)
  for (int64_t task = 0; task < B * Fo; ++task) {
    const int64_t b = task / Fo, r = task % Fo;
    T* dst = out + task * To;
    if (r >= gf * p) {
      std::memset(dst, 0, To * sizeof(T));
      continue;
    }
    const int64_t i = r / p, u = r % p;
    const T* src = patches + (b * L + i * gt) * pp + u * p;
    for (int64_t j = 0; j < gt; ++j) std::memcpy(dst + j * p, src + j * pp, p * sizeof(T));
    std::memset(dst + gt * p, 0, (To - gt * p) * sizeof(T));
  }
}

// ---------------------------------------------------------------------------------------------------------
// Python entry points: validate everything (naming the offending tensor), then release the GIL and run.

void py_patchify(py::handle spec_c, int64_t patch, py::handle out_c, int num_threads) {
  const Arg spec = unpack(spec_c, "spec");
  check_spec(spec, patch);
  const int64_t B = spec.shape[0], gf = spec.shape[1] / patch, gt = spec.shape[2] / patch;
  const int64_t L = gf * gt, pp = patch * patch;
  const Arg out = unpack(out_c, "patches");
  expect_kind(out, spec.kind, " (the dtype of spec)");
  expect_shape(out, {B, L, pp});
  expect_contiguous(out);
  const int nt = resolve_threads(num_threads, B * gf * ((gt + kChunk - 1) / kChunk));
  py::gil_scoped_release nogil;
  switch (spec.kind) {
    case Kind::F32:
      if (patch == 16) patchify_kernel<Kind::F32, 16>(spec, patch, reinterpret_cast<float*>(out.data), nt);
      else patchify_kernel<Kind::F32, 0>(spec, patch, reinterpret_cast<float*>(out.data), nt);
      break;
    case Kind::F16:
      if (patch == 16) patchify_kernel<Kind::F16, 16>(spec, patch, reinterpret_cast<uint16_t*>(out.data), nt);
      else patchify_kernel<Kind::F16, 0>(spec, patch, reinterpret_cast<uint16_t*>(out.data), nt);
      break;
    case Kind::BF16:
      if (patch == 16) patchify_kernel<Kind::BF16, 16>(spec, patch, reinterpret_cast<uint16_t*>(out.data), nt);
      else patchify_kernel<Kind::BF16, 0>(spec, patch, reinterpret_cast<uint16_t*>(out.data), nt);
      break;
    case Kind::I64: break;  // rejected by check_spec
  }
}

void py_unpatchify(py::handle patches_c, int64_t gf, int64_t gt, int64_t patch, py::handle out_c,
                   int num_threads) {
  if (patch < 1) value_error("patch", "must be >= 1, got " + std::to_string(patch));
  if (gf < 1 || gt < 1) {
    value_error("grid", "expected a positive grid, got (" + std::to_string(gf) + ", " + std::to_string(gt) + ")");
  }
  const Arg pt = unpack(patches_c, "patches");
  expect_ndim(pt, 3, "(B, L, p*p)");
  expect_float(pt);
  expect_contiguous(pt);
  const int64_t B = pt.shape[0];
  if (pt.shape[1] != gf * gt || pt.shape[2] != patch * patch) {
    const int64_t want[3] = {B, gf * gt, patch * patch};
    value_error("patches", "shape " + pt.shape_s() + " does not match grid (" + std::to_string(gf) + ", " +
                               std::to_string(gt) + ") with patch " + std::to_string(patch) + ": expected " +
                               shape_str(want, 3));
  }
  const Arg out = unpack(out_c, "out");
  expect_kind(out, pt.kind, " (the dtype of patches)");
  expect_ndim(out, 3, "(B, F, T)");
  expect_contiguous(out);
  if (out.shape[0] != B || out.shape[1] < gf * patch || out.shape[2] < gt * patch) {
    value_error("out", "shape " + out.shape_s() + " cannot hold a (" + std::to_string(B) + ", " +
                           std::to_string(gf * patch) + ", " + std::to_string(gt * patch) + ") image");
  }
  const int64_t Fo = out.shape[1], To = out.shape[2];
  const int nt = resolve_threads(num_threads, B * Fo);
  py::gil_scoped_release nogil;
  if (pt.kind == Kind::F32) {
    unpatchify_kernel(reinterpret_cast<const float*>(pt.data), B, gf, gt, patch,
                      reinterpret_cast<float*>(out.data), Fo, To, nt);
  } else {
    unpatchify_kernel(reinterpret_cast<const uint16_t*>(pt.data), B, gf, gt, patch,
                      reinterpret_cast<uint16_t*>(out.data), Fo, To, nt);
  }
}

// Widen any supported float tensor to fp32 with the same conversions the kernels use (a test hook that
// lets the 16-bit decoders be checked against torch on all 65536 bit patterns).
void py_to_float32(py::handle src_c, py::handle out_c) {
  const Arg src = unpack(src_c, "src");
  expect_float(src);
  expect_contiguous(src);
  const Arg out = unpack(out_c, "out");
  expect_kind(out, Kind::F32, "");
  expect_contiguous(out);
  int64_t n = 1, m = 1;
  for (int d = 0; d < src.ndim; ++d) n *= src.shape[d];
  for (int d = 0; d < out.ndim; ++d) m *= out.shape[d];
  if (n != m) value_error("out", "has " + std::to_string(m) + " elements, src has " + std::to_string(n));
  float* o = reinterpret_cast<float*>(out.data);
  const uint16_t* h = reinterpret_cast<const uint16_t*>(src.data);
  for (int64_t k = 0; k < n; ++k) {
    switch (src.kind) {
      case Kind::F32: o[k] = reinterpret_cast<const float*>(src.data)[k]; break;
      case Kind::F16: o[k] = fp16_to_float(h[k]); break;
      case Kind::BF16: o[k] = bf16_to_float(h[k]); break;
      case Kind::I64: break;
    }
  }
}

}  // namespace
}  // namespace maskspec

PYBIND11_MODULE(_C, m) {
  using namespace maskspec;
  m.doc() = "maskspec_fast C++ kernels: fused patchify / unpatchify (CPU, OpenMP)";
  m.attr("__abi__") = kAbi;
#ifdef _OPENMP
  m.attr("has_openmp") = true;
#else
  m.attr("has_openmp") = false;
#endif
#ifdef __VERSION__
  m.attr("compiler") = __VERSION__;
#endif
  m.def(
      "max_threads",
      []() {
#ifdef _OPENMP
        return omp_get_max_threads();
#else
        return 1;
#endif
      },
      "Threads a call with num_threads=0 would use (1 without OpenMP).");
  m.def("patchify", &py_patchify, py::arg("spec"), py::arg("patch"), py::arg("out"), py::arg("num_threads") = 0,
        "spec (B, F, T) -> out (B, L, p*p) [same dtype]. All arguments are DLPack capsules of CPU tensors.");
  m.def("unpatchify", &py_unpatchify, py::arg("patches"), py::arg("gf"), py::arg("gt"), py::arg("patch"),
        py::arg("out"), py::arg("num_threads") = 0,
        "patches (B, gf*gt, p*p) -> out (B, F, T) with F >= gf*p, T >= gt*p; outside the grid is zero.");
  m.def("to_float32", &py_to_float32, py::arg("src"), py::arg("out"),
        "Widen src (float32/float16/bfloat16) into out (fp32, same numel) with the kernels' decoders.");
}

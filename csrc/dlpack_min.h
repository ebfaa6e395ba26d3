// Minimal DLPack ABI (https://dmlc.github.io/dlpack/latest/c_api.html), written out here so the extension
// needs neither libtorch nor the dlpack headers: we only READ tensors that torch exported with
// torch.utils.dlpack.to_dlpack / Tensor.__dlpack__, never take ownership of them.
#pragma once

#include <cstdint>

namespace maskspec {
namespace dl {

enum DeviceType : int32_t { kCPU = 1, kCUDA = 2, kCUDAHost = 3 };
enum TypeCode : uint8_t { kInt = 0, kUInt = 1, kFloat = 2, kBfloat = 4 };

struct Device {
  int32_t device_type;
  int32_t device_id;
};

struct DataType {
  uint8_t code;
  uint8_t bits;
  uint16_t lanes;
};

struct Tensor {
  void* data;
  Device device;
  int32_t ndim;
  DataType dtype;
  int64_t* shape;
  int64_t* strides;  // in elements; NULL means compact row-major (allowed since DLPack 1.0)
  uint64_t byte_offset;
};

// Capsule name "dltensor" (pre-1.0 protocol; what torch.utils.dlpack.to_dlpack produces).
struct ManagedTensor {
  Tensor dl_tensor;
  void* manager_ctx;
  void (*deleter)(ManagedTensor*);
};

struct PackVersion {
  uint32_t major;
  uint32_t minor;
};

// Capsule name "dltensor_versioned" (DLPack >= 1.0, from __dlpack__(max_version=(1, 0))).
struct ManagedTensorVersioned {
  PackVersion version;
  void* manager_ctx;
  void (*deleter)(ManagedTensorVersioned*);
  uint64_t flags;
  Tensor dl_tensor;
};

}  // namespace dl
}  // namespace maskspec

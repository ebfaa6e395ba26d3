// 16-bit float -> fp32 without any library: the extension stores 16-bit tensors as raw uint16 and does all
// arithmetic in fp32. Widening is exact for every bit pattern (normals, subnormals, infinities, NaNs); the
// extension never narrows (16-bit outputs are raw copies of 16-bit inputs).
#pragma once

#include <cstdint>
#include <cstring>

namespace maskspec {

inline float bits_to_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

inline uint32_t float_to_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}

// bfloat16 is the top half of an fp32, so widening is a shift.
inline float bf16_to_float(uint16_t h) { return bits_to_float(static_cast<uint32_t>(h) << 16); }

// IEEE binary16: 1 sign, 5 exponent (bias 15), 10 mantissa bits.
inline float fp16_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  const uint32_t mant = h & 0x3ffu;
  if (exp == 0) {
    // zero or subnormal: mant * 2^-24, exact in fp32
    const float mag = static_cast<float>(mant) * 5.9604644775390625e-08f;
    return bits_to_float(float_to_bits(mag) | sign);
  }
  if (exp == 31) return bits_to_float(sign | 0x7f800000u | (mant << 13));  // inf / NaN (payload kept)
  return bits_to_float(sign | ((exp + 112u) << 23) | (mant << 13));       // rebias 15 -> 127
}

}  // namespace maskspec

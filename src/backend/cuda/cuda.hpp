// The CUDA backend's narrow interface: device discovery, allocation, copies and ops with the same
// names as the CPU backend. Built with -DDSV3_CUDA=ON; otherwise a stub reports "absent" so
// callers and tests skip cleanly.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace dsv3::cuda {

bool available();              // built with CUDA and at least one device present
int device_count();            // 0 when absent
std::string device_summary();  // e.g. "NVIDIA H100 80GB HBM3, 80 GB, sm_90" or why absent

void* device_alloc(size_t bytes);
void device_free(void* p);
void copy_to_device(void* dst, const void* src, size_t bytes);
void copy_to_host(void* dst, const void* src, size_t bytes);
void synchronize();

// Same semantics as cpu::rmsnorm_forward (device pointers, contiguous rows).
void rmsnorm_forward(float* out, float* rstd, const float* in, const float* weight, int64_t n,
                     int64_t d, float eps);

}  // namespace dsv3::cuda

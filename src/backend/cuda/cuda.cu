// CUDA runtime wrappers and the RMSNorm kernel (one block per row, FP32 reduction).
#include <cuda_runtime.h>

#include "backend/cuda/cuda.hpp"
#include "core/error.hpp"

namespace dsv3::cuda {

namespace {
void check(cudaError_t e, const char* what) {
  DSV3_CHECK(e == cudaSuccess, "CUDA {} failed: {}", what, cudaGetErrorString(e));
}

__global__ void rmsnorm_kernel(float* out, float* rstd, const float* in, const float* w, int64_t d,
                               float eps) {
  const float* x = in + blockIdx.x * d;
  float* y = out + blockIdx.x * d;
  __shared__ float partial[32];
  float ss = 0;
  for (int64_t i = threadIdx.x; i < d; i += blockDim.x) ss += x[i] * x[i];
  for (int o = 16; o > 0; o >>= 1) ss += __shfl_down_sync(0xffffffffu, ss, o);
  if (threadIdx.x % 32 == 0) partial[threadIdx.x / 32] = ss;
  __syncthreads();
  if (threadIdx.x < 32) {
    ss = threadIdx.x < blockDim.x / 32 ? partial[threadIdx.x] : 0.0f;
    for (int o = 16; o > 0; o >>= 1) ss += __shfl_down_sync(0xffffffffu, ss, o);
    if (threadIdx.x == 0) partial[0] = rsqrtf(ss / float(d) + eps);
  }
  __syncthreads();
  const float rs = partial[0];
  if (threadIdx.x == 0 && rstd) rstd[blockIdx.x] = rs;
  for (int64_t i = threadIdx.x; i < d; i += blockDim.x) y[i] = x[i] * rs * w[i];
}
}  // namespace

int device_count() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess ? n : 0;
}

bool available() {
  return device_count() > 0;
}

std::string device_summary() {
  int n = device_count();
  if (n == 0) return "CUDA built in, no device visible";
  cudaDeviceProp p;
  check(cudaGetDeviceProperties(&p, 0), "cudaGetDeviceProperties");
  return fmt::format("{} x {}, {} GiB, sm_{}{}", n, p.name, p.totalGlobalMem >> 30, p.major,
                     p.minor);
}

void* device_alloc(size_t bytes) {
  void* p = nullptr;
  check(cudaMalloc(&p, bytes), "cudaMalloc");
  return p;
}
void device_free(void* p) {
  cudaFree(p);
}
void copy_to_device(void* dst, const void* src, size_t bytes) {
  check(cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice), "cudaMemcpy H2D");
}
void copy_to_host(void* dst, const void* src, size_t bytes) {
  check(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost), "cudaMemcpy D2H");
}
void synchronize() {
  check(cudaDeviceSynchronize(), "cudaDeviceSynchronize");
}

void rmsnorm_forward(float* out, float* rstd, const float* in, const float* weight, int64_t n,
                     int64_t d, float eps) {
  if (n == 0) return;
  rmsnorm_kernel<<<unsigned(n), 256>>>(out, rstd, in, weight, d, eps);
  check(cudaGetLastError(), "rmsnorm_kernel launch");
}

}  // namespace dsv3::cuda

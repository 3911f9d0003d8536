// The CUDA backend when dsv3 is built without CUDA (-DDSV3_CUDA=OFF): reports absence; every
// op throws, and callers check available() first.
#include "backend/cuda/cuda.hpp"
#include "core/error.hpp"

namespace dsv3::cuda {

bool available() {
  return false;
}
int device_count() {
  return 0;
}
std::string device_summary() {
  return "not built (configure with -DDSV3_CUDA=ON)";
}

namespace {
[[noreturn]] void absent() {
  DSV3_FAIL("dsv3 was built without CUDA (configure with -DDSV3_CUDA=ON)");
}
}  // namespace

void* device_alloc(size_t) {
  absent();
}
void device_free(void*) {}
void copy_to_device(void*, const void*, size_t) {
  absent();
}
void copy_to_host(void*, const void*, size_t) {
  absent();
}
void synchronize() {}
void rmsnorm_forward(float*, float*, const float*, const float*, int64_t, int64_t, float) {
  absent();
}

}  // namespace dsv3::cuda

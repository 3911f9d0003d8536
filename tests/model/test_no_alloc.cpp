// The hot inference path allocates nothing per call: after a warm-up, decode steps (main model
// and MTP module, 1 and 2 threads) make no heap allocation. Counted by replacing the global
// operator new for this test binary. (Prefill calls into oneDNN, whose GEMMs allocate their own
// packing buffers per call; dsv3's buffers there are reused as in decode.)
#include <gtest/gtest.h>
#include <omp.h>

#include <atomic>
#include <cstdlib>
#include <new>

#include "model/model.hpp"

namespace {
std::atomic<bool> g_counting{false};
std::atomic<int64_t> g_allocs{0};
}  // namespace

void* operator new(size_t n) {
  if (g_counting.load(std::memory_order_relaxed)) g_allocs.fetch_add(1);
  if (void* p = std::malloc(n ? n : 1)) return p;
  throw std::bad_alloc();
}
void operator delete(void* p) noexcept {
  std::free(p);
}
void operator delete(void* p, size_t) noexcept {
  std::free(p);
}

using namespace dsv3;

namespace {

struct Counting {
  Counting() {
    g_allocs = 0;
    g_counting = true;
  }
  ~Counting() { g_counting = false; }
  int64_t count() const { return g_allocs.load(); }
};

TEST(NoAlloc, DecodeStepsAfterWarmUp) {
  auto m = model::Model::load(std::string(DSV3_TEST_DATA) + "/tiny-v3");
  const auto& c = m->config();
  ASSERT_TRUE(m->has_mtp());
  const int64_t T = 40, V = c.vocab_size, D = c.hidden_size;
  std::vector<int32_t> prompt(static_cast<size_t>(T));
  for (int64_t i = 0; i < T; ++i) prompt[size_t(i)] = int32_t((i * 37 + 11) % V);
  for (int threads : {1, 2}) {
    omp_set_num_threads(threads);
    model::KVCache cache(c, 1, 2 * T + 24, true);
    std::vector<float> logits(size_t(T * V)), hidden(size_t(T * D)), mh(static_cast<size_t>(D));
    model::ForwardOptions o;
    o.final_hidden = hidden.data();
    auto step = [&](int64_t pos) {
      const int32_t tok = int32_t(pos % V);
      m->forward(&tok, 1, 1, pos, cache, logits.data(), o);
      m->mtp_forward(hidden.data(), &tok, 1, 1, pos, cache, logits.data(), {}, mh.data());
    };
    m->forward(prompt.data(), 1, T, 0, cache, logits.data(), o);  // warm-up: scratch grows
    // Each thread grows its own scratch the first time it takes a piece of a region, and which
    // thread takes which piece depends on timing: on a loaded machine the second thread can be
    // descheduled through whole steps and join only later. So the warm-up runs until two steps
    // in a row allocate nothing (at most 16 steps; a step that always allocates still fails).
    int64_t pos = T, quiet = 0;
    for (int warm = 0; warm < 16 && quiet < 2; ++warm) {
      Counting cnt;
      step(pos++);
      quiet = cnt.count() == 0 ? quiet + 1 : 0;
    }
    int64_t n = 0;
    {
      Counting cnt;
      for (int64_t p = pos; p < pos + 4; ++p) step(p);
      n = cnt.count();
    }
    EXPECT_EQ(n, 0) << "decode steps on " << threads << " thread(s) allocated " << n << " times";
  }
}

}  // namespace

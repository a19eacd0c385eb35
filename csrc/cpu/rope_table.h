// The CPU sink attention's shared rotary table for keys: cos / sin of p * theta^(-2f/D) for
// positions p < len, rounded once from fp64. Every key position the kernel rotates, in both frames,
// is a rank counted from 0 (params.h), so one table per (theta, D) serves every work item, layer
// and step; without it each work item rebuilt the rows it needed per key block (42% of a
// 1024-key decode step, fp32, 1 thread). Tables are built once, grown (doubling) when a call needs
// more positions, and capped at kMaxPositions (beyond it the kernel builds its own rows). Calls
// hold a shared_ptr: a table that grows is replaced, never changed under a running kernel.
#pragma once
#include <cmath>
#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

namespace flashstream::cpu {

struct RopeTable {
  double theta = 0.0;
  int64_t D = 0, len = 0;
  std::vector<float> cos, sin;  // [len, D / 2]
};

inline constexpr int64_t kMaxRopePositions = 16384;  // 4 MB of table at D = 64, 8 MB at 128

inline std::shared_ptr<const RopeTable> key_rope_table(double theta, int64_t D, int64_t positions) {
  static std::mutex mutex;
  static std::vector<std::shared_ptr<const RopeTable>> tables;
  const int64_t want = positions < kMaxRopePositions ? positions : kMaxRopePositions;
  std::lock_guard<std::mutex> lock(mutex);
  std::shared_ptr<const RopeTable>* slot = nullptr;
  for (auto& t : tables)
    if (t->theta == theta && t->D == D) slot = &t;
  if (slot != nullptr && (*slot)->len >= want) return *slot;
  auto table = std::make_shared<RopeTable>();
  table->theta = theta;
  table->D = D;
  const int64_t grown = slot != nullptr ? 2 * (*slot)->len : 0;
  table->len = want > grown ? want : (grown < kMaxRopePositions ? grown : kMaxRopePositions);
  const int64_t half = D / 2;
  table->cos.resize(size_t(table->len * half));
  table->sin.resize(size_t(table->len * half));
  for (int64_t f = 0; f < half; ++f) {
    const double inv_freq = std::pow(theta, -2.0 * double(f) / double(D));  // as the kernels compute it
    for (int64_t p = 0; p < table->len; ++p) {
      const double a = double(p) * inv_freq;
      table->cos[size_t(p * half + f)] = float(std::cos(a));
      table->sin[size_t(p * half + f)] = float(std::sin(a));
    }
  }
  std::shared_ptr<const RopeTable> done = std::move(table);
  if (slot != nullptr) *slot = done;
  else tables.push_back(done);
  return done;
}

}  // namespace flashstream::cpu

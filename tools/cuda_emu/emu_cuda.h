// Minimal single-OS-thread CUDA emulator for reviewing kernels on a CPU: every block's threads are
// fibers (ucontext) run round-robin; warp intrinsics and barriers switch fibers. Blocks run one
// after another, so `__shared__` = `static`. Not a performance model; checks logic only.
#pragma once
#include <ucontext.h>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <vector>
#include <c10/core/Device.h>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(x)
#define __shared__ static
#define CUDART_VERSION 13000

typedef int cudaStream_t;
typedef int cudaError_t;
constexpr int cudaSuccess = 0;
enum cudaDeviceAttr { cudaDevAttrMultiProcessorCount = 16 };
inline cudaError_t cudaGetLastError() { return 0; }
inline const char* cudaGetErrorString(cudaError_t) { return "no error"; }
inline cudaError_t cudaDeviceGetAttribute(int* v, cudaDeviceAttr, int) { *v = 3; return 0; }

namespace c10 { namespace cuda {
struct CUDAGuard { explicit CUDAGuard(c10::Device) {} };
inline cudaStream_t getCurrentCUDAStream() { return 0; }
}}

namespace emu {
struct Idx { unsigned x, y, z; };
struct Fiber { ucontext_t ctx; std::vector<char> stack; bool done = false; Idx tid; };
inline Fiber*& cur() { static Fiber* f = nullptr; return f; }
inline ucontext_t& sched() { static ucontext_t s; return s; }
inline Idx& block_idx() { static Idx b; return b; }
inline Idx& block_dim() { static Idx b; return b; }
inline Idx& grid_dim() { static Idx b; return b; }
inline std::vector<char>& dyn() { static std::vector<char> d; return d; }
template <class T> T* dyn_smem() { return reinterpret_cast<T*>(dyn().data()); }
inline std::function<void()>& body() { static std::function<void()> b; return b; }
inline long& progress() { static long p = 0; return p; }
// warp state
struct Warp { int arrived = 0; long gen = 0; uint64_t slot[32]; };
inline std::vector<Warp>& warps() { static std::vector<Warp> w; return w; }
struct Block { int arrived = 0; long gen = 0; };
inline Block& blk() { static Block b; return b; }
inline void yield() { swapcontext(&cur()->ctx, &sched()); }
inline int lane() { return cur()->tid.x % 32; }
inline Warp& mywarp() { return warps()[cur()->tid.x / 32]; }
inline int warp_size_of(int w) {  // threads in warp w (blockDim multiple of 32 in our kernels)
  int n = (int)block_dim().x - 32 * w; return n < 32 ? n : 32; }
inline void warp_barrier() {
  Warp& w = mywarp();
  const long g = w.gen;
  ++progress();
  if (++w.arrived == warp_size_of(cur()->tid.x / 32)) { w.arrived = 0; ++w.gen; return; }
  while (w.gen == g) yield();
}
inline void block_barrier() {
  Block& b = blk();
  const long g = b.gen;
  ++progress();
  if (++b.arrived == (int)block_dim().x) { b.arrived = 0; ++b.gen; return; }
  while (b.gen == g) yield();
}
inline void trampoline() { body()(); cur()->done = true; ++progress(); swapcontext(&cur()->ctx, &sched()); }
struct Cfg { unsigned grid, block; size_t smem; };
inline Cfg cfg(unsigned g, unsigned b, size_t s, cudaStream_t) { return Cfg{g, b, s}; }
template <class K, class... A>
void launch(Cfg c, K kernel, A... args) {
  if (c.grid == 0 || c.block == 0 || c.block > 1024) { fprintf(stderr, "emu: bad launch config\n"); abort(); }
  grid_dim() = Idx{c.grid, 1, 1};
  block_dim() = Idx{c.block, 1, 1};
  body() = [=]() { kernel(args...); };
  std::vector<Fiber> fibers(c.block);
  for (auto& f : fibers) f.stack.resize(1 << 16);
  for (unsigned b = 0; b < c.grid; ++b) {
    block_idx() = Idx{b, 0, 0};
    dyn().assign(c.smem + 16, (char)0xA5);  // garbage, as real shared memory
    warps().assign((c.block + 31) / 32, Warp());
    blk() = Block();
    for (unsigned t = 0; t < c.block; ++t) {
      Fiber& f = fibers[t];
      f.done = false; f.tid = Idx{t, 0, 0};
      getcontext(&f.ctx);
      f.ctx.uc_stack.ss_sp = f.stack.data(); f.ctx.uc_stack.ss_size = f.stack.size(); f.ctx.uc_link = nullptr;
      makecontext(&f.ctx, (void (*)())trampoline, 0);
    }
    size_t live = c.block;
    long stale_rounds = 0;
    while (live > 0) {
      const long p0 = progress();
      live = 0;
      static const bool rev = getenv("EMU_REVERSE") != nullptr;
      for (size_t q = 0; q < fibers.size(); ++q) {
        Fiber& f = fibers[rev ? fibers.size() - 1 - q : q];
        if (f.done) continue;
        cur() = &f;
        swapcontext(&sched(), &f.ctx);
        if (!f.done) ++live;
      }
      if (progress() == p0 && live > 0) {
        if (++stale_rounds > 3) { fprintf(stderr, "emu: DEADLOCK in block %u (%zu live fibers)\n", b, live); abort(); }
      } else stale_rounds = 0;
    }
  }
}
}  // namespace emu

#define threadIdx (emu::cur()->tid)
#define blockIdx (emu::block_idx())
#define blockDim (emu::block_dim())
#define gridDim (emu::grid_dim())

inline void __syncthreads() { emu::block_barrier(); }
inline void __syncwarp(unsigned = 0xffffffffu) { emu::warp_barrier(); }
template <class T> T emu_exchange(T v, int src_of_lane_fn_mode, int arg) {
  emu::Warp& w = emu::mywarp();
  const int l = emu::lane();
  static_assert(sizeof(T) <= 8, "");
  uint64_t raw = 0; std::memcpy(&raw, &v, sizeof(T)); w.slot[l] = raw;
  emu::warp_barrier();
  int src = l;
  if (src_of_lane_fn_mode == 0) src = l ^ arg;          // xor
  else if (src_of_lane_fn_mode == 1) src = arg;         // idx
  else if (src_of_lane_fn_mode == 2) src = l >= arg ? l - arg : l;  // up
  uint64_t r = w.slot[src & 31];
  emu::warp_barrier();
  T out; std::memcpy(&out, &r, sizeof(T)); return out;
}
template <class T> T __shfl_xor_sync(unsigned, T v, int o) { return emu_exchange(v, 0, o); }
template <class T> T __shfl_sync(unsigned, T v, int s) { return emu_exchange(v, 1, s); }
template <class T> T __shfl_up_sync(unsigned, T v, unsigned d) { return emu_exchange(v, 2, (int)d); }
inline unsigned __ballot_sync(unsigned, int pred) {
  emu::Warp& w = emu::mywarp();
  w.slot[emu::lane()] = pred ? 1 : 0;
  emu::warp_barrier();
  unsigned m = 0;
  for (int l = 0; l < emu::warp_size_of(threadIdx.x / 32); ++l) m |= (w.slot[l] ? 1u : 0u) << l;
  emu::warp_barrier();
  return m;
}
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline float atomicAdd(float* p, float v) { float o = *p; *p = o + v; return o; }
inline int atomicAdd(int* p, int v) { int o = *p; *p = o + v; return o; }
inline unsigned atomicOr(unsigned* p, unsigned v) { unsigned o = *p; *p = o | v; return o; }
template <class T> T __ldcg(const T* p) { return *p; }

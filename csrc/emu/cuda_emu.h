// CUDA host emulation: the unchanged csrc/cuda sources compiled by g++ for the CPU, so that the
// kernels execute (slowly) where there is no GPU. scripts/cuda_emu_build.py force-includes this
// header (-include), puts csrc/emu first on the include path (its cuda_runtime.h, cuda_fp16.h,
// cuda_bf16.h and mma.h stand in for the toolkit's) and rewrites, in copies of the sources,
// every `k<<<grid, block, smem, stream>>>(args)` into
// `::wvq_emu::launch("k", k, grid, block, smem, stream)(args)` and every `__shared__` variable
// into a reference to the block's shared storage. __CUDACC__ is defined and __CUDA_ARCH__ is 900
// in all code, host code included.
//
// What is emulated (runtime.cpp):
// - Launches run synchronously on the calling thread, blocks one after another (in grid order;
//   reversed or permuted under the reverse and random schedules). Each CUDA thread of a block
//   is its own fiber (own stack, own registers); a block's fibers switch only at
//   synchronisation points, so a block runs deterministically. Between two barriers the
//   threads run one after another, in an order that alternates each round (0..n-1, then
//   n-1..0; WVQ_EMU_SCHEDULE=forward|reverse|alternate|random:<seed>), so that a missing
//   barrier makes a thread read data not yet written, or already overwritten, whichever
//   thread the race favours.
// - __syncthreads (and _count/_and/_or) is a barrier over the block's live threads; exited
//   threads no longer count, as on the hardware.
// - Warp primitives (__shfl*_sync, __ballot_sync, __any/__all/__uni_sync, __match_any/all_sync,
//   __reduce_*_sync, __syncwarp, and WMMA's load/store/mma_sync) are rendezvous of the lanes
//   named in the mask, Volta-style: every lane of the mask must call the same primitive with
//   the same mask, disjoint masks may meet at the same time. __activemask() is the warp's lanes
//   that have not exited.
// - Broken rules abort the launch with a message on stderr and a sticky cudaErrorLaunchFailure
//   (every later launch and cudaGetLastError report it until wvq_emu_reset()): a deadlock
//   (every live thread waits, none can be released), a shuffle from a lane outside the mask, a
//   mask naming an exited lane, a lane exiting while its group waits for it, lanes meeting at
//   different primitives, over 48 KiB of static shared memory, __trap().
// - __shared__ variables are carved from a per-block arena when a block first uses them and
//   poisoned with a byte pattern that alternates between blocks (large negative, then large
//   positive values), so reading shared memory the block never wrote gives wrong results;
//   dynamic (extern __shared__) memory, the launch's smem bytes, is poisoned alike.
// - Atomics are std::atomic_ref operations. __half and __nv_bfloat16 convert with correct
//   rounding (denormals kept). WMMA (mma.h) computes in scalar code, fragments spread over the
//   lanes, inputs rounded as the tensor cores do (tf32: the low 13 mantissa bits dropped),
//   products and sums in fp32.
// - The runtime API the launchers use (streams, memset/memcpy, malloc, attributes of an
//   sm_90-like device with 132 SMs and 228 KiB of shared memory per SM) maps to host calls.
// - A launch running longer than WVQ_EMU_TIMEOUT seconds (default 300) aborts the process with
//   the kernel's name: an endless loop inside a thread cannot otherwise be interrupted.
//   WVQ_EMU_TRACE=1 prints each launch's grid, block and time.
//
// What is not: a memory model beyond what barriers give (no reordering, no caches), asynchronous
// copies (cp.async, TMA), cooperative groups, clusters, textures, dynamic parallelism, bounds
// checks on shared or global memory, timing or occupancy. Threads of different blocks never
// overlap, so races between blocks do not show. Float results may differ from a GPU's in the
// last bits: g++ does not contract a * b + c into FMAs as nvcc does, and the fast intrinsics
// (__expf, __fdividef, ...) are computed exactly.
#pragma once

#include <algorithm>
#include <atomic>
#include <bit>
#include <cfloat>
#include <climits>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <tuple>
#include <type_traits>
#include <utility>

#define __CUDACC__ 1
#define __CUDA_ARCH__ 900
#define __NVCC__ 1

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
#define __restrict__ __restrict
#define __constant__
#define __managed__
// The builder rewrites every `__shared__ T name[dims];` into a reference to block-shared
// storage (wvq_emu::shared_variable); one it could not parse fails to compile here.
#define __shared__ __shared__declaration_the_emulation_builder_could_not_rewrite

// ---- the runtime API (the subset kernels and launchers use) ----

enum cudaError_t {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorMemoryAllocation = 2,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorInvalidDevice = 101,
  cudaErrorLaunchFailure = 719,
  cudaErrorNotSupported = 801,
};
using cudaError = cudaError_t;

enum cudaMemcpyKind {
  cudaMemcpyHostToHost = 0,
  cudaMemcpyHostToDevice = 1,
  cudaMemcpyDeviceToHost = 2,
  cudaMemcpyDeviceToDevice = 3,
  cudaMemcpyDefault = 4,
};

enum cudaDeviceAttr {
  cudaDevAttrMaxThreadsPerBlock = 1,
  cudaDevAttrMaxBlockDimX = 2,
  cudaDevAttrMaxBlockDimY = 3,
  cudaDevAttrMaxBlockDimZ = 4,
  cudaDevAttrMaxGridDimX = 5,
  cudaDevAttrMaxGridDimY = 6,
  cudaDevAttrMaxGridDimZ = 7,
  cudaDevAttrMaxSharedMemoryPerBlock = 8,
  cudaDevAttrWarpSize = 10,
  cudaDevAttrMaxRegistersPerBlock = 12,
  cudaDevAttrClockRate = 13,
  cudaDevAttrMultiProcessorCount = 16,
  cudaDevAttrComputeCapabilityMajor = 75,
  cudaDevAttrComputeCapabilityMinor = 76,
  cudaDevAttrMaxSharedMemoryPerMultiprocessor = 81,
  cudaDevAttrMaxRegistersPerMultiprocessor = 82,
  cudaDevAttrMaxSharedMemoryPerBlockOptin = 97,
  cudaDevAttrMaxThreadsPerMultiProcessor = 39,
  cudaDevAttrL2CacheSize = 38,
};

enum cudaFuncAttribute {
  cudaFuncAttributeMaxDynamicSharedMemorySize = 8,
  cudaFuncAttributePreferredSharedMemoryCarveout = 9,
};

struct CUstream_st;
using cudaStream_t = CUstream_st*;
struct CUevent_st;
using cudaEvent_t = CUevent_st*;

struct uint3 {
  unsigned x, y, z;
};
struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned vx = 1, unsigned vy = 1, unsigned vz = 1) : x(vx), y(vy), z(vz) {}
  constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
  constexpr operator uint3() const { return {x, y, z}; }
};

struct __align__(16) float4 {
  float x, y, z, w;
};
struct __align__(8) float2 {
  float x, y;
};
struct __align__(16) int4 {
  int x, y, z, w;
};
struct __align__(16) double2 {
  double x, y;
};
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
inline float2 make_float2(float x, float y) { return {x, y}; }
inline int4 make_int4(int x, int y, int z, int w) { return {x, y, z, w}; }

struct cudaDeviceProp {
  char name[256];
  int major, minor, multiProcessorCount, warpSize, maxThreadsPerBlock;
  int maxThreadsPerMultiProcessor, regsPerBlock, regsPerMultiprocessor;
  size_t sharedMemPerBlock, sharedMemPerBlockOptin, sharedMemPerMultiprocessor, totalGlobalMem;
  int maxThreadsDim[3], maxGridSize[3], l2CacheSize, clockRate;
};

extern "C" {
cudaError_t cudaGetLastError(void);
cudaError_t cudaPeekAtLastError(void);
const char* cudaGetErrorString(cudaError_t error);
const char* cudaGetErrorName(cudaError_t error);
cudaError_t cudaGetDevice(int* device);
cudaError_t cudaSetDevice(int device);
cudaError_t cudaGetDeviceCount(int* count);
cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attribute, int device);
cudaError_t cudaGetDeviceProperties(cudaDeviceProp* prop, int device);
cudaError_t cudaDeviceSynchronize(void);
cudaError_t cudaStreamSynchronize(cudaStream_t stream);
cudaError_t cudaStreamCreate(cudaStream_t* stream);
cudaError_t cudaStreamDestroy(cudaStream_t stream);
cudaError_t cudaMalloc(void** pointer, size_t bytes);
cudaError_t cudaMallocAsync(void** pointer, size_t bytes, cudaStream_t stream);
cudaError_t cudaFree(void* pointer);
cudaError_t cudaFreeAsync(void* pointer, cudaStream_t stream);
cudaError_t cudaMemset(void* pointer, int value, size_t bytes);
cudaError_t cudaMemsetAsync(void* pointer, int value, size_t bytes, cudaStream_t stream);
cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind);
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind,
                            cudaStream_t stream);
}

// ---- the emulator's interface (runtime.cpp) ----

namespace wvq_emu {

// The built-in variables of the running thread, set by the scheduler before each switch.
struct Builtins {
  uint3 thread_idx, block_idx;
  dim3 block_dim, grid_dim;
};
extern Builtins builtins;

struct LaunchConfig {
  dim3 grid, block;
  size_t shared_bytes;
  cudaStream_t stream;
};

// Runs body(context) as every thread of every block of the grid; returns after the last block.
void run_kernel(const char* name, const LaunchConfig& config, void (*body)(void*),
                void* context);

// Aborts the running launch with a message (never returns to the caller).
[[noreturn]] void fault(const char* format, ...) __attribute__((format(printf, 1, 2)));

// Block barrier; `value` takes part in the reduction `op` ('+', '&', '|', 0 for none).
int block_barrier(int value, char op);
// Warp rendezvous of the lanes in `mask`: once the last of them arrives it runs
// collective(lanes, mask), lanes[l] being the `args` lane l passed (they live on the waiting
// lanes' stacks); then all continue. Every lane of the mask must call with the same collective;
// a null one is a plain __syncwarp.
using Collective = void (*)(void* const* lanes, unsigned mask);
void warp_collective(unsigned mask, void* args, Collective collective);
unsigned live_lanes();
unsigned lane_id();
// Lets the other threads of the block run (spin-waits, __nanosleep).
void yield_thread();
void* dynamic_shared();
// `bytes` of the running block's shared memory, poisoned.
void* allocate_shared(size_t bytes, size_t alignment);
// Changes with every block run, so that shared variables know when to be carved anew.
uint64_t block_serial();
long long clock_ticks();

// Where shfl (mode 0: idx, 1: up, 2: down, 3: bfly) reads from, by the PTX rules: a source
// outside the lane's width-segment yields the lane's own value.
inline unsigned shuffle_source(int mode, unsigned lane, int operand, int width) {
  const unsigned segment_mask = 32u - static_cast<unsigned>(width);  // shfl's c & 0x1f00 >> 8
  const unsigned clamp = mode == 1 ? 0u : 31u;
  const unsigned min_lane = lane & segment_mask;
  const unsigned max_lane = min_lane | (clamp & ~segment_mask);
  const unsigned b = static_cast<unsigned>(operand);
  switch (mode) {
    case 0: {
      const unsigned j = min_lane | (b & ~segment_mask & 31u);
      return j <= max_lane ? j : lane;
    }
    case 1: {
      const int j = static_cast<int>(lane) - operand;
      return j >= static_cast<int>(max_lane) ? static_cast<unsigned>(j) : lane;
    }
    case 2: {
      const unsigned j = lane + b;
      return j <= max_lane ? j : lane;
    }
    default: {
      const unsigned j = lane ^ b;
      return j <= max_lane ? j : lane;
    }
  }
}

template <typename T>
struct ShuffleArgs {
  T value;
  int mode, operand, width;
  T result;
};

template <typename T>
void shuffle_collective(void* const* lanes, unsigned mask) {
  for (unsigned lane = 0; lane < 32; ++lane) {
    if (!(mask >> lane & 1u)) continue;
    auto* mine = static_cast<ShuffleArgs<T>*>(lanes[lane]);
    const unsigned source = shuffle_source(mine->mode, lane, mine->operand, mine->width);
    if (!(mask >> source & 1u)) {
      fault("lane %u shuffles from lane %u, which is not in mask %#x", lane, source, mask);
    }
    mine->result = static_cast<ShuffleArgs<T>*>(lanes[source])->value;
  }
}

template <typename T>
T shuffle(int mode, unsigned mask, T value, int operand, int width) {
  if (width <= 0 || width > 32 || (width & (width - 1)) != 0) fault("shfl width %d", width);
  ShuffleArgs<T> args{value, mode, operand, width, value};
  warp_collective(mask, &args, shuffle_collective<T>);
  return args.result;
}

template <typename T>
struct ReduceArgs {
  T value, result;
};

// Every lane of the mask gets op over the lanes' values in lane order.
template <typename T, typename Op>
void reduce_collective(void* const* lanes, unsigned mask) {
  T total{};
  bool first = true;
  for (unsigned lane = 0; lane < 32; ++lane) {
    if (!(mask >> lane & 1u)) continue;
    const T value = static_cast<ReduceArgs<T>*>(lanes[lane])->value;
    total = first ? value : Op{}(total, value);
    first = false;
  }
  for (unsigned lane = 0; lane < 32; ++lane) {
    if (mask >> lane & 1u) static_cast<ReduceArgs<T>*>(lanes[lane])->result = total;
  }
}

template <typename Op, typename T>
T warp_reduce(unsigned mask, T value) {
  ReduceArgs<T> args{value, value};
  warp_collective(mask, &args, reduce_collective<T, Op>);
  return args.result;
}

struct Min {
  template <typename T>
  T operator()(T a, T b) const {
    return b < a ? b : a;
  }
};
struct Max {
  template <typename T>
  T operator()(T a, T b) const {
    return a < b ? b : a;
  }
};

template <typename T>
struct MatchArgs {
  T value;
  unsigned peers;
};

// Each lane of the mask gets the lanes of the mask holding the same bits.
template <typename T>
void match_collective(void* const* lanes, unsigned mask) {
  for (unsigned lane = 0; lane < 32; ++lane) {
    if (!(mask >> lane & 1u)) continue;
    auto* mine = static_cast<MatchArgs<T>*>(lanes[lane]);
    mine->peers = 0;
    for (unsigned other = 0; other < 32; ++other) {
      if ((mask >> other & 1u) &&
          std::memcmp(&static_cast<MatchArgs<T>*>(lanes[other])->value, &mine->value,
                      sizeof(T)) == 0) {
        mine->peers |= 1u << other;
      }
    }
  }
}

template <typename T>
unsigned match_any(unsigned mask, T value) {
  MatchArgs<T> args{value, 0};
  warp_collective(mask, &args, match_collective<T>);
  return args.peers;
}

template <typename... Params>
struct Launch {
  const char* name;
  void (*kernel)(Params...);
  LaunchConfig config;

  // Converts the arguments as a CUDA launch does, then runs the grid.
  template <typename... Args>
  void operator()(Args&&... args) const {
    struct Call {
      void (*kernel)(Params...);
      std::tuple<Params...> params;
    } call{kernel, std::tuple<Params...>(std::forward<Args>(args)...)};
    run_kernel(name, config, [](void* context) {
      auto* c = static_cast<Call*>(context);
      std::apply(c->kernel, c->params);
    }, &call);
  }
};

template <typename... Params>
Launch<Params...> launch(const char* name, void (*kernel)(Params...), dim3 grid, dim3 block,
                         size_t shared_bytes = 0, cudaStream_t stream = nullptr) {
  return {name, kernel, {grid, block, shared_bytes, stream}};
}

// One __shared__ variable: `Site` (a lambda type) is unique to the declaration and to the
// instantiation of the kernel it appears in. The first thread of a block to get here carves it.
template <typename T, size_t kAlign, typename Site>
T& shared_variable(Site) {
  static uint64_t serial = 0;
  static void* address = nullptr;
  if (address == nullptr || serial != block_serial()) {
    address = allocate_shared(sizeof(T), std::max<size_t>({kAlign, alignof(T), 16}));
    serial = block_serial();
  }
  return *static_cast<T*>(address);
}

template <typename T>
T* dynamic_shared_as() {
  return static_cast<T*>(dynamic_shared());
}

}  // namespace wvq_emu

#define threadIdx (static_cast<const uint3&>(::wvq_emu::builtins.thread_idx))
#define blockIdx (static_cast<const uint3&>(::wvq_emu::builtins.block_idx))
#define blockDim (static_cast<const dim3&>(::wvq_emu::builtins.block_dim))
#define gridDim (static_cast<const dim3&>(::wvq_emu::builtins.grid_dim))
constexpr int warpSize = 32;

template <typename T, typename Symbol>
cudaError_t cudaMemcpyToSymbol(Symbol& symbol, const T* source, size_t bytes, size_t offset = 0,
                               cudaMemcpyKind = cudaMemcpyHostToDevice) {
  std::memcpy(reinterpret_cast<char*>(&symbol) + offset, source, bytes);
  return cudaSuccess;
}
template <typename Kernel>
cudaError_t cudaFuncSetAttribute(Kernel*, cudaFuncAttribute, int) {
  return cudaSuccess;
}

// ---- synchronisation and warp primitives ----

inline void __syncthreads() { ::wvq_emu::block_barrier(0, 0); }
inline int __syncthreads_count(int predicate) {
  return ::wvq_emu::block_barrier(predicate != 0, '+');
}
inline int __syncthreads_and(int predicate) {
  return ::wvq_emu::block_barrier(predicate != 0, '&');
}
inline int __syncthreads_or(int predicate) {
  return ::wvq_emu::block_barrier(predicate != 0, '|');
}
inline void __syncwarp(unsigned mask = 0xffffffffu) {
  ::wvq_emu::warp_collective(mask, nullptr, nullptr);
}
inline unsigned __activemask() { return ::wvq_emu::live_lanes(); }

template <typename T>
T __shfl_sync(unsigned mask, T value, int source_lane, int width = warpSize) {
  return ::wvq_emu::shuffle(0, mask, value, source_lane, width);
}
template <typename T>
T __shfl_up_sync(unsigned mask, T value, unsigned delta, int width = warpSize) {
  return ::wvq_emu::shuffle(1, mask, value, static_cast<int>(delta), width);
}
template <typename T>
T __shfl_down_sync(unsigned mask, T value, unsigned delta, int width = warpSize) {
  return ::wvq_emu::shuffle(2, mask, value, static_cast<int>(delta), width);
}
template <typename T>
T __shfl_xor_sync(unsigned mask, T value, int lane_mask, int width = warpSize) {
  return ::wvq_emu::shuffle(3, mask, value, lane_mask, width);
}

inline unsigned __ballot_sync(unsigned mask, int predicate) {
  const unsigned vote = predicate != 0 ? 1u << ::wvq_emu::lane_id() : 0u;
  return ::wvq_emu::warp_reduce<std::bit_or<>>(mask, vote);
}
inline int __any_sync(unsigned mask, int predicate) { return __ballot_sync(mask, predicate) != 0; }
inline int __all_sync(unsigned mask, int predicate) {
  return __ballot_sync(mask, predicate) == mask;
}
inline int __uni_sync(unsigned mask, int predicate) {
  const unsigned votes = __ballot_sync(mask, predicate);
  return votes == 0 || votes == mask;
}
template <typename T>
unsigned __match_any_sync(unsigned mask, T value) {
  return ::wvq_emu::match_any(mask, value);
}
template <typename T>
unsigned __match_all_sync(unsigned mask, T value, int* predicate) {
  const unsigned peers = ::wvq_emu::match_any(mask, value);
  *predicate = peers == mask;
  return peers == mask ? mask : 0u;
}
inline unsigned __reduce_add_sync(unsigned mask, unsigned value) {
  return ::wvq_emu::warp_reduce<std::plus<>>(mask, value);
}
inline int __reduce_add_sync(unsigned mask, int value) {
  return ::wvq_emu::warp_reduce<std::plus<>>(mask, value);
}
template <typename T>
T __reduce_min_sync(unsigned mask, T value) {
  return ::wvq_emu::warp_reduce<::wvq_emu::Min>(mask, value);
}
template <typename T>
T __reduce_max_sync(unsigned mask, T value) {
  return ::wvq_emu::warp_reduce<::wvq_emu::Max>(mask, value);
}
inline unsigned __reduce_and_sync(unsigned mask, unsigned value) {
  return ::wvq_emu::warp_reduce<std::bit_and<>>(mask, value);
}
inline unsigned __reduce_or_sync(unsigned mask, unsigned value) {
  return ::wvq_emu::warp_reduce<std::bit_or<>>(mask, value);
}
inline unsigned __reduce_xor_sync(unsigned mask, unsigned value) {
  return ::wvq_emu::warp_reduce<std::bit_xor<>>(mask, value);
}

inline void __threadfence() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
inline void __threadfence_block() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
inline void __threadfence_system() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
inline void __nanosleep(unsigned) { ::wvq_emu::yield_thread(); }
[[noreturn]] inline void __trap() { ::wvq_emu::fault("__trap()"); }
inline long long clock64() { return ::wvq_emu::clock_ticks(); }
inline unsigned __lanemask_lt() { return (1u << ::wvq_emu::lane_id()) - 1u; }

// ---- atomics: read-modify-write through std::atomic_ref, returning the old value ----

namespace wvq_emu {
template <typename T, typename Fn>
T atomic_update(T* address, Fn&& next) {
  std::atomic_ref<T> ref(*address);
  T old = ref.load();
  while (!ref.compare_exchange_weak(old, next(old))) {
  }
  return old;
}
}  // namespace wvq_emu

namespace wvq_emu {
template <typename T, typename... U>
concept OneOf = (std::is_same_v<T, U> || ...);
// The types CUDA's atomics take; the value's type follows the pointer's, as with the
// overloads of CUDA.
template <typename T>
concept AtomicInteger = OneOf<T, int, unsigned, long long, unsigned long long>;
template <typename T>
concept AtomicNumber = AtomicInteger<T> || OneOf<T, float, double>;
template <typename T>
using Value = std::type_identity_t<T>;
}  // namespace wvq_emu

template <::wvq_emu::AtomicNumber T>
T atomicAdd(T* address, ::wvq_emu::Value<T> value) {
  return ::wvq_emu::atomic_update(address, [value](T old) { return static_cast<T>(old + value); });
}
template <::wvq_emu::AtomicNumber T>
T atomicExch(T* address, ::wvq_emu::Value<T> value) {
  return std::atomic_ref<T>(*address).exchange(value);
}
template <::wvq_emu::AtomicInteger T>
T atomicMin(T* address, ::wvq_emu::Value<T> value) {
  return ::wvq_emu::atomic_update(address, [value](T old) { return value < old ? value : old; });
}
template <::wvq_emu::AtomicInteger T>
T atomicMax(T* address, ::wvq_emu::Value<T> value) {
  return ::wvq_emu::atomic_update(address, [value](T old) { return old < value ? value : old; });
}
template <::wvq_emu::AtomicInteger T>
T atomicAnd(T* address, ::wvq_emu::Value<T> value) {
  return std::atomic_ref<T>(*address).fetch_and(value);
}
template <::wvq_emu::AtomicInteger T>
T atomicOr(T* address, ::wvq_emu::Value<T> value) {
  return std::atomic_ref<T>(*address).fetch_or(value);
}
template <::wvq_emu::AtomicInteger T>
T atomicXor(T* address, ::wvq_emu::Value<T> value) {
  return std::atomic_ref<T>(*address).fetch_xor(value);
}
template <typename T>
  requires ::wvq_emu::AtomicInteger<T> || std::is_same_v<T, unsigned short>
T atomicCAS(T* address, ::wvq_emu::Value<T> compare, ::wvq_emu::Value<T> value) {
  std::atomic_ref<T>(*address).compare_exchange_strong(compare, value);
  return compare;
}
inline int atomicSub(int* a, int v) { return atomicAdd(a, -v); }
inline unsigned atomicSub(unsigned* a, unsigned v) { return atomicAdd(a, 0u - v); }
inline unsigned atomicInc(unsigned* a, unsigned limit) {
  return ::wvq_emu::atomic_update(a, [limit](unsigned o) { return o >= limit ? 0u : o + 1; });
}
inline unsigned atomicDec(unsigned* a, unsigned limit) {
  return ::wvq_emu::atomic_update(
      a, [limit](unsigned o) { return o == 0 || o > limit ? limit : o - 1; });
}
// Scoped variants: every scope is the same on one host thread.
#define atomicAdd_block atomicAdd
#define atomicAdd_system atomicAdd
#define atomicMin_block atomicMin
#define atomicMax_block atomicMax
#define atomicCAS_block atomicCAS

// ---- integer, bit and float intrinsics ----

inline int __popc(unsigned v) { return std::popcount(v); }
inline int __popcll(unsigned long long v) { return std::popcount(v); }
inline int __clz(int v) { return std::countl_zero(static_cast<unsigned>(v)); }
inline int __clzll(long long v) { return std::countl_zero(static_cast<unsigned long long>(v)); }
inline int __ffs(int v) { return v == 0 ? 0 : std::countr_zero(static_cast<unsigned>(v)) + 1; }
inline int __ffsll(long long v) {
  return v == 0 ? 0 : std::countr_zero(static_cast<unsigned long long>(v)) + 1;
}
inline unsigned __brev(unsigned v) {
  unsigned r = 0;
  for (int i = 0; i < 32; ++i) r |= ((v >> i) & 1u) << (31 - i);
  return r;
}
inline unsigned __umulhi(unsigned a, unsigned b) {
  return static_cast<unsigned>((static_cast<unsigned long long>(a) * b) >> 32);
}
inline unsigned long long __umul64hi(unsigned long long a, unsigned long long b) {
  return static_cast<unsigned long long>((static_cast<unsigned __int128>(a) * b) >> 64);
}
inline int __float_as_int(float v) { return std::bit_cast<int>(v); }
inline unsigned __float_as_uint(float v) { return std::bit_cast<unsigned>(v); }
inline float __int_as_float(int v) { return std::bit_cast<float>(v); }
inline float __uint_as_float(unsigned v) { return std::bit_cast<float>(v); }
inline long long __double_as_longlong(double v) { return std::bit_cast<long long>(v); }
inline double __longlong_as_double(long long v) { return std::bit_cast<double>(v); }

inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }
inline float __frcp_rn(float a) { return 1.0f / a; }
inline float __fsqrt_rn(float a) { return std::sqrt(a); }
inline double __dadd_rn(double a, double b) { return a + b; }
inline double __dmul_rn(double a, double b) { return a * b; }
inline double __fma_rn(double a, double b, double c) { return std::fma(a, b, c); }
// The fast approximations, computed exactly: results differ from the GPU's in the last bits.
inline float __fdividef(float a, float b) { return a / b; }
inline float __expf(float a) { return std::exp(a); }
inline float __exp10f(float a) { return std::pow(10.0f, a); }
inline float __logf(float a) { return std::log(a); }
inline float __log2f(float a) { return std::log2(a); }
inline float __powf(float a, float b) { return std::pow(a, b); }
inline float __sinf(float a) { return std::sin(a); }
inline float __cosf(float a) { return std::cos(a); }
inline float __saturatef(float a) { return a < 0.0f ? 0.0f : (a > 1.0f ? 1.0f : a); }
inline float rsqrtf(float a) { return 1.0f / std::sqrt(a); }
inline double rsqrt(double a) { return 1.0 / std::sqrt(a); }
inline float __frsqrt_rn(float a) { return 1.0f / std::sqrt(a); }
inline float __int2float_rn(int v) { return static_cast<float>(v); }
inline float __ll2float_rn(long long v) { return static_cast<float>(v); }
inline float __double2float_rn(double v) { return static_cast<float>(v); }
inline int __float2int_rn(float v) { return static_cast<int>(std::nearbyint(v)); }
inline int __float2int_rz(float v) { return static_cast<int>(v); }
inline int __float2int_rd(float v) { return static_cast<int>(std::floor(v)); }
inline int __float2int_ru(float v) { return static_cast<int>(std::ceil(v)); }

// CUDA's min/max: overloads for the arithmetic types (not templates, so mixed arguments resolve
// by the usual conversions as with nvcc).
#define WVQ_EMU_MIN_MAX(T)                          \
  inline T min(T a, T b) { return b < a ? b : a; } \
  inline T max(T a, T b) { return a < b ? b : a; }
WVQ_EMU_MIN_MAX(int)
WVQ_EMU_MIN_MAX(unsigned)
WVQ_EMU_MIN_MAX(long)
WVQ_EMU_MIN_MAX(unsigned long)
WVQ_EMU_MIN_MAX(long long)
WVQ_EMU_MIN_MAX(unsigned long long)
#undef WVQ_EMU_MIN_MAX
inline float min(float a, float b) { return std::fmin(a, b); }
inline float max(float a, float b) { return std::fmax(a, b); }
inline double min(double a, double b) { return std::fmin(a, b); }
inline double max(double a, double b) { return std::fmax(a, b); }

// Cache-hinted loads and stores are plain accesses.
template <typename T>
T __ldg(const T* p) {
  return *p;
}
template <typename T>
T __ldcg(const T* p) {
  return *p;
}
template <typename T>
T __ldca(const T* p) {
  return *p;
}
template <typename T>
T __ldcs(const T* p) {
  return *p;
}
template <typename T>
T __ldlu(const T* p) {
  return *p;
}
template <typename T>
void __stcg(T* p, T v) {
  *p = v;
}
template <typename T>
void __stcs(T* p, T v) {
  *p = v;
}
template <typename T>
void __stwb(T* p, T v) {
  *p = v;
}

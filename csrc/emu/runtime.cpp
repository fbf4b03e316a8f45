// The emulator's runtime (see cuda_emu.h): fibers, the block scheduler, barriers and warp
// rendezvous, faults, the watchdog and the host runtime API.
#include <sys/mman.h>

#include <array>
#include <atomic>
#include <chrono>
#include <cstdarg>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <numeric>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "cuda_emu.h"

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/common_interface_defs.h>
#endif

#if !defined(__x86_64__)
#error "the CUDA emulator switches fibers with x86-64 assembly"
#endif

// Saves the callee-saved registers and the stack pointer of the running context in *save and
// resumes the one whose stack pointer is `resume`. A new fiber's stack holds a frame that
// "returns" into wvq_emu_fiber_start with the fiber in r12.
asm(R"(
  .text
  .globl wvq_emu_switch_context
  .hidden wvq_emu_switch_context
  .type wvq_emu_switch_context, @function
wvq_emu_switch_context:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size wvq_emu_switch_context, .-wvq_emu_switch_context

  .globl wvq_emu_fiber_start
  .hidden wvq_emu_fiber_start
  .type wvq_emu_fiber_start, @function
wvq_emu_fiber_start:
  movq %r12, %rdi
  call wvq_emu_fiber_main
  ud2
  .size wvq_emu_fiber_start, .-wvq_emu_fiber_start
)");

extern "C" {
void wvq_emu_switch_context(void** save, void* resume) __attribute__((visibility("hidden")));
void wvq_emu_fiber_start() __attribute__((visibility("hidden")));
}

namespace wvq_emu {

Builtins builtins;

namespace {

constexpr size_t kStackBytes = size_t{256} << 10;
constexpr size_t kGuardBytes = size_t{4} << 10;  // below each stack: an overflow faults
constexpr int kMaxThreads = 1024;
constexpr size_t kMaxSharedBytes = 232448;  // sm_90's opt-in limit per block
constexpr size_t kMaxStaticSharedBytes = 48 << 10;  // static __shared__ per block (ptxas)
// Poison for shared memory, alternating per block: as float 0xcfcfcfcf = -6.97e9, double
// about -4e75, int32 negative; 0x4f4f4f4f = 3.5e9, double about 3e74, int32 positive.
constexpr unsigned char kPoison[2] = {0xcf, 0x4f};

enum class Wait { kRunnable, kBlock, kWarp, kDone };

struct Fiber {
  void* sp = nullptr;
  char* stack = nullptr;  // the mapping, guard page included
  unsigned linear = 0;
  uint3 index{};
  Wait wait = Wait::kRunnable;
  const uint64_t* release = nullptr;  // the generation counter this fiber waits on
  uint64_t generation = 0;
  void* fake_stack = nullptr;  // AddressSanitizer's, while the fiber is switched out
};

// Lanes of one warp meeting in a rendezvous with one mask.
struct WarpGroup {
  unsigned mask = 0, arrived = 0;
  uint64_t generation = 0;
  Collective collective = nullptr;
};

struct Warp {
  unsigned live = 0;  // lanes that exist and have not exited
  std::array<WarpGroup, 4> groups;
  void* args[32] = {};
};

enum class Schedule { kForward, kReverse, kAlternate, kRandom };

struct Emulator {
  std::mutex launch_mutex;
  std::vector<std::unique_ptr<Fiber>> fibers;
  Fiber* current = nullptr;
  void* scheduler_sp = nullptr;
  // The scheduler's (the launching thread's) stack, for AddressSanitizer.
  const void* scheduler_stack = nullptr;
  size_t scheduler_stack_bytes = 0;
  void* scheduler_fake_stack = nullptr;
  // The running launch and block.
  const char* kernel = nullptr;
  void (*body)(void*) = nullptr;
  void* context = nullptr;
  unsigned threads = 0, live = 0;
  std::vector<Warp> warps;
  unsigned arrived = 0;
  uint64_t block_generation = 0;
  char reduce_op = 0;
  int reduction = 0, reduced = 0;
  // Shared memory: static variables carved per block from `arena`, then the launch's dynamic
  // shared memory.
  alignas(128) unsigned char arena[kMaxStaticSharedBytes];
  alignas(128) unsigned char dynamic[kMaxSharedBytes];
  size_t arena_used = 0, dynamic_bytes = 0;
  uint64_t block_serial = 0;
  unsigned char poison = 0;
  bool faulted = false;
  long long ticks = 0;
  // Errors: `sticky` after a fault, until wvq_emu_reset().
  cudaError_t last_error = cudaSuccess;
  bool sticky = false;
  std::string fault_message;
  Schedule schedule = Schedule::kAlternate;
  std::mt19937_64 random{0};
  // The watchdog's view of the running launch.
  std::atomic<long long> launch_started_ms{0};
  std::atomic<const char*> running{nullptr};
  std::once_flag watchdog_started;
  double timeout_s = 300.0;
  bool trace = false;  // WVQ_EMU_TRACE: one line per launch on stderr
};

long long now_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

bool parse_schedule(Emulator& e, const char* text) {
  const std::string name = text;
  if (name == "forward") {
    e.schedule = Schedule::kForward;
  } else if (name == "reverse") {
    e.schedule = Schedule::kReverse;
  } else if (name == "alternate") {
    e.schedule = Schedule::kAlternate;
  } else if (name.rfind("random", 0) == 0) {
    e.schedule = Schedule::kRandom;
    e.random.seed(name.size() > 7 ? std::strtoull(name.c_str() + 7, nullptr, 10) : 0);
  } else {
    return false;
  }
  return true;
}

// WVQ_EMU_SCHEDULE, WVQ_EMU_TIMEOUT and WVQ_EMU_TRACE, read once when the emulator starts.
void read_environment(Emulator& e) {
  if (const char* schedule = std::getenv("WVQ_EMU_SCHEDULE")) {
    if (!parse_schedule(e, schedule)) {
      std::fprintf(stderr, "wvq_emu: unknown WVQ_EMU_SCHEDULE %s, using alternate\n", schedule);
    }
  }
  if (const char* timeout = std::getenv("WVQ_EMU_TIMEOUT")) e.timeout_s = std::atof(timeout);
  if (const char* trace = std::getenv("WVQ_EMU_TRACE")) e.trace = *trace != '\0' && *trace != '0';
}

Emulator& emu() {
  // Never destroyed: the watchdog may outlive main.
  static Emulator* instance = [] {
    auto* e = new Emulator();
    read_environment(*e);
    return e;
  }();
  return *instance;
}

// Aborts the process when one launch runs past the timeout: a thread looping forever never
// returns to the scheduler, so nothing else can stop it.
void watchdog() {
  Emulator& e = emu();
  for (;;) {
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
    const char* kernel = e.running.load();
    const long long started = e.launch_started_ms.load();
    if (kernel != nullptr && now_ms() - started > e.timeout_s * 1000.0) {
      std::fprintf(stderr, "wvq_emu: kernel %s ran longer than %g s (WVQ_EMU_TIMEOUT); aborting\n",
                   kernel, e.timeout_s);
      std::abort();
    }
  }
}

Fiber& fiber(unsigned linear) {
  Emulator& e = emu();
  while (e.fibers.size() <= linear) {
    auto f = std::make_unique<Fiber>();
    void* mapping = mmap(nullptr, kStackBytes + kGuardBytes, PROT_READ | PROT_WRITE,
                         MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (mapping == MAP_FAILED) {
      std::fprintf(stderr, "wvq_emu: cannot map a fiber stack\n");
      std::abort();
    }
    mprotect(mapping, kGuardBytes, PROT_NONE);
    f->stack = static_cast<char*>(mapping);
    e.fibers.push_back(std::move(f));
  }
  return *e.fibers[linear];
}

// A fresh frame at the top of the fiber's stack that enters wvq_emu_fiber_start.
void start_frame(Fiber& f) {
  // Stack tops staggered by 64 bytes per fiber (within 4 KiB), so that the fibers' hot frames
  // do not all fall into the same cache sets.
  const uintptr_t stagger = (f.linear % 64) * 64;
  auto top =
      reinterpret_cast<uintptr_t>(f.stack + kGuardBytes + kStackBytes - stagger) & ~uintptr_t{15};
  auto* frame = reinterpret_cast<uintptr_t*>(top - 8 - 6 * sizeof(uintptr_t));
  // Popped as r15, r14, r13, r12, rbx, rbp, then the return address; r12 carries the fiber.
  frame[0] = frame[1] = frame[2] = frame[4] = frame[5] = 0;
  frame[3] = reinterpret_cast<uintptr_t>(&f);
  frame[6] = reinterpret_cast<uintptr_t>(&wvq_emu_fiber_start);
  f.sp = frame;
}

// Switches from the running context, whose stack pointer goes to *save, to `resume`, whose
// stack spans [stack, stack + bytes). Under AddressSanitizer the switch is announced, with the
// leaving context's fake stack kept in *fake_stack (null: the context never resumes).
void switch_context(void** save, void* resume, const void* stack, size_t bytes,
                    void** fake_stack) {
#if defined(__SANITIZE_ADDRESS__)
  __sanitizer_start_switch_fiber(fake_stack, stack, bytes);
#endif
  wvq_emu_switch_context(save, resume);
#if defined(__SANITIZE_ADDRESS__)
  __sanitizer_finish_switch_fiber(fake_stack != nullptr ? *fake_stack : nullptr, nullptr, nullptr);
#endif
}

// From a fiber back to the scheduler; `resumable` is false when the fiber is done for good.
void to_scheduler(Fiber& f, bool resumable) {
  Emulator& e = emu();
  switch_context(&f.sp, e.scheduler_sp, e.scheduler_stack, e.scheduler_stack_bytes,
                 resumable ? &f.fake_stack : nullptr);
}

std::string where() {
  const Emulator& e = emu();
  const uint3 b = builtins.block_idx;
  std::string text = std::string("kernel ") + (e.kernel ? e.kernel : "?") + ", block (" +
                     std::to_string(b.x) + "," + std::to_string(b.y) + "," + std::to_string(b.z) +
                     ")";
  if (e.current != nullptr) {
    const uint3 t = e.current->index;
    text += ", thread (" + std::to_string(t.x) + "," + std::to_string(t.y) + "," +
            std::to_string(t.z) + ")";
  }
  return text;
}

void record_fault(const std::string& message) {
  Emulator& e = emu();
  e.faulted = true;
  e.sticky = true;
  e.last_error = cudaErrorLaunchFailure;
  e.fault_message = message;
  std::fprintf(stderr, "wvq_emu: %s\n", message.c_str());
}

void suspend(Wait wait, const uint64_t* release) {
  Emulator& e = emu();
  Fiber* me = e.current;
  me->wait = wait;
  me->release = release;
  me->generation = release != nullptr ? *release : 0;
  to_scheduler(*me, true);
}

void release_block() {
  Emulator& e = emu();
  e.reduced = e.reduction;
  e.arrived = 0;
  ++e.block_generation;
}

bool ready(const Fiber& f) {
  switch (f.wait) {
    case Wait::kRunnable: return true;
    case Wait::kDone: return false;
    default: return *f.release != f.generation;
  }
}

std::string deadlock_report() {
  const Emulator& e = emu();
  std::string text = "deadlock in " + where() + ":";
  unsigned at_barrier = 0;
  for (unsigned t = 0; t < e.threads; ++t) at_barrier += e.fibers[t]->wait == Wait::kBlock;
  text += " " + std::to_string(at_barrier) + " of " + std::to_string(e.live) +
          " live threads wait at __syncthreads";
  for (size_t w = 0; w < e.warps.size(); ++w) {
    for (const WarpGroup& g : e.warps[w].groups) {
      if (g.mask == 0) continue;
      char line[160];
      std::snprintf(line, sizeof line, "; warp %zu: lanes %#x of mask %#x arrived (live %#x)", w,
                    g.arrived, g.mask, e.warps[w].live);
      text += line;
    }
  }
  return text;
}

// Runs the block's fibers until all have exited: passes over the fibers in schedule order,
// resuming each that is ready; a new pass starts whenever a block barrier opened, so that each
// phase between barriers runs in one order. A pass that resumes nothing is a deadlock.
void run_block() {
  Emulator& e = emu();
  std::vector<unsigned> order(e.threads);
  bool backwards = e.schedule == Schedule::kReverse;
  while (e.live > 0 && !e.faulted) {
    for (unsigned k = 0; k < e.threads; ++k) order[k] = backwards ? e.threads - 1 - k : k;
    if (e.schedule == Schedule::kRandom) std::shuffle(order.begin(), order.end(), e.random);
    const uint64_t generation = e.block_generation;
    bool resumed = false;
    for (unsigned t : order) {
      Fiber& f = *e.fibers[t];
      if (!ready(f)) continue;
      e.current = &f;
      builtins.thread_idx = f.index;
      f.wait = Wait::kRunnable;
      switch_context(&e.scheduler_sp, f.sp, f.stack + kGuardBytes, kStackBytes,
                     &e.scheduler_fake_stack);
      e.current = nullptr;
      resumed = true;
      if (e.faulted || e.block_generation != generation) break;
    }
    if (e.faulted) return;
    if (!resumed) {
      record_fault(deadlock_report());
      return;
    }
    if (e.block_generation != generation && e.schedule == Schedule::kAlternate) {
      backwards = !backwards;
    }
  }
}

void start_block(const LaunchConfig& config, uint3 block, unsigned char poison) {
  Emulator& e = emu();
  builtins.block_idx = block;
  e.live = e.threads;
  e.arrived = 0;
  e.warps.assign((e.threads + 31) / 32, Warp{});
  for (unsigned t = 0; t < e.threads; ++t) {
    Fiber& f = fiber(t);
    f.linear = t;
    f.index = {t % config.block.x, t / config.block.x % config.block.y,
               t / (config.block.x * config.block.y)};
    f.wait = Wait::kRunnable;
    start_frame(f);
    e.warps[t / 32].live |= 1u << (t % 32);
  }
  e.poison = poison;
  e.arena_used = 0;
  ++e.block_serial;
  std::memset(e.dynamic, poison, e.dynamic_bytes);
}

const char* invalid_config(const LaunchConfig& c) {
  const uint64_t threads = uint64_t{c.block.x} * c.block.y * c.block.z;
  if (threads == 0 || threads > kMaxThreads || c.block.z > 64) return "block size";
  if (c.grid.x == 0 || c.grid.x > 0x7fffffffu || c.grid.y == 0 || c.grid.y > 65535 ||
      c.grid.z == 0 || c.grid.z > 65535) {
    return "grid size";
  }
  if (c.shared_bytes > kMaxSharedBytes) return "dynamic shared memory size";
  return nullptr;
}

}  // namespace

// Entered on a fresh fiber stack: runs the kernel, then leaves for good.
extern "C" __attribute__((visibility("hidden"), noreturn)) void wvq_emu_fiber_main(Fiber* f) {
  Emulator& e = emu();
#if defined(__SANITIZE_ADDRESS__)
  __sanitizer_finish_switch_fiber(nullptr, &e.scheduler_stack, &e.scheduler_stack_bytes);
#endif
  e.body(e.context);
  Warp& warp = e.warps[f->linear / 32];
  for (const WarpGroup& g : warp.groups) {
    if (g.mask >> (f->linear % 32) & 1u) {
      fault("exited while lanes %#x of mask %#x wait for it", g.arrived, g.mask);
    }
  }
  f->wait = Wait::kDone;
  --e.live;
  warp.live &= ~(1u << (f->linear % 32));
  if (e.arrived > 0 && e.arrived == e.live) release_block();  // it no longer counts
  to_scheduler(*f, false);
  __builtin_unreachable();
}

void run_kernel(const char* name, const LaunchConfig& config, void (*body)(void*),
                void* context) {
  Emulator& e = emu();
  if (e.current != nullptr) fault("kernel %s launched from a kernel", name);
  const std::lock_guard<std::mutex> lock(e.launch_mutex);
  std::call_once(e.watchdog_started, [] { std::thread(watchdog).detach(); });
  if (e.sticky) return;  // after a fault every launch fails, as on a GPU
  if (const char* what = invalid_config(config)) {
    std::fprintf(stderr, "wvq_emu: launch of %s: invalid %s\n", name, what);
    e.last_error = cudaErrorInvalidConfiguration;
    return;
  }
  e.kernel = name;
  e.body = body;
  e.context = context;
  e.threads = config.block.x * config.block.y * config.block.z;
  e.dynamic_bytes = config.shared_bytes;
  builtins.block_dim = config.block;
  builtins.grid_dim = config.grid;
  e.faulted = false;
  e.launch_started_ms = now_ms();
  e.running = name;
  // Blocks in grid order, or reversed or permuted with the schedule (a stride coprime to the
  // block count visits every block once), so that results cannot depend on block order.
  const uint64_t blocks = uint64_t{config.grid.x} * config.grid.y * config.grid.z;
  uint64_t stride = 1, offset = 0;
  if (e.schedule == Schedule::kRandom) {
    offset = e.random() % blocks;
    do stride = 1 + e.random() % blocks; while (std::gcd(stride, blocks) != 1);
  }
  for (uint64_t k = 0; k < blocks && !e.faulted; ++k) {
    const uint64_t b =
        e.schedule == Schedule::kReverse ? blocks - 1 - k : (offset + k * stride) % blocks;
    const uint3 block{static_cast<unsigned>(b % config.grid.x),
                      static_cast<unsigned>(b / config.grid.x % config.grid.y),
                      static_cast<unsigned>(b / (uint64_t{config.grid.x} * config.grid.y))};
    start_block(config, block, kPoison[k % 2]);
    run_block();
  }
  e.running = nullptr;
  if (e.trace) {
    std::fprintf(stderr, "wvq_emu: %s grid (%u,%u,%u) block (%u,%u,%u): %lld ms\n", name,
                 config.grid.x, config.grid.y, config.grid.z, config.block.x, config.block.y,
                 config.block.z, now_ms() - e.launch_started_ms.load());
  }
  e.dynamic_bytes = 0;
  e.kernel = nullptr;
}

void fault(const char* format, ...) {
  char message[512];
  va_list args;
  va_start(args, format);
  std::vsnprintf(message, sizeof message, format, args);
  va_end(args);
  Emulator& e = emu();
  record_fault(where() + ": " + message);
  if (e.current == nullptr) std::abort();  // a device function called outside a kernel
  to_scheduler(*e.current, false);
  __builtin_unreachable();
}

int block_barrier(int value, char op) {
  Emulator& e = emu();
  if (e.current == nullptr) fault("__syncthreads outside a kernel");
  if (e.arrived == 0) {
    e.reduce_op = op;
    e.reduction = op == '&' ? 1 : 0;
  } else if (e.reduce_op != op) {
    fault("threads meet at different kinds of __syncthreads");
  }
  if (op == '+') e.reduction += value;
  if (op == '&') e.reduction &= value;
  if (op == '|') e.reduction |= value;
  if (++e.arrived == e.live) {
    release_block();
  } else {
    suspend(Wait::kBlock, &e.block_generation);
  }
  return e.reduced;
}

void warp_collective(unsigned mask, void* args, Collective collective) {
  Emulator& e = emu();
  if (e.current == nullptr) fault("warp primitive outside a kernel");
  const unsigned lane = e.current->linear % 32, index = e.current->linear / 32;
  Warp& warp = e.warps[index];
  if (!(mask >> lane & 1u)) fault("lane %u calls a warp primitive with mask %#x", lane, mask);
  if (mask & ~warp.live) {
    fault("mask %#x names lanes that exited or do not exist (live lanes %#x)", mask, warp.live);
  }
  WarpGroup* group = nullptr;
  WarpGroup* unused = nullptr;
  for (WarpGroup& g : warp.groups) {
    if (g.mask == mask) {
      group = &g;
    } else if (g.mask & mask) {
      fault("warp %u: mask %#x while lanes of mask %#x wait", index, mask, g.mask);
    } else if (g.mask == 0 && unused == nullptr) {
      unused = &g;
    }
  }
  if (group == nullptr) {
    if (unused == nullptr) fault("warp %u: too many groups of lanes at once", index);
    group = unused;
    group->mask = mask;
    group->collective = collective;
  } else if (group->collective != collective) {
    fault("warp %u: lanes of mask %#x meet at different warp primitives", index, mask);
  }
  warp.args[lane] = args;
  group->arrived |= 1u << lane;
  if (group->arrived != mask) {
    suspend(Wait::kWarp, &group->generation);
    return;
  }
  if (collective != nullptr) collective(warp.args, mask);
  group->mask = group->arrived = 0;
  ++group->generation;
}

unsigned live_lanes() {
  const Emulator& e = emu();
  return e.current != nullptr ? e.warps[e.current->linear / 32].live : 0u;
}

unsigned lane_id() {
  const Emulator& e = emu();
  return e.current != nullptr ? e.current->linear % 32 : 0u;
}

void yield_thread() {
  Emulator& e = emu();
  if (e.current != nullptr) suspend(Wait::kRunnable, nullptr);
}

void* dynamic_shared() { return emu().dynamic; }

void* allocate_shared(size_t bytes, size_t alignment) {
  Emulator& e = emu();
  if (e.current == nullptr) fault("__shared__ variable outside a kernel");
  const size_t offset = (e.arena_used + alignment - 1) / alignment * alignment;
  if (offset + bytes > kMaxStaticSharedBytes) {
    fault("static shared memory over %zu bytes per block", kMaxStaticSharedBytes);
  }
  e.arena_used = offset + bytes;
  std::memset(e.arena + offset, e.poison, bytes);
  return e.arena + offset;
}

uint64_t block_serial() { return emu().block_serial; }

long long clock_ticks() { return ++emu().ticks; }

}  // namespace wvq_emu

using wvq_emu::emu;

// ---- the emulator's own controls, for tests ----

extern "C" {

// Clears a fault and the last error; returns the error that was pending.
int wvq_emu_reset(void) {
  auto& e = emu();
  const int pending = e.last_error;
  e.last_error = cudaSuccess;
  e.sticky = false;
  e.fault_message.clear();
  return pending;
}

const char* wvq_emu_fault_message(void) { return emu().fault_message.c_str(); }

// forward, reverse, alternate or random:<seed>; returns 0, or -1 for an unknown name.
int wvq_emu_set_schedule(const char* name) {
  return wvq_emu::parse_schedule(emu(), name) ? 0 : -1;
}

// ---- the runtime API ----

cudaError_t cudaGetLastError(void) {
  auto& e = emu();
  const cudaError_t error = e.last_error;
  if (!e.sticky) e.last_error = cudaSuccess;
  return error;
}

cudaError_t cudaPeekAtLastError(void) { return emu().last_error; }

const char* cudaGetErrorName(cudaError_t error) {
  switch (error) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorInvalidDevice: return "cudaErrorInvalidDevice";
    case cudaErrorLaunchFailure: return "cudaErrorLaunchFailure";
    case cudaErrorNotSupported: return "cudaErrorNotSupported";
  }
  return "cudaErrorUnknown";
}

const char* cudaGetErrorString(cudaError_t error) { return cudaGetErrorName(error); }

cudaError_t cudaGetDevice(int* device) {
  *device = 0;
  return cudaSuccess;
}

cudaError_t cudaSetDevice(int device) {
  return device == 0 ? cudaSuccess : cudaErrorInvalidDevice;
}

cudaError_t cudaGetDeviceCount(int* count) {
  *count = 1;
  return cudaSuccess;
}

// An sm_90-like device (H100 SXM).
cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attribute, int device) {
  if (device != 0) return cudaErrorInvalidDevice;
  switch (attribute) {
    case cudaDevAttrMaxThreadsPerBlock: *value = 1024; break;
    case cudaDevAttrMaxBlockDimX: *value = 1024; break;
    case cudaDevAttrMaxBlockDimY: *value = 1024; break;
    case cudaDevAttrMaxBlockDimZ: *value = 64; break;
    case cudaDevAttrMaxGridDimX: *value = 0x7fffffff; break;
    case cudaDevAttrMaxGridDimY: *value = 65535; break;
    case cudaDevAttrMaxGridDimZ: *value = 65535; break;
    case cudaDevAttrMaxSharedMemoryPerBlock: *value = 49152; break;
    case cudaDevAttrWarpSize: *value = 32; break;
    case cudaDevAttrMaxRegistersPerBlock: *value = 65536; break;
    case cudaDevAttrClockRate: *value = 1980000; break;
    case cudaDevAttrMultiProcessorCount: *value = 132; break;
    case cudaDevAttrComputeCapabilityMajor: *value = 9; break;
    case cudaDevAttrComputeCapabilityMinor: *value = 0; break;
    case cudaDevAttrMaxSharedMemoryPerMultiprocessor: *value = 233472; break;
    case cudaDevAttrMaxRegistersPerMultiprocessor: *value = 65536; break;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: *value = 232448; break;
    case cudaDevAttrMaxThreadsPerMultiProcessor: *value = 2048; break;
    case cudaDevAttrL2CacheSize: *value = 50 << 20; break;
    default: return cudaErrorInvalidValue;
  }
  return cudaSuccess;
}

cudaError_t cudaGetDeviceProperties(cudaDeviceProp* prop, int device) {
  if (device != 0) return cudaErrorInvalidDevice;
  *prop = cudaDeviceProp{};
  std::snprintf(prop->name, sizeof prop->name, "wvq_emu sm_90");
  prop->major = 9;
  prop->minor = 0;
  prop->multiProcessorCount = 132;
  prop->warpSize = 32;
  prop->maxThreadsPerBlock = 1024;
  prop->maxThreadsPerMultiProcessor = 2048;
  prop->regsPerBlock = prop->regsPerMultiprocessor = 65536;
  prop->sharedMemPerBlock = 49152;
  prop->sharedMemPerBlockOptin = 232448;
  prop->sharedMemPerMultiprocessor = 233472;
  prop->totalGlobalMem = size_t{80} << 30;
  prop->maxThreadsDim[0] = prop->maxThreadsDim[1] = 1024;
  prop->maxThreadsDim[2] = 64;
  prop->maxGridSize[0] = 0x7fffffff;
  prop->maxGridSize[1] = prop->maxGridSize[2] = 65535;
  prop->l2CacheSize = 50 << 20;
  prop->clockRate = 1980000;
  return cudaSuccess;
}

// Launches are synchronous: every stream is always idle.
cudaError_t cudaDeviceSynchronize(void) { return emu().last_error; }
cudaError_t cudaStreamSynchronize(cudaStream_t) { return emu().last_error; }

cudaError_t cudaStreamCreate(cudaStream_t* stream) {
  *stream = nullptr;
  return cudaSuccess;
}

cudaError_t cudaStreamDestroy(cudaStream_t) { return cudaSuccess; }

cudaError_t cudaMalloc(void** pointer, size_t bytes) {
  *pointer = std::aligned_alloc(256, (bytes + 255) / 256 * 256 + 256);
  return *pointer != nullptr ? cudaSuccess : cudaErrorMemoryAllocation;
}

cudaError_t cudaMallocAsync(void** pointer, size_t bytes, cudaStream_t) {
  return cudaMalloc(pointer, bytes);
}

cudaError_t cudaFree(void* pointer) {
  std::free(pointer);
  return cudaSuccess;
}

cudaError_t cudaFreeAsync(void* pointer, cudaStream_t) { return cudaFree(pointer); }

cudaError_t cudaMemset(void* pointer, int value, size_t bytes) {
  std::memset(pointer, value, bytes);
  return cudaSuccess;
}

cudaError_t cudaMemsetAsync(void* pointer, int value, size_t bytes, cudaStream_t) {
  return cudaMemset(pointer, value, bytes);
}

cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, cudaMemcpyKind) {
  std::memmove(dst, src, bytes);
  return cudaSuccess;
}

cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind,
                            cudaStream_t) {
  return cudaMemcpy(dst, src, bytes, kind);
}

}  // extern "C"

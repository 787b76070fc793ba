// Host shim: runs a CUDA kernel's source on the CPU, one host thread per CUDA thread of a block,
// so kernel logic is tested by `cargo test` on machines without a GPU.
//
// - `threadIdx`, `blockIdx`, `blockDim`, `gridDim` are thread-locals set before the kernel runs.
// - Blocks run one after another, so a `__shared__` variable is a function-local static and a
//   block's dynamic shared memory is one buffer, filled with NaN bytes before each block (a read
//   of shared memory no thread of the block wrote shows up as NaN). They run in a shuffled order
//   (fixed seed), as a GPU promises no order, so a kernel that relies on index order shows it.
// - Scheduling, chosen at compile time:
//   * default, round robin: one thread runs at a time, in `threadIdx` order, handing over at
//     `__syncthreads` and at exit. Deterministic: a missing barrier gives the same wrong result
//     on every run.
//   * GLIMPSE_SHIM_CONCURRENT: all threads of a block run at once with a `std::barrier` for
//     `__syncthreads`, for ThreadSanitizer to see the races a missing barrier leaves.
// What the shim cannot show: races between concurrent blocks (blocks never overlap), the GPU
// memory model and timing, and the device's own float arithmetic (FMA contraction, `expf`'s
// last bits).
#pragma once

#define GLIMPSE_CUDA_SHIM 1

#include <algorithm>
#include <barrier>
#include <cmath>
#include <cstring>
#include <memory>
#include <random>
#include <semaphore>
#include <thread>
#include <vector>

#define __global__
#define __device__
#define __forceinline__ inline
#define __shared__ static

struct dim3 {
    unsigned int x = 1, y = 1, z = 1;
};

inline thread_local dim3 threadIdx, blockIdx, blockDim, gridDim;

inline float __uint_as_float(unsigned int bits) {
    float value;
    std::memcpy(&value, &bits, sizeof value);
    return value;
}

inline unsigned int __float_as_uint(float value) {
    unsigned int bits;
    std::memcpy(&bits, &value, sizeof bits);
    return bits;
}

// CUDA's `atomicAdd` on shared or global memory (a real atomic: the TSan build runs the threads of
// a block at once).
inline unsigned int atomicAdd(unsigned int *address, unsigned int value) {
    return __atomic_fetch_add(address, value, __ATOMIC_RELAXED);
}

// CUDA's integer `min` and `max` device functions.
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }

namespace glimpse_shim {

// How the threads of the running block take turns.
class Schedule {
public:
    explicit Schedule(unsigned int threads)
#ifdef GLIMPSE_SHIM_CONCURRENT
        : barrier_(threads)
#else
        : done_(threads, false)
#endif
    {
#ifndef GLIMPSE_SHIM_CONCURRENT
        for (unsigned int i = 0; i < threads; ++i) {
            turns_.push_back(std::make_unique<std::binary_semaphore>(0));
        }
#endif
    }

    // Called by each thread before it runs the kernel.
    void enter(unsigned int me) {
#ifdef GLIMPSE_SHIM_CONCURRENT
        (void)me;
#else
        turns_[me]->acquire();
#endif
    }

    // `__syncthreads`.
    void sync(unsigned int me) {
#ifdef GLIMPSE_SHIM_CONCURRENT
        (void)me;
        barrier_.arrive_and_wait();
#else
        pass(me);
        turns_[me]->acquire();
#endif
    }

    // Called by each thread after the kernel returned.
    void leave(unsigned int me) {
#ifdef GLIMPSE_SHIM_CONCURRENT
        (void)me;
        barrier_.arrive_and_drop();
#else
        done_[me] = true;
        pass(me);
#endif
    }

    // Lets the first thread run.
    void start() {
#ifndef GLIMPSE_SHIM_CONCURRENT
        turns_[0]->release();
#endif
    }

private:
#ifdef GLIMPSE_SHIM_CONCURRENT
    std::barrier<> barrier_;
#else
    // Hands the turn to the next thread after `me` that has not finished (possibly `me`).
    void pass(unsigned int me) {
        const unsigned int n = static_cast<unsigned int>(turns_.size());
        for (unsigned int k = 1; k <= n; ++k) {
            const unsigned int next = (me + k) % n;
            if (!done_[next]) {
                turns_[next]->release();
                return;
            }
        }
    }

    std::vector<std::unique_ptr<std::binary_semaphore>> turns_;
    // Written and read only by the thread holding the turn.
    std::vector<bool> done_;
#endif
};

inline thread_local Schedule *current_schedule = nullptr;
inline thread_local unsigned int current_thread = 0;
inline thread_local unsigned char *current_dynamic_shared = nullptr;

// Runs one block of `kernel()`.
template <typename Kernel>
void run_block(dim3 grid, dim3 block, dim3 index, unsigned char *shared, Kernel &kernel) {
    const unsigned int threads = block.x * block.y * block.z;
    Schedule schedule(threads);
    std::vector<std::thread> workers;
    workers.reserve(threads);
    for (unsigned int t = 0; t < threads; ++t) {
        workers.emplace_back([&, t] {
            threadIdx = dim3{t % block.x, (t / block.x) % block.y, t / (block.x * block.y)};
            blockIdx = index;
            blockDim = block;
            gridDim = grid;
            current_schedule = &schedule;
            current_thread = t;
            current_dynamic_shared = shared;
            schedule.enter(t);
            kernel();
            schedule.leave(t);
        });
    }
    schedule.start();
    for (std::thread &worker : workers) {
        worker.join();
    }
}

// Runs `kernel()` over a `grid` of `block`-sized blocks with `dynamic_shared_bytes` of dynamic
// shared memory, block after block in a shuffled order.
template <typename Kernel>
void launch(dim3 grid, dim3 block, std::size_t dynamic_shared_bytes, Kernel kernel) {
    std::vector<dim3> order;
    for (unsigned int z = 0; z < grid.z; ++z) {
        for (unsigned int y = 0; y < grid.y; ++y) {
            for (unsigned int x = 0; x < grid.x; ++x) {
                order.push_back(dim3{x, y, z});
            }
        }
    }
    std::shuffle(order.begin(), order.end(), std::mt19937(0x9e3779b9u));
    std::vector<unsigned char> shared(dynamic_shared_bytes + 16);
    for (const dim3 &index : order) {
        std::memset(shared.data(), 0xff, shared.size());
        run_block(grid, block, index, shared.data(), kernel);
    }
}

} // namespace glimpse_shim

inline void __syncthreads() {
    glimpse_shim::current_schedule->sync(glimpse_shim::current_thread);
}

template <typename T> T *glimpse_shim_dynamic_shared() {
    return reinterpret_cast<T *>(glimpse_shim::current_dynamic_shared);
}

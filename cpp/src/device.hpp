// What the runtime needs from CUDA, behind an interface that compiles without it: device
// properties, a seeded device generator, synchronisation, and the cache of CUDA graphs of the step.
// cuda.cpp implements it with libtorch's CUDA API when libtorch has CUDA (VFRT_WITH_CUDA), and
// otherwise reports that this build has none.
#pragma once

#include <ATen/core/Generator.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

namespace vfrt::detail {

/// True when libvfrt was compiled against a CUDA libtorch.
bool cuda_compiled();
int cuda_device_count();
int cuda_current_device();
/// torch.cuda.get_device_name and "major.minor" of device `index`.
std::string cuda_device_name(int index);
std::string cuda_compute_capability(int index);
/// Wait for all work queued on device `index` (a no-op without CUDA).
void cuda_synchronize(int index);
/// A generator on device `index` seeded with `seed` (torch.Generator(device="cuda:i").manual_seed(seed)).
at::Generator cuda_generator(int index, std::uint64_t seed);

/// CUDA graphs of one step body, one per key (the UNet call's row count): the body's shapes and
/// buffer addresses are frozen at capture; replay runs on the current stream with no host work.
class StepGraphs {
 public:
  virtual ~StepGraphs() = default;
  virtual bool captured(int key) const = 0;
  /// Two eager warm-up runs of `body` on a side stream (kernel selection, lazy initialisation), then
  /// the capture into the shared memory pool. The caller restores what the warm-up runs changed.
  virtual void capture(int key, const std::function<void()>& body) = 0;
  virtual void replay(int key) = 0;
  /// Drop every graph (e.g. before the buffers they read are reallocated).
  virtual void clear() = 0;
};

/// The graph cache of device `index` (Status::runtime when this build has no CUDA).
std::unique_ptr<StepGraphs> make_step_graphs(int index);

/// Device time between two points of the current stream of one GPU (a pair of CUDA events), so the
/// host's launch time and the GPU's execution time of the same steps can be told apart.
class DeviceTimer {
 public:
  virtual ~DeviceTimer() = default;
  virtual void start() = 0;
  virtual void stop() = 0;
  /// Seconds the GPU spent between start() and stop() (waits for stop() to be reached).
  virtual double seconds() = 0;
};

/// The timer of device `index` (Status::runtime when this build has no CUDA).
std::unique_ptr<DeviceTimer> make_device_timer(int index);

}  // namespace vfrt::detail

// device.hpp with libtorch's CUDA API (c10::cuda streams, at::cuda::CUDAGraph) and the CUDA runtime's
// events, or stubs that say this build has no CUDA. Only cuda_runtime_api.h is needed from the CUDA
// toolkit (no cuBLAS / cuSPARSE headers: ATen/cuda/CUDAContext.h is not included). Graph capture follows torch.cuda.graph: warm up on a side stream, capture
// on a side stream into one memory pool shared by all of the step's graphs, replay on the current one.
#include "device.hpp"

#include "vfrt/vfrt.hpp"

#if VFRT_WITH_CUDA
#include <ATen/cuda/CUDAGeneratorImpl.h>
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>

#include <map>
#endif

namespace vfrt::detail {

#if VFRT_WITH_CUDA

namespace {

void check_cuda(cudaError_t err, const char* what) {
  if (err != cudaSuccess) throw Error(Status::runtime, std::string(what) + ": " + cudaGetErrorString(err));
}

/// A CUDA event (timing enabled), created on first use.
class Event {
 public:
  Event() = default;
  Event(const Event&) = delete;
  Event& operator=(const Event&) = delete;
  ~Event() {
    if (event_ != nullptr) cudaEventDestroy(event_);
  }
  void record(cudaStream_t stream) {
    if (event_ == nullptr) check_cuda(cudaEventCreate(&event_), "cudaEventCreate");
    check_cuda(cudaEventRecord(event_, stream), "cudaEventRecord");
  }
  /// Make `stream` wait for the work recorded before this event.
  void block(cudaStream_t stream) const { check_cuda(cudaStreamWaitEvent(stream, event_, 0), "cudaStreamWaitEvent"); }
  /// Milliseconds from `earlier` to this event (waits for this one).
  float since(const Event& earlier) const {
    check_cuda(cudaEventSynchronize(event_), "cudaEventSynchronize");
    float ms = 0.0f;
    check_cuda(cudaEventElapsedTime(&ms, earlier.event_, event_), "cudaEventElapsedTime");
    return ms;
  }

 private:
  cudaEvent_t event_ = nullptr;
};

cudaDeviceProp properties(int index) {
  cudaDeviceProp prop{};
  const cudaError_t err = cudaGetDeviceProperties(&prop, index);
  if (err != cudaSuccess) {
    throw Error(Status::runtime, "cannot query CUDA device " + std::to_string(index) + ": " + cudaGetErrorString(err));
  }
  return prop;
}

class CudaStepGraphs final : public StepGraphs {
 public:
  explicit CudaStepGraphs(int index) : index_(static_cast<c10::DeviceIndex>(index)), pool_(at::cuda::graph_pool_handle()) {}

  bool captured(int key) const override { return graphs_.count(key) > 0; }

  void capture(int key, const std::function<void()>& body) override {
    c10::cuda::CUDAGuard device(index_);
    c10::cuda::CUDAStream current = c10::cuda::getCurrentCUDAStream(index_);
    c10::cuda::CUDAStream side = c10::cuda::getStreamFromPool(/*isHighPriority=*/false, index_);
    Event queued;
    queued.record(current.stream());
    queued.block(side.stream());
    {
      c10::cuda::CUDAStreamGuard on_side(side);
      body();
      body();
    }
    side.synchronize();
    auto graph = std::make_unique<at::cuda::CUDAGraph>();
    {
      c10::cuda::CUDAStreamGuard on_side(side);
      graph->capture_begin(pool_);
      try {
        body();
      } catch (...) {
        try {
          graph->capture_end();
        } catch (...) {
        }
        throw;
      }
      graph->capture_end();
    }
    Event done;
    done.record(side.stream());
    done.block(current.stream());
    graphs_[key] = std::move(graph);
  }

  void replay(int key) override { graphs_.at(key)->replay(); }

  void clear() override {
    graphs_.clear();
    pool_ = at::cuda::graph_pool_handle();  // a private pool whose graphs are gone cannot be captured into again
  }

 private:
  c10::DeviceIndex index_;
  decltype(at::cuda::graph_pool_handle()) pool_;
  std::map<int, std::unique_ptr<at::cuda::CUDAGraph>> graphs_;
};

class CudaTimer final : public DeviceTimer {
 public:
  explicit CudaTimer(int index) : index_(static_cast<c10::DeviceIndex>(index)) {}
  void start() override { start_.record(c10::cuda::getCurrentCUDAStream(index_).stream()); }
  void stop() override { stop_.record(c10::cuda::getCurrentCUDAStream(index_).stream()); }
  double seconds() override { return static_cast<double>(stop_.since(start_)) / 1000.0; }

 private:
  c10::DeviceIndex index_;
  Event start_, stop_;
};

}  // namespace

bool cuda_compiled() { return true; }
int cuda_device_count() { return static_cast<int>(c10::cuda::device_count()); }
int cuda_current_device() { return static_cast<int>(c10::cuda::current_device()); }
std::string cuda_device_name(int index) { return properties(index).name; }
std::string cuda_compute_capability(int index) {
  const cudaDeviceProp prop = properties(index);
  return std::to_string(prop.major) + "." + std::to_string(prop.minor);
}
void cuda_synchronize(int index) {
  c10::cuda::CUDAGuard device(static_cast<c10::DeviceIndex>(index));
  c10::cuda::device_synchronize();
}
at::Generator cuda_generator(int index, std::uint64_t seed) {
  at::Generator gen = at::cuda::detail::createCUDAGenerator(static_cast<c10::DeviceIndex>(index));
  gen.set_current_seed(seed);
  return gen;
}
std::unique_ptr<StepGraphs> make_step_graphs(int index) { return std::make_unique<CudaStepGraphs>(index); }
std::unique_ptr<DeviceTimer> make_device_timer(int index) { return std::make_unique<CudaTimer>(index); }

#else  // no CUDA in this libtorch

namespace {
[[noreturn]] void no_cuda() {
  throw Error(Status::engine_mismatch, "this libvfrt was built against a CPU-only libtorch: rebuild it with CMake "
                                       "against a CUDA build of PyTorch to run CUDA engines");
}
}  // namespace

bool cuda_compiled() { return false; }
int cuda_device_count() { return 0; }
int cuda_current_device() { no_cuda(); }
std::string cuda_device_name(int) { no_cuda(); }
std::string cuda_compute_capability(int) { no_cuda(); }
void cuda_synchronize(int) {}
at::Generator cuda_generator(int, std::uint64_t) { no_cuda(); }
std::unique_ptr<StepGraphs> make_step_graphs(int) { no_cuda(); }
std::unique_ptr<DeviceTimer> make_device_timer(int) { no_cuda(); }

#endif

}  // namespace vfrt::detail

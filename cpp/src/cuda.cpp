// device.hpp with libtorch's CUDA API (c10::cuda streams, at::cuda::CUDAGraph), or stubs that say
// this build has no CUDA. Graph capture follows torch.cuda.graph: warm up on a side stream, capture
// on a side stream into one memory pool shared by all of the step's graphs, replay on the current one.
#include "device.hpp"

#include "vfrt/vfrt.hpp"

#if VFRT_WITH_CUDA
#include <ATen/cuda/CUDAEvent.h>
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
    at::cuda::CUDAEvent queued;
    queued.record(current);
    queued.block(side);
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
    at::cuda::CUDAEvent done;
    done.record(side);
    done.block(current);
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

#endif

}  // namespace vfrt::detail

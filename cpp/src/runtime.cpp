// The ViewFusion loop over AOTInductor packages: Engine (vfrt.hpp).
//
//   Executor    one `.pt2` package (vfrt/engines/executors/aoti.py): checks inputs against the
//               manifest's spec, runs them contiguous, returns contiguous outputs the caller owns;
//   StepRunner  the guided DDIM step of one target view on static buffers, captured in a CUDA
//               graph per row count on the GPU (vfrt/engines/step.py, StepGraphCache with N = 1);
//   NoiseSource seeded draws (the same CPU generator calls as vfrt.runtime.noise, hence the same
//               numbers) or replay of a noise directory, optionally recorded;
//   Engine::Impl  open + check the directory, then per target view: encode new references once,
//               bind (conditioning with the unconditional row 0), step S times, decode.
// Every op that decides a number is the op the Python fast engine uses, in the same order.
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <c10/core/DeviceGuard.h>
#include <c10/core/InferenceMode.h>
#include <c10/util/Exception.h>
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>
#include <torch/headeronly/version.h>

#include <chrono>
#include <cmath>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>

#include "device.hpp"
#include "engine_dir.hpp"
#include "noise.hpp"
#include "sampling.hpp"
#include "vfrt/vfrt.hpp"

#ifndef VFRT_TORCH_VERSION
#define VFRT_TORCH_VERSION TORCH_VERSION
#endif
#ifndef VFRT_TORCH_CUDA
#define VFRT_TORCH_CUDA ""
#endif

namespace vfrt {

namespace detail {

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

constexpr double kPi = 3.14159265358979323846;
/// the orbit's camera distance (SPEC §8)
constexpr double kCameraDistance = 1.5;
/// fewest rows one UNet call gets: a lone row runs with a zero-weight copy beside it (step.py MIN_CALL_ROWS)
constexpr std::int64_t kMinCallRows = 2;

at::ScalarType scalar_type(const std::string& dtype) {
  if (dtype == "float32") return at::kFloat;
  if (dtype == "float16") return at::kHalf;
  if (dtype == "bfloat16") return at::kBFloat16;
  return at::kLong;  // "int64" (read_manifest admits no other)
}

std::string first_line(const std::string& text) { return text.substr(0, text.find('\n')); }

std::string shape_text(at::IntArrayRef shape) {
  std::ostringstream out;
  out << "(";
  for (size_t i = 0; i < shape.size(); ++i) out << (i ? ", " : "") << shape[i];
  out << ")";
  return out.str();
}

// ------------------------------------------------------------------------------------------ executor
class Executor {
 public:
  Executor(const NetworkEntry& spec, const std::string& path, const at::Device& device) : spec_(spec) {
    const bool cuda = device.is_cuda();
    try {
      // run_single_threaded on CUDA: what makes `run` capturable in a CUDA graph
      loader_ = std::make_unique<torch::inductor::AOTIModelPackageLoader>(
          path, "model", /*run_single_threaded=*/cuda, /*num_runners=*/1,
          cuda ? static_cast<c10::DeviceIndex>(device.index()) : static_cast<c10::DeviceIndex>(-1));
    } catch (const std::exception& exc) {
      throw Error(Status::engine_load, "cannot load " + path + ": " + first_line(exc.what()));
    }
    check_call_spec(path);
  }

  const NetworkEntry& spec() const { return spec_; }

  /// inputs in the manifest's order -> outputs in the manifest's order (contiguous, caller-owned)
  std::vector<at::Tensor> run(const std::vector<at::Tensor>& inputs) const {
    check(inputs);
    std::vector<at::Tensor> contiguous;
    for (const auto& t : inputs) contiguous.push_back(t.contiguous());
    std::vector<at::Tensor> outputs = loader_->run(contiguous);
    for (auto& t : outputs) t = t.contiguous();
    return outputs;
  }

 private:
  /// The package must take the spec's inputs as keyword arguments in the spec's order (what the
  /// exporter traced): its call spec is a pytree of ((), {names...}).
  void check_call_spec(const std::string& path) const {
    std::vector<std::string> names;
    try {
      const auto spec = nlohmann::json::parse(loader_->get_call_spec().at(0));
      const auto& kwargs = spec.at(1).at("children_spec").at(1);
      if (kwargs.at("type") != "builtins.dict") throw std::invalid_argument("not keyword arguments");
      names = nlohmann::json::parse(kwargs.at("context").get<std::string>()).get<std::vector<std::string>>();
    } catch (const std::exception& exc) {
      throw Error(Status::engine_load, path + " was not traced the way vfrt build-engines traces networks (its "
                                              "call spec: " + std::string(exc.what()) + ")");
    }
    std::vector<std::string> expected;
    for (const auto& t : spec_.inputs) expected.push_back(t.name);
    if (names != expected) {
      throw Error(Status::engine_load, path + " takes its inputs in another order than the manifest lists them");
    }
  }

  void check(const std::vector<at::Tensor>& inputs) const {
    if (inputs.size() != spec_.inputs.size()) {
      throw Error(Status::runtime, spec_.name + " takes " + std::to_string(spec_.inputs.size()) + " inputs, got " +
                                       std::to_string(inputs.size()));
    }
    std::map<std::string, std::int64_t> sizes;
    for (size_t i = 0; i < inputs.size(); ++i) {
      const TensorEntry& want = spec_.inputs[i];
      const at::Tensor& got = inputs[i];
      const std::string where = spec_.name + "." + want.name;
      if (got.scalar_type() != scalar_type(want.dtype)) {
        throw Error(Status::runtime, where + ": dtype " + std::string(c10::toString(got.scalar_type())) +
                                         ", expected " + want.dtype);
      }
      if (got.dim() != static_cast<std::int64_t>(want.shape.size())) {
        throw Error(Status::runtime, where + ": shape " + shape_text(got.sizes()) + " has the wrong rank");
      }
      for (size_t d = 0; d < want.shape.size(); ++d) {
        const Dim& dim = want.shape[d];
        if (dim.axis.empty() ? got.size(d) != dim.size
                             : sizes.emplace(dim.axis, got.size(d)).first->second != got.size(d)) {
          throw Error(Status::runtime, where + ": shape " + shape_text(got.sizes()) + " does not fit the spec");
        }
      }
    }
    for (const auto& [axis, size] : sizes) {
      const AxisRange& r = spec_.axis(axis);
      if (size < r.min || size > r.max) {
        throw Error(Status::runtime, spec_.name + ": " + axis + " = " + std::to_string(size) +
                                         " is outside the built range " + std::to_string(r.min) + ".." +
                                         std::to_string(r.max));
      }
    }
  }

  const NetworkEntry& spec_;
  std::unique_ptr<torch::inductor::AOTIModelPackageLoader> loader_;
};

// ------------------------------------------------------------------------------------------ the step
/// One target view's conditioning (step.py BoundView).
struct BoundView {
  int K = 0;
  double guidance = 1.0;
  at::Tensor h0, consts;  ///< (rows, C0, h, w), (rows, A): the conditioning network's outputs
  at::Tensor weights;     ///< (K,) float32
  bool guided() const { return guidance != 1.0; }
  std::int64_t rows() const { return K + (guided() ? 1 : 0); }
  /// (rows,) float32: the guided eps is sum_r a_r eps_r; guided: [1 - s, s w_1, ..., s w_K]
  at::Tensor row_coefficients() const {
    if (!guided()) return weights;
    return at::cat({at::full({1}, 1.0 - guidance, weights.options()), guidance * weights});
  }
};

/// The step of vfrt/engines/step.py for one object, on static buffers; on CUDA each row count's step
/// is captured once in a CUDA graph and replayed S times per view.
///   eps   = unet_step(x expanded to the rows, h0, emb[i], consts)
///   e_bar = mix . eps                       (mix = the view's row coefficients, 0 on a padded row)
///   x    <- c_x[i] x + c_eps[i] e_bar + sigma[i] n_bar[i]
class StepRunner {
 public:
  StepRunner(const Executor& unet, const at::Device& device, bool graphs)
      : unet_(unet), device_(device), min_call_rows_(std::max(kMinCallRows, unet.spec().axis("rows").min)) {
    if (graphs) graphs_ = make_step_graphs(device.index());
    if (device.is_cuda()) timer_ = make_device_timer(device.index());
  }

  /// Copy the view's inputs into the buffers; the next replay starts at step 0.
  /// emb_table (S, E), coefficients (3, S) float32, x_T (1, C, h, w), noise_bar (S, 1, C, h, w) float32.
  void load(const BoundView& view, const at::Tensor& emb_table, const at::Tensor& coefficients, const at::Tensor& x_T,
            const at::Tensor& noise_bar) {
    const std::int64_t rows = view.rows();
    call_rows_ = std::max(rows, min_call_rows_);
    ensure(view, emb_table, x_T, call_rows_);
    mix_.zero_();
    mix_.narrow(1, 0, rows).copy_(view.row_coefficients().unsqueeze(0));
    h0_.narrow(0, 0, rows).copy_(view.h0);
    consts_.narrow(0, 0, rows).copy_(view.consts);
    for (std::int64_t pad = rows; pad < call_rows_; ++pad) {  // copies of row 0, weight 0 in the mix
      h0_[pad].copy_(h0_[0]);
      consts_[pad].copy_(consts_[0]);
    }
    const std::int64_t S = emb_table.size(0);
    emb_table_.narrow(0, 0, S).copy_(emb_table);
    coefficients_.narrow(1, 0, S).copy_(coefficients);
    noise_.zero_();
    noise_.narrow(0, 0, S).copy_(noise_bar);
    x_.copy_(x_T);
    step_.zero_();
    steps_ = S;
  }

  /// Run the loaded view's S steps, adding to `timing`: the host seconds spent launching them, the
  /// GPU seconds they took (CUDA events; waits for them) and the graphs captured on the way (the
  /// first view of each row count).
  void replay(Timing& timing) {
    if (graphs_ && !graphs_->captured(static_cast<int>(call_rows_))) {
      const at::Tensor saved_x = x_.clone(), saved_step = step_.clone();
      graphs_->capture(static_cast<int>(call_rows_), [this] { body(); });
      x_.copy_(saved_x);
      step_.copy_(saved_step);
      ++timing.graph_captures;
    }
    if (timer_) timer_->start();
    const auto start = Clock::now();
    for (std::int64_t i = 0; i < steps_; ++i) {
      if (graphs_) {
        graphs_->replay(static_cast<int>(call_rows_));
      } else {
        body();
      }
    }
    timing.denoise_launch += seconds_since(start);
    if (timer_) {
      timer_->stop();
      timing.denoise_device += timer_->seconds();
    }
  }

  /// The view's latent after the steps run, (1, C, h, w) float32 (a copy the caller owns).
  at::Tensor latent() const { return x_.clone(); }

 private:
  void body() {
    const std::int64_t rows = call_rows_;
    at::Tensor x_rows = x_.expand({rows, x_.size(1), x_.size(2), x_.size(3)}).contiguous();
    at::Tensor emb = emb_table_.index_select(0, step_);
    at::Tensor eps = unet_.run({x_rows, h0_.narrow(0, 0, rows), emb, consts_.narrow(0, 0, rows)})[0]
                         .to(at::kFloat)
                         .contiguous();
    at::Tensor e_bar = at::mm(mix_.narrow(1, 0, rows), eps.view({rows, -1})).view(x_.sizes());
    at::Tensor coef = coefficients_.index_select(1, step_).view({3, 1, 1, 1, 1});
    at::Tensor x_next = coef[0] * x_ + coef[1] * e_bar + coef[2] * noise_.index_select(0, step_)[0];
    x_.copy_(x_next);
    step_.add_(1);
  }

  /// Buffers for the engine's largest row count (allocated once) and the longest schedule so far;
  /// reallocating drops the captured graphs, which read the old addresses.
  void ensure(const BoundView& view, const at::Tensor& emb_table, const at::Tensor& x_T, std::int64_t rows) {
    const std::int64_t S = emb_table.size(0);
    const std::int64_t capacity = std::max(rows, unet_.spec().axis("rows").max);
    const bool fits = x_.defined() && h0_.size(0) >= rows && emb_table_.size(0) >= S &&
                      x_.sizes() == x_T.sizes() && h0_.sizes().slice(1) == view.h0.sizes().slice(1) &&
                      consts_.size(1) == view.consts.size(1) && emb_table_.size(1) == emb_table.size(1) &&
                      h0_.scalar_type() == view.h0.scalar_type();
    if (fits) return;
    if (graphs_) graphs_->clear();
    const auto f32 = at::TensorOptions().device(device_).dtype(at::kFloat);
    const std::int64_t steps = std::max<std::int64_t>(S, emb_table_.defined() ? emb_table_.size(0) : 0);
    std::vector<std::int64_t> h0_shape = view.h0.sizes().vec();
    h0_shape[0] = capacity;
    x_ = at::zeros(x_T.sizes(), f32);
    step_ = at::zeros({1}, f32.dtype(at::kLong));
    mix_ = at::zeros({1, capacity}, f32);
    h0_ = at::zeros(h0_shape, f32.dtype(view.h0.scalar_type()));
    consts_ = at::zeros({capacity, view.consts.size(1)}, f32.dtype(view.consts.scalar_type()));
    emb_table_ = at::zeros({steps, emb_table.size(1)}, f32.dtype(emb_table.scalar_type()));
    coefficients_ = at::zeros({3, steps}, f32);
    noise_ = at::zeros({steps, 1, x_T.size(1), x_T.size(2), x_T.size(3)}, f32);
  }

  const Executor& unet_;
  at::Device device_;
  std::int64_t min_call_rows_;
  std::unique_ptr<StepGraphs> graphs_;
  std::unique_ptr<DeviceTimer> timer_;
  at::Tensor x_, step_, mix_, h0_, consts_, emb_table_, coefficients_, noise_;
  std::int64_t call_rows_ = 0, steps_ = 0;
};

// ------------------------------------------------------------------------------------------ noise
/// The draws of one generation, view by view, in vfrt.runtime.noise.NoiseSource's order:
/// x_T (1, C, h, w), then the step noise (S, draws_v, C, h, w), from one CPU generator.
class NoiseSource {
 public:
  NoiseSource(const Options& options, std::vector<int> draws, std::int64_t steps, const Shape& latent)
      : draws_(std::move(draws)), steps_(steps), latent_(latent) {
    if (!options.noise.empty()) {
      bank_ = std::make_unique<NoiseDirReader>(options.noise);
      check_bank();
    } else {
      generator_ = at::make_generator<at::CPUGeneratorImpl>(static_cast<std::uint64_t>(options.seed));
    }
    if (!options.record_noise.empty()) recorder_ = std::make_unique<NoiseDirWriter>(options.record_noise);
  }

  /// x_T and the step noise of generated view v (undefined step noise when draws_v is 0), CPU float32.
  std::pair<at::Tensor, at::Tensor> view(int v) {
    const Shape x_shape = {1, latent_[0], latent_[1], latent_[2]};
    const Shape step_shape = {steps_, draws_[v], latent_[0], latent_[1], latent_[2]};
    const auto f32 = at::TensorOptions().dtype(at::kFloat);
    at::Tensor x_T, steps;
    if (bank_) {
      x_T = at::empty(x_shape, f32);
      steps = at::empty(step_shape, f32);
      bank_->read_x_T(v, x_T.data_ptr<float>());
      bank_->read_steps(v, steps.data_ptr<float>());
    } else {
      x_T = at::randn(x_shape, generator_, f32);
      steps = at::randn(step_shape, generator_, f32);
    }
    if (recorder_) recorder_->add_view(x_T.data_ptr<float>(), x_shape, steps.data_ptr<float>(), step_shape);
    return {x_T, draws_[v] ? steps : at::Tensor()};
  }

  /// Publish the recorded draws (when asked to record).
  void finish() {
    if (recorder_) recorder_->commit();
  }

 private:
  /// Fail before any compute when the bank does not fit the planned run (NoiseSource.check_plan).
  void check_bank() const {
    if (bank_->views() < static_cast<int>(draws_.size())) {
      throw Error(Status::noise, "noise bank holds " + std::to_string(bank_->views()) + " views; the run generates " +
                                     std::to_string(draws_.size()));
    }
    for (size_t v = 0; v < draws_.size(); ++v) {
      const Shape want_steps = {steps_, draws_[v], latent_[0], latent_[1], latent_[2]};
      const Shape want_x = {1, latent_[0], latent_[1], latent_[2]};
      if (bank_->step_shape(v) != want_steps || bank_->x_T_shape(v) != want_x) {
        throw Error(Status::noise, "noise bank view " + std::to_string(v) + ": step noise " +
                                       shape_text(bank_->step_shape(v)) + ", x_T " + shape_text(bank_->x_T_shape(v)) +
                                       "; the run needs " + shape_text(want_steps) + " and " + shape_text(want_x));
      }
    }
  }

  std::vector<int> draws_;
  std::int64_t steps_;
  Shape latent_;
  at::Generator generator_;
  std::unique_ptr<NoiseDirReader> bank_;
  std::unique_ptr<NoiseDirWriter> recorder_;
};

/// (1, 3, H, W) float32 of an Image; and back.
at::Tensor to_tensor(const Image& image) {
  return at::from_blob(const_cast<float*>(image.pixels.data()), {image.height, image.width, 3}, at::kFloat)
      .permute({2, 0, 1})
      .unsqueeze(0)
      .contiguous();
}

Image to_image(const at::Tensor& chw) {
  at::Tensor hwc = chw.squeeze(0).permute({1, 2, 0}).contiguous().to(at::kCPU, at::kFloat);
  Image out;
  out.height = static_cast<int>(hwc.size(0));
  out.width = static_cast<int>(hwc.size(1));
  out.pixels.assign(hwc.data_ptr<float>(), hwc.data_ptr<float>() + hwc.numel());
  return out;
}

at::Device parse_device(const std::string& requested, const std::string& built) {
  const std::string name = requested.empty() || requested == "auto" ? built : requested;
  try {
    at::Device device(name);
    if (device.is_cuda() && !device.has_index() && cuda_compiled() && cuda_device_count() > 0) {
      device.set_index(static_cast<c10::DeviceIndex>(cuda_current_device()));
    }
    if (!device.is_cpu() && !device.is_cuda()) throw std::invalid_argument("not cpu or cuda");
    return device;
  } catch (const std::exception&) {
    throw Error(Status::invalid_argument, "device must be auto, cpu, cuda or cuda:N, got '" + requested + "'");
  }
}

}  // namespace

}  // namespace detail

// ------------------------------------------------------------------------------------------ Engine
class Engine::Impl {
 public:
  Impl(const std::string& directory, const EngineOptions& options) : device_(at::kCPU) {
    using namespace detail;
    manifest_ = read_manifest(directory);
    device_ = parse_device(options.device, manifest_.platform.device);
    Here here;
    here.device_type = device_.is_cuda() ? "cuda" : "cpu";
    here.torch = VFRT_TORCH_VERSION;
    here.cuda = VFRT_TORCH_CUDA;
    std::vector<std::string> problems;
    if (device_.is_cuda()) {
      if (!cuda_compiled()) {
        problems.push_back("this libvfrt was built against a CPU-only libtorch");
      } else if (device_.index() >= cuda_device_count()) {
        problems.push_back("no CUDA device " + std::to_string(device_.index()) + " here (" +
                           std::to_string(cuda_device_count()) + " found)");
      } else {
        here.gpu_name = cuda_device_name(device_.index());
        here.compute_capability = cuda_compute_capability(device_.index());
      }
    }
    if (problems.empty()) problems = compatibility_problems(manifest_, here);
    raise_mismatch(manifest_, directory, problems);
    const bool verified = check_artifacts(manifest_, directory, options.verify_artifacts);
    if (options.check_toolchain) check_toolchain(manifest_, directory);
    if (options.graphs == 1 && !device_.is_cuda()) {
      throw Error(Status::invalid_argument, "CUDA graphs need a CUDA device; these engines run on " + device_.str());
    }
    const bool graphs = device_.is_cuda() && options.graphs != 0;

    c10::InferenceMode inference;
    c10::OptionalDeviceGuard guard;
    if (device_.is_cuda()) guard.reset_device(device_);
    for (const auto& entry : manifest_.networks) {
      executors_.emplace(entry.name, std::make_unique<Executor>(entry, directory + "/" + entry.file, device_));
    }
    step_ = std::make_unique<StepRunner>(executor("unet_step"), device_, graphs);

    info_.directory = directory;
    info_.backend = manifest_.backend;
    info_.precision = manifest_.precision;
    info_.device = device_.str();
    info_.graphs = graphs;
    info_.image_size = manifest_.latent_size * 8;
    info_.max_refs = static_cast<int>(std::min(executor("conditioning").spec().axis("rows").max,
                                               executor("unet_step").spec().axis("rows").max)) - 1;
    info_.checkpoint = manifest_.checkpoint.path;
    info_.torch_version = here.torch;
    info_.sha256_verified = verified;
  }

  const EngineInfo& info() const { return info_; }

  /// The generation loop (pipeline.py Pipeline._generate_many with one object).
  Result generate(const std::string& mode, const std::vector<detail::ViewPlan>& plans, const Image& input, int n_views,
                  const Options& options) {
    using namespace detail;
    std::lock_guard<std::mutex> lock(mutex_);
    c10::InferenceMode inference;
    c10::OptionalDeviceGuard guard;
    if (device_.is_cuda()) guard.reset_device(device_);
    const auto start = Clock::now();

    const DdimSchedule schedule = make_ddim_schedule(options.steps, options.eta, manifest_.schedule);
    const std::int64_t S = schedule.num_steps();
    const int size = info_.image_size;
    if (input.width != size || input.height != size ||
        input.pixels.size() != static_cast<size_t>(size) * static_cast<size_t>(size) * 3) {
      throw Error(Status::image, "the input must be " + std::to_string(size) + "x" + std::to_string(size) +
                                     " RGB (these engines' resolution), got " + std::to_string(input.width) + "x" +
                                     std::to_string(input.height) + "; prepare it with `vfrt run` (its input.png)");
    }
    for (float p : input.pixels) {
      if (!std::isfinite(p)) throw Error(Status::image, "the input image contains NaN or inf");
    }
    const bool guided = options.guidance != 1.0;
    for (size_t v = 0; v < plans.size(); ++v) {  // refuse up front what the built networks cannot take
      const int rows = plans[v].K() + (guided ? 1 : 0);
      if (rows > info_.max_refs + 1) {
        throw Error(Status::invalid_argument,
                    "view " + std::to_string(v) + " needs " + std::to_string(rows) +
                        " UNet rows (K references + the unconditional row), the engine's networks take at most " +
                        std::to_string(info_.max_refs + 1) + ": use fewer views or rebuild them for more references (" +
                        manifest_.rebuild_command(info_.directory, rows - 1) + ")");
      }
    }
    const Shape latent = {manifest_.latent_channels, manifest_.latent_size, manifest_.latent_size};
    std::vector<int> draws;
    for (const auto& p : plans) {
      draws.push_back(options.noise_mode == NoiseMode::fast ? 0 : options.noise_mode == NoiseMode::shared ? 1 : p.K());
    }
    NoiseSource noise(options, draws, S, latent);
    at::Generator device_generator;  // "fast" noise mode: n_bar drawn on the device
    if (options.noise_mode == NoiseMode::fast) {
      device_generator = device_.is_cuda()
                             ? cuda_generator(device_.index(), static_cast<std::uint64_t>(options.seed))
                             : at::make_generator<at::CPUGeneratorImpl>(static_cast<std::uint64_t>(options.seed));
    }
    const at::Tensor emb_table = time_embedding(schedule.timesteps);
    const StepCoefficients c = step_coefficients(schedule);
    const at::Tensor coefficients =
        at::stack({at::tensor(c.c_x), at::tensor(c.c_eps), at::tensor(c.sigma)}).to(device_);

    Result result;
    result.mode = mode;
    result.n_views = n_views;
    result.elevation = options.elevation;
    result.input = input;
    const double elevation = options.elevation * (kPi / 180.0);
    result.input_camera_to_world = camera_to_world_opengl(0.0, elevation, kCameraDistance);
    std::vector<at::Tensor> pixels{to_tensor(input)};       // slot 0 = the input, 1 + j = generated view j
    std::vector<std::optional<std::pair<at::Tensor, at::Tensor>>> encodings(plans.size() + 1);
    Timing& timing = result.timing;
    for (size_t v = 0; v < plans.size(); ++v) {
      if (options.cancel && options.cancel->load()) {
        throw Error(Status::cancelled, "cancelled after " + std::to_string(v) + " of " +
                                           std::to_string(plans.size()) + " views");
      }
      const ViewPlan& plan = plans[v];
      auto [x_T, step_noise] = noise.view(static_cast<int>(v));

      auto t0 = Clock::now();
      std::vector<at::Tensor> clips, latents;
      for (std::int64_t slot : plan.references) {
        if (!encodings[slot]) encodings[slot] = encode(pixels[slot]);
        clips.push_back(encodings[slot]->first);
        latents.push_back(encodings[slot]->second);
      }
      timing.encode += seconds_since(t0);

      t0 = Clock::now();
      const BoundView view = bind(clips, latents, plan, options.guidance);
      const at::Tensor noise_bar = combined_noise(view.weights, S, latent, step_noise, device_generator);
      step_->load(view, emb_table, coefficients, x_T.to(device_), noise_bar);
      timing.condition += seconds_since(t0);

      t0 = Clock::now();
      step_->replay(timing);
      if (device_.is_cuda()) cuda_synchronize(device_.index());
      timing.denoise += seconds_since(t0);
      timing.steps += static_cast<int>(S);

      t0 = Clock::now();
      const at::Tensor image = executor("vae_decoder").run({step_->latent()})[0].to(at::kCPU, at::kFloat);
      timing.decode += seconds_since(t0);
      if (!at::isfinite(image).all().item<bool>()) {
        std::ostringstream msg;
        msg << "view " << v << " (" << std::showpos << std::lround(plan.azimuth * 180.0 / kPi)
            << " deg azimuth) came out with NaN/inf values; the weights may be corrupt, or fp16 overflowed";
        throw Error(Status::runtime, msg.str());
      }
      pixels.push_back(image);

      View out;
      out.image = to_image(image);
      out.polar = plan.polar;
      out.azimuth = plan.azimuth;
      out.radius = plan.radius;
      out.references.assign(plan.references.begin(), plan.references.end());
      out.weights = plan.weights;
      out.camera_to_world = camera_to_world_opengl(plan.azimuth, elevation - plan.polar, kCameraDistance + plan.radius);
      result.views.push_back(std::move(out));
      if (options.progress) {
        options.progress(Progress{static_cast<int>(v + 1), static_cast<int>(plans.size()), seconds_since(start)});
      }
    }
    noise.finish();
    timing.total = seconds_since(start);
    return result;
  }

 private:
  const detail::Executor& executor(const std::string& name) const { return *executors_.at(name); }

  /// CLIP embedding (1, D) and VAE posterior mean (1, C, h, w) of a reference view (1, 3, H, W).
  std::pair<at::Tensor, at::Tensor> encode(const at::Tensor& image) {
    const at::Tensor on_device = image.to(device_, at::kFloat);
    return {executor("clip_image").run({on_device})[0], executor("vae_encoder").run({on_device})[0]};
  }

  /// fast.py FastEngine.bind: conditioning of the K references plus, when guided, the unconditional
  /// row 0 (zero CLIP embedding, pose and latent, keep = 0).
  detail::BoundView bind(const std::vector<at::Tensor>& clips, const std::vector<at::Tensor>& latents,
                         const detail::ViewPlan& plan, double guidance) {
    const std::int64_t K = plan.K();
    const auto f32 = at::TensorOptions().dtype(at::kFloat);
    at::Tensor clip = at::cat(clips, 0).to(device_, at::kFloat);
    at::Tensor latent = at::cat(latents, 0).to(device_, at::kFloat);
    at::Tensor pose = at::tensor(plan.pose_conditions, f32).view({K, 4}).to(device_);
    at::Tensor keep = at::ones({K}, f32.device(device_));
    if (guidance != 1.0) {
      clip = at::cat({at::zeros_like(clip.slice(0, 0, 1)), clip}, 0);
      latent = at::cat({at::zeros_like(latent.slice(0, 0, 1)), latent}, 0);
      pose = at::cat({at::zeros_like(pose.slice(0, 0, 1)), pose}, 0);
      keep = at::cat({at::zeros_like(keep.slice(0, 0, 1)), keep}, 0);
    }
    const auto outputs = executor("conditioning").run({clip, pose, latent, keep});
    detail::BoundView view;
    view.K = static_cast<int>(K);
    view.guidance = guidance;
    view.consts = outputs[0];
    view.h0 = outputs[1];
    view.weights = at::tensor(plan.weights, f32).to(device_);
    return view;
  }

  /// step.py combined_noise: n_bar per step, (S, 1, C, h, w) float32 on the device.
  at::Tensor combined_noise(const at::Tensor& weights, std::int64_t S, const detail::Shape& latent,
                            const at::Tensor& step_noise, const at::Generator& device_generator) {
    const std::int64_t K = weights.size(0);
    if (!step_noise.defined()) {  // "fast": one draw scaled by sqrt(sum w^2), the same distribution
      const at::Tensor scale = at::sqrt(weights.pow(2).sum());
      return scale * at::randn({S, 1, latent[0], latent[1], latent[2]}, device_generator,
                               at::TensorOptions().device(device_).dtype(at::kFloat));
    }
    at::Tensor n = step_noise.to(device_, at::kFloat);
    if (n.size(1) == 1) n = n.expand({S, K, latent[0], latent[1], latent[2]});
    return at::einsum("skchw,k->schw", {n, weights}).unsqueeze(1);
  }

  /// The time-embedding rows of a schedule (S, E), computed once per schedule.
  at::Tensor time_embedding(const std::vector<std::int64_t>& timesteps) {
    auto found = emb_tables_.find(timesteps);
    if (found != emb_tables_.end()) return found->second;
    const at::Tensor t = at::tensor(timesteps, at::kLong).to(device_);
    return emb_tables_[timesteps] = executor("time_embedding").run({t})[0];
  }

  std::mutex mutex_;
  detail::Manifest manifest_;
  at::Device device_;
  EngineInfo info_;
  std::map<std::string, std::unique_ptr<detail::Executor>> executors_;
  std::unique_ptr<detail::StepRunner> step_;
  std::map<std::vector<std::int64_t>, at::Tensor> emb_tables_;
};

namespace {

/// Run `work`, turning every failure into vfrt::Error (a libtorch error names what failed).
template <typename Work>
auto guarded(const char* what, Work&& work) -> decltype(work()) {
  try {
    return work();
  } catch (const Error&) {
    throw;
  } catch (const c10::OutOfMemoryError& exc) {
    throw Error(Status::runtime, std::string(what) + ": the device ran out of memory (" + detail::first_line(exc.what()) +
                                     "); use fewer views or the CPU");
  } catch (const std::bad_alloc&) {
    throw Error(Status::runtime, std::string(what) + ": out of host memory");
  } catch (const std::exception& exc) {
    throw Error(Status::runtime, std::string(what) + " failed: " + detail::first_line(exc.what()));
  }
}

/// check_pose_delta of vfrt/runtime/run.py: a target no camera can have is refused.
void check_pose(const Pose& target, double elevation) {
  const double polar_now = 90.0 - elevation;
  std::ostringstream msg;
  if (!std::isfinite(target.polar) || !std::isfinite(target.azimuth) || !std::isfinite(target.radius)) {
    msg << "the target pose must be finite";
  } else if (target.polar == 0 && target.azimuth == 0 && target.radius == 0) {
    msg << "single mode needs a target pose: a polar, azimuth and/or radius delta";
  } else if (!(0.0 <= polar_now + target.polar && polar_now + target.polar <= 180.0)) {
    msg << "the target: polar delta " << target.polar << " degrees takes the camera past a pole (input polar "
        << polar_now << ", so the delta must be within " << -polar_now << ".." << 180 - polar_now << ")";
  } else if (!(-360.0 <= target.azimuth && target.azimuth <= 360.0)) {
    msg << "the target: azimuth delta must be within -360..360 degrees, got " << target.azimuth;
  } else if (!(-detail::kCameraDistance < target.radius && target.radius < detail::kCameraDistance)) {
    msg << "the target: radius delta must be within +-" << detail::kCameraDistance << " (camera distance), got "
        << target.radius;
  } else {
    return;
  }
  throw Error(Status::invalid_argument, msg.str());
}

}  // namespace

Engine::Engine(const std::string& directory, const EngineOptions& options)
    : impl_(guarded("opening the engines", [&] { return std::make_unique<Impl>(directory, options); })) {}
Engine::~Engine() = default;
Engine::Engine(Engine&&) noexcept = default;
Engine& Engine::operator=(Engine&&) noexcept = default;

const EngineInfo& Engine::info() const { return impl_->info(); }

Result Engine::orbit(const Image& input, const Options& options) {
  options.validate();
  auto plans = detail::plan_orbit(options.views, options.generate, options.inference_temp, options.auto_temp);
  if (options.low_ring > 0) {
    const auto low = detail::plan_low_ring(options.views, options.low_ring, options.low_ring_polar * (detail::kPi / 180.0),
                                           options.inference_temp, options.auto_temp);
    plans.insert(plans.end(), low.begin(), low.end());
  }
  return guarded("the orbit", [&] { return impl_->generate("orbit", plans, input, options.views, options); });
}

Result Engine::single(const Image& input, const Pose& target, const Options& options) {
  options.validate();
  check_pose(target, options.elevation);
  const auto plans = detail::plan_single(target.polar * (detail::kPi / 180.0), target.azimuth * (detail::kPi / 180.0),
                                         target.radius, options.inference_temp, options.auto_temp);
  return guarded("the view", [&] { return impl_->generate("single", plans, input, 0, options); });
}

}  // namespace vfrt

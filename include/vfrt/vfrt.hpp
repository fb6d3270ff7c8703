// vfrt: the ViewFusion runtime as a C++ library (C++17; no PyTorch types in this header).
//
//     vfrt::Engine engine("/path/to/engines");               // a `vfrt build-engines` directory
//     vfrt::Options options;                                  // the sampler's defaults (SPEC §3-§5)
//     options.views = 36;
//     vfrt::Result orbit = engine.orbit(vfrt::load_png("chair.png"), options);
//     orbit.save("runs/chair");                               // views/NNN.png + transforms.json
//
// Every failure is a vfrt::Error carrying a vfrt::Status (the same codes as the C API, vfrt.h).
//
// Thread safety: an Engine may be shared between threads; its generations are serialised (one at a
// time per Engine, in call order of the lock). Separate Engine objects run concurrently. A progress
// callback runs on the thread that called orbit()/single(); the cancel flag may be set from any thread
// and is checked before every generated view.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#if defined(_WIN32)
#define VFRT_API __declspec(dllexport)
#else
#define VFRT_API __attribute__((visibility("default")))
#endif

namespace vfrt {

/// What went wrong; the values are the C API's vfrt_status codes.
enum class Status : int {
  ok = 0,
  invalid_argument = 1,  ///< an option out of range, a null pointer, a pose no camera can have
  corrupt_engine = 2,    ///< no engine directory, unreadable manifest, missing or altered package
  engine_mismatch = 3,   ///< built for another device / GPU / torch / vfrt / backend
  engine_load = 4,       ///< sound packages that this process cannot load (C++ runtime mismatch, ...)
  image = 5,             ///< unreadable image, wrong size
  noise = 6,             ///< a noise bank that is unreadable or does not fit the run
  cancelled = 7,         ///< the cancel flag was set (or the C progress callback asked to stop)
  runtime = 8,           ///< a failure while generating (NaN output, out of memory, a network error)
  io = 9,                ///< an output that cannot be written
};

/// Short name of a status ("ok", "invalid_argument", ...).
VFRT_API const char* status_name(Status status) noexcept;

/// The exception every vfrt function throws: a status and one message saying what to do.
class VFRT_API Error : public std::runtime_error {
 public:
  Error(Status status, const std::string& message);
  Status status() const noexcept { return status_; }

 private:
  Status status_;
};

/// An RGB image: height x width x 3 interleaved float32 in [-1, 1] (the model's range).
struct VFRT_API Image {
  int width = 0;
  int height = 0;
  std::vector<float> pixels;  ///< height * width * 3 values, row-major, RGB interleaved

  /// From 8-bit pixels: channels 3 (RGB) or 4 (RGBA, composited on white as `vfrt run` does).
  static Image from_rgb8(int width, int height, int channels, const std::uint8_t* data);
  /// 8-bit RGB, height * width * 3 bytes: 255 * (x / 2 + 0.5) truncated, as `vfrt run` saves views.
  std::vector<std::uint8_t> to_rgb8() const;
};

/// Read a PNG (8 or 16 bit, grey / RGB / RGBA / palette) with libpng; Status::image if it cannot.
/// No resizing or cropping: give the model's input as `vfrt run` writes it (input.png), or any
/// image of the engine's resolution with the object centred on white (docs/CPP.md).
VFRT_API Image load_png(const std::string& path);
/// Write an 8-bit RGB PNG (Image::to_rgb8); Status::io if it cannot.
VFRT_API void save_png(const std::string& path, const Image& image);

/// What is drawn per DDIM step (vfrt.runtime.sampler): "exact" = one normal per reference (the
/// original), "shared" = one draw for all references, "fast" = their weighted sum drawn directly.
enum class NoiseMode { exact, shared, fast };

/// Reported after every generated view.
struct Progress {
  int views_done = 0;
  int views_total = 0;
  double seconds = 0.0;  ///< since the generation started
};

/// Generation settings; defaults are the original's (SPEC §5) and vfrt's SamplerConfig.
struct VFRT_API Options {
  int views = 36;              ///< orbit: N views around the object, the input included (>= 2)
  int generate = 0;            ///< orbit: stop after this many generated views (0: all N - 1)
  int low_ring = 0;            ///< orbit: this many more views on a second ring after the complete orbit (0: none)
  double low_ring_polar = 45.0; ///< how far below the input's elevation that ring is, degrees (0..180)
  int steps = 75;              ///< DDIM steps S (75 runs 76 UNet steps per view); >= 2
  double eta = 1.0;            ///< DDIM eta (>= 0)
  double guidance = 3.0;       ///< classifier-free guidance scale (>= 0; 1 = none)
  double inference_temp = 0.5; ///< tau_inf of the input view's weight (> 0)
  double auto_temp = 0.5;      ///< tau_auto of the generated references' softmax (> 0)
  std::int64_t seed = 0;       ///< seed of every draw (>= 0): equal seeds give Python's draws
  NoiseMode noise_mode = NoiseMode::exact;
  double elevation = 30.0;     ///< the input camera's angle above the horizon, degrees (cameras only)
  std::string noise;           ///< replay this noise directory (docs/CPP.md, "Noise files") instead of the seed
  std::string record_noise;    ///< write this run's draws to this directory (exact / shared modes)
  std::function<void(const Progress&)> progress;  ///< called after each view (may be empty)
  const std::atomic<bool>* cancel = nullptr;      ///< set to stop before the next view (may be null)

  /// Throw Status::invalid_argument naming the first setting that is out of range.
  void validate() const;
};

/// A target pose relative to the input view: polar and azimuth deltas in degrees, radius in model units.
struct Pose {
  double polar = 0.0;
  double azimuth = 0.0;
  double radius = 0.0;
};

/// One generated view.
struct View {
  Image image;
  double polar = 0.0;    ///< pose delta relative to the input view, radians
  double azimuth = 0.0;  ///< radians
  double radius = 0.0;   ///< model units
  std::vector<int> references;       ///< slots used: 0 = the input, 1 + j = generated view j
  std::vector<float> weights;        ///< their interpolation weights (sum 1)
  /// OpenGL camera-to-world, row-major 4x4 (SPEC §8: world z up, camera distance 1.5 + radius,
  /// elevation = Options::elevation - polar, azimuth = the view's azimuth).
  std::array<double, 16> camera_to_world{};
};

/// Where the time of one generation went (seconds). On CUDA, launching is asynchronous: the host's
/// cost per step is denoise_launch / steps (graph replays), the GPU's is denoise_device / steps.
struct Timing {
  double encode = 0.0;          ///< CLIP + VAE encoder of reference views (each once)
  double condition = 0.0;       ///< conditioning network per target view
  double denoise = 0.0;         ///< all UNet steps, until the latents were ready (wall)
  double denoise_launch = 0.0;  ///< host time spent launching them (graph replays or eager kernels)
  double denoise_device = 0.0;  ///< GPU time of the same steps, CUDA events (0 on the CPU)
  double decode = 0.0;          ///< VAE decoder + copy to the host
  double total = 0.0;
  int steps = 0;                ///< UNet steps run (views x schedule length)
  int graph_captures = 0;       ///< CUDA graphs captured during this generation
};

/// What orbit() and single() return.
struct VFRT_API Result {
  std::string mode;          ///< "orbit" or "single"
  int n_views = 0;           ///< orbit: N (0 in single mode)
  double elevation = 30.0;   ///< degrees, as given in Options
  Image input;               ///< the input as the model saw it
  std::array<double, 16> input_camera_to_world{};
  std::vector<View> views;   ///< generation order (single mode: intermediate views, the target last)
  Timing timing;

  /// Indices into `views` of the orbit's views (polar delta 0) sorted by azimuth in [0, 2 pi) (the orbit
  /// order after the input).
  std::vector<int> orbit_order() const;
  /// Indices into `views` of the low ring's views (Options::low_ring) sorted by azimuth; empty without one.
  std::vector<int> low_ring_order() const;
  /// Write the folder `vfrt run` writes for the views and cameras: orbit: views/000.png (the input)
  /// ... views/NNN.png by azimuth, a low ring's views/low_000.png ... by azimuth, and transforms.json
  /// (nerfstudio, SPEC §8; both rings); single: views/input.png, views/step_XX.png and target.png.
  /// Written into a temporary sibling and renamed into place when complete (an existing folder, replaced
  /// only with `overwrite`, is moved aside first and deleted last). Status::io on failure.
  void save(const std::string& folder, bool overwrite = false) const;
  /// The nerfstudio transforms.json of the orbit (what save() writes), as JSON text.
  std::string transforms_json() const;
};

/// How an engine directory is opened.
struct EngineOptions {
  std::string device = "auto";  ///< "auto" (the kind the engines were built for), "cpu", "cuda", "cuda:N"
  int graphs = -1;              ///< CUDA graphs around the step: -1 auto (on for CUDA), 0 off, 1 on
  bool verify_artifacts = true; ///< sha256 of every package (hashes vfrt already recorded are reused)
  bool check_toolchain = true;  ///< refuse packages built against another libstdc++ than this process's
};

/// What was opened.
struct EngineInfo {
  std::string directory;
  std::string backend;     ///< "aoti"
  std::string precision;   ///< "float32", "float16", ...
  std::string device;      ///< "cpu", "cuda:0", ...
  bool graphs = false;     ///< the step runs in CUDA graphs
  int image_size = 0;      ///< input and output side length in pixels
  int max_refs = 0;        ///< most references a view may use (orbits of up to ~2 * max_refs views)
  std::string checkpoint;  ///< the weights the engines were built from
  std::string torch_version;
  bool sha256_verified = false;  ///< every package's sha256 was checked at open
};

/// The six networks of one engine directory (`vfrt build-engines`), loaded and checked, plus the
/// ViewFusion loop around them. Not copyable; movable.
class VFRT_API Engine {
 public:
  /// Open and check `directory` as `vfrt run --engines` does (manifest, this machine, artifacts,
  /// toolchain), then load the packages. Throws Error (corrupt_engine, engine_mismatch, engine_load).
  explicit Engine(const std::string& directory, const EngineOptions& options = {});
  ~Engine();
  Engine(Engine&&) noexcept;
  Engine& operator=(Engine&&) noexcept;
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  /// A 360-degree orbit: options.views - 1 generated views (or options.generate), then options.low_ring
  /// views of a second ring, generation order.
  Result orbit(const Image& input, const Options& options = {});
  /// One target pose through 10-degree intermediate views; the target is the last view.
  Result single(const Image& input, const Pose& target, const Options& options = {});

  const EngineInfo& info() const;

  class Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

/// The library's version (the Python package's: engines record it).
VFRT_API const char* version() noexcept;

}  // namespace vfrt

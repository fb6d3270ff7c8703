// Engine directories on the C++ side: read `manifest.json` and make the checks the Python loader
// makes (vfrt/engines/engine_dir.py, vfrt/engines/toolchain.py), in the same order, each failure one
// vfrt::Error listing every problem and the `vfrt build-engines ...` command that rebuilds it:
//   1. the directory and its manifest exist and parse (Status::corrupt_engine);
//   2. the engines fit this process: device kind, GPU + compute capability, CUDA, torch, vfrt,
//      backend (Status::engine_mismatch);
//   3. every package has its recorded size and sha256 (Status::corrupt_engine);
//   4. the packages' C++ was built against the libstdc++ this process runs (Status::engine_load).
// Unknown manifest fields are ignored, so a manifest extended backward-compatibly still opens.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "sampling.hpp"

namespace vfrt::detail {

struct AxisRange {
  std::int64_t min = 1, opt = 1, max = 1;
};

/// One dimension of a tensor entry: a fixed size, or the name of a dynamic axis.
struct Dim {
  std::int64_t size = 0;
  std::string axis;  ///< empty: fixed
};

struct TensorEntry {
  std::string name;
  std::vector<Dim> shape;
  std::string dtype;  ///< "float32", "float16", "bfloat16", "int64"
};

/// One built network: its package and its spec (the shapes and axis ranges it accepts).
struct NetworkEntry {
  std::string name, file, sha256;
  std::int64_t size = 0;
  std::vector<TensorEntry> inputs, outputs;
  std::vector<std::pair<std::string, AxisRange>> axes;
  const AxisRange& axis(const std::string& name) const;
};

struct Manifest {
  int schema = 0;
  std::string backend, backend_version, precision, vae_precision;
  int max_refs = 0, max_batch = 0;
  struct {
    std::string device, gpu_name, compute_capability, torch, cuda, vfrt;  // "" where the JSON has null
  } platform;
  struct {
    std::string path, fingerprint, config_path;
    bool use_ema = true;
  } checkpoint;
  TrainSchedule schedule;
  int latent_size = 0;      ///< model_config.unet.image_size (h = w of a latent)
  int latent_channels = 4;  ///< model_config.unet.out_channels
  std::vector<NetworkEntry> networks;
  struct {
    bool present = false;
    std::string cxx, version, libstdcxx;  // libstdcxx "" when the compiler did not say
  } toolchain;

  const NetworkEntry& network(const std::string& name) const;
  /// `vfrt build-engines ...` that builds these engines again (Manifest.rebuild_command).
  std::string rebuild_command(const std::string& directory, int max_refs = 0) const;
};

/// The six networks, in the manifest's order of the spec table.
extern const char* const kNetworkNames[6];

/// Read and validate `<directory>/manifest.json` (Status::corrupt_engine with the reason).
Manifest read_manifest(const std::string& directory);

/// What this process offers (compared with the manifest's platform).
struct Here {
  std::string device_type;  ///< "cpu" or "cuda"
  std::string gpu_name, compute_capability;
  std::string cuda;         ///< the CUDA version torch was built with ("" unknown / none)
  std::string torch;        ///< torch's version, e.g. "2.13.0+cpu" (or "2.13.0" when the tag is unknown)
};

/// Every way the manifest does not fit (empty: it fits).
std::vector<std::string> compatibility_problems(const Manifest& manifest, const Here& here);
/// Status::engine_mismatch listing `problems` unless it is empty.
void raise_mismatch(const Manifest& manifest, const std::string& directory, const std::vector<std::string>& problems);
/// Sizes and (with `sha256`) digests of every package; returns whether digests were checked.
bool check_artifacts(const Manifest& manifest, const std::string& directory, bool sha256);
/// Status::engine_load when the packages were built against another libstdc++ than this process's.
void check_toolchain(const Manifest& manifest, const std::string& directory);

/// Realpath of the libstdc++ this process has mapped ("" if none or unknown).
std::string loaded_libstdcxx();
/// vfrt's cache root: $VFRT_CACHE_DIR, else $XDG_CACHE_HOME/vfrt, else ~/.cache/vfrt.
std::string cache_dir();
/// POSIX shell quoting as Python's shlex.quote.
std::string shell_quote(const std::string& text);

}  // namespace vfrt::detail

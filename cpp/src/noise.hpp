// Noise directories: a run's draws as raw little-endian float32 files plus a JSON index, the format
// both runtimes read and write (Python: vfrt.runtime.noise.NoiseBank.save_raw / load_raw), so a C++
// run and a Python run can be fed the very same noise:
//
//   <dir>/noise.json               {"format": "vfrt-noise-raw", "version": 1, "dtype": "float32",
//                                   "byte_order": "little", "views": [{"x_T": "x_T_v00.f32",
//                                   "x_T_shape": [1, C, h, w], "step_noise": "step_noise_v00.f32",
//                                   "step_noise_shape": [S, K, C, h, w]}, ...]}
//   <dir>/x_T_vXX.f32              generated view XX's initial latent, C order
//   <dir>/step_noise_vXX.f32       its per-step draws (K = its references, or 1 when shared)
//
// Views are read one at a time (a full 36-view bank is ~0.7 GB); written into a temporary sibling
// directory that is renamed into place when complete.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace vfrt::detail {

using Shape = std::vector<std::int64_t>;

class NoiseDirReader {
 public:
  /// Reads and checks the index and every file's size (Status::noise with what is wrong).
  explicit NoiseDirReader(const std::string& directory);
  int views() const { return static_cast<int>(views_.size()); }
  const Shape& x_T_shape(int view) const { return views_.at(view).x_T_shape; }
  const Shape& step_shape(int view) const { return views_.at(view).step_shape; }
  /// Fill `out` (product of the shape floats) with the view's draws.
  void read_x_T(int view, float* out) const;
  void read_steps(int view, float* out) const;

 private:
  struct Entry {
    std::string x_T_file, step_file;
    Shape x_T_shape, step_shape;
  };
  std::string directory_;
  std::vector<Entry> views_;
};

class NoiseDirWriter {
 public:
  /// Prepares a temporary sibling of `directory` (Status::io if it cannot).
  explicit NoiseDirWriter(const std::string& directory);
  ~NoiseDirWriter();  ///< removes the temporary directory unless committed
  NoiseDirWriter(const NoiseDirWriter&) = delete;
  NoiseDirWriter& operator=(const NoiseDirWriter&) = delete;
  void add_view(const float* x_T, const Shape& x_T_shape, const float* steps, const Shape& step_shape);
  /// Write the index and rename into place (an existing noise directory there is replaced).
  void commit();

 private:
  struct Entry {
    std::string x_T_file, step_file;
    Shape x_T_shape, step_shape;
  };
  std::string directory_, temporary_;
  std::vector<Entry> entries_;
  bool committed_ = false;
};

std::int64_t numel(const Shape& shape);

}  // namespace vfrt::detail

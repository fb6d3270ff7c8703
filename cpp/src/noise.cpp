// Noise directories (format in noise.hpp). No torch headers here.
#include "noise.hpp"

#include <stdlib.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "files.hpp"
#include "vfrt/vfrt.hpp"

namespace vfrt::detail {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr const char* kFormat = "vfrt-noise-raw";
constexpr const char* kIndex = "noise.json";

bool little_endian() {
  const std::uint16_t probe = 1;
  unsigned char first;
  std::memcpy(&first, &probe, 1);
  return first == 1;
}

std::string shape_text(const Shape& shape) {
  std::string out = "(";
  for (size_t i = 0; i < shape.size(); ++i) out += (i ? ", " : "") + std::to_string(shape[i]);
  return out + ")";
}

[[noreturn]] void bad(const std::string& directory, const std::string& what) {
  throw Error(Status::noise, "noise directory " + directory + ": " + what +
                                 " (give a directory written by NoiseBank.save_raw or vfrt-orbit --save-noise)");
}

void read_floats(const std::string& path, float* out, std::int64_t count) {
  std::ifstream in(path, std::ios::binary);
  in.read(reinterpret_cast<char*>(out), static_cast<std::streamsize>(count * sizeof(float)));
  if (!in || in.gcount() != static_cast<std::streamsize>(count * sizeof(float))) {
    throw Error(Status::noise, "cannot read " + std::to_string(count) + " floats from " + path);
  }
}

}  // namespace

std::int64_t numel(const Shape& shape) {
  std::int64_t n = 1;
  for (auto s : shape) n *= s;
  return n;
}

NoiseDirReader::NoiseDirReader(const std::string& directory) : directory_(directory) {
  if (!little_endian()) throw Error(Status::noise, "noise directories are little-endian; this machine is not");
  if (!fs::is_directory(directory)) bad(directory, "no such folder");
  std::ifstream in(directory + "/" + kIndex);
  if (!in) bad(directory, std::string("no readable ") + kIndex);
  const json index = json::parse(in, nullptr, /*allow_exceptions=*/false);
  if (index.is_discarded() || !index.is_object()) bad(directory, std::string(kIndex) + " is not a JSON object");
  try {
    if (index.at("format") != kFormat || index.at("version") != 1 || index.at("dtype") != "float32" ||
        index.at("byte_order") != "little") {
      bad(directory, std::string("not a '") + kFormat + "' version 1 index of little-endian float32 files");
    }
    for (const json& v : index.at("views")) {
      Entry e{v.at("x_T").get<std::string>(), v.at("step_noise").get<std::string>(),
              v.at("x_T_shape").get<Shape>(), v.at("step_noise_shape").get<Shape>()};
      for (const std::string& file : {e.x_T_file, e.step_file}) {
        if (file.empty() || file.find('/') != std::string::npos) bad(directory, "file name '" + file + "' is not plain");
      }
      if (e.x_T_shape.size() != 4 || e.x_T_shape[0] != 1 || e.step_shape.size() != 5 ||
          !std::equal(e.x_T_shape.begin() + 1, e.x_T_shape.end(), e.step_shape.begin() + 2)) {
        bad(directory, "view " + std::to_string(views_.size()) + ": x_T must be (1, C, h, w) and step noise (S, K, "
                       "C, h, w), got " + shape_text(e.x_T_shape) + " and " + shape_text(e.step_shape));
      }
      for (const auto& [file, shape] : {std::make_pair(e.x_T_file, e.x_T_shape), std::make_pair(e.step_file, e.step_shape)}) {
        std::error_code ec;
        const auto size = fs::file_size(directory + "/" + file, ec);
        const auto want = static_cast<std::uintmax_t>(numel(shape)) * sizeof(float);
        if (ec || size != want) {
          bad(directory, file + (ec ? " is missing" : " has " + std::to_string(size) + " bytes, its shape " +
                                                          shape_text(shape) + " needs " + std::to_string(want)));
        }
      }
      views_.push_back(std::move(e));
    }
  } catch (const json::exception& exc) {
    bad(directory, std::string(kIndex) + " is malformed (" + exc.what() + ")");
  }
}

void NoiseDirReader::read_x_T(int view, float* out) const {
  const Entry& e = views_.at(view);
  read_floats(directory_ + "/" + e.x_T_file, out, numel(e.x_T_shape));
}

void NoiseDirReader::read_steps(int view, float* out) const {
  const Entry& e = views_.at(view);
  read_floats(directory_ + "/" + e.step_file, out, numel(e.step_shape));
}

NoiseDirWriter::NoiseDirWriter(const std::string& directory) : directory_(directory) {
  if (!little_endian()) throw Error(Status::io, "noise directories are little-endian; this machine is not");
  const fs::path target = fs::absolute(directory);
  std::error_code ec;
  fs::create_directories(target.parent_path(), ec);
  std::string pattern = (target.parent_path() / ("." + target.filename().string() + ".XXXXXX")).string();
  if (ec || ::mkdtemp(pattern.data()) == nullptr) {
    throw Error(Status::io, "cannot write the noise directory " + directory + ": " + std::strerror(errno));
  }
  temporary_ = pattern;
}

NoiseDirWriter::~NoiseDirWriter() {
  if (!committed_) {
    std::error_code ec;
    fs::remove_all(temporary_, ec);
  }
}

void NoiseDirWriter::add_view(const float* x_T, const Shape& x_T_shape, const float* steps, const Shape& step_shape) {
  char suffix[16];
  std::snprintf(suffix, sizeof suffix, "v%02zu.f32", entries_.size());
  const std::string x_file = std::string("x_T_") + suffix, step_file = std::string("step_noise_") + suffix;
  for (const auto& [file, data, shape] : {std::make_tuple(x_file, x_T, x_T_shape),
                                          std::make_tuple(step_file, steps, step_shape)}) {
    std::ofstream out(temporary_ + "/" + file, std::ios::binary);
    out.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(numel(shape) * sizeof(float)));
    if (!out) throw Error(Status::io, "cannot write " + temporary_ + "/" + file);
  }
  entries_.push_back({x_file, step_file, x_T_shape, step_shape});
}

void NoiseDirWriter::commit() {
  json views = json::array();
  for (const auto& e : entries_) {
    views.push_back({{"x_T", e.x_T_file}, {"x_T_shape", e.x_T_shape}, {"step_noise", e.step_file},
                     {"step_noise_shape", e.step_shape}});
  }
  const json index = {{"format", kFormat}, {"version", 1}, {"dtype", "float32"}, {"byte_order", "little"},
                      {"views", views}};
  {
    std::ofstream out(temporary_ + "/" + kIndex);
    out << index.dump(1);
    if (!out) throw Error(Status::io, "cannot write " + temporary_ + "/" + kIndex);
  }
  if (fs::exists(directory_) && !fs::exists(fs::path(directory_) / kIndex)) {
    throw Error(Status::io, directory_ + " exists and is not a noise directory; choose another path");
  }
  replace_folder(temporary_, fs::absolute(directory_), "the noise directory");
  committed_ = true;
}

}  // namespace vfrt::detail

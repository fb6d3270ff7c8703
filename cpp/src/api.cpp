// The torch-free half of vfrt.hpp: errors, images (libpng), option checks, result folders.
#include <png.h>
#include <stdlib.h>

#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "files.hpp"
#include "sampling.hpp"
#include "vfrt/vfrt.hpp"

#ifndef VFRT_VERSION
#error "VFRT_VERSION must be defined by the build (CMakeLists.txt reads vfrt/version.py)"
#endif

namespace vfrt {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr double kPi = 3.14159265358979323846;
constexpr double kDegToRad = kPi / 180.0;  // Python's math.radians: x * (pi / 180)

/// SPEC §8 intrinsics at `size` px (cameras.py Intrinsics.default): focal 280 and centre 128.5 at 256 px.
struct Intrinsics {
  double focal, centre;
  explicit Intrinsics(int size) : focal(280.0 * (size / 256.0)), centre((256 / 2 + 0.5) * (size / 256.0)) {}
};

void write_png_or_throw(const std::string& path, const Image& image) {
  const std::vector<std::uint8_t> rgb = image.to_rgb8();
  png_image png{};
  png.version = PNG_IMAGE_VERSION;
  png.width = static_cast<png_uint_32>(image.width);
  png.height = static_cast<png_uint_32>(image.height);
  png.format = PNG_FORMAT_RGB;
  if (!png_image_write_to_file(&png, path.c_str(), 0, rgb.data(), 0, nullptr)) {
    const std::string reason = png.message[0] ? png.message : std::strerror(errno);
    png_image_free(&png);
    throw Error(Status::io, "cannot write " + path + ": " + reason);
  }
}

}  // namespace

const char* status_name(Status status) noexcept {
  switch (status) {
    case Status::ok: return "ok";
    case Status::invalid_argument: return "invalid_argument";
    case Status::corrupt_engine: return "corrupt_engine";
    case Status::engine_mismatch: return "engine_mismatch";
    case Status::engine_load: return "engine_load";
    case Status::image: return "image";
    case Status::noise: return "noise";
    case Status::cancelled: return "cancelled";
    case Status::runtime: return "runtime";
    case Status::io: return "io";
  }
  return "unknown";
}

Error::Error(Status status, const std::string& message) : std::runtime_error(message), status_(status) {}

const char* version() noexcept { return VFRT_VERSION; }

// ------------------------------------------------------------------------------------------ images
Image Image::from_rgb8(int width, int height, int channels, const std::uint8_t* data) {
  if (width <= 0 || height <= 0 || (channels != 3 && channels != 4) || data == nullptr) {
    throw Error(Status::image, "an 8-bit image needs a positive size, 3 or 4 channels and pixel data, got " +
                                   std::to_string(width) + "x" + std::to_string(height) + "x" + std::to_string(channels));
  }
  Image out;
  out.width = width;
  out.height = height;
  out.pixels.resize(static_cast<size_t>(width) * height * 3);
  // preprocess.py with preprocess=False, in its float32 op order: x / 255, composited on white
  // (rgb * a + (1 - a)), then * 2 - 1
  for (size_t i = 0, n = static_cast<size_t>(width) * height; i < n; ++i) {
    const float a = channels == 4 ? static_cast<float>(data[i * 4 + 3]) / 255.0f : 1.0f;
    for (int c = 0; c < 3; ++c) {
      const float x = static_cast<float>(data[i * channels + c]) / 255.0f;
      const float composited = x * a + (1.0f - a);
      out.pixels[i * 3 + c] = composited * 2.0f - 1.0f;
    }
  }
  return out;
}

std::vector<std::uint8_t> Image::to_rgb8() const {
  std::vector<std::uint8_t> out(pixels.size());
  for (size_t i = 0; i < pixels.size(); ++i) {  // preprocess.py to_uint8: truncation, as the original
    const float x = 255.0f * (pixels[i] / 2.0f + 0.5f);
    out[i] = static_cast<std::uint8_t>(std::isnan(x) ? 0.0f : std::min(255.0f, std::max(0.0f, x)));
  }
  return out;
}

Image load_png(const std::string& path) {
  png_image png{};
  png.version = PNG_IMAGE_VERSION;
  if (!png_image_begin_read_from_file(&png, path.c_str())) {
    const bool exists = fs::exists(path);
    const std::string reason = exists ? std::string(png.message) : std::string("no such file");
    png_image_free(&png);
    throw Error(Status::image, "cannot read " + path + " as a PNG image (" + reason + ")");
  }
  png.format = PNG_FORMAT_RGBA;
  std::vector<std::uint8_t> rgba(PNG_IMAGE_SIZE(png));
  if (!png_image_finish_read(&png, nullptr, rgba.data(), 0, nullptr)) {
    const std::string reason = png.message;
    png_image_free(&png);
    throw Error(Status::image, "cannot decode " + path + " (" + reason + ")");
  }
  return Image::from_rgb8(static_cast<int>(png.width), static_cast<int>(png.height), 4, rgba.data());
}

void save_png(const std::string& path, const Image& image) {
  if (image.width <= 0 || image.height <= 0 ||
      image.pixels.size() != static_cast<size_t>(image.width) * image.height * 3) {
    throw Error(Status::invalid_argument, "cannot save an image whose pixels do not match its size");
  }
  write_png_or_throw(path, image);
}

// ------------------------------------------------------------------------------------------ options
void Options::validate() const {
  auto fail = [](const std::string& message) { throw Error(Status::invalid_argument, message); };
  auto number = [&fail](const char* name, double value, bool strict) {
    if (!std::isfinite(value) || value < 0 || (strict && value == 0)) {
      std::ostringstream msg;
      msg << name << " must be a finite number " << (strict ? ">" : ">=") << " 0, got " << value;
      fail(msg.str());
    }
  };
  if (steps < 2) fail("steps must be an integer >= 2, got " + std::to_string(steps));
  detail::ddim_timesteps(steps, 1000);  // counts the original discretisation cannot run
  number("eta", eta, false);
  number("guidance", guidance, false);
  number("inference_temp", inference_temp, true);
  number("auto_temp", auto_temp, true);
  if (seed < 0) fail("seed must be an integer >= 0, got " + std::to_string(seed));
  if (noise_mode != NoiseMode::exact && noise_mode != NoiseMode::shared && noise_mode != NoiseMode::fast) {
    fail("noise_mode must be exact, shared or fast");
  }
  if (noise_mode == NoiseMode::fast && (!noise.empty() || !record_noise.empty())) {
    fail("a noise directory replays or records 'exact' or 'shared' runs; noise_mode fast draws on the device");
  }
  if (!std::isfinite(elevation) || elevation < -90.0 || elevation > 90.0) {
    std::ostringstream msg;
    msg << "elevation is the input camera's angle above the horizon: -90..90 degrees, got " << elevation;
    fail(msg.str());
  }
  if (views < 2) fail("views must be >= 2, got " + std::to_string(views));
  if (generate < 0 || generate > views - 1) {
    fail("generate must be in [1, " + std::to_string(views - 1) + "] (0: all), got " + std::to_string(generate));
  }
  if (low_ring < 0) fail("low_ring must be >= 0, got " + std::to_string(low_ring));
  if (low_ring > 0) {
    if (generate != 0 && generate != views - 1) fail("a low ring follows a complete orbit: set generate to 0");
    const double below = elevation - low_ring_polar;
    if (!(std::isfinite(low_ring_polar) && low_ring_polar > 0 && low_ring_polar < 180 && below > -90 && below < 90)) {
      std::ostringstream msg;
      msg << "the low ring's polar offset must put its cameras between the poles: elevation " << elevation << " - "
          << low_ring_polar << " degrees is " << below;
      fail(msg.str());
    }
  }
}

// ------------------------------------------------------------------------------------------ results
namespace {

/// Indices of the views of one ring (the orbit: polar delta 0; the low ring: the others) sorted by azimuth.
std::vector<int> ring_order(const std::vector<View>& views, bool low) {
  std::vector<int> members;
  std::vector<double> azimuths;
  for (size_t i = 0; i < views.size(); ++i) {
    if ((views[i].polar != 0.0) == low) {
      members.push_back(static_cast<int>(i));
      azimuths.push_back(views[i].azimuth);
    }
  }
  std::vector<int> order;
  for (int k : detail::orbit_order(azimuths)) order.push_back(members[k]);
  return order;
}

/// transforms.json frames of one ring: view i of n at azimuth i * 360 / n (cameras.py transforms_dict).
void add_ring_frames(json& frames, int n, double elevation_deg, const std::string& prefix) {
  for (int i = 0; i < n; ++i) {
    const double azimuth_deg = i * 360.0 / n;
    const auto m = detail::camera_to_world_opengl(azimuth_deg * kDegToRad, elevation_deg * kDegToRad, 1.5);
    json rows = json::array();
    for (int r = 0; r < 4; ++r) rows.push_back({m[r * 4], m[r * 4 + 1], m[r * 4 + 2], m[r * 4 + 3]});
    char name[48];
    std::snprintf(name, sizeof name, "views/%s%03d.png", prefix.c_str(), i);
    frames.push_back({{"file_path", name}, {"transform_matrix", rows}, {"azimuth_deg", azimuth_deg},
                      {"elevation_deg", elevation_deg}});
  }
}

}  // namespace

std::vector<int> Result::orbit_order() const { return ring_order(views, false); }

std::vector<int> Result::low_ring_order() const { return ring_order(views, true); }

std::string Result::transforms_json() const {
  const std::vector<int> low = low_ring_order();
  if (mode != "orbit" || static_cast<int>(orbit_order().size()) != n_views - 1) {
    throw Error(Status::invalid_argument, "transforms.json describes a complete orbit (vfrt run writes it only then)");
  }
  const Intrinsics k(input.width);
  json frames = json::array();
  add_ring_frames(frames, n_views, elevation, "");
  // the low ring: one elevation (its views share the polar delta), names by azimuth as save() writes them
  if (!low.empty()) {
    add_ring_frames(frames, static_cast<int>(low.size()), elevation - views[low[0]].polar * (180.0 / kPi), "low_");
  }
  const json out = {{"camera_model", "OPENCV"}, {"fl_x", k.focal}, {"fl_y", k.focal}, {"cx", k.centre},
                    {"cy", k.centre}, {"w", input.width}, {"h", input.height}, {"k1", 0.0}, {"k2", 0.0},
                    {"p1", 0.0}, {"p2", 0.0}, {"camera_distance", 1.5}, {"frames", frames}};
  return out.dump(2);
}

void Result::save(const std::string& folder, bool overwrite) const {
  const fs::path out = fs::absolute(folder);
  std::error_code ec;
  if (fs::exists(out) && !overwrite) {
    throw Error(Status::io, folder + " already exists; choose another folder or allow overwriting");
  }
  fs::create_directories(out.parent_path(), ec);
  std::string pattern = out.parent_path().string() + "/." + out.filename().string() + ".XXXXXX";
  if (ec || ::mkdtemp(pattern.data()) == nullptr) {
    throw Error(Status::io, "cannot write the output folder " + folder + ": " + std::strerror(errno));
  }
  const fs::path tmp = pattern;
  try {
    fs::create_directory(tmp / "views");
    if (mode == "single") {
      write_png_or_throw((tmp / "views" / "input.png").string(), input);
      for (size_t v = 0; v < views.size(); ++v) {
        char name[32];
        std::snprintf(name, sizeof name, "step_%02zu.png", v + 1);
        write_png_or_throw((tmp / "views" / name).string(), views[v].image);
      }
      if (!views.empty()) write_png_or_throw((tmp / "target.png").string(), views.back().image);
    } else {
      write_png_or_throw((tmp / "views" / "000.png").string(), input);
      const std::vector<int> order = orbit_order();
      for (size_t i = 0; i < order.size(); ++i) {
        char name[32];
        std::snprintf(name, sizeof name, "%03zu.png", i + 1);
        write_png_or_throw((tmp / "views" / name).string(), views[order[i]].image);
      }
      const std::vector<int> low = low_ring_order();
      for (size_t j = 0; j < low.size(); ++j) {
        char name[32];
        std::snprintf(name, sizeof name, "low_%03zu.png", j);
        write_png_or_throw((tmp / "views" / name).string(), views[low[j]].image);
      }
      if (static_cast<int>(order.size()) == n_views - 1) {
        std::ofstream transforms(tmp / "transforms.json");
        transforms << transforms_json();
        if (!transforms) throw Error(Status::io, "cannot write " + (tmp / "transforms.json").string());
      }
    }
    detail::replace_folder(tmp, out, "the output folder");
  } catch (const Error&) {
    fs::remove_all(tmp, ec);
    throw;
  } catch (const std::exception& exc) {
    fs::remove_all(tmp, ec);
    throw Error(Status::io, "cannot write the output folder " + folder + ": " + exc.what());
  }
}

}  // namespace vfrt

// Manifest parsing (nlohmann/json) and the checks of engine_dir.hpp. No torch headers here.
#include "engine_dir.hpp"

#include <limits.h>
#include <stdlib.h>
#include <sys/stat.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <regex>
#include <set>
#include <sstream>

#if VFRT_WITH_OPENSSL
#include <openssl/evp.h>
#endif

#include "vfrt/vfrt.hpp"

namespace vfrt::detail {

using nlohmann::json;

const char* const kNetworkNames[6] = {"clip_image",   "vae_encoder",    "vae_decoder",
                                      "conditioning", "time_embedding", "unet_step"};

namespace {

const std::set<std::string> kDtypes = {"float32", "float16", "bfloat16", "int64"};
const std::set<std::string> kPrecisions = {"float32", "float16", "bfloat16"};

std::string join(const std::vector<std::string>& parts, const std::string& sep) {
  std::string out;
  for (size_t i = 0; i < parts.size(); ++i) out += (i ? sep : "") + parts[i];
  return out;
}

/// realpath, or the path itself when it does not exist
std::string real_path(const std::string& path) {
  char buf[PATH_MAX];
  return ::realpath(path.c_str(), buf) ? std::string(buf) : path;
}

std::string strip_slashes(std::string path) {
  while (path.size() > 1 && path.back() == '/') path.pop_back();
  return path;
}

bool inside(const std::string& path, const std::string& root) {
  const std::string p = strip_slashes(real_path(path)), r = strip_slashes(real_path(root));
  return p == r || (p.size() > r.size() && p.compare(0, r.size(), r) == 0 && p[r.size()] == '/');
}

std::string generic_rebuild(const std::string& directory) {
  const std::string out = inside(directory, cache_dir() + "/engines") ? "" : " --out " + shell_quote(directory);
  return "vfrt build-engines -c CHECKPOINT [options]" + out + " (it replaces " + directory + ")";
}

[[noreturn]] void corrupt(const std::string& message, const std::string& rebuild) {
  throw Error(Status::corrupt_engine, message + "; rebuild with: " + rebuild);
}

std::string text_or_empty(const json& j, const char* key) {
  const json& v = j.at(key);
  return v.is_null() ? std::string() : v.get<std::string>();
}

std::vector<TensorEntry> tensor_entries(const json& list) {
  std::vector<TensorEntry> out;
  for (const json& t : list) {
    TensorEntry entry;
    entry.name = t.at("name").get<std::string>();
    entry.dtype = t.at("dtype").get<std::string>();
    if (!kDtypes.count(entry.dtype)) throw std::invalid_argument("unknown dtype '" + entry.dtype + "'");
    for (const json& d : t.at("shape")) {
      Dim dim;
      if (d.is_string()) {
        dim.axis = d.get<std::string>();
      } else {
        dim.size = d.get<std::int64_t>();
      }
      entry.shape.push_back(dim);
    }
    out.push_back(std::move(entry));
  }
  return out;
}

Manifest parse_manifest(const std::string& text) {
  const json data = json::parse(text);
  if (!data.is_object()) throw std::invalid_argument("not a JSON object");
  Manifest m;
  const json& schema = data.contains("schema") ? data.at("schema") : json();
  if (!schema.is_number_integer() || schema.get<int>() != 1) {
    throw std::invalid_argument("schema " + (schema.is_null() ? std::string("None") : schema.dump()) +
                                ", this vfrt reads schema 1");
  }
  m.schema = 1;
  m.backend = data.at("backend").get<std::string>();
  m.backend_version = data.at("backend_version").get<std::string>();
  m.precision = data.at("precision").get<std::string>();
  m.vae_precision = data.at("vae_precision").get<std::string>();
  if (!kPrecisions.count(m.precision) || !kPrecisions.count(m.vae_precision)) {
    throw std::invalid_argument("unknown precision '" + m.precision + "' / '" + m.vae_precision + "'");
  }
  data.at("channels_last").get<bool>();
  m.max_refs = data.at("max_refs").get<int>();
  m.max_batch = data.at("max_batch").get<int>();
  const json& platform = data.at("platform");
  m.platform.device = platform.at("device").get<std::string>();
  m.platform.gpu_name = text_or_empty(platform, "gpu_name");
  m.platform.compute_capability = text_or_empty(platform, "compute_capability");
  m.platform.torch = platform.at("torch").get<std::string>();
  m.platform.cuda = text_or_empty(platform, "cuda");
  m.platform.vfrt = platform.at("vfrt").get<std::string>();
  const json& checkpoint = data.at("checkpoint");
  m.checkpoint.path = checkpoint.at("path").get<std::string>();
  m.checkpoint.fingerprint = checkpoint.at("fingerprint").get<std::string>();
  m.checkpoint.use_ema = checkpoint.at("use_ema").get<bool>();
  m.checkpoint.config_path = checkpoint.contains("config_path") ? text_or_empty(checkpoint, "config_path") : "";
  const json& model = data.at("model_config");
  const json& schedule = model.at("schedule");
  m.schedule.timesteps = schedule.at("timesteps").get<int>();
  m.schedule.linear_start = schedule.at("linear_start").get<double>();
  m.schedule.linear_end = schedule.at("linear_end").get<double>();
  m.schedule.scale_factor = schedule.at("scale_factor").get<double>();
  if (schedule.contains("beta_schedule") && schedule.at("beta_schedule") != "linear") {
    throw std::invalid_argument("only the 'linear' beta schedule is supported");
  }
  m.latent_size = model.at("unet").at("image_size").get<int>();
  m.latent_channels = model.at("unet").at("out_channels").get<int>();
  for (const json& n : data.at("networks")) {
    NetworkEntry entry;
    entry.name = n.at("name").get<std::string>();
    entry.file = n.at("file").get<std::string>();
    entry.sha256 = n.at("sha256").get<std::string>();
    entry.size = n.at("size").get<std::int64_t>();
    entry.inputs = tensor_entries(n.at("inputs"));
    entry.outputs = tensor_entries(n.at("outputs"));
    for (const json& a : n.at("axes")) {
      const json& sizes = a.at(1);
      AxisRange r{sizes.at(0).get<std::int64_t>(), sizes.at(1).get<std::int64_t>(), sizes.at(2).get<std::int64_t>()};
      if (!(1 <= r.min && r.min <= r.opt && r.opt <= r.max)) {
        throw std::invalid_argument("need 1 <= min <= opt <= max, got " + std::to_string(r.min) + ", " +
                                    std::to_string(r.opt) + ", " + std::to_string(r.max));
      }
      entry.axes.emplace_back(a.at(0).get<std::string>(), r);
    }
    for (const auto& t : entry.inputs) {
      for (const Dim& d : t.shape) {
        if (!d.axis.empty()) entry.axis(d.axis);  // every named axis has a range
      }
    }
    m.networks.push_back(std::move(entry));
  }
  std::vector<std::string> names, expected(std::begin(kNetworkNames), std::end(kNetworkNames));
  for (const auto& n : m.networks) names.push_back(n.name);
  std::vector<std::string> sorted_names = names, sorted_expected = expected;
  std::sort(sorted_names.begin(), sorted_names.end());
  std::sort(sorted_expected.begin(), sorted_expected.end());
  if (sorted_names != sorted_expected) {
    throw std::invalid_argument("networks [" + join(names, ", ") + "], expected [" + join(expected, ", ") + "]");
  }
  if (data.contains("toolchain") && data.at("toolchain").is_object()) {
    const json& tc = data.at("toolchain");
    m.toolchain.present = true;
    m.toolchain.cxx = tc.at("cxx").get<std::string>();
    m.toolchain.version = tc.at("version").get<std::string>();
    m.toolchain.libstdcxx = tc.contains("libstdcxx") ? text_or_empty(tc, "libstdcxx") : "";
  }
  return m;
}

/// `vfrt` version tags are compared whole; a torch version without its local tag (libtorch headers
/// know "2.13.0", not "+cpu") is compared on the release only.
bool torch_versions_match(const std::string& built, const std::string& here) {
  if (here.find('+') != std::string::npos) return built == here;
  return built.substr(0, built.find('+')) == here;
}

std::string sha256_file(const std::string& path) {
#if VFRT_WITH_OPENSSL
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot open " + path);
  EVP_MD_CTX* ctx = EVP_MD_CTX_new();
  EVP_DigestInit_ex(ctx, EVP_sha256(), nullptr);
  std::vector<char> chunk(8 << 20);
  while (in) {
    in.read(chunk.data(), static_cast<std::streamsize>(chunk.size()));
    if (in.gcount() > 0) EVP_DigestUpdate(ctx, chunk.data(), static_cast<size_t>(in.gcount()));
  }
  unsigned char digest[32];
  unsigned int length = 0;
  EVP_DigestFinal_ex(ctx, digest, &length);
  EVP_MD_CTX_free(ctx);
  static const char* hex = "0123456789abcdef";
  std::string out;
  for (unsigned int i = 0; i < length; ++i) {
    out += hex[digest[i] >> 4];
    out += hex[digest[i] & 15];
  }
  return out;
#else
  (void)path;
  return "";
#endif
}

/// The sha256 vfrt recorded for this file state in <cache>/digests.json (DigestIndex), or "".
std::string recorded_digest(const std::string& path) {
  struct stat st {};
  const std::string real = real_path(path);
  if (::stat(real.c_str(), &st) != 0) return "";
  const long long mtime_ns = static_cast<long long>(st.st_mtim.tv_sec) * 1000000000LL + st.st_mtim.tv_nsec;
  const std::string key = real + "|" + std::to_string(st.st_size) + "|" + std::to_string(mtime_ns) + "|" +
                          std::to_string(static_cast<unsigned long long>(st.st_ino));
  std::ifstream in(cache_dir() + "/digests.json");
  if (!in) return "";
  const json data = json::parse(in, nullptr, /*allow_exceptions=*/false);
  if (!data.is_object() || !data.contains(key) || !data.at(key).is_string()) return "";
  return data.at(key).get<std::string>();
}

}  // namespace

const AxisRange& NetworkEntry::axis(const std::string& axis_name) const {
  for (const auto& a : axes) {
    if (a.first == axis_name) return a.second;
  }
  throw std::invalid_argument(name + " has no range for axis '" + axis_name + "'");
}

const NetworkEntry& Manifest::network(const std::string& name) const {
  for (const auto& n : networks) {
    if (n.name == name) return n;
  }
  throw Error(Status::corrupt_engine, "the manifest has no network " + name);
}

std::string Manifest::rebuild_command(const std::string& directory, int refs) const {
  static const std::vector<std::pair<std::string, std::string>> flags = {
      {"float16", "fp16"}, {"bfloat16", "bf16"}, {"float32", "fp32"}};
  std::string precision_flag = precision;
  for (const auto& f : flags) {
    if (f.first == precision) precision_flag = f.second;
  }
  std::vector<std::string> parts = {"vfrt", "build-engines", "-c", shell_quote(checkpoint.path)};
  if (!checkpoint.config_path.empty()) {
    parts.push_back("--config");
    parts.push_back(shell_quote(checkpoint.config_path));
  }
  if (!checkpoint.use_ema) parts.push_back("--no-ema");
  for (const std::string& p : {std::string("--backend"), backend, std::string("--precision"), precision_flag,
                               std::string("--device"), platform.device, std::string("--max-refs"),
                               std::to_string(refs ? refs : max_refs)}) {
    parts.push_back(p);
  }
  if (!directory.empty() && !inside(directory, cache_dir() + "/engines")) {
    parts.push_back("--out");
    parts.push_back(shell_quote(directory));
  }
  return join(parts, " ");
}

Manifest read_manifest(const std::string& directory) {
  struct stat st {};
  if (::stat(directory.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
    corrupt(directory + " is not an engine directory (no such folder)", generic_rebuild(directory));
  }
  const std::string path = directory + "/manifest.json";
  std::ifstream in(path);
  if (!in) {
    corrupt(directory + " has no readable manifest.json (" + std::string(std::strerror(errno)) + ")",
            generic_rebuild(directory));
  }
  std::stringstream text;
  text << in.rdbuf();
  try {
    return parse_manifest(text.str());
  } catch (const json::out_of_range& exc) {  // a missing field (json's message names it)
    std::string what = exc.what();
    const std::smatch found = [&what] {
      std::smatch m;
      std::regex_search(what, m, std::regex("key '([^']*)' not found"));
      return m;
    }();
    corrupt(path + " is corrupt (" + (found.empty() ? what : "missing field '" + found[1].str() + "'") + ")",
            generic_rebuild(directory));
  } catch (const std::exception& exc) {
    corrupt(path + " is corrupt (" + std::string(exc.what()) + ")", generic_rebuild(directory));
  }
}

std::vector<std::string> compatibility_problems(const Manifest& manifest, const Here& here) {
  const auto& built = manifest.platform;
  std::vector<std::string> problems;
  if (here.device_type != built.device) {
    problems.push_back("built for " + built.device + ", this run is on " + here.device_type);
  } else if (here.device_type == "cuda") {
    if (here.gpu_name != built.gpu_name || here.compute_capability != built.compute_capability) {
      problems.push_back("built on " + built.gpu_name + " (compute capability " + built.compute_capability +
                         "), this is " + here.gpu_name + " (" + here.compute_capability + ")");
    }
    if (!here.cuda.empty() && here.cuda != built.cuda) {
      problems.push_back("built with CUDA " + built.cuda + ", torch here uses CUDA " + here.cuda);
    }
  }
  if (!torch_versions_match(built.torch, here.torch)) {
    problems.push_back("built with torch " + built.torch + ", this is torch " + here.torch);
  }
  if (built.vfrt != vfrt::version()) {
    problems.push_back("built by vfrt " + built.vfrt + ", this is vfrt " + vfrt::version());
  }
  if (manifest.backend != "aoti") {
    problems.push_back("backend '" + manifest.backend + "' is not available in this vfrt (the C++ runtime loads aoti)");
  } else {
    const std::string prefix = "torch ";
    const std::string built_torch = manifest.backend_version.rfind(prefix, 0) == 0
                                        ? manifest.backend_version.substr(prefix.size())
                                        : manifest.backend_version;
    if (!torch_versions_match(built_torch, here.torch)) {
      problems.push_back("aoti " + manifest.backend_version + " built it, aoti torch " + here.torch + " would load it");
    }
  }
  return problems;
}

void raise_mismatch(const Manifest& manifest, const std::string& directory, const std::vector<std::string>& problems) {
  if (problems.empty()) return;
  throw Error(Status::engine_mismatch, "the engines in " + directory + " do not fit: " + join(problems, "; ") +
                                           "; rebuild with: " + manifest.rebuild_command(directory));
}

bool check_artifacts(const Manifest& manifest, const std::string& directory, bool sha256) {
#if !VFRT_WITH_OPENSSL
  sha256 = false;  // built without OpenSSL: sizes only (EngineInfo::sha256_verified says so)
#endif
  std::vector<std::string> problems;
  for (const auto& n : manifest.networks) {
    const std::string path = directory + "/" + n.file;
    struct stat st {};
    if (::stat(path.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) {
      problems.push_back(n.file + " is missing");
      continue;
    }
    if (st.st_size != n.size) {
      problems.push_back(n.file + " has " + std::to_string(st.st_size) + " bytes, the build wrote " +
                         std::to_string(n.size) + " (truncated or replaced)");
    } else if (sha256) {
      std::string digest = recorded_digest(path);
      if (digest.empty()) digest = sha256_file(path);
      if (digest != n.sha256) problems.push_back(n.file + " does not have the sha256 the build recorded (altered)");
    }
  }
  if (!problems.empty()) {
    throw Error(Status::corrupt_engine, "the engines in " + directory + " are damaged: " + join(problems, "; ") +
                                            "; rebuild with: " + manifest.rebuild_command(directory));
  }
  return sha256;
}

void check_toolchain(const Manifest& manifest, const std::string& directory) {
  const auto& tc = manifest.toolchain;
  const std::string loaded = loaded_libstdcxx();
  if (!tc.present || tc.libstdcxx.empty() || loaded.empty() || real_path(tc.libstdcxx) == loaded) return;
  throw Error(Status::engine_load,
              "the packages in " + directory + " were compiled by " + tc.cxx + " " + tc.version + " against " +
                  tc.libstdcxx + ", this process runs " + loaded +
                  ": loading them can crash it (docs/CPP.md, \"One toolchain\"). Build this program with that "
                  "compiler (cmake -DCMAKE_CXX_COMPILER=" + tc.cxx +
                  "), or rebuild the engines with the compiler of this program: CXX=<that g++> " +
                  manifest.rebuild_command(directory) +
                  " (EngineOptions::check_toolchain = false skips this check at your own risk)");
}

std::string loaded_libstdcxx() {
  std::ifstream maps("/proc/self/maps");
  std::string line;
  while (std::getline(maps, line)) {
    const auto slash = line.find('/');
    if (slash == std::string::npos) continue;
    const std::string path = line.substr(slash);
    if (path.find("/libstdc++.so") != std::string::npos) return real_path(path);
  }
  return "";
}

std::string cache_dir() {
  auto expand = [](std::string path) {
    const char* home = std::getenv("HOME");
    if (!path.empty() && path[0] == '~' && home && (path.size() == 1 || path[1] == '/')) path = home + path.substr(1);
    return path;
  };
  const char* explicit_dir = std::getenv("VFRT_CACHE_DIR");
  if (explicit_dir && *explicit_dir) return expand(explicit_dir);
  const char* xdg = std::getenv("XDG_CACHE_HOME");
  return expand(xdg && *xdg ? std::string(xdg) : std::string("~/.cache")) + "/vfrt";
}

std::string shell_quote(const std::string& text) {
  if (text.empty()) return "''";
  static const std::regex safe("^[A-Za-z0-9_@%+=:,./-]+$");
  if (std::regex_match(text, safe)) return text;
  std::string out = "'";
  for (char c : text) out += c == '\'' ? std::string("'\"'\"'") : std::string(1, c);
  return out + "'";
}

}  // namespace vfrt::detail

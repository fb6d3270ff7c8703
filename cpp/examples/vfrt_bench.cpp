// vfrt-bench: times the C++ runtime on an engine directory and prints one JSON object on stdout (what
// benchmarks/bench_cpp.py reads): the time to open the engines, and per orbit the phases of vfrt::Timing.
//
//   vfrt-bench --engines DIR --image PNG [--views 36] [--generate N] [--steps 75] [--seed 0] [--repeat 2]
//              [--device auto] [--graphs -1|0|1] [--noise DIR] [--raw DIR] [--open-only]
//
// --raw DIR writes the first orbit's views as raw float32 (H, W, 3) files DIR/vNN.f32 (generation order)
// for an exact comparison with another runtime; --open-only opens the engines and exits (a load probe).
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <map>
#include <string>

#include "vfrt/vfrt.hpp"

namespace {

const char* kUsage =
    "usage: vfrt-bench --engines DIR --image PNG [--views N] [--generate N] [--steps S] [--seed N] [--repeat R]\n"
    "                  [--device D] [--graphs -1|0|1] [--noise DIR] [--raw DIR] [--open-only]\n";

int integer(const std::map<std::string, std::string>& args, const std::string& key, int fallback) {
  const auto found = args.find(key);
  if (found == args.end()) return fallback;
  char* end = nullptr;
  const long value = std::strtol(found->second.c_str(), &end, 10);
  if (found->second.empty() || *end != '\0') throw std::invalid_argument(key + " needs an integer");
  return static_cast<int>(value);
}

}  // namespace

int main(int argc, char** argv) {
  std::map<std::string, std::string> args;
  bool open_only = false;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--open-only") {
      open_only = true;
    } else if (arg.rfind("--", 0) == 0 && i + 1 < argc) {
      args[arg] = argv[++i];
    } else {
      std::cerr << "vfrt-bench: unexpected argument '" << arg << "'\n" << kUsage;
      return 2;
    }
  }
  if (!args.count("--engines") || (!open_only && !args.count("--image"))) {
    std::cerr << kUsage;
    return 2;
  }
  try {
    vfrt::EngineOptions engine_options;
    engine_options.device = args.count("--device") ? args["--device"] : "auto";
    engine_options.graphs = integer(args, "--graphs", -1);
    vfrt::Options options;
    options.views = integer(args, "--views", 36);
    options.generate = integer(args, "--generate", 0);
    options.steps = integer(args, "--steps", 75);
    options.seed = integer(args, "--seed", 0);
    options.noise = args.count("--noise") ? args["--noise"] : "";
    const int repeat = integer(args, "--repeat", 2);

    const auto t0 = std::chrono::steady_clock::now();
    vfrt::Engine engine(args["--engines"], engine_options);
    const double open_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const vfrt::EngineInfo& info = engine.info();
    std::cout << "{\"open_seconds\": " << open_seconds << ", \"device\": \"" << info.device
              << "\", \"graphs\": " << (info.graphs ? "true" : "false") << ", \"precision\": \"" << info.precision
              << "\", \"sha256_verified\": " << (info.sha256_verified ? "true" : "false");
    if (open_only) {
      std::cout << "}\n";
      return 0;
    }
    const vfrt::Image input = vfrt::load_png(args["--image"]);
    std::cout << ", \"views\": " << options.views << ", \"generate\": " << options.generate
              << ", \"steps\": " << options.steps << ", \"runs\": [";
    for (int r = 0; r < repeat; ++r) {
      const vfrt::Result result = engine.orbit(input, options);
      const vfrt::Timing& t = result.timing;
      std::cout << (r ? ", " : "") << "{\"total\": " << t.total << ", \"encode\": " << t.encode
                << ", \"condition\": " << t.condition << ", \"denoise\": " << t.denoise
                << ", \"denoise_launch\": " << t.denoise_launch << ", \"denoise_device\": " << t.denoise_device
                << ", \"decode\": " << t.decode << ", \"unet_steps\": " << t.steps
                << ", \"graph_captures\": " << t.graph_captures << ", \"generated\": " << result.views.size() << "}"
                << std::flush;
      if (r == 0 && args.count("--raw")) {
        for (size_t v = 0; v < result.views.size(); ++v) {
          char name[32];
          std::snprintf(name, sizeof name, "/v%02zu.f32", v);
          const auto& px = result.views[v].image.pixels;
          std::ofstream out(args["--raw"] + name, std::ios::binary);
          out.write(reinterpret_cast<const char*>(px.data()), static_cast<std::streamsize>(px.size() * sizeof(float)));
          if (!out) throw vfrt::Error(vfrt::Status::io, "cannot write " + args["--raw"] + name);
        }
      }
    }
    std::cout << "]}\n";
    return 0;
  } catch (const std::invalid_argument& exc) {
    std::cerr << "vfrt-bench: " << exc.what() << "\n" << kUsage;
    return 2;
  } catch (const vfrt::Error& exc) {
    std::cerr << "vfrt-bench: " << exc.what() << " [" << vfrt::status_name(exc.status()) << "]\n";
    return 1;
  }
}

// vfrt-bench: times the C++ runtime on an engine directory and prints one JSON object (what
// benchmarks/bench_cpp_runtime.py reads): the open time, and per orbit the phases of vfrt::Timing.
//
//   vfrt-bench --engines DIR --image PNG [--views 36] [--steps 75] [--repeat 2] [--noise DIR] [--raw DIR]
//
// --raw DIR writes the first orbit's views as raw float32 (H, W, 3) files DIR/vNN.f32 (generation
// order) for an exact comparison with another runtime.
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <map>
#include <string>

#include "vfrt/vfrt.hpp"

int main(int argc, char** argv) {
  std::map<std::string, std::string> args;
  for (int i = 1; i + 1 < argc; i += 2) args[argv[i]] = argv[i + 1];
  if (!args.count("--engines") || !args.count("--image") || argc % 2 == 0) {
    std::cerr << "usage: vfrt-bench --engines DIR --image PNG [--views N] [--steps S] [--repeat R] [--device D] "
                 "[--graphs -1|0|1] [--noise DIR] [--raw DIR]\n";
    return 2;
  }
  auto get = [&args](const char* key, const char* fallback) { return args.count(key) ? args[key] : fallback; };
  try {
    vfrt::EngineOptions engine_options;
    engine_options.device = get("--device", "auto");
    engine_options.graphs = std::atoi(get("--graphs", "-1").c_str());
    const auto t0 = std::chrono::steady_clock::now();
    vfrt::Engine engine(args["--engines"], engine_options);
    const double open_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const vfrt::Image input = vfrt::load_png(args["--image"]);
    vfrt::Options options;
    options.views = std::atoi(get("--views", "36").c_str());
    options.steps = std::atoi(get("--steps", "75").c_str());
    options.noise = get("--noise", "");
    const int repeat = std::atoi(get("--repeat", "2").c_str());
    std::cout << "{\"open_seconds\": " << open_seconds << ", \"device\": \"" << engine.info().device
              << "\", \"graphs\": " << (engine.info().graphs ? "true" : "false") << ", \"views\": " << options.views
              << ", \"steps\": " << options.steps << ", \"runs\": [";
    for (int r = 0; r < repeat; ++r) {
      const vfrt::Result result = engine.orbit(input, options);
      const vfrt::Timing& t = result.timing;
      std::cout << (r ? ", " : "") << "{\"total\": " << t.total << ", \"encode\": " << t.encode
                << ", \"condition\": " << t.condition << ", \"denoise\": " << t.denoise
                << ", \"denoise_launch\": " << t.denoise_launch << ", \"decode\": " << t.decode
                << ", \"unet_steps\": " << t.steps << ", \"graph_captures\": " << t.graph_captures << "}";
      if (r == 0 && args.count("--raw")) {
        for (size_t v = 0; v < result.views.size(); ++v) {
          const auto& px = result.views[v].image.pixels;
          std::ofstream out(args["--raw"] + "/v" + (v < 10 ? "0" : "") + std::to_string(v) + ".f32", std::ios::binary);
          out.write(reinterpret_cast<const char*>(px.data()), static_cast<std::streamsize>(px.size() * sizeof(float)));
        }
      }
    }
    std::cout << "]}\n";
    return 0;
  } catch (const vfrt::Error& exc) {
    std::cerr << "vfrt-bench: " << exc.what() << " [" << vfrt::status_name(exc.status()) << "]\n";
    return 1;
  }
}

// vfrt-orbit: an orbit (or one target pose) from the C++ runtime, written as `vfrt run` writes it.
//
//   vfrt-orbit IMAGE --engines DIR --out DIR [--views 36] [--steps 75] [--seed 0] ...
//
// IMAGE is a PNG of the engines' resolution (decoded with libpng): `vfrt run`'s input.png, or any
// image with the object centred on white (this program does no cropping or resizing).
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <map>
#include <string>

#include "vfrt/vfrt.hpp"

namespace {

const char* kUsage =
    "usage: vfrt-orbit IMAGE --engines DIR --out DIR [options]\n"
    "  --views N          orbit views, the input included (default 36)\n"
    "  --generate N       stop after N generated views (default: all)\n"
    "  --low-ring N       N more views on a ring below, after the complete orbit (default 0: none)\n"
    "  --low-ring-polar D how far below the input's elevation that ring is, degrees (default 45)\n"
    "  --single P,A,R     one target pose instead: polar and azimuth deltas (degrees), radius\n"
    "  --steps S          DDIM steps (default 75)\n"
    "  --eta X            DDIM eta (default 1)\n"
    "  --guidance X       guidance scale (default 3)\n"
    "  --inference-temp X / --auto-temp X   weight temperatures (default 0.5 / 0.5)\n"
    "  --seed N           seed of every draw (default 0)\n"
    "  --noise-mode M     exact, shared or fast (default exact)\n"
    "  --noise DIR        replay this noise directory\n"
    "  --save-noise DIR   write this run's draws to DIR\n"
    "  --elevation DEG    input camera elevation for the cameras (default 30)\n"
    "  --device D         auto, cpu, cuda, cuda:N (default auto)\n"
    "  --overwrite        replace an existing --out folder\n";

int usage_error(const std::string& message) {
  std::cerr << "vfrt-orbit: " << message << "\n" << kUsage;
  return 2;
}

double to_number(const std::string& flag, const std::string& text) {
  char* end = nullptr;
  const double value = std::strtod(text.c_str(), &end);
  if (text.empty() || *end != '\0') throw std::invalid_argument(flag + " needs a number, got '" + text + "'");
  return value;
}

}  // namespace

int main(int argc, char** argv) {
  std::string image_path, engines, out, single;
  std::map<std::string, std::string> values;
  bool overwrite = false;
  const std::string valued[] = {"--engines", "--out", "--views", "--generate", "--low-ring", "--low-ring-polar",
                                "--single", "--steps", "--eta",
                                "--guidance", "--inference-temp", "--auto-temp", "--seed", "--noise-mode",
                                "--noise", "--save-noise", "--elevation", "--device"};
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "-h" || arg == "--help") {
      std::cout << kUsage;
      return 0;
    }
    if (arg == "--overwrite") {
      overwrite = true;
    } else if (std::find(std::begin(valued), std::end(valued), arg) != std::end(valued)) {
      if (i + 1 >= argc) return usage_error(arg + " needs a value");
      values[arg] = argv[++i];
    } else if (!arg.empty() && arg[0] == '-') {
      return usage_error("unknown option " + arg);
    } else if (image_path.empty()) {
      image_path = arg;
    } else {
      return usage_error("one IMAGE only, got '" + image_path + "' and '" + arg + "'");
    }
  }
  if (image_path.empty() || !values.count("--engines") || !values.count("--out")) {
    return usage_error("IMAGE, --engines and --out are required");
  }

  vfrt::Options options;
  vfrt::Pose target;
  vfrt::EngineOptions engine_options;
  try {
    auto number = [&values](const char* flag, double fallback) {
      return values.count(flag) ? to_number(flag, values[flag]) : fallback;
    };
    options.views = static_cast<int>(number("--views", options.views));
    options.generate = static_cast<int>(number("--generate", options.generate));
    options.low_ring = static_cast<int>(number("--low-ring", options.low_ring));
    options.low_ring_polar = number("--low-ring-polar", options.low_ring_polar);
    options.steps = static_cast<int>(number("--steps", options.steps));
    options.eta = number("--eta", options.eta);
    options.guidance = number("--guidance", options.guidance);
    options.inference_temp = number("--inference-temp", options.inference_temp);
    options.auto_temp = number("--auto-temp", options.auto_temp);
    options.seed = static_cast<std::int64_t>(number("--seed", 0));
    options.elevation = number("--elevation", options.elevation);
    options.noise = values.count("--noise") ? values["--noise"] : "";
    options.record_noise = values.count("--save-noise") ? values["--save-noise"] : "";
    const std::string mode = values.count("--noise-mode") ? values["--noise-mode"] : "exact";
    if (mode != "exact" && mode != "shared" && mode != "fast") {
      throw std::invalid_argument("--noise-mode must be exact, shared or fast, got '" + mode + "'");
    }
    options.noise_mode = mode == "fast" ? vfrt::NoiseMode::fast : mode == "shared" ? vfrt::NoiseMode::shared
                                                                                   : vfrt::NoiseMode::exact;
    if (values.count("--single")) {
      const std::string& text = values["--single"];
      const auto a = text.find(','), b = text.find(',', a == std::string::npos ? a : a + 1);
      if (a == std::string::npos || b == std::string::npos) {
        throw std::invalid_argument("--single needs POLAR,AZIMUTH,RADIUS, got '" + text + "'");
      }
      target = {to_number("--single", text.substr(0, a)), to_number("--single", text.substr(a + 1, b - a - 1)),
                to_number("--single", text.substr(b + 1))};
    }
    if (values.count("--device")) engine_options.device = values["--device"];
    options.validate();  // before any work: a bad value is a usage error, as in `vfrt run`
  } catch (const std::invalid_argument& exc) {
    return usage_error(exc.what());
  } catch (const vfrt::Error& exc) {
    return usage_error(exc.what());
  }

  if (std::filesystem::exists(values["--out"]) && !overwrite) {  // before any work, as `vfrt run`
    std::cerr << "vfrt-orbit: " << values["--out"] << " already exists; choose another --out or pass --overwrite [io]\n";
    return 1;
  }
  try {
    const vfrt::Image input = vfrt::load_png(image_path);
    vfrt::Engine engine(values["--engines"], engine_options);
    const vfrt::EngineInfo& info = engine.info();
    std::cout << "engines: " << info.directory << " (" << info.backend << ", " << info.precision << ", "
              << info.device << (info.graphs ? ", CUDA graphs" : "") << ")\n";
    options.progress = [](const vfrt::Progress& p) {
      std::cout << "view " << p.views_done << "/" << p.views_total << " (" << p.seconds << " s)\n" << std::flush;
    };
    const vfrt::Result result = values.count("--single") ? engine.single(input, target, options)
                                                         : engine.orbit(input, options);
    result.save(values["--out"], overwrite);
    std::cout << "wrote " << values["--out"] << ": " << result.views.size() << " views in " << result.timing.total
              << " s\n";
    return 0;
  } catch (const vfrt::Error& exc) {
    std::cerr << "vfrt-orbit: " << exc.what() << " [" << vfrt::status_name(exc.status()) << "]\n";
    return 1;
  }
}

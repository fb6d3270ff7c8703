// C++ tests of what needs no engine directory (run by ctest and by tests/export/test_cpp_runtime.py),
// and a `dump` mode that prints schedules, coefficients and view plans as JSON so the Python test can
// compare them number by number with vfrt.runtime.
//
//   vfrt_unit_tests                       the checks below; ends with "N passed, N failed"
//   vfrt_unit_tests dump CASES_JSON       {"schedules": [[steps, eta]], "orbits": [[views, tau_inf, tau_auto]],
//                                          "singles": [[polar, azimuth, radius, tau_inf, tau_auto]],
//                                          "low_rings": [[views, n_low, delta_polar, tau_inf, tau_auto]]} (radians)
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <nlohmann/json.hpp>
#include <numeric>
#include <string>
#include <vector>

#include "engine_dir.hpp"
#include "files.hpp"
#include "noise.hpp"
#include "sampling.hpp"
#include "vfrt/vfrt.hpp"

namespace fs = std::filesystem;
using nlohmann::json;
using namespace vfrt;

namespace {

int passed = 0, failed = 0;

void check(bool ok, const std::string& what) {
  if (ok) {
    ++passed;
  } else {
    ++failed;
    std::cout << "FAILED: " << what << "\n";
  }
}

/// `work` throws vfrt::Error with `status` and a message containing `words`.
void check_error(const std::string& what, Status status, const std::string& words, const std::function<void()>& work) {
  try {
    work();
    check(false, what + ": no error");
  } catch (const Error& exc) {
    const bool ok = exc.status() == status && std::string(exc.what()).find(words) != std::string::npos;
    check(ok, what + ": got [" + status_name(exc.status()) + "] " + exc.what());
  } catch (const std::exception& exc) {
    check(false, what + ": not a vfrt::Error: " + exc.what());
  }
}

fs::path temp_dir() {
  std::string pattern = (fs::temp_directory_path() / "vfrt-unit-XXXXXX").string();
  return fs::path(::mkdtemp(pattern.data()));
}

void test_replace_folder() {
  const fs::path dir = temp_dir();
  const fs::path target = dir / "out", ready = dir / ".out.ready", again = dir / ".out.again";
  fs::create_directories(ready);
  std::ofstream(ready / "a.txt") << "first";
  detail::replace_folder(ready, target, "the test folder");
  check(fs::exists(target / "a.txt") && !fs::exists(ready), "replace_folder puts a new folder in place");
  fs::create_directories(again);
  std::ofstream(again / "b.txt") << "second";
  detail::replace_folder(again, target, "the test folder");
  int others = 0;
  for (const auto& entry : fs::directory_iterator(dir)) others += entry.path() != target;
  check(fs::exists(target / "b.txt") && !fs::exists(target / "a.txt") && others == 0,
        "replace_folder replaces an existing folder and leaves nothing aside");
  check_error("replace_folder of a missing folder", Status::io, "the test folder",
              [&] { detail::replace_folder(dir / ".missing", target, "the test folder"); });
  check(fs::exists(target / "b.txt"), "a failed replace_folder keeps the old folder");
  fs::remove_all(dir);
}

void test_schedule() {
  const auto s = detail::make_ddim_schedule(75, 1.0, detail::TrainSchedule{});
  check(s.num_steps() == 76 && s.timesteps.front() == 976 && s.timesteps.back() == 1,
        "75 DDIM steps run 76 UNet steps from t = 976 to t = 1");
  check(s.a_prev.back() == detail::linear_alphas_cumprod(detail::TrainSchedule{})[0],
        "the last step's a_prev is alphas_cumprod[0]");
  check_error("3 steps index past the schedule", Status::invalid_argument, "use e.g. steps=",
              [] { detail::make_ddim_schedule(3, 1.0, detail::TrainSchedule{}); });
  const auto c = detail::step_coefficients(detail::make_ddim_schedule(10, 0.0, detail::TrainSchedule{}));
  bool zero_sigma = true;
  for (float x : c.sigma) zero_sigma = zero_sigma && x == 0.0f;
  check(zero_sigma && c.c_x.size() == 9, "eta 0 has no noise term (10 DDIM steps run 9 UNet steps)");
}

void test_plans() {
  const auto plans = detail::plan_orbit(36, 0, 0.5, 0.5);
  check(plans.size() == 35 && plans[0].weights == std::vector<float>{1.0f}, "the first orbit view uses the input only");
  bool sums = true, input_first = true;
  for (const auto& p : plans) {
    sums = sums && std::fabs(std::accumulate(p.weights.begin(), p.weights.end(), 0.0) - 1.0) < 1e-5;
    input_first = input_first && p.references[0] == 0 && p.pose_conditions.size() == p.references.size() * 4;
  }
  check(sums && input_first, "every orbit view's weights sum to 1, input first");
  check(detail::orbit_order({0.1745, -0.1745, 0.349, -0.349}) == std::vector<int>{0, 2, 3, 1},
        "orbit order sorts azimuths mod 2 pi");
  const auto single = detail::plan_single(-20 * M_PI / 180, 65 * M_PI / 180, 0.0, 0.5, 0.5);
  check(single.size() == 7 && std::fabs(single.back().azimuth - 65 * M_PI / 180) < 1e-6,
        "a 65 degree target is reached through 7 views");
  check_error("an orbit of one view", Status::invalid_argument, "at least 2 views", [] { detail::plan_orbit(1, 0, 0.5, 0.5); });
}

void test_options() {
  auto with = [](const std::function<void(Options&)>& change) {
    return [change] {
      Options o;
      change(o);
      o.validate();
    };
  };
  Options defaults;
  defaults.validate();
  check(defaults.steps == 75 && defaults.eta == 1.0 && defaults.guidance == 3.0 && defaults.views == 36 &&
            defaults.inference_temp == 0.5 && defaults.auto_temp == 0.5,
        "the defaults are the original's");
  check_error("steps 1", Status::invalid_argument, "steps must be", with([](Options& o) { o.steps = 1; }));
  check_error("negative eta", Status::invalid_argument, "eta must be", with([](Options& o) { o.eta = -1; }));
  check_error("NaN guidance", Status::invalid_argument, "guidance must be", with([](Options& o) { o.guidance = NAN; }));
  check_error("zero temperature", Status::invalid_argument, "auto_temp", with([](Options& o) { o.auto_temp = 0; }));
  check_error("negative seed", Status::invalid_argument, "seed", with([](Options& o) { o.seed = -1; }));
  check_error("fast noise replay", Status::invalid_argument, "noise_mode fast", with([](Options& o) {
                o.noise_mode = NoiseMode::fast;
                o.noise = "x";
              }));
  check_error("elevation 100", Status::invalid_argument, "elevation", with([](Options& o) { o.elevation = 100; }));
  check_error("generate beyond the orbit", Status::invalid_argument, "generate", with([](Options& o) {
                o.views = 8;
                o.generate = 8;
              }));
  check_error("negative low ring", Status::invalid_argument, "low_ring", with([](Options& o) { o.low_ring = -1; }));
  check_error("a low ring after a partial orbit", Status::invalid_argument, "complete orbit", with([](Options& o) {
                o.low_ring = 4;
                o.generate = 3;
              }));
  check_error("a low ring past the pole", Status::invalid_argument, "between the poles", with([](Options& o) {
                o.low_ring = 4;
                o.low_ring_polar = 130;
              }));
  with([](Options& o) { o.low_ring = 12; })();  // the default polar offset: 30 - 45 = -15 degrees
  check(true, "a 12-view low ring 45 degrees below is valid");
}

void test_images(const fs::path& dir) {
  std::vector<std::uint8_t> rgb(256 * 3);
  for (int i = 0; i < 256 * 3; ++i) rgb[i] = static_cast<std::uint8_t>(i / 3);
  const Image image = Image::from_rgb8(16, 16, 3, rgb.data());
  const std::vector<std::uint8_t> back = image.to_rgb8();
  bool close = true;
  for (size_t i = 0; i < rgb.size(); ++i) close = close && (back[i] == rgb[i] || back[i] + 1 == rgb[i]);
  check(close, "8-bit pixels come back truncated (at most 1 lower), as vfrt run saves views");
  save_png((dir / "a.png").string(), image);
  check(load_png((dir / "a.png").string()).pixels == Image::from_rgb8(16, 16, 3, back.data()).pixels,
        "a PNG reads back the 8-bit pixels that were written");
  std::vector<std::uint8_t> rgba = {10, 20, 30, 0, 10, 20, 30, 255};
  const Image composited = Image::from_rgb8(2, 1, 4, rgba.data());
  check(composited.pixels[0] == 1.0f && composited.pixels[3] < 0.0f, "alpha is composited on white");
  check_error("a missing PNG", Status::image, "no such file", [&dir] { load_png((dir / "none.png").string()); });
  std::ofstream((dir / "bad.png").string()) << "not a png";
  check_error("a file that is not a PNG", Status::image, "cannot read", [&dir] { load_png((dir / "bad.png").string()); });
}

void test_noise(const fs::path& dir) {
  std::vector<float> x(1 * 4 * 2 * 2), steps(3 * 2 * 4 * 2 * 2);
  std::iota(x.begin(), x.end(), 0.0f);
  std::iota(steps.begin(), steps.end(), 100.0f);
  {
    detail::NoiseDirWriter writer((dir / "noise").string());
    writer.add_view(x.data(), {1, 4, 2, 2}, steps.data(), {3, 2, 4, 2, 2});
    writer.commit();
  }
  detail::NoiseDirReader reader((dir / "noise").string());
  std::vector<float> x2(x.size()), steps2(steps.size());
  reader.read_x_T(0, x2.data());
  reader.read_steps(0, steps2.data());
  check(reader.views() == 1 && x2 == x && steps2 == steps && reader.step_shape(0) == detail::Shape{3, 2, 4, 2, 2},
        "a noise directory reads back what was written");
  fs::resize_file(dir / "noise" / "step_noise_v00.f32", 8);
  check_error("a truncated noise file", Status::noise, "step_noise_v00.f32 has 8 bytes",
              [&dir] { detail::NoiseDirReader((dir / "noise").string()); });
  check_error("no noise directory", Status::noise, "no such folder", [&dir] { detail::NoiseDirReader((dir / "x").string()); });
}

void test_engine_dir(const fs::path& dir) {
  check_error("no engine directory", Status::corrupt_engine, "is not an engine directory",
              [&dir] { Engine((dir / "missing").string()); });
  fs::create_directories(dir / "empty");
  check_error("no manifest", Status::corrupt_engine, "has no readable manifest.json",
              [&dir] { Engine((dir / "empty").string()); });
  std::ofstream((dir / "empty" / "manifest.json").string()) << "{\"schema\": 1}";
  check_error("a manifest without fields", Status::corrupt_engine, "missing field 'backend'",
              [&dir] { Engine((dir / "empty").string()); });
  check(detail::shell_quote("a b'c") == "'a b'\"'\"'c'" && detail::shell_quote("/x/y.ckpt") == "/x/y.ckpt",
        "shell quoting as shlex.quote");
}

void test_cameras() {
  const auto m = detail::camera_to_world_opengl(0.0, 0.0, 1.5);
  check(std::fabs(m[3] - 1.5) < 1e-12 && std::fabs(m[7]) < 1e-12 && std::fabs(m[11]) < 1e-12,
        "the azimuth-0 camera sits at (1.5, 0, 0)");
}

json dump(const json& cases) {
  json out = {{"schedules", json::array()}, {"orbits", json::array()}, {"singles", json::array()},
              {"low_rings", json::array()}};
  for (const auto& s : cases.value("schedules", json::array())) {
    const auto schedule = detail::make_ddim_schedule(s[0].get<int>(), s[1].get<double>(), detail::TrainSchedule{});
    const auto c = detail::step_coefficients(schedule);
    out["schedules"].push_back({{"timesteps", schedule.timesteps}, {"a_t", schedule.a_t}, {"a_prev", schedule.a_prev},
                                {"sigma", schedule.sigma}, {"sqrt_one_minus_a_t", schedule.sqrt_one_minus_a_t},
                                {"c_x", c.c_x}, {"c_eps", c.c_eps}});
  }
  auto plans_json = [](const std::vector<detail::ViewPlan>& plans) {
    json list = json::array();
    for (const auto& p : plans) {
      list.push_back({{"pose", {p.polar, p.azimuth, p.radius}}, {"references", p.references}, {"weights", p.weights},
                      {"pose_conditions", p.pose_conditions}});
    }
    return list;
  };
  for (const auto& o : cases.value("orbits", json::array())) {
    out["orbits"].push_back(plans_json(detail::plan_orbit(o[0].get<int>(), 0, o[1].get<double>(), o[2].get<double>())));
  }
  for (const auto& r : cases.value("low_rings", json::array())) {
    out["low_rings"].push_back(plans_json(detail::plan_low_ring(r[0].get<int>(), r[1].get<int>(), r[2].get<double>(),
                                                                r[3].get<double>(), r[4].get<double>())));
  }
  for (const auto& s : cases.value("singles", json::array())) {
    out["singles"].push_back(plans_json(detail::plan_single(s[0].get<double>(), s[1].get<double>(), s[2].get<double>(),
                                                            s[3].get<double>(), s[4].get<double>())));
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc == 3 && std::string(argv[1]) == "dump") {
    std::cout << dump(json::parse(argv[2])).dump() << "\n";
    return 0;
  }
  const fs::path dir = temp_dir();
  test_replace_folder();
  test_schedule();
  test_plans();
  test_options();
  test_images(dir);
  test_noise(dir);
  test_engine_dir(dir);
  test_cameras();
  fs::remove_all(dir);
  std::cout << passed << " passed, " << failed << " failed\n";
  return failed ? 1 : 0;
}

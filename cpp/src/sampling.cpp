// Schedule, coefficients, view plans and cameras (see sampling.hpp for what each mirrors and why
// the dtypes are what they are). Where the Python code used numpy float32 arrays the arithmetic is
// plain float here; where it used torch, the same ATen op is called, so the results are the same
// kernels' results.
#include "sampling.hpp"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <sstream>
#include <utility>

#include "vfrt/vfrt.hpp"

namespace vfrt::detail {

namespace {

constexpr double kPi = 3.14159265358979323846;  // numpy's np.pi
/// references farther than this (radians) are dropped, except the input view
const double kDropDistance = 125.0 / 180.0 * kPi;
/// single-target mode inserts one intermediate view per 10 degrees
const double kSingleStep = kPi / 18;

void check_temps(double inference_temp, double auto_temp) {
  if (!(inference_temp > 0 && std::isfinite(inference_temp))) {
    std::ostringstream msg;
    msg << "inference_temp must be a positive number, got " << inference_temp;
    throw Error(Status::invalid_argument, msg.str());
  }
  if (!(auto_temp > 0 && std::isfinite(auto_temp))) {
    std::ostringstream msg;
    msg << "auto_temp must be a positive number, got " << auto_temp;
    throw Error(Status::invalid_argument, msg.str());
  }
}

std::vector<float> to_vector(const at::Tensor& t) {
  at::Tensor c = t.contiguous().to(at::kFloat);
  return std::vector<float>(c.data_ptr<float>(), c.data_ptr<float>() + c.numel());
}

/// The plan of one view: its pose, the kept references (slot ids), their weights (K,) and pose
/// conditions (K, 4) as float32 tensors.
ViewPlan make_plan(double polar, double azimuth, double radius, std::vector<std::int64_t> references,
                   const at::Tensor& weights, const at::Tensor& pose_conditions) {
  ViewPlan plan;
  plan.polar = polar;
  plan.azimuth = azimuth;
  plan.radius = radius;
  plan.references = std::move(references);
  plan.weights = to_vector(weights);
  plan.pose_conditions = to_vector(pose_conditions);
  return plan;
}

/// vfrt.runtime.poses.orbit_azimuth: generated view v of an n-view orbit at +s, -s, +2s, ... (float64).
double orbit_azimuth(int v, int n_views) {
  const double step = 2 * kPi / n_views * (v / 2 + 1);
  return (v & 1) ? -step : step;
}

/// Python's float modulo and numpy's np.remainder, in T's precision: fmod, then the divisor's sign.
template <typename T>
T floor_mod(T x, T m) {
  T mod = std::fmod(x, m);
  if (mod != T(0)) {
    if ((m < 0) != (mod < 0)) mod += m;
  } else {
    mod = std::copysign(T(0), m);
  }
  return mod;
}

/// Single-target weighting (SPEC §5), shared by plan_single and plan_low_ring: the input's weight
/// exp(-d_input / pi / tau_inf), the other references share the rest by softmax(-d / max d / tau_auto);
/// `w` (K,) float32 distances, input first, overwritten in place (a lone input gets weight 1).
void single_mode_weights(at::Tensor& w, double inference_temp, double auto_temp) {
  if (w.size(0) > 1) {
    at::Tensor w_in = at::exp(-w[0] / kPi / inference_temp);  // float32 0-dim tensor, as the Python
    at::Tensor rest = w.slice(0, 1);
    rest.copy_(at::softmax(-rest / rest.max() / auto_temp, 0) * at::rsub(w_in, 1));
    w[0] = w_in;
  } else {
    w[0] = 1;
  }
}

}  // namespace

double python_mod(double x, double m) { return floor_mod(x, m); }

std::vector<float> linear_alphas_cumprod(const TrainSchedule& train) {
  // betas = linspace(sqrt(start), sqrt(end), T, float64) ** 2 (torch's linspace kernel, as Python)
  at::Tensor betas = at::linspace(std::sqrt(train.linear_start), std::sqrt(train.linear_end), train.timesteps,
                                  at::TensorOptions().dtype(at::kDouble))
                         .pow(2);
  const double* b = betas.data_ptr<double>();
  std::vector<float> out(train.timesteps);
  double cumprod = 1.0;  // numpy's cumprod: a sequential float64 product
  for (int i = 0; i < train.timesteps; ++i) {
    cumprod *= 1.0 - b[i];
    out[i] = static_cast<float>(cumprod);
  }
  return out;
}

std::vector<std::int64_t> ddim_timesteps(int steps, int train_timesteps) {
  if (steps < 1 || steps > train_timesteps) {
    std::ostringstream msg;
    msg << "steps must be in [1, " << train_timesteps << "], got " << steps;
    throw Error(Status::invalid_argument, msg.str());
  }
  auto discretise = [train_timesteps](int s) {
    std::vector<std::int64_t> ts;
    const int c = train_timesteps / s;
    for (int t = 0; t < train_timesteps; t += c) ts.push_back(t + 1);
    return ts;
  };
  std::vector<std::int64_t> ts = discretise(steps);
  if (ts.back() >= train_timesteps) {
    // e.g. 3, 9, 27, 37 or 111 steps: the last timestep indexes past the schedule (the original crashes)
    int ok = steps + 1;
    while (ok < train_timesteps && discretise(ok).back() >= train_timesteps) ++ok;
    std::ostringstream msg;
    msg << "steps=" << steps << " is not usable with the original DDIM discretisation (it would need timestep "
        << ts.back() << " of 0.." << train_timesteps - 1 << "); use e.g. steps=" << ok;
    throw Error(Status::invalid_argument, msg.str());
  }
  return ts;
}

DdimSchedule make_ddim_schedule(int steps, double eta, const TrainSchedule& train) {
  if (eta < 0) {
    std::ostringstream msg;
    msg << "eta must be >= 0, got " << eta;
    throw Error(Status::invalid_argument, msg.str());
  }
  const std::vector<float> alphacums = linear_alphas_cumprod(train);
  const std::vector<std::int64_t> ts = ddim_timesteps(steps, train.timesteps);
  const int run = static_cast<int>(ts.size()) - 1;  // timesteps[:-1]: the largest one is dropped
  if (run < 1) {
    std::ostringstream msg;
    msg << "steps=" << steps << " leaves no UNet step after the original's t_start=-1 drop; use >= 2";
    throw Error(Status::invalid_argument, msg.str());
  }
  DdimSchedule out;
  out.eta = eta;
  for (int k = run - 1; k >= 0; --k) {  // largest t first
    const float alpha = alphacums[ts[k]];
    const double alpha_prev = k == 0 ? alphacums[0] : alphacums[ts[k - 1]];  // float64 copies of float32
    const double a64 = alpha;
    const double sigma = eta * std::sqrt((1 - alpha_prev) / (1 - a64) * (1 - a64 / alpha_prev));
    out.timesteps.push_back(ts[k]);
    out.a_t.push_back(alpha);
    out.a_prev.push_back(static_cast<float>(alpha_prev));
    out.sigma.push_back(static_cast<float>(sigma));
    out.sqrt_one_minus_a_t.push_back(std::sqrt(1.0f - alpha));  // float32 maths, as numpy's
  }
  return out;
}

StepCoefficients step_coefficients(const DdimSchedule& schedule) {
  // vfrt.engines.base.combined_update_coefficients in float64 from the float32 schedule
  StepCoefficients out;
  for (int i = 0; i < schedule.num_steps(); ++i) {
    const double a_t = schedule.a_t[i], a_prev = schedule.a_prev[i], sigma = schedule.sigma[i];
    const double sqrt_one_minus = schedule.sqrt_one_minus_a_t[i];
    const double c_x = std::sqrt(a_prev) / std::sqrt(a_t);
    const double c_eps = std::sqrt(1.0 - a_prev - sigma * sigma) - std::sqrt(a_prev) * sqrt_one_minus / std::sqrt(a_t);
    out.c_x.push_back(static_cast<float>(c_x));
    out.c_eps.push_back(static_cast<float>(c_eps));
    out.sigma.push_back(schedule.sigma[i]);
  }
  return out;
}

std::vector<ViewPlan> plan_orbit(int n_views, int generate, double inference_temp, double auto_temp) {
  check_temps(inference_temp, auto_temp);
  if (n_views < 2) {
    throw Error(Status::invalid_argument, "an orbit needs at least 2 views, got views=" + std::to_string(n_views));
  }
  const int total = n_views - 1;
  if (generate == 0) generate = total;
  if (generate < 1 || generate > total) {
    throw Error(Status::invalid_argument, "generate must be in [1, " + std::to_string(total) + "] for views=" +
                                              std::to_string(n_views) + ", got " + std::to_string(generate));
  }
  const float pi32 = static_cast<float>(kPi), two_pi32 = static_cast<float>(2 * kPi);
  const float drop32 = static_cast<float>(kDropDistance);
  std::vector<double> anchors{0.0};
  std::vector<ViewPlan> plans;
  for (int v = 0; v < generate; ++v) {
    const double view_angle = orbit_azimuth(v, n_views);
    const int all = static_cast<int>(anchors.size());
    // float32 angle arithmetic (numpy: a Python float against a float32 array stays float32)
    std::vector<float> rot(all), dist(all);
    std::vector<std::int64_t> valid_index;
    for (int k = 0; k < all; ++k) {
      rot[k] = static_cast<float>(view_angle) - static_cast<float>(anchors[k]);
      const float a = std::fabs(rot[k]);
      dist[k] = a < pi32 ? a : two_pi32 - a;
      if (k == 0 || dist[k] < drop32) valid_index.push_back(k);
    }
    at::Tensor index = at::tensor(valid_index, at::kLong);
    at::Tensor w = at::tensor(dist, at::kFloat).index_select(0, index);
    if (v >= 1 && w.size(0) > 1) {
      const double w_in = std::exp(-(v + 1.0) / n_views / inference_temp);  // float64, as np.exp
      at::Tensor rest = w.slice(0, 1);
      rest.copy_(at::softmax(-rest / rest.max() / auto_temp, 0) * (1 - w_in));
      w[0] = w_in;
    } else {
      w[0] = 1;
    }
    at::Tensor rot_t = at::tensor(rot, at::kFloat);
    at::Tensor T = at::zeros({all, 4}, at::kFloat);
    T.select(1, 1).copy_(at::sin(rot_t));
    T.select(1, 2).copy_(at::cos(rot_t));
    T = T.index_select(0, index);
    plans.push_back(make_plan(0.0, view_angle, 0.0, valid_index, w, T));
    anchors.push_back(view_angle);
  }
  return plans;
}

std::vector<ViewPlan> plan_low_ring(int n_views, int n_low, double delta_polar, double inference_temp,
                                    double auto_temp) {
  check_temps(inference_temp, auto_temp);
  if (n_low < 1) throw Error(Status::invalid_argument, "a low ring needs at least 1 view, got " + std::to_string(n_low));
  if (!(std::isfinite(delta_polar) && std::fabs(delta_polar) > 0 && std::fabs(delta_polar) < kPi)) {
    std::ostringstream msg;
    msg << "the low ring's polar offset must be within (0, 180) degrees, got " << delta_polar * 180.0 / kPi;
    throw Error(Status::invalid_argument, msg.str());
  }
  const float pi32 = static_cast<float>(kPi), two_pi32 = static_cast<float>(2 * kPi);
  const float drop32 = static_cast<float>(kDropDistance);
  std::vector<std::array<double, 2>> anchors{{0.0, 0.0}};
  for (int v = 0; v < n_views - 1; ++v) anchors.push_back({0.0, orbit_azimuth(v, n_views)});
  std::vector<ViewPlan> plans;
  for (int j = 0; j < n_low; ++j) {
    const double target_az = j == 0 ? 0.0 : orbit_azimuth(j - 1, n_low);
    const int all = static_cast<int>(anchors.size());
    // float32 arithmetic, as numpy on the float32 anchor array (a Python float against it stays float32)
    std::vector<float> d_polar(all), d_az(all), dist(all);
    std::vector<std::int64_t> valid_index;
    for (int k = 0; k < all; ++k) {
      d_polar[k] = static_cast<float>(delta_polar) - static_cast<float>(anchors[k][0]);
      d_az[k] = floor_mod(static_cast<float>(target_az) - static_cast<float>(anchors[k][1]), two_pi32);
      const float wrapped = d_az[k] <= pi32 ? d_az[k] : two_pi32 - d_az[k];
      dist[k] = std::fabs(d_polar[k]) + wrapped;
      if (k == 0 || dist[k] < drop32) valid_index.push_back(k);
    }
    at::Tensor index = at::tensor(valid_index, at::kLong);
    at::Tensor w = at::tensor(dist, at::kFloat).index_select(0, index);
    single_mode_weights(w, inference_temp, auto_temp);
    at::Tensor az_t = at::tensor(d_az, at::kFloat);
    at::Tensor T = at::stack({at::tensor(d_polar, at::kFloat), at::sin(az_t), at::cos(az_t), at::zeros({all}, at::kFloat)},
                             1)
                       .index_select(0, index);
    plans.push_back(make_plan(delta_polar, target_az, 0.0, valid_index, w, T));
    anchors.push_back({delta_polar, target_az});
  }
  return plans;
}

std::vector<ViewPlan> plan_single(double delta_polar, double delta_azimuth, double delta_radius, double inference_temp,
                                  double auto_temp) {
  check_temps(inference_temp, auto_temp);
  const double deltas[3] = {delta_polar, delta_azimuth, delta_radius};
  const char* names[3] = {"delta_polar", "delta_azimuth", "delta_radius"};
  for (int i = 0; i < 3; ++i) {
    if (!std::isfinite(deltas[i])) {
      throw Error(Status::invalid_argument, std::string(names[i]) + " must be finite");
    }
  }
  if (std::fabs(delta_polar) >= kPi) {
    std::ostringstream msg;
    msg << "|delta_polar| must be < 180 degrees, got " << delta_polar * 180.0 / kPi;
    throw Error(Status::invalid_argument, msg.str());
  }
  double az = python_mod(delta_azimuth, 2 * kPi);
  if (az > kPi) az -= 2 * kPi;
  // torch.tensor([polar, az, radius]): float32, as the original
  at::Tensor info = at::tensor(std::vector<float>{static_cast<float>(delta_polar), static_cast<float>(az),
                                                  static_cast<float>(delta_radius)},
                               at::kFloat);
  at::Tensor n_t = at::max(at::ceil(at::abs(info[1]) / kSingleStep), at::ceil(at::abs(info[0]) / kSingleStep));
  const int n = std::max(static_cast<int>(n_t.item<float>()), 1);
  const float drop32 = static_cast<float>(kDropDistance);
  std::vector<std::array<float, 3>> anchors{{0.0f, 0.0f, 0.0f}};
  std::vector<ViewPlan> plans;
  for (int v = 0; v < n; ++v) {
    std::array<float, 3> view_angle{};
    for (int i = 0; i < 3; ++i) view_angle[i] = (info[i] / n * (v + 1)).item<float>();
    const int all = static_cast<int>(anchors.size());
    std::vector<float> rot(all * 3), dist(all);
    std::vector<std::int64_t> valid_index;
    for (int k = 0; k < all; ++k) {
      for (int i = 0; i < 3; ++i) rot[k * 3 + i] = view_angle[i] - anchors[k][i];
      dist[k] = std::fabs(rot[k * 3 + 0]) + std::fabs(rot[k * 3 + 1]);
      if (k == 0 || dist[k] < drop32) valid_index.push_back(k);
    }
    at::Tensor index = at::tensor(valid_index, at::kLong);
    at::Tensor w = at::tensor(dist, at::kFloat).index_select(0, index);
    if (v >= 1) {
      single_mode_weights(w, inference_temp, auto_temp);
    } else {
      w[0] = 1;
    }
    at::Tensor rot_t = at::tensor(rot, at::kFloat).view({all, 3});
    at::Tensor T = at::stack({rot_t.select(1, 0), at::sin(rot_t.select(1, 1)), at::cos(rot_t.select(1, 1)),
                              rot_t.select(1, 2)},
                             1)
                       .index_select(0, index);
    plans.push_back(make_plan(view_angle[0], view_angle[1], view_angle[2], valid_index, w, T));
    anchors.push_back(view_angle);
  }
  return plans;
}

std::vector<int> orbit_order(const std::vector<double>& azimuths) {
  std::vector<double> keys;
  for (double a : azimuths) keys.push_back(python_mod(a, 2 * kPi));
  std::vector<int> order(azimuths.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&keys](int a, int b) { return keys[a] < keys[b]; });
  return order;
}

std::array<double, 16> camera_to_world_opengl(double azimuth, double elevation, double distance) {
  // world-to-camera (OpenCV): rows r0 = [-sin a, cos a, 0], r1 = [sin e cos a, sin e sin a, -cos e],
  // r2 = r0 x r1, t = [0, 0, d]; camera-to-world [R^T | -R^T t], then flip the camera's y and z axes
  const double a = azimuth, e = elevation;
  const double r0[3] = {-std::sin(a), std::cos(a), 0.0};
  const double r1[3] = {std::sin(e) * std::cos(a), std::sin(e) * std::sin(a), -std::cos(e)};
  const double r2[3] = {r0[1] * r1[2] - r0[2] * r1[1], r0[2] * r1[0] - r0[0] * r1[2], r0[0] * r1[1] - r0[1] * r1[0]};
  const double* rows[3] = {r0, r1, r2};
  const double t[3] = {0.0, 0.0, distance};
  std::array<double, 16> m{};
  for (int i = 0; i < 3; ++i) {
    double centre = 0.0;
    for (int j = 0; j < 3; ++j) centre -= rows[j][i] * t[j];
    m[i * 4 + 0] = rows[0][i];
    m[i * 4 + 1] = -rows[1][i];
    m[i * 4 + 2] = -rows[2][i];
    m[i * 4 + 3] = centre;
  }
  m[15] = 1.0;
  return m;
}

}  // namespace vfrt::detail

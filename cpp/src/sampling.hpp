// The static half of the ViewFusion loop: DDIM schedule, update coefficients, view plans, cameras.
//
// Each function mirrors a Python one and uses the same dtypes, so the numbers agree with it to the
// bit where the maths is IEEE (float64 schedule, float32 storage, float32 angle arithmetic) and to
// libtorch's own kernels where Python used torch (softmax, sin/cos: the same ATen ops are called):
//   make_ddim_schedule  <- vfrt/runtime/schedule.py    (incl. the 76-step quirk: t_start = -1)
//   step_coefficients   <- vfrt/engines/step.py         (float64 from the float32 schedule)
//   plan_orbit / plan_single / plan_low_ring <- vfrt/runtime/poses.py
//   camera_to_world_opengl   <- vfrt/runtime/cameras.py (SPEC §8)
// Interfaces use std::vector only, so callers need no torch headers.
#pragma once

#include <array>
#include <cstdint>
#include <vector>

namespace vfrt::detail {

/// The model's DDPM training schedule (the manifest's model_config.schedule).
struct TrainSchedule {
  int timesteps = 1000;
  double linear_start = 0.00085;
  double linear_end = 0.012;
  double scale_factor = 0.18215;
};

/// Per-step DDIM scalars in the order the sampler runs them (largest t first); S entries each.
struct DdimSchedule {
  std::vector<std::int64_t> timesteps;  ///< e.g. 976, 963, ..., 1 for 75 steps (76 entries)
  std::vector<float> a_t, a_prev, sigma, sqrt_one_minus_a_t;
  double eta = 1.0;
  int num_steps() const { return static_cast<int>(timesteps.size()); }
};

/// alphas_cumprod of ldm's linear schedule, float64 maths rounded to float32 (T,).
std::vector<float> linear_alphas_cumprod(const TrainSchedule& train);
/// ldm's uniform DDIM discretisation range(0, T, T // S) + 1; Status::invalid_argument for S values
/// the original cannot run (naming a usable one).
std::vector<std::int64_t> ddim_timesteps(int steps, int train_timesteps);
DdimSchedule make_ddim_schedule(int steps, double eta, const TrainSchedule& train);

/// (c_x, c_eps, sigma) per step: x <- c_x x + c_eps e_bar + sigma n_bar (exact: the weights sum to 1).
struct StepCoefficients {
  std::vector<float> c_x, c_eps, sigma;
};
StepCoefficients step_coefficients(const DdimSchedule& schedule);

/// How one view is generated (vfrt.runtime.poses.ViewPlan).
struct ViewPlan {
  double polar = 0.0, azimuth = 0.0, radius = 0.0;  ///< target relative to the input view (radians)
  std::vector<std::int64_t> references;             ///< K slot ids, input first
  std::vector<float> weights;                       ///< K weights, sum 1
  std::vector<float> pose_conditions;               ///< K x 4: [d_polar, sin d_az, cos d_az, d_radius]
  int K() const { return static_cast<int>(references.size()); }
};

/// The 360-degree orbit (SPEC §5); `generate` 0 means all n_views - 1 views.
std::vector<ViewPlan> plan_orbit(int n_views, int generate, double inference_temp, double auto_temp);
/// A second ring of `n_low` views `delta_polar` radians below the input's elevation, after a complete
/// `n_views` orbit (a vfrt extension): view j at azimuth 0, +s, -s, +2s, ... (s = 2 pi / n_low); slots
/// continue the orbit's (slot n_views + j is low view j). Returns the ring's plans only.
std::vector<ViewPlan> plan_low_ring(int n_views, int n_low, double delta_polar, double inference_temp,
                                    double auto_temp);
/// One target pose (radians) through 10-degree intermediate views.
std::vector<ViewPlan> plan_single(double delta_polar, double delta_azimuth, double delta_radius,
                                  double inference_temp, double auto_temp);
/// Indices sorting azimuths mod 2 pi (stable), as the original's final sort.
std::vector<int> orbit_order(const std::vector<double>& azimuths);

/// OpenGL camera-to-world (row-major 4x4) of the SPEC §8 camera at azimuth / elevation (radians).
std::array<double, 16> camera_to_world_opengl(double azimuth, double elevation, double distance);

/// Python's float modulo (the result takes the divisor's sign).
double python_mod(double x, double m);

}  // namespace vfrt::detail

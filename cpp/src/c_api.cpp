// vfrt.h over vfrt.hpp: opaque handles, status codes, a thread-local message. Nothing escapes:
// every exception becomes a status here (an unexpected one is VFRT_ERROR_RUNTIME).
#include "vfrt/vfrt.h"

#include <new>
#include <string>

#include "vfrt/vfrt.hpp"

struct vfrt_engine {
  vfrt::Engine engine;
};

struct vfrt_result {
  vfrt::Result result;
};

static_assert(static_cast<int>(vfrt::Status::io) == VFRT_ERROR_IO, "C and C++ status codes must agree");
static_assert(static_cast<int>(vfrt::Status::cancelled) == VFRT_ERROR_CANCELLED, "C and C++ status codes must agree");

namespace {

thread_local std::string last_error;

vfrt_status fail(vfrt_status status, const std::string& message) {
  last_error = message;
  return status;
}

/// Run `work`; a vfrt::Error keeps its status and message, anything else becomes VFRT_ERROR_RUNTIME.
template <typename Work>
vfrt_status call(Work&& work) {
  try {
    work();
    last_error.clear();
    return VFRT_OK;
  } catch (const vfrt::Error& exc) {
    return fail(static_cast<vfrt_status>(exc.status()), exc.what());
  } catch (const std::bad_alloc&) {
    return fail(VFRT_ERROR_RUNTIME, "out of memory");
  } catch (const std::exception& exc) {
    return fail(VFRT_ERROR_RUNTIME, exc.what());
  } catch (...) {
    return fail(VFRT_ERROR_RUNTIME, "an unknown error");
  }
}

void require(bool ok, const char* message) {
  if (!ok) throw vfrt::Error(vfrt::Status::invalid_argument, message);
}

vfrt::Image to_image(const vfrt_image* input) {
  require(input != nullptr, "input is NULL");
  if (input->path != nullptr) return vfrt::load_png(input->path);
  require(input->pixels != nullptr, "the input image has neither a path nor pixels");
  require(input->width > 0 && input->height > 0, "the input image needs a positive width and height");
  switch (input->format) {
    case VFRT_PIXELS_RGB8:
      return vfrt::Image::from_rgb8(input->width, input->height, 3, static_cast<const std::uint8_t*>(input->pixels));
    case VFRT_PIXELS_RGBA8:
      return vfrt::Image::from_rgb8(input->width, input->height, 4, static_cast<const std::uint8_t*>(input->pixels));
    case VFRT_PIXELS_RGB_F32: {
      vfrt::Image image;
      image.width = input->width;
      image.height = input->height;
      const float* data = static_cast<const float*>(input->pixels);
      image.pixels.assign(data, data + static_cast<size_t>(input->width) * input->height * 3);
      return image;
    }
    default:
      throw vfrt::Error(vfrt::Status::invalid_argument, "format must be a vfrt_pixel_format, got " +
                                                            std::to_string(input->format));
  }
}

/// The C options as the C++ ones; the progress callback's non-zero answer sets the cancel flag.
struct CallOptions {
  vfrt::Options options;
  std::atomic<bool> cancel{false};

  explicit CallOptions(const vfrt_options* given) {
    vfrt_options defaults;
    vfrt_options_init(&defaults);
    const vfrt_options& o = given ? *given : defaults;
    require(o.noise_mode >= VFRT_NOISE_EXACT && o.noise_mode <= VFRT_NOISE_FAST,
            "noise_mode must be VFRT_NOISE_EXACT, VFRT_NOISE_SHARED or VFRT_NOISE_FAST");
    options.views = o.views;
    options.generate = o.generate;
    options.steps = o.steps;
    options.eta = o.eta;
    options.guidance = o.guidance;
    options.inference_temp = o.inference_temp;
    options.auto_temp = o.auto_temp;
    options.seed = o.seed;
    options.noise_mode = static_cast<vfrt::NoiseMode>(o.noise_mode);
    options.elevation = o.elevation;
    options.low_ring = o.low_ring;
    options.low_ring_polar = o.low_ring_polar;
    options.noise = o.noise ? o.noise : "";
    options.record_noise = o.record_noise ? o.record_noise : "";
    options.cancel = &cancel;
    if (o.progress != nullptr) {
      const vfrt_progress_fn progress = o.progress;
      void* user = o.progress_user_data;
      options.progress = [this, progress, user](const vfrt::Progress& p) {
        if (progress(user, p.views_done, p.views_total) != 0) cancel.store(true);
      };
    }
  }
};

const vfrt::View& view_at(const vfrt_result* result, int index) {
  require(result != nullptr, "result is NULL");
  require(index >= 0 && index < static_cast<int>(result->result.views.size()), "view index out of range");
  return result->result.views[index];
}

/// `order`, then -1 up to one int per view (`out` holds `count`).
vfrt_status copy_order(const vfrt_result* result, int* out, size_t count, bool low) {
  return call([&] {
    require(result != nullptr && out != nullptr, "result and out must not be NULL");
    const std::vector<int> order = low ? result->result.low_ring_order() : result->result.orbit_order();
    require(count >= result->result.views.size(), "out must hold one int per view");
    std::fill(out, out + result->result.views.size(), -1);
    std::copy(order.begin(), order.end(), out);
  });
}

}  // namespace

extern "C" {

const char* vfrt_version(void) { return vfrt::version(); }

const char* vfrt_status_name(vfrt_status status) { return vfrt::status_name(static_cast<vfrt::Status>(status)); }

const char* vfrt_last_error(void) { return last_error.c_str(); }

void vfrt_options_init(vfrt_options* options) {
  if (options == nullptr) return;
  const vfrt::Options d;
  *options = vfrt_options{};
  options->views = d.views;
  options->generate = d.generate;
  options->steps = d.steps;
  options->eta = d.eta;
  options->guidance = d.guidance;
  options->inference_temp = d.inference_temp;
  options->auto_temp = d.auto_temp;
  options->seed = d.seed;
  options->noise_mode = VFRT_NOISE_EXACT;
  options->elevation = d.elevation;
  options->low_ring = d.low_ring;
  options->low_ring_polar = d.low_ring_polar;
}

vfrt_status vfrt_engine_open(const char* directory, const char* device, vfrt_engine** engine) {
  return call([&] {
    require(directory != nullptr && engine != nullptr, "directory and engine must not be NULL");
    *engine = nullptr;
    vfrt::EngineOptions options;
    if (device != nullptr) options.device = device;
    *engine = new vfrt_engine{vfrt::Engine(directory, options)};
  });
}

void vfrt_engine_close(vfrt_engine* engine) { delete engine; }

int vfrt_engine_image_size(const vfrt_engine* engine) { return engine ? engine->engine.info().image_size : 0; }

vfrt_status vfrt_orbit(vfrt_engine* engine, const vfrt_image* input, const vfrt_options* options,
                       vfrt_result** result) {
  return call([&] {
    require(engine != nullptr && result != nullptr, "engine and result must not be NULL");
    *result = nullptr;
    CallOptions call_options(options);
    const vfrt::Image image = to_image(input);
    *result = new vfrt_result{engine->engine.orbit(image, call_options.options)};
  });
}

vfrt_status vfrt_single(vfrt_engine* engine, const vfrt_image* input, double polar, double azimuth, double radius,
                        const vfrt_options* options, vfrt_result** result) {
  return call([&] {
    require(engine != nullptr && result != nullptr, "engine and result must not be NULL");
    *result = nullptr;
    CallOptions call_options(options);
    const vfrt::Image image = to_image(input);
    *result = new vfrt_result{engine->engine.single(image, vfrt::Pose{polar, azimuth, radius}, call_options.options)};
  });
}

int vfrt_result_view_count(const vfrt_result* result) {
  return result ? static_cast<int>(result->result.views.size()) : 0;
}

vfrt_status vfrt_result_view(const vfrt_result* result, int index, vfrt_view* view) {
  return call([&] {
    require(view != nullptr, "view is NULL");
    const vfrt::View& v = view_at(result, index);
    view->width = v.image.width;
    view->height = v.image.height;
    view->rgb = v.image.pixels.data();
    view->polar = v.polar;
    view->azimuth = v.azimuth;
    view->radius = v.radius;
    for (int i = 0; i < 16; ++i) view->camera_to_world[i] = v.camera_to_world[i];
    view->num_references = static_cast<int>(v.references.size());
    view->references = v.references.data();
    view->weights = v.weights.data();
  });
}

vfrt_status vfrt_result_view_rgb8(const vfrt_result* result, int index, uint8_t* out, size_t size) {
  return call([&] {
    const vfrt::View& v = view_at(result, index);
    const std::vector<std::uint8_t> rgb = v.image.to_rgb8();
    require(out != nullptr && size >= rgb.size(), "the output buffer is NULL or smaller than height * width * 3");
    std::copy(rgb.begin(), rgb.end(), out);
  });
}


vfrt_status vfrt_result_orbit_order(const vfrt_result* result, int* out, size_t count) {
  return copy_order(result, out, count, false);
}

vfrt_status vfrt_result_low_ring_order(const vfrt_result* result, int* out, size_t count) {
  return copy_order(result, out, count, true);
}

vfrt_status vfrt_result_timing(const vfrt_result* result, vfrt_timing* timing) {
  return call([&] {
    require(result != nullptr && timing != nullptr, "result and timing must not be NULL");
    const vfrt::Timing& t = result->result.timing;
    *timing = vfrt_timing{t.encode, t.condition, t.denoise, t.denoise_launch, t.denoise_device, t.decode, t.total, t.steps,
                          t.graph_captures};
  });
}

vfrt_status vfrt_result_save(const vfrt_result* result, const char* folder, int overwrite) {
  return call([&] {
    require(result != nullptr && folder != nullptr, "result and folder must not be NULL");
    result->result.save(folder, overwrite != 0);
  });
}

void vfrt_result_free(vfrt_result* result) { delete result; }

}  // extern "C"

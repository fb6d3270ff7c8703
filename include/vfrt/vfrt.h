/* vfrt C API: the ViewFusion runtime for C and for other languages' foreign-function interfaces.
 *
 * Every function that can fail returns a vfrt_status; on failure vfrt_last_error() gives one message
 * saying what to do (thread-local: the last failed call of this thread; "" after a success). No call
 * aborts or throws into the host: every C++ exception is turned into a status at this boundary.
 *
 *     vfrt_engine* engine;
 *     if (vfrt_engine_open("/path/to/engines", "auto", &engine) != VFRT_OK) puts(vfrt_last_error());
 *     vfrt_options options; vfrt_options_init(&options);            // the original's defaults
 *     vfrt_image input = {0}; input.path = "chair.png";
 *     vfrt_result* result;
 *     if (vfrt_orbit(engine, &input, &options, &result) == VFRT_OK) {
 *         vfrt_result_save(result, "runs/chair", 0);                // views/NNN.png + transforms.json
 *         vfrt_result_free(result);
 *     }
 *     vfrt_engine_close(engine);
 *
 * Thread safety: as the C++ API (vfrt.hpp): one engine serves one generation at a time (calls from
 * several threads wait for each other); different engines run concurrently; results are immutable.
 */
#ifndef VFRT_H
#define VFRT_H

#include <stddef.h>
#include <stdint.h>

#if defined(_WIN32)
#define VFRT_C_API __declspec(dllexport)
#else
#define VFRT_C_API __attribute__((visibility("default")))
#endif

#ifdef __cplusplus
extern "C" {
#endif

typedef enum vfrt_status {
  VFRT_OK = 0,
  VFRT_ERROR_INVALID_ARGUMENT = 1, /* an option out of range, a null pointer, an impossible pose */
  VFRT_ERROR_CORRUPT_ENGINE = 2,   /* no engine directory, unreadable manifest, missing/altered package */
  VFRT_ERROR_ENGINE_MISMATCH = 3,  /* built for another device, GPU, torch, vfrt or backend */
  VFRT_ERROR_ENGINE_LOAD = 4,      /* sound packages this process cannot load (C++ runtime mismatch) */
  VFRT_ERROR_IMAGE = 5,            /* unreadable image or wrong size */
  VFRT_ERROR_NOISE = 6,            /* a noise directory that is unreadable or does not fit the run */
  VFRT_ERROR_CANCELLED = 7,        /* the progress callback asked to stop */
  VFRT_ERROR_RUNTIME = 8,          /* a failure while generating (NaN output, out of memory, ...) */
  VFRT_ERROR_IO = 9                /* an output that cannot be written */
} vfrt_status;

typedef enum vfrt_noise_mode { VFRT_NOISE_EXACT = 0, VFRT_NOISE_SHARED = 1, VFRT_NOISE_FAST = 2 } vfrt_noise_mode;

typedef enum vfrt_pixel_format {
  VFRT_PIXELS_RGB8 = 0,    /* height * width * 3 bytes */
  VFRT_PIXELS_RGBA8 = 1,   /* height * width * 4 bytes, composited on white */
  VFRT_PIXELS_RGB_F32 = 2  /* height * width * 3 floats in [-1, 1] */
} vfrt_pixel_format;

typedef struct vfrt_engine vfrt_engine;
typedef struct vfrt_result vfrt_result;

/* Called after every generated view; return 0 to go on, anything else to stop (VFRT_ERROR_CANCELLED). */
typedef int (*vfrt_progress_fn)(void* user_data, int views_done, int views_total);

typedef struct vfrt_options {
  int views;              /* orbit: N views, the input included (>= 2); default 36 */
  int generate;           /* orbit: stop after this many generated views (0: all) */
  int steps;              /* DDIM steps (default 75: 76 UNet steps per view) */
  double eta;             /* default 1.0 */
  double guidance;        /* default 3.0 */
  double inference_temp;  /* default 0.5 */
  double auto_temp;       /* default 0.5 */
  int64_t seed;           /* default 0 */
  int noise_mode;         /* vfrt_noise_mode; default VFRT_NOISE_EXACT */
  double elevation;       /* the input camera's elevation above the horizon, degrees (default 30) */
  const char* noise;        /* replay this noise directory, or NULL */
  const char* record_noise; /* write this run's draws to this directory, or NULL */
  vfrt_progress_fn progress; /* or NULL */
  void* progress_user_data;
  int low_ring;           /* orbit: this many more views on a second ring after the complete orbit (0: none) */
  double low_ring_polar;  /* how far below the input's elevation that ring is, degrees (default 45) */
} vfrt_options;

/* An input image: a PNG file (path set), or pixels in memory (path NULL). */
typedef struct vfrt_image {
  const char* path;
  int width;
  int height;
  int format;          /* vfrt_pixel_format */
  const void* pixels;
} vfrt_image;

/* One generated view; the pointers stay valid until vfrt_result_free. */
typedef struct vfrt_view {
  int width;
  int height;
  const float* rgb;           /* height * width * 3 floats in [-1, 1] */
  double polar;               /* pose delta relative to the input view, radians */
  double azimuth;             /* radians */
  double radius;
  double camera_to_world[16]; /* OpenGL, row-major (SPEC §8) */
  int num_references;
  const int* references;      /* 0 = the input, 1 + j = generated view j */
  const float* weights;
} vfrt_view;

typedef struct vfrt_timing {
  double encode, condition, denoise, denoise_launch, denoise_device, decode, total; /* seconds: as vfrt::Timing */
  int steps;
  int graph_captures;
} vfrt_timing;

VFRT_C_API const char* vfrt_version(void);
VFRT_C_API const char* vfrt_status_name(vfrt_status status);
VFRT_C_API const char* vfrt_last_error(void);

VFRT_C_API void vfrt_options_init(vfrt_options* options);

/* device: "auto" (or NULL), "cpu", "cuda", "cuda:N". */
VFRT_C_API vfrt_status vfrt_engine_open(const char* directory, const char* device, vfrt_engine** engine);
VFRT_C_API void vfrt_engine_close(vfrt_engine* engine);
/* The side length in pixels of the engine's input and output images. */
VFRT_C_API int vfrt_engine_image_size(const vfrt_engine* engine);

VFRT_C_API vfrt_status vfrt_orbit(vfrt_engine* engine, const vfrt_image* input, const vfrt_options* options,
                                  vfrt_result** result);
/* Target pose relative to the input: polar and azimuth deltas in degrees, radius in model units. */
VFRT_C_API vfrt_status vfrt_single(vfrt_engine* engine, const vfrt_image* input, double polar, double azimuth,
                                   double radius, const vfrt_options* options, vfrt_result** result);

VFRT_C_API int vfrt_result_view_count(const vfrt_result* result);
VFRT_C_API vfrt_status vfrt_result_view(const vfrt_result* result, int index, vfrt_view* view);
/* Copy view `index` as 8-bit RGB into `out` (size >= height * width * 3 bytes). */
VFRT_C_API vfrt_status vfrt_result_view_rgb8(const vfrt_result* result, int index, uint8_t* out, size_t size);
/* The generation indices of the orbit's views sorted by azimuth (orbit order after the input), then -1 for
   the low ring's; `out` holds view_count ints. */
VFRT_C_API vfrt_status vfrt_result_orbit_order(const vfrt_result* result, int* out, size_t count);
/* The generation indices of the low ring's views sorted by azimuth, then -1 (all -1 without a low ring);
   `out` holds view_count ints. */
VFRT_C_API vfrt_status vfrt_result_low_ring_order(const vfrt_result* result, int* out, size_t count);
VFRT_C_API vfrt_status vfrt_result_timing(const vfrt_result* result, vfrt_timing* timing);
/* Write the views and cameras as `vfrt run` does (vfrt::Result::save); overwrite: non-zero replaces a folder. */
VFRT_C_API vfrt_status vfrt_result_save(const vfrt_result* result, const char* folder, int overwrite);
VFRT_C_API void vfrt_result_free(vfrt_result* result);

#ifdef __cplusplus
}
#endif

#endif /* VFRT_H */

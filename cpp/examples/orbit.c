/* The C API in a few lines: a short orbit of IMAGE with the engines in DIR, written to OUT.
 *
 *   vfrt-orbit-c DIR IMAGE OUT [VIEWS [STEPS]]
 */
#include <stdio.h>
#include <stdlib.h>

#include "vfrt/vfrt.h"

static int report(void* user_data, int done, int total) {
  (void)user_data;
  printf("view %d/%d\n", done, total);
  return 0; /* non-zero would cancel */
}

int main(int argc, char** argv) {
  if (argc < 4) {
    fprintf(stderr, "usage: %s ENGINES IMAGE OUT [VIEWS [STEPS]]\n", argv[0]);
    return 2;
  }
  vfrt_engine* engine = NULL;
  if (vfrt_engine_open(argv[1], "auto", &engine) != VFRT_OK) {
    fprintf(stderr, "cannot open the engines: %s\n", vfrt_last_error());
    return 1;
  }
  vfrt_options options;
  vfrt_options_init(&options);
  if (argc > 4) options.views = atoi(argv[4]);
  if (argc > 5) options.steps = atoi(argv[5]);
  options.progress = report;

  vfrt_image input = {0};
  input.path = argv[2];
  vfrt_result* result = NULL;
  vfrt_status status = vfrt_orbit(engine, &input, &options, &result);
  if (status == VFRT_OK) status = vfrt_result_save(result, argv[3], 1);
  if (status != VFRT_OK) {
    fprintf(stderr, "vfrt: %s (%s)\n", vfrt_last_error(), vfrt_status_name(status));
  } else {
    vfrt_view first;
    vfrt_result_view(result, 0, &first);
    printf("%d views of %dx%d written to %s; the first at azimuth %.1f degrees\n", vfrt_result_view_count(result),
           first.width, first.height, argv[3], first.azimuth * 57.29577951308232);
  }
  vfrt_result_free(result);
  vfrt_engine_close(engine);
  return status == VFRT_OK ? 0 : 1;
}

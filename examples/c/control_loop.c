/* A robot control loop in C on kestrel's C ABI.
 *
 * Every period (30 Hz, absolute deadlines with clock_nanosleep, so the loop does not drift):
 * hand kestrel the newest camera pair and the robot's state, get back the action to send.
 * Frames here come from kestrel's built-in synthetic scenes; a real robot passes its camera
 * buffers. The loop also shows what kestrel does with bad input: a dropped frame, a pair of
 * mismatched sizes and a NaN thermal frame each get the safe action with its reason, and a
 * missing model file is an error with a message, never a crash.
 *
 * Build (after `cargo build --release`):
 *   gcc -std=c11 -O2 -Wall -Wextra -Werror -Iinclude examples/c/control_loop.c \
 *       target/release/libkestrel.a -lm -ldl -lpthread -o target/control_loop
 * Run from the repository root: target/control_loop [periods]
 */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kestrel.h"

#define W 320
#define H 240
#define RATE_HZ 30.0

static void next_deadline(struct timespec *t, long period_ns) {
  t->tv_nsec += period_ns;
  while (t->tv_nsec >= 1000000000L) {
    t->tv_nsec -= 1000000000L;
    t->tv_sec += 1;
  }
}

static int check(KestrelStatus s, const char *what) {
  if (s != KESTREL_STATUS_OK) {
    fprintf(stderr, "%s failed (%d): %s\n", what, (int)s, kestrel_last_error());
    return 1;
  }
  return 0;
}

int main(int argc, char **argv) {
  int periods = argc > 1 ? atoi(argv[1]) : 90;
  printf("kestrel %s\n", kestrel_version());

  /* A missing model is an error with a message. */
  KestrelController *bad = NULL;
  KestrelStatus s = kestrel_controller_open("models/no-such-model.kpak", NULL, RATE_HZ, 0, &bad);
  if (s != KESTREL_STATUS_IO || bad != NULL) {
    fprintf(stderr, "expected an I/O error for a missing model, got %d\n", (int)s);
    return 1;
  }
  printf("missing model -> status %d: %s\n", (int)s, kestrel_last_error());

  KestrelController *ctl = NULL;
  if (check(kestrel_controller_open("models/rgbir-fused.kpak", "models/policy.kpak", RATE_HZ, 0, &ctl),
            "open")) {
    return 1;
  }

  static uint8_t rgb[W * H * 3], ir[W * H];
  static float rgb_f[W * H * 3], ir_f[W * H];
  KestrelRobotState state = {0.0f, 0.0f, 0.0f};
  unsigned safe[5] = {0}, stepped = 0, nan_failed = 0, mismatch_failed = 0;
  long period_ns = (long)(1e9 / RATE_HZ);
  struct timespec deadline;
  clock_gettime(CLOCK_MONOTONIC, &deadline);

  for (int i = 0; i < periods; i++) {
    if (check(kestrel_synth_frame(7, (uint64_t)i, W, H, rgb, ir), "synth")) return 1;
    KestrelDecision d;
    if (i % 30 == 17) {
      /* The camera dropped this period's frame: NULL frames. */
      s = kestrel_controller_step(ctl, NULL, &state, NULL, &d);
    } else if (i % 30 == 23) {
      /* A float pipeline with a NaN in the thermal frame. */
      for (int p = 0; p < W * H * 3; p++) rgb_f[p] = rgb[p] / 255.0f;
      for (int p = 0; p < W * H; p++) ir_f[p] = ir[p] / 255.0f;
      ir_f[W * H / 2] = NAN;
      KestrelFramesF32 f = {W, H, rgb_f, ir_f, 0, 0};
      s = kestrel_controller_step_f32(ctl, &f, &state, NULL, &d);
      nan_failed += d.safe_reason == KESTREL_SAFE_REASON_FAILED;
    } else if (i % 30 == 27) {
      /* A camera that came up wrong: a frame with no rows. */
      KestrelFrames f = {W, 0, rgb, ir, 0, 0};
      s = kestrel_controller_step(ctl, &f, &state, NULL, &d);
      mismatch_failed += d.safe_reason == KESTREL_SAFE_REASON_FAILED;
    } else {
      KestrelFrames f = {W, H, rgb, ir, 0, 0};
      s = kestrel_controller_step(ctl, &f, &state, NULL, &d);
    }
    if (check(s, "step")) return 1;
    stepped++;
    if (d.safe_reason < 5) safe[d.safe_reason]++;
    /* "Send" the action: this toy robot's state follows the command. */
    state.speed = d.action[0];
    state.turn = d.action[5];
    state.gripper = d.action[6] > 0.5f ? 1.0f : 0.0f;
    if (i % 15 == 0) {
      printf("period %3d: dx %.2f dyaw %+.2f gripper %.0f  detections %u (abstained %u) target %d safe %u\n", i,
             d.action[0], d.action[5], d.action[6], d.detections, d.abstained, d.target, d.safe_reason);
    }
    next_deadline(&deadline, period_ns);
    clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &deadline, NULL);
  }
  kestrel_controller_close(ctl);
  printf("%u periods: policy %u, stale %u, failed %u, abstained %u, bad action %u\n", stepped, safe[0], safe[1],
         safe[2], safe[3], safe[4]);
  int expected = (periods + 6) / 30; /* periods with i % 30 == 23 */
  if (nan_failed != (unsigned)expected || mismatch_failed != (unsigned)((periods + 2) / 30)) {
    fprintf(stderr, "bad frames did not all fail safe: NaN %u of %d, mismatched %u\n", nan_failed, expected,
            mismatch_failed);
    return 1;
  }
  printf("every NaN and mismatched frame got the safe action\n");
  return 0;
}

// libtorch's autocast for any device type. tch's `autocast` reaches only the deprecated
// CUDA-only `at::autocast::set_enabled`; CPU autocast needs the per-device-type API below.
// Every function returns -1 when libtorch throws.
#include <ATen/autocast_mode.h>

namespace {
at::DeviceType device_type(int cuda) { return cuda ? at::kCUDA : at::kCPU; }
}  // namespace

extern "C" {

// Whether autocast is on for CPU (cuda = 0) or CUDA (cuda = 1).
int pco_autocast_is_enabled(int cuda) {
  try {
    return at::autocast::is_autocast_enabled(device_type(cuda)) ? 1 : 0;
  } catch (...) {
    return -1;
  }
}

// Switch autocast on or off for the device type and enter one nesting level, with bfloat16 as
// the lower precision (libtorch's default is bfloat16 on CPU but float16 on CUDA, which would need
// loss scaling). Returns the previous state (0/1) for `pco_autocast_exit`.
int pco_autocast_enter(int cuda, int enabled) {
  try {
    auto dt = device_type(cuda);
    bool prev = at::autocast::is_autocast_enabled(dt);
    at::autocast::set_autocast_dtype(dt, at::kBFloat16);
    at::autocast::set_autocast_enabled(dt, enabled != 0);
    at::autocast::increment_nesting();
    return prev ? 1 : 0;
  } catch (...) {
    return -1;
  }
}

// Leave a level entered by `pco_autocast_enter`: the outermost exit drops the cached bf16 copies
// of the weights; the previous state is restored.
int pco_autocast_exit(int cuda, int prev) {
  try {
    if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
    at::autocast::set_autocast_enabled(device_type(cuda), prev != 0);
    return 0;
  } catch (...) {
    return -1;
  }
}
}

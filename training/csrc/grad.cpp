// `param.grad = None` for a tensor handed over by tch (tch's `Tensor` wraps an `at::Tensor*`).
// tch has no way to drop a gradient, only to zero it; PyTorch's `zero_grad(set_to_none=True)`
// (its default) drops it, so the memory is free through the next forward pass and the first
// backward hands its fresh gradient over instead of adding it onto zeros.
#include <ATen/core/Tensor.h>

extern "C" {

// Returns 0, or -1 when libtorch throws.
int pco_grad_set_none(void* tensor) {
  try {
    static_cast<at::Tensor*>(tensor)->mutable_grad().reset();
    return 0;
  } catch (...) {
    return -1;
  }
}
}

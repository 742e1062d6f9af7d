// One AdamW update of a group of parameters through libtorch's fused kernel
// (`torch.optim.AdamW(fused=True)`): each element's parameter, gradient and two moments are
// read and written once, vectorized and spread over the intra-op threads, where a chain of
// tensor operations passes over them a dozen times. The same kernel exists for CPU and CUDA.
#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include <vector>

extern "C" {

// `params`, `grads`, `ms`, `vs`: `n` tensors each (tch's `at::Tensor*`), all on one device and of
// one kind; `step` is the step number after this update (the bias corrections use it).
// Returns 0, -1 when libtorch throws, -2 when a parameter or moment is not contiguous (the kernel
// walks their memory linearly).
int pco_fused_adamw(void** params, void** grads, void** ms, void** vs, int n, double lr,
                    double beta1, double beta2, double weight_decay, double eps, double step) {
  try {
    std::vector<at::Tensor> p, g, m, v, steps;
    p.reserve(n);
    g.reserve(n);
    m.reserve(n);
    v.reserve(n);
    steps.reserve(n);
    for (int i = 0; i < n; ++i) {
      const at::Tensor& param = *static_cast<at::Tensor*>(params[i]);
      const at::Tensor& exp_avg = *static_cast<at::Tensor*>(ms[i]);
      const at::Tensor& exp_avg_sq = *static_cast<at::Tensor*>(vs[i]);
      if (!param.is_contiguous() || !exp_avg.is_contiguous() || !exp_avg_sq.is_contiguous()) {
        return -2;
      }
      p.push_back(param);
      // The kernel walks memory linearly; a gradient that came out transposed is copied.
      g.push_back(static_cast<at::Tensor*>(grads[i])->contiguous());
      m.push_back(exp_avg);
      v.push_back(exp_avg_sq);
      steps.push_back(at::full({}, step, param.options().dtype(at::kFloat)));
    }
    at::NoGradGuard no_grad;
    at::_fused_adamw_(p, g, m, v, /*max_exp_avg_sqs=*/{}, steps, lr, beta1, beta2, weight_decay,
                      eps, /*amsgrad=*/false, /*maximize=*/false);
    return 0;
  } catch (...) {
    return -1;
  }
}
}

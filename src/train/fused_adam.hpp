// Adam with the update of each parameter fused into one pass over memory.
#pragma once

#include <torch/optim/adam.h>

namespace scaffold {

// torch::optim::Adam whose step() updates each float32 CPU parameter in one
// vectorized, multi-threaded pass that reads the parameter, its gradient and
// both moment buffers once and writes the parameter and the moments once.
// LibTorch 1.13's Adam makes seven elementwise passes per parameter, which
// took 12-13 ms of a 50 ms training step at scale 4 on a 2-core machine.
//
// The arithmetic follows LibTorch's Adam operation by operation, in float32
// with the same scalars. The state (step, exp_avg, exp_avg_sq) lives in the
// same AdamParamState entries, so save() and load() use torch::optim::Adam's
// format, and a checkpoint of either optimizer loads into the other. Results can differ from LibTorch's in the last bit, because
// LibTorch's vector loops fuse some multiply-adds and this one does not.
//
// Parameters that are not contiguous float32 CPU tensors with gradients of
// the same kind, and options with amsgrad, take LibTorch's own Adam::step
// for the whole step.
class FusedAdam : public torch::optim::Adam {
 public:
  using torch::optim::Adam::Adam;

  torch::Tensor step(LossClosure closure = nullptr) override;
};

}  // namespace scaffold

// 2x2x2 max pooling with stride 2 as one autograd operation that keeps
// ChannelsLast3d float32 CPU tensors in ChannelsLast3d.
//
// Layouts: input [N, C, D, H, W] sizes stored in memory order N, D, H, W, C
// (ChannelsLast3d), output [N, C, D/2, H/2, W/2] sizes in the same memory
// order, each size rounded down. LibTorch 1.13's torch::max_pool3d copies
// such an input to the plain contiguous layout and returns a plain
// contiguous output.
//
// Selection rule, the same as LibTorch 1.13's CPU max_pool3d: each window is
// scanned in the order d, then h, then w, starting from -infinity, and an
// element replaces the current maximum when `value > maximum ||
// std::isnan(value)`. So among equal maxima the first in scan order wins, a
// NaN wins over every number, and among several NaNs the last one wins.
//
// Saved for backward: one uint8 per output element, the position 0..7 of the
// selected element in its window (4 * dd + 2 * dh + dw). The index tensor is
// [N, D/2, H/2, W/2, C] in memory, 1/32 of the input's bytes. The input itself
// is not saved. Backward writes every element of the input gradient once: the
// output gradient at the selected element of each window and 0 everywhere
// else, including the last plane, row or column that an odd size drops.
#pragma once

#include <ostream>

#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>
#include <torch/types.h>

namespace scaffold {

// Computes torch::max_pool3d(input, 2, 2) (kernel 2, stride 2, no padding,
// sizes rounded down), with the gradient for input.
//
// input:  [N, C, D, H, W] with D, H, W >= 2
// return: [N, C, D/2, H/2, W/2]
//
// The fused kernels run when input is a float32 CPU tensor that is
// contiguous in ChannelsLast3d, and then the output and the input gradient
// are ChannelsLast3d too. An output gradient in another layout is copied to
// ChannelsLast3d first. Every other input (plain contiguous, other dtypes,
// other devices, empty tensors) goes to torch::max_pool3d(input, 2, 2), so the
// function works wherever LibTorch does. The fused kernels only select
// values, so their results are bitwise the same for any intra-op thread
// count.
//
// Throws std::invalid_argument when input is undefined, does not have 5
// dimensions, or has a spatial size below 2. Double backward is not supported
// on the fused path: a backward pass with create_graph=true throws
// std::runtime_error.
torch::Tensor max_pool3d_2x2x2(const torch::Tensor& input);

// max_pool3d_2x2x2 as a module without parameters, to take the place of
// torch::nn::MaxPool3d(torch::nn::MaxPool3dOptions(2).stride(2)) in a
// Sequential without changing the state dict.
class MaxPool3d2x2x2Impl : public torch::nn::Module {
 public:
  // x: [N, C, D, H, W] -> [N, C, D/2, H/2, W/2]
  torch::Tensor forward(const torch::Tensor& x);

  void pretty_print(std::ostream& stream) const override;
};
TORCH_MODULE(MaxPool3d2x2x2);

}  // namespace scaffold

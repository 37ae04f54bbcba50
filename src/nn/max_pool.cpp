#include "nn/max_pool.hpp"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include <ATen/Parallel.h>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <torch/autograd.h>

// Shapes, all float32 ChannelsLast3d, so memory order [N, D, H, W, C]:
//   x, dx: [N, C, D, H, W]
//   y, dy: [N, C, Do, Ho, Wo] with Do = D / 2, Ho = H / 2, Wo = W / 2
//   index: uint8 [N, Do, Ho, Wo, C], contiguous
// Window element k = 4 * dd + 2 * dh + dw of output (od, oh, ow) is input
// (2 od + dd, 2 oh + dh, 2 ow + dw), so k counts in LibTorch's scan order.
//
// Forward reads x once and writes y, plus index when a gradient is needed.
// Backward reads dy and index and writes dx once.
//
// Why an index instead of recomputing the choice from x and y: recomputing
// reads x again in backward, 8 floats per output element, whereas the index
// is 1 byte per output element. Backward then moves 1.16 input-sized tensors
// (dx, dy at 1/8 and the index at 1/32) instead of 2.25 (x, y, dy and dx),
// and x need not stay alive for this layer's backward.

namespace scaffold {

namespace {

// Minimum input elements per parallel_for task, so that small tensors do not
// pay one task dispatch per row.
constexpr std::int64_t kMinTaskElements = 16384;

// Sizes, and the strides in elements of the ChannelsLast3d input.
struct Geometry {
  std::int64_t batch;
  std::int64_t channels;
  std::int64_t depth, height, width;
  std::int64_t out_depth, out_height, out_width;

  std::int64_t input_w_stride() const { return channels; }
  std::int64_t input_h_stride() const { return width * channels; }
  std::int64_t input_d_stride() const { return height * width * channels; }
  std::int64_t output_row() const { return out_width * channels; }
};

Geometry geometry_of(c10::IntArrayRef sizes) {
  Geometry geometry{};
  geometry.batch = sizes[0];
  geometry.channels = sizes[1];
  geometry.depth = sizes[2];
  geometry.height = sizes[3];
  geometry.width = sizes[4];
  geometry.out_depth = geometry.depth / 2;
  geometry.out_height = geometry.height / 2;
  geometry.out_width = geometry.width / 2;
  return geometry;
}

// The hot loops are plain loops over the contiguous channels that GCC's
// vectoriser turns into SIMD code (checked with -fopt-info-vec: 64-byte
// vectors for pool_row_without_index, 32-byte ones for the other loops in the
// AVX-512 version). target_clones builds an AVX-512, an AVX2 and a baseline
// x86-64 version of each, and the loader picks one from the CPU's features,
// because the project builds without -march flags. Every version applies the
// same comparisons, so all of them select the same elements. __restrict
// declares that the outputs do not alias the input. Without it GCC does not
// vectorise the channel loops.

// Window element `k` replaces the running maximum when it is greater or NaN,
// LibTorch's rule. Written without branches so that the loop vectorises.
__attribute__((always_inline)) inline void select_step(float value, std::int32_t k, float& maximum,
                                                       std::int32_t& position) {
  const bool take = (value > maximum) | (value != value);
  maximum = take ? value : maximum;
  position = take ? k : position;
}

// One output row (n, od, oh, all ow): x points at input (n, 2 od, 2 oh, 0, 0),
// y at output (n, od, oh, 0, 0) and index at the same offset as y.
//
// LibTorch starts from -infinity and takes element 0 when it is greater or
// NaN. Starting from element 0 itself gives the same value and position in
// every case, -infinity included.
__attribute__((target_clones("avx512f", "avx2", "default"))) void pool_row_with_index(
    const float* __restrict x, float* __restrict y, std::uint8_t* __restrict index, std::int64_t out_width,
    std::int64_t channels, std::int64_t h_stride, std::int64_t d_stride) {
  for (std::int64_t ow = 0; ow < out_width; ++ow) {
    // Window elements 0..7 in scan order d, h, w.
    const float* e0 = x + 2 * ow * channels;
    const float* e1 = e0 + channels;
    const float* e2 = e0 + h_stride;
    const float* e3 = e2 + channels;
    const float* e4 = e0 + d_stride;
    const float* e5 = e4 + channels;
    const float* e6 = e4 + h_stride;
    const float* e7 = e6 + channels;
    float* out = y + ow * channels;
    std::uint8_t* out_index = index + ow * channels;
    for (std::int64_t c = 0; c < channels; ++c) {
      float maximum = e0[c];
      std::int32_t position = 0;
      select_step(e1[c], 1, maximum, position);
      select_step(e2[c], 2, maximum, position);
      select_step(e3[c], 3, maximum, position);
      select_step(e4[c], 4, maximum, position);
      select_step(e5[c], 5, maximum, position);
      select_step(e6[c], 6, maximum, position);
      select_step(e7[c], 7, maximum, position);
      out[c] = maximum;
      out_index[c] = static_cast<std::uint8_t>(position);
    }
  }
}

// pool_row_with_index without the index, for passes that need no gradient.
__attribute__((target_clones("avx512f", "avx2", "default"))) void pool_row_without_index(
    const float* __restrict x, float* __restrict y, std::int64_t out_width, std::int64_t channels,
    std::int64_t h_stride, std::int64_t d_stride) {
  for (std::int64_t ow = 0; ow < out_width; ++ow) {
    const float* e0 = x + 2 * ow * channels;
    const float* e1 = e0 + channels;
    const float* e2 = e0 + h_stride;
    const float* e3 = e2 + channels;
    const float* e4 = e0 + d_stride;
    const float* e5 = e4 + channels;
    const float* e6 = e4 + h_stride;
    const float* e7 = e6 + channels;
    float* out = y + ow * channels;
    for (std::int64_t c = 0; c < channels; ++c) {
      float maximum = e0[c];
      std::int32_t position = 0;
      select_step(e1[c], 1, maximum, position);
      select_step(e2[c], 2, maximum, position);
      select_step(e3[c], 3, maximum, position);
      select_step(e4[c], 4, maximum, position);
      select_step(e5[c], 5, maximum, position);
      select_step(e6[c], 6, maximum, position);
      select_step(e7[c], 7, maximum, position);
      out[c] = maximum;
    }
  }
}

// One input-gradient row (n, d, h, w < 2 Wo) with d < 2 Do and h < 2 Ho:
// dx points at (n, d, h, 0, 0), dy and index at output (n, d / 2, h / 2, 0, 0),
// and row_position = 4 * (d % 2) + 2 * (h % 2) is the window position of w = 0.
__attribute__((target_clones("avx512f", "avx2", "default"))) void unpool_row(
    const float* __restrict dy, const std::uint8_t* __restrict index, float* __restrict dx, std::int64_t out_width,
    std::int64_t channels, std::int32_t row_position) {
  for (std::int64_t ow = 0; ow < out_width; ++ow) {
    const float* upstream = dy + ow * channels;
    const std::uint8_t* selected = index + ow * channels;
    float* even = dx + 2 * ow * channels;  // w = 2 ow
    float* odd = even + channels;          // w = 2 ow + 1
    for (std::int64_t c = 0; c < channels; ++c) {
      const float gradient = upstream[c];
      const std::int32_t position = selected[c];
      even[c] = position == row_position ? gradient : 0.0f;
      odd[c] = position == row_position + 1 ? gradient : 0.0f;
    }
  }
}

struct ForwardResult {
  torch::Tensor output;  // ChannelsLast3d
  torch::Tensor index;   // uint8 [N, Do, Ho, Wo, C], undefined unless requested
};

ForwardResult run_forward(const torch::Tensor& input, bool write_index) {
  const Geometry geometry = geometry_of(input.sizes());
  const float* x = input.data_ptr<float>();

  ForwardResult result;
  result.output = torch::empty({geometry.batch, geometry.channels, geometry.out_depth, geometry.out_height,
                                geometry.out_width},
                               input.options().memory_format(torch::MemoryFormat::ChannelsLast3d));
  float* y = result.output.data_ptr<float>();
  std::uint8_t* index = nullptr;
  if (write_index) {
    result.index = torch::empty({geometry.batch, geometry.out_depth, geometry.out_height, geometry.out_width,
                                 geometry.channels},
                                input.options().dtype(torch::kUInt8));
    index = result.index.data_ptr<std::uint8_t>();
  }

  // Output rows (n, od, oh) are independent, so any split gives the same bits.
  const std::int64_t rows = geometry.batch * geometry.out_depth * geometry.out_height;
  const std::int64_t grain = std::max<std::int64_t>(1, kMinTaskElements / (8 * geometry.output_row()));
  at::parallel_for(0, rows, grain, [&](std::int64_t begin, std::int64_t end) {
    for (std::int64_t row = begin; row < end; ++row) {
      const std::int64_t oh = row % geometry.out_height;
      const std::int64_t od = (row / geometry.out_height) % geometry.out_depth;
      const std::int64_t n = row / (geometry.out_height * geometry.out_depth);
      const float* x_row = x + n * geometry.depth * geometry.input_d_stride() + 2 * od * geometry.input_d_stride() +
                           2 * oh * geometry.input_h_stride();
      const std::int64_t out_offset = row * geometry.output_row();
      if (write_index) {
        pool_row_with_index(x_row, y + out_offset, index + out_offset, geometry.out_width, geometry.channels,
                            geometry.input_h_stride(), geometry.input_d_stride());
      } else {
        pool_row_without_index(x_row, y + out_offset, geometry.out_width, geometry.channels, geometry.input_h_stride(),
                 geometry.input_d_stride());
      }
    }
  });
  return result;
}

// grad_output: ChannelsLast3d-contiguous [N, C, Do, Ho, Wo]. Returns dx,
// ChannelsLast3d [N, C, D, H, W].
torch::Tensor run_backward(const torch::Tensor& grad_output, const torch::Tensor& index,
                           c10::IntArrayRef input_sizes) {
  const Geometry geometry = geometry_of(input_sizes);
  const float* dy = grad_output.data_ptr<float>();
  const std::uint8_t* selected = index.data_ptr<std::uint8_t>();
  torch::Tensor grad_input =
      torch::empty(input_sizes, grad_output.options().memory_format(torch::MemoryFormat::ChannelsLast3d));
  float* dx = grad_input.data_ptr<float>();

  // Each task writes whole input rows (n, d, h), so every element of dx is
  // written exactly once and needs no zero fill beforehand. Rows that an odd
  // D or H drops, and the column that an odd W drops, get zeros.
  const std::int64_t rows = geometry.batch * geometry.depth * geometry.height;
  const std::int64_t input_row = geometry.input_h_stride();
  const std::int64_t pooled_row_elements = 2 * geometry.out_width * geometry.channels;
  const std::int64_t grain = std::max<std::int64_t>(1, kMinTaskElements / input_row);
  at::parallel_for(0, rows, grain, [&](std::int64_t begin, std::int64_t end) {
    for (std::int64_t row = begin; row < end; ++row) {
      const std::int64_t h = row % geometry.height;
      const std::int64_t d = (row / geometry.height) % geometry.depth;
      const std::int64_t n = row / (geometry.height * geometry.depth);
      float* dx_row = dx + row * input_row;
      if (d >= 2 * geometry.out_depth || h >= 2 * geometry.out_height) {
        std::memset(dx_row, 0, static_cast<std::size_t>(input_row) * sizeof(float));
        continue;
      }

      const std::int64_t out_offset =
          ((n * geometry.out_depth + d / 2) * geometry.out_height + h / 2) * geometry.output_row();
      const auto row_position = static_cast<std::int32_t>(4 * (d % 2) + 2 * (h % 2));
      unpool_row(dy + out_offset, selected + out_offset, dx_row, geometry.out_width, geometry.channels,
                 row_position);
      if (pooled_row_elements < input_row) {
        std::memset(dx_row + pooled_row_elements, 0,
                    static_cast<std::size_t>(input_row - pooled_row_elements) * sizeof(float));
      }
    }
  });
  return grad_input;
}

// Autograd function over the fused kernels: input is a float32 CPU tensor,
// contiguous in ChannelsLast3d, with its shape already checked.
class MaxPool2x2x2Function : public torch::autograd::Function<MaxPool2x2x2Function> {
 public:
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& input) {
    ForwardResult result = run_forward(input, /*write_index=*/true);
    ctx->save_for_backward({result.index});
    ctx->saved_data["input_sizes"] = input.sizes().vec();
    return result.output;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    // The kernel records nothing on the autograd tape, so a graph of this
    // backward pass would silently miss its dependence on grad_output.
    if (at::GradMode::is_enabled()) {
      throw std::runtime_error(
          "max_pool3d_2x2x2: double backward is not supported, so call backward() without create_graph or use "
          "torch::max_pool3d(input, 2, 2) for this layer");
    }

    const auto saved = ctx->get_saved_variables();
    const std::vector<std::int64_t> input_sizes = ctx->saved_data["input_sizes"].toIntVector();

    // grad_output: [N, C, Do, Ho, Wo] in any layout, possibly a broadcast view.
    const torch::Tensor grad_output =
        grad_outputs[0].to(torch::kFloat32).contiguous(torch::MemoryFormat::ChannelsLast3d);

    return {run_backward(grad_output, saved[0], input_sizes)};
  }
};

std::string shape_string(const torch::Tensor& tensor) {
  return fmt::format("[{}]", fmt::join(tensor.sizes(), ", "));
}

void check_input(const torch::Tensor& input) {
  constexpr const char* kFunction = "max_pool3d_2x2x2";
  if (!input.defined()) {
    throw std::invalid_argument(fmt::format("{}: input must be a defined tensor", kFunction));
  }
  if (input.dim() != 5) {
    throw std::invalid_argument(fmt::format("{}: input must be [N, C, D, H, W] with 5 dimensions, got shape {}",
                                            kFunction, shape_string(input)));
  }
  if (input.size(2) < 2 || input.size(3) < 2 || input.size(4) < 2) {
    throw std::invalid_argument(
        fmt::format("{}: the spatial sizes D, H, W of input shape {} must all be at least 2 for a 2x2x2 window",
                    kFunction, shape_string(input)));
  }
}

bool fused_kernel_applies(const torch::Tensor& input) {
  return input.device().type() == torch::kCPU && input.scalar_type() == torch::kFloat32 &&
         input.layout() == torch::kStrided && input.numel() > 0 &&
         input.is_contiguous(torch::MemoryFormat::ChannelsLast3d);
}

}  // namespace

torch::Tensor max_pool3d_2x2x2(const torch::Tensor& input) {
  check_input(input);
  if (!fused_kernel_applies(input)) {
    return torch::max_pool3d(input, 2, 2);
  }

  // Without a gradient to compute, skip the index and the autograd node.
  if (!at::GradMode::is_enabled() || !input.requires_grad()) {
    return run_forward(input, /*write_index=*/false).output;
  }
  return MaxPool2x2x2Function::apply(input);
}

torch::Tensor MaxPool3d2x2x2Impl::forward(const torch::Tensor& x) {
  return max_pool3d_2x2x2(x);
}

void MaxPool3d2x2x2Impl::pretty_print(std::ostream& stream) const {
  stream << "scaffold::MaxPool3d2x2x2(kernel_size=2, stride=2)";
}

}  // namespace scaffold

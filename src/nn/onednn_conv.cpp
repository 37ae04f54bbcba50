#include "nn/onednn_conv.hpp"

#include <cmath>
#include <cstddef>
#include <functional>
#include <memory>
#include <mutex>
#include <ostream>
#include <stdexcept>
#include <string>
#include <tuple>
#include <unordered_map>
#include <utility>
#include <vector>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <oneapi/dnnl/dnnl.hpp>
#include <oneapi/dnnl/dnnl_debug.h>
#include <torch/autograd.h>
#include <torch/nn/init.h>

namespace scaffold {

namespace {

using dnnl::memory;
using Tag = dnnl::memory::format_tag;
using DataType = dnnl::memory::data_type;

enum class ConvKind : std::int64_t { convolution = 0, transposed = 1 };

// Everything that selects a oneDNN primitive. Dims are oneDNN's logical
// order: src and dst [N, C, D, H, W], weights [Cout, Cin, k, k, k] for both
// kinds (the transposed kind maps LibTorch's [Cin, Cout, ...] memory onto it
// with the iodhw tag).
struct ConvShape {
  ConvKind kind;
  memory::dims src_dims;
  memory::dims weights_dims;
  memory::dims dst_dims;
  std::int64_t stride;
  std::int64_t padding;
  bool has_bias;
  // Activations (src, dst and their gradients) in ndhwc, LibTorch's
  // ChannelsLast3d, which the primitives then read and write in place.
  // Otherwise they are ncdhw in LibTorch and oneDNN's choice inside the call.
  bool channels_last;
  // The forward pass adds its result to dst (a sum post-op) instead of
  // overwriting it. Only with channels_last, where dst is the caller's tensor.
  bool accumulate;

  bool operator==(const ConvShape&) const = default;
};

struct ConvShapeHash {
  std::size_t operator()(const ConvShape& shape) const {
    std::size_t seed = std::hash<std::int64_t>{}(static_cast<std::int64_t>(shape.kind));
    const auto mix = [&seed](std::int64_t value) {
      seed ^= std::hash<std::int64_t>{}(value) + 0x9e3779b97f4a7c15ULL + (seed << 6) + (seed >> 2);
    };
    for (const auto* dims : {&shape.src_dims, &shape.weights_dims, &shape.dst_dims}) {
      for (const auto value : *dims) {
        mix(value);
      }
    }
    mix(shape.stride);
    mix(shape.padding);
    mix(shape.has_bias ? 1 : 0);
    mix(shape.channels_last ? 1 : 0);
    mix(shape.accumulate ? 1 : 0);
    return seed;
  }
};

const char* kind_name(ConvKind kind) {
  return kind == ConvKind::convolution ? "conv3d" : "conv_transpose3d";
}

std::string describe(const ConvShape& shape) {
  return fmt::format("{} with input [{}], weight (oneDNN order [Cout, Cin, kD, kH, kW]) [{}], output [{}], "
                     "stride {}, padding {}, bias {}, activations {}{}",
                     kind_name(shape.kind), fmt::join(shape.src_dims, ", "),
                     fmt::join(shape.weights_dims, ", "), fmt::join(shape.dst_dims, ", "), shape.stride,
                     shape.padding, shape.has_bias ? "yes" : "no", shape.channels_last ? "ndhwc" : "ncdhw",
                     shape.accumulate ? ", adding to the output" : "");
}

// Rethrows a oneDNN error as std::runtime_error naming the call, the shapes
// and a way forward.
[[noreturn]] void throw_onednn_error(const char* call, const dnnl::error& error, const ConvShape& shape) {
  const dnnl_version_t* version = dnnl_version();
  throw std::runtime_error(fmt::format(
      "oneDNN {} failed ({}: {}) for {}. oneDNN {}.{}.{} may not implement this case on this CPU, so run "
      "this layer through LibTorch's own convolution instead",
      call, dnnl_status2str(error.status), error.what(), describe(shape), version->major, version->minor,
      version->patch));
}

dnnl::engine& cpu_engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

// oneDNN CPU streams are cheap but not meant to be shared between threads
// that execute at the same time, so each thread gets its own.
dnnl::stream& thread_stream() {
  thread_local dnnl::stream stream(cpu_engine());
  return stream;
}

// One primitive with the memory descriptors it was created for. For backward
// passes src_md is diff_src (backward data) and weights_md is diff_weights
// (backward weights), dst_md is diff_dst, so one runner serves all three.
struct ConvPass {
  dnnl::primitive primitive;
  memory::desc src_md;
  memory::desc weights_md;
  memory::desc dst_md;
  memory::desc scratchpad_md;
};

struct ConvPrimitives {
  ConvPass forward;
  ConvPass backward_data;
  ConvPass backward_weights;
  // backward_data is a forward convolution of the output gradient with the
  // flipped, transposed weights; see backward_data_as_forward.
  bool backward_data_by_forward = false;
};

// Whether the input gradient of `shape` can run as a forward convolution:
// for a stride-1 convolution with kernel k and padding p <= k - 1,
//   grad_input = conv(grad_output, W'), padding k - 1 - p,
//   W'[ci, co, a, b, c] = W[co, ci, k-1-a, k-1-b, k-1-c].
// oneDNN 2.6 runs forward convolutions on ndhwc tensors with its brgemm
// kernels, which at 32^3 and 64 channels took 21 ms against 26 ms for its
// backward-data kernel on the development VM, so the channels-last path uses
// this form.
bool backward_data_as_forward(const ConvShape& shape) {
  return shape.kind == ConvKind::convolution && shape.channels_last && shape.stride == 1 &&
         shape.padding <= shape.weights_dims[2] - 1;
}

// Creates the forward, backward-data and backward-weights primitives of one
// shape. Fwd, BwdData and BwdWeights are the convolution_* or the
// deconvolution_* family, whose descriptors take the same arguments.
template <class Fwd, class BwdData, class BwdWeights>
ConvPrimitives create_primitives(const ConvShape& shape, dnnl::algorithm algorithm) {
  dnnl::engine& engine = cpu_engine();

  // format_tag::any lets each primitive pick its preferred layout, usually
  // channel-blocked, and the runner reorders plain tensors into it. Channels-
  // last activations are passed as they are: oneDNN's ndhwc kernels are as
  // fast as its blocked ones, and the activations then need no reorder.
  const Tag activation_tag = shape.channels_last ? Tag::ndhwc : Tag::any;
  const memory::desc src_md(shape.src_dims, DataType::f32, activation_tag);
  const memory::desc weights_md(shape.weights_dims, DataType::f32, Tag::any);
  const memory::desc dst_md(shape.dst_dims, DataType::f32, activation_tag);
  const memory::desc bias_md = shape.has_bias ? memory::desc({shape.weights_dims[0]}, DataType::f32, Tag::a)
                                              : memory::desc();
  const memory::dims strides(3, shape.stride);
  const memory::dims padding(3, shape.padding);

  // A user scratchpad, allocated per call, keeps concurrent calls of one
  // cached primitive from sharing oneDNN's internal scratch buffer.
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  // A separate object: copies of a primitive_attr share one oneDNN handle.
  dnnl::primitive_attr fwd_attr;
  fwd_attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  if (shape.accumulate) {
    dnnl::post_ops sum;
    sum.append_sum(1.0F);
    fwd_attr.set_post_ops(sum);
  }

  ConvPrimitives primitives;
  const char* call = "forward primitive creation";
  try {
    const typename Fwd::desc fwd_desc(dnnl::prop_kind::forward_training, algorithm, src_md, weights_md,
                                      bias_md, dst_md, strides, padding, padding);
    const typename Fwd::primitive_desc fwd_pd(fwd_desc, fwd_attr, engine);
    primitives.forward = {Fwd(fwd_pd), fwd_pd.src_desc(), fwd_pd.weights_desc(), fwd_pd.dst_desc(),
                          fwd_pd.scratchpad_desc()};
    // Backward primitives take the forward one as a hint, which must not
    // carry post-ops.
    const typename Fwd::primitive_desc hint_pd =
        shape.accumulate ? typename Fwd::primitive_desc(fwd_desc, attr, engine) : fwd_pd;

    call = "backward-data primitive creation";
    const typename BwdData::desc bwd_data_desc(algorithm, src_md, weights_md, dst_md, strides, padding,
                                               padding);
    const typename BwdData::primitive_desc bwd_data_pd(bwd_data_desc, attr, engine, hint_pd);
    primitives.backward_data = {BwdData(bwd_data_pd), bwd_data_pd.diff_src_desc(),
                                bwd_data_pd.weights_desc(), bwd_data_pd.diff_dst_desc(),
                                bwd_data_pd.scratchpad_desc()};

    call = "backward-weights primitive creation";
    const typename BwdWeights::desc bwd_weights_desc(algorithm, src_md, weights_md, bias_md, dst_md, strides,
                                                     padding, padding);
    const typename BwdWeights::primitive_desc bwd_weights_pd(bwd_weights_desc, attr, engine, hint_pd);
    primitives.backward_weights = {BwdWeights(bwd_weights_pd), bwd_weights_pd.src_desc(),
                                   bwd_weights_pd.diff_weights_desc(), bwd_weights_pd.diff_dst_desc(),
                                   bwd_weights_pd.scratchpad_desc()};

    if (backward_data_as_forward(shape)) {
      call = "backward-data (as forward convolution) primitive creation";
      const std::int64_t kernel = shape.weights_dims[2];
      const memory::dims swapped_weights_dims{shape.weights_dims[1], shape.weights_dims[0], kernel, kernel, kernel};
      const memory::dims swapped_padding(3, kernel - 1 - shape.padding);
      const typename Fwd::desc as_forward_desc(
          dnnl::prop_kind::forward_inference, algorithm, memory::desc(shape.dst_dims, DataType::f32, Tag::ndhwc),
          memory::desc(swapped_weights_dims, DataType::f32, Tag::any), memory::desc(),
          memory::desc(shape.src_dims, DataType::f32, Tag::ndhwc), strides, swapped_padding, swapped_padding);
      const typename Fwd::primitive_desc as_forward_pd(as_forward_desc, attr, engine);
      // src is the output gradient and dst the input gradient here.
      primitives.backward_data = {Fwd(as_forward_pd), as_forward_pd.dst_desc(), as_forward_pd.weights_desc(),
                                  as_forward_pd.src_desc(), as_forward_pd.scratchpad_desc()};
      primitives.backward_data_by_forward = true;
    }
  } catch (const dnnl::error& error) {
    throw_onednn_error(call, error, shape);
  }
  return primitives;
}

class PrimitiveCache {
 public:
  std::shared_ptr<const ConvPrimitives> get(const ConvShape& shape) {
    // Creation runs under the lock: it happens once per shape, and a second
    // thread asking for the same shape must wait for it anyway.
    std::lock_guard<std::mutex> lock(mutex_);
    auto found = entries_.find(shape);
    if (found != entries_.end()) {
      return found->second;
    }

    auto primitives =
        shape.kind == ConvKind::convolution
            ? create_primitives<dnnl::convolution_forward, dnnl::convolution_backward_data,
                                dnnl::convolution_backward_weights>(shape, dnnl::algorithm::convolution_direct)
            : create_primitives<dnnl::deconvolution_forward, dnnl::deconvolution_backward_data,
                                dnnl::deconvolution_backward_weights>(shape,
                                                                      dnnl::algorithm::deconvolution_direct);
    auto entry = std::make_shared<const ConvPrimitives>(std::move(primitives));
    entries_.emplace(shape, entry);
    return entry;
  }

  std::size_t size() {
    std::lock_guard<std::mutex> lock(mutex_);
    return entries_.size();
  }

 private:
  std::mutex mutex_;
  std::unordered_map<ConvShape, std::shared_ptr<const ConvPrimitives>, ConvShapeHash> entries_;
};

PrimitiveCache& primitive_cache() {
  static PrimitiveCache cache;
  return cache;
}

// Layouts of LibTorch tensors in oneDNN terms.
memory::desc plain_activation_md(const ConvShape& shape, const memory::dims& dims) {
  return memory::desc(dims, DataType::f32, shape.channels_last ? Tag::ndhwc : Tag::ncdhw);
}

torch::MemoryFormat activation_format(const ConvShape& shape) {
  return shape.channels_last ? torch::MemoryFormat::ChannelsLast3d : torch::MemoryFormat::Contiguous;
}

memory::desc plain_weights_md(const ConvShape& shape) {
  // LibTorch stores conv weights as [Cout, Cin, ...] and transposed-conv
  // weights as [Cin, Cout, ...], while oneDNN's logical order is always
  // [Cout, Cin, ...].
  const Tag tag = shape.kind == ConvKind::convolution ? Tag::oidhw : Tag::iodhw;
  return memory::desc(shape.weights_dims, DataType::f32, tag);
}

memory::desc plain_bias_md(const ConvShape& shape) {
  return memory::desc({shape.weights_dims[0]}, DataType::f32, Tag::a);
}

// Collects the arguments of one primitive execution. Inputs whose plain
// layout differs from the primitive's are reordered into a oneDNN-allocated
// buffer before the call, and outputs are reordered back into the LibTorch
// tensor after it.
class PassRunner {
 public:
  PassRunner(const ConvPass& pass, const ConvShape& shape, const char* pass_name)
      : pass_(pass), shape_(shape), pass_name_(pass_name), stream_(thread_stream()) {}

  void add_input(int arg, const torch::Tensor& tensor, const memory::desc& plain_md,
                 const memory::desc& primitive_md) {
    try {
      memory user_memory(plain_md, cpu_engine(), tensor.data_ptr());
      if (plain_md == primitive_md) {
        args_.emplace(arg, user_memory);
        return;
      }
      memory blocked_memory(primitive_md, cpu_engine());
      reorder(user_memory, blocked_memory);
      args_.emplace(arg, blocked_memory);
    } catch (const dnnl::error& error) {
      throw_onednn_error("input memory creation", error, shape_);
    }
  }

  void add_output(int arg, const torch::Tensor& tensor, const memory::desc& plain_md,
                  const memory::desc& primitive_md) {
    try {
      memory user_memory(plain_md, cpu_engine(), tensor.data_ptr());
      if (plain_md == primitive_md) {
        args_.emplace(arg, user_memory);
        return;
      }
      memory blocked_memory(primitive_md, cpu_engine());
      args_.emplace(arg, blocked_memory);
      copy_back_.emplace_back(blocked_memory, user_memory);
    } catch (const dnnl::error& error) {
      throw_onednn_error("output memory creation", error, shape_);
    }
  }

  void run() {
    try {
      memory scratchpad(pass_.scratchpad_md, cpu_engine());
      args_.emplace(DNNL_ARG_SCRATCHPAD, scratchpad);
      pass_.primitive.execute(stream_, args_);
      for (auto& [blocked_memory, user_memory] : copy_back_) {
        reorder(blocked_memory, user_memory);
      }
      stream_.wait();
    } catch (const dnnl::error& error) {
      throw_onednn_error(pass_name_, error, shape_);
    }
  }

 private:
  void reorder(memory& from, memory& to) {
    try {
      dnnl::reorder(from, to).execute(stream_, from, to);
    } catch (const dnnl::error& error) {
      throw_onednn_error("reorder between plain and blocked layout", error, shape_);
    }
  }

  const ConvPass& pass_;
  const ConvShape& shape_;
  const char* pass_name_;
  dnnl::stream& stream_;
  std::unordered_map<int, memory> args_;
  std::vector<std::pair<memory, memory>> copy_back_;
};

// Writes the convolution of input into output, or adds it to output when
// shape.accumulate is set. output: shape.dst_dims in the shape's layout.
void run_forward_into(const ConvShape& shape, const torch::Tensor& input, const torch::Tensor& weight,
                      const torch::Tensor& bias, const torch::Tensor& output) {
  const auto primitives = primitive_cache().get(shape);
  const ConvPass& pass = primitives->forward;

  PassRunner runner(pass, shape, "forward execution");
  runner.add_input(DNNL_ARG_SRC, input, plain_activation_md(shape, shape.src_dims), pass.src_md);
  runner.add_input(DNNL_ARG_WEIGHTS, weight, plain_weights_md(shape), pass.weights_md);
  if (shape.has_bias) {
    runner.add_input(DNNL_ARG_BIAS, bias, plain_bias_md(shape), plain_bias_md(shape));
  }
  runner.add_output(DNNL_ARG_DST, output, plain_activation_md(shape, shape.dst_dims), pass.dst_md);
  runner.run();
}

torch::Tensor run_forward(const ConvShape& shape, const torch::Tensor& input, const torch::Tensor& weight,
                          const torch::Tensor& bias) {
  torch::Tensor output =
      torch::empty(shape.dst_dims, input.options().memory_format(activation_format(shape)));
  run_forward_into(shape, input, weight, bias, output);
  return output;
}

torch::Tensor run_backward_data(const ConvShape& shape, const torch::Tensor& grad_output,
                                const torch::Tensor& weight) {
  const auto primitives = primitive_cache().get(shape);
  const ConvPass& pass = primitives->backward_data;
  torch::Tensor grad_input =
      torch::empty(shape.src_dims, grad_output.options().memory_format(activation_format(shape)));

  PassRunner runner(pass, shape, "backward-data execution");
  if (primitives->backward_data_by_forward) {
    // weight [Cout, Cin, k, k, k] flipped in space is W' [Cin, Cout, ...]
    // in memory order (Cout, Cin): oneDNN's iodhw.
    const torch::Tensor flipped = weight.flip({2, 3, 4});
    const std::int64_t kernel = shape.weights_dims[2];
    const memory::desc flipped_md({shape.weights_dims[1], shape.weights_dims[0], kernel, kernel, kernel},
                                  DataType::f32, Tag::iodhw);
    runner.add_input(DNNL_ARG_SRC, grad_output, plain_activation_md(shape, shape.dst_dims), pass.dst_md);
    runner.add_input(DNNL_ARG_WEIGHTS, flipped, flipped_md, pass.weights_md);
    runner.add_output(DNNL_ARG_DST, grad_input, plain_activation_md(shape, shape.src_dims), pass.src_md);
  } else {
    runner.add_input(DNNL_ARG_DIFF_DST, grad_output, plain_activation_md(shape, shape.dst_dims), pass.dst_md);
    runner.add_input(DNNL_ARG_WEIGHTS, weight, plain_weights_md(shape), pass.weights_md);
    runner.add_output(DNNL_ARG_DIFF_SRC, grad_input, plain_activation_md(shape, shape.src_dims), pass.src_md);
  }
  runner.run();
  return grad_input;
}

// Returns (grad_weight, grad_bias), where grad_bias is undefined without a bias.
std::pair<torch::Tensor, torch::Tensor> run_backward_weights(const ConvShape& shape,
                                                             const torch::Tensor& grad_output,
                                                             const torch::Tensor& input,
                                                             const torch::Tensor& weight) {
  const auto primitives = primitive_cache().get(shape);
  const ConvPass& pass = primitives->backward_weights;
  torch::Tensor grad_weight = torch::empty(weight.sizes(), weight.options());
  torch::Tensor grad_bias;

  PassRunner runner(pass, shape, "backward-weights execution");
  runner.add_input(DNNL_ARG_SRC, input, plain_activation_md(shape, shape.src_dims), pass.src_md);
  runner.add_input(DNNL_ARG_DIFF_DST, grad_output, plain_activation_md(shape, shape.dst_dims), pass.dst_md);
  runner.add_output(DNNL_ARG_DIFF_WEIGHTS, grad_weight, plain_weights_md(shape), pass.weights_md);
  if (shape.has_bias) {
    grad_bias = torch::empty({shape.weights_dims[0]}, weight.options());
    runner.add_output(DNNL_ARG_DIFF_BIAS, grad_bias, plain_bias_md(shape), plain_bias_md(shape));
  }
  runner.run();
  return {grad_weight, grad_bias};
}

std::string shape_string(const torch::Tensor& tensor) {
  return fmt::format("[{}]", fmt::join(tensor.sizes(), ", "));
}

// Checks what oneDNN's f32 CPU primitives can take: a defined, strided,
// float32 CPU tensor of the expected rank.
void check_tensor(const char* function, const char* name, const torch::Tensor& tensor, std::int64_t dims) {
  if (!tensor.defined()) {
    throw std::invalid_argument(fmt::format("{}: {} is an undefined tensor", function, name));
  }
  if (tensor.device().type() != torch::kCPU) {
    throw std::invalid_argument(fmt::format(
        "{}: {} is on device {}, but the oneDNN path runs on CPU only, so use LibTorch's own "
        "convolution for other devices",
        function, name, tensor.device().str()));
  }
  if (tensor.scalar_type() != torch::kFloat32) {
    throw std::invalid_argument(fmt::format(
        "{}: {} has dtype {}, but the oneDNN path supports float32 only, so convert with .to(torch::kFloat32)",
        function, name, c10::toString(tensor.scalar_type())));
  }
  if (tensor.layout() != torch::kStrided) {
    throw std::invalid_argument(fmt::format("{}: {} must be a dense (strided) tensor, got layout {}",
                                            function, name, c10::str(tensor.layout())));
  }
  if (tensor.dim() != dims) {
    throw std::invalid_argument(fmt::format("{}: {} must have {} dimensions, got shape {}", function, name,
                                            dims, shape_string(tensor)));
  }
}

void check_bias(const char* function, const c10::optional<torch::Tensor>& bias, std::int64_t out_channels) {
  if (!bias.has_value() || !bias->defined()) {
    return;
  }
  check_tensor(function, "bias", *bias, 1);
  if (bias->size(0) != out_channels) {
    throw std::invalid_argument(fmt::format("{}: bias has shape {} but the layer has {} output channels",
                                            function, shape_string(*bias), out_channels));
  }
}

bool has_bias(const c10::optional<torch::Tensor>& bias) { return bias.has_value() && bias->defined(); }

ConvShape conv_shape(const torch::Tensor& input, const torch::Tensor& weight, bool with_bias,
                     std::int64_t padding, bool channels_last) {
  const std::int64_t kernel = weight.size(2);
  memory::dims dst_dims{input.size(0), weight.size(0)};
  for (int dim = 2; dim < 5; ++dim) {
    dst_dims.push_back(input.size(dim) + 2 * padding - kernel + 1);
  }
  return {ConvKind::convolution, input.sizes().vec(), weight.sizes().vec(), dst_dims, 1, padding, with_bias,
          channels_last, false};
}

ConvShape transposed_shape(const torch::Tensor& input, const torch::Tensor& weight, bool with_bias,
                           bool channels_last) {
  // LibTorch's [Cin, Cout, 2, 2, 2] is oneDNN's logical [Cout, Cin, 2, 2, 2].
  const memory::dims weights_dims{weight.size(1), weight.size(0), 2, 2, 2};
  const memory::dims dst_dims{input.size(0), weight.size(1), 2 * input.size(2), 2 * input.size(3),
                              2 * input.size(4)};
  return {ConvKind::transposed, input.sizes().vec(), weights_dims, dst_dims, 2, 0, with_bias, channels_last, false};
}

ConvShape shape_of(ConvKind kind, const torch::Tensor& input, const torch::Tensor& weight, bool with_bias,
                   std::int64_t padding, bool channels_last) {
  return kind == ConvKind::convolution ? conv_shape(input, weight, with_bias, padding, channels_last)
                                       : transposed_shape(input, weight, with_bias, channels_last);
}

// The activation layout a call runs in. It is channels-last when the input is
// contiguous in ChannelsLast3d (which includes inputs whose one channel or
// one voxel makes both layouts the same memory) or when its strides make
// LibTorch suggest ChannelsLast3d, and plain otherwise. A U-Net on
// one-channel volumes thus turns channels-last at its first convolution.
bool prefers_channels_last(const torch::Tensor& input) {
  return input.is_contiguous(torch::MemoryFormat::ChannelsLast3d) ||
         input.suggest_memory_format() == torch::MemoryFormat::ChannelsLast3d;
}

torch::MemoryFormat memory_format(bool channels_last) {
  return channels_last ? torch::MemoryFormat::ChannelsLast3d : torch::MemoryFormat::Contiguous;
}

// Autograd function over both kinds: inputs (input, weight, optional bias,
// kind, padding, channels_last), all tensors already checked, the input
// contiguous in the layout channels_last names and the others contiguous.
// The bias is an optional because LibTorch 1.13's Function::apply rejects
// undefined tensors.
class OnednnConvFunction : public torch::autograd::Function<OnednnConvFunction> {
 public:
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& input,
                               const torch::Tensor& weight, const c10::optional<torch::Tensor>& bias,
                               std::int64_t kind, std::int64_t padding, bool channels_last) {
    const bool with_bias = has_bias(bias);
    const ConvShape shape =
        shape_of(static_cast<ConvKind>(kind), input, weight, with_bias, padding, channels_last);
    ctx->save_for_backward({input, weight});
    ctx->saved_data["kind"] = kind;
    ctx->saved_data["padding"] = padding;
    ctx->saved_data["has_bias"] = with_bias;
    ctx->saved_data["channels_last"] = channels_last;
    return run_forward(shape, input, weight, with_bias ? *bias : torch::Tensor());
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    const auto kind = static_cast<ConvKind>(ctx->saved_data["kind"].toInt());

    // The oneDNN passes record nothing on the autograd tape, so a graph of
    // this backward pass would silently miss their dependence on the inputs.
    if (at::GradMode::is_enabled()) {
      throw std::runtime_error(fmt::format(
          "onednn_{}: double backward is not supported, so call backward() without create_graph or use "
          "torch::{} for this layer",
          kind_name(kind), kind_name(kind)));
    }

    const auto saved = ctx->get_saved_variables();
    const torch::Tensor& input = saved[0];
    const torch::Tensor& weight = saved[1];
    const bool with_bias = ctx->saved_data["has_bias"].toBool();
    const bool channels_last = ctx->saved_data["channels_last"].toBool();
    const ConvShape shape =
        shape_of(kind, input, weight, with_bias, ctx->saved_data["padding"].toInt(), channels_last);

    // grad_output: [N, Cout, D', H', W'], possibly a broadcast view or in
    // the other layout.
    const torch::Tensor grad_output = grad_outputs[0].contiguous(memory_format(channels_last));

    torch::Tensor grad_input;
    if (ctx->needs_input_grad(0)) {
      grad_input = run_backward_data(shape, grad_output, weight);
    }

    torch::Tensor grad_weight;
    torch::Tensor grad_bias;
    const bool needs_weight_grad = ctx->needs_input_grad(1);
    const bool needs_bias_grad = with_bias && ctx->needs_input_grad(2);
    if (needs_weight_grad || needs_bias_grad) {
      std::tie(grad_weight, grad_bias) = run_backward_weights(shape, grad_output, input, weight);
    }
    if (!needs_weight_grad) {
      grad_weight = torch::Tensor();
    }
    if (!needs_bias_grad) {
      grad_bias = torch::Tensor();
    }
    return {grad_input, grad_weight, grad_bias, torch::Tensor(), torch::Tensor(), torch::Tensor()};
  }
};

c10::optional<torch::Tensor> contiguous_bias(const c10::optional<torch::Tensor>& bias) {
  return has_bias(bias) ? c10::optional<torch::Tensor>(bias->contiguous()) : c10::nullopt;
}

// conv3d(cat({first, second}, 1), weight, bias) for channels-last inputs
// without the concatenation: the weight splits along its input channels into
// [Cout, C1, k, k, k] and [Cout, C2, k, k, k], the first convolution writes
// the output (with the bias) and the second adds to it. Backward runs the
// backward passes of both halves, which yields the two input gradients
// directly instead of slices of one gradient, and concatenates the two
// weight gradients, which are small.
//
// Inputs (first, second, weight, optional bias, padding): first and second
// contiguous in ChannelsLast3d with equal batch and spatial sizes, weight
// contiguous [Cout, C1 + C2, k, k, k].
class OnednnConvCatFunction : public torch::autograd::Function<OnednnConvCatFunction> {
 public:
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& first,
                               const torch::Tensor& second, const torch::Tensor& weight,
                               const c10::optional<torch::Tensor>& bias, std::int64_t padding) {
    const bool with_bias = has_bias(bias);
    const auto [first_weight, second_weight] = split_weight(weight, first.size(1));
    const ConvShape first_shape = conv_shape(first, first_weight, with_bias, padding, true);
    ConvShape second_shape = conv_shape(second, second_weight, false, padding, true);
    second_shape.accumulate = true;

    torch::Tensor output =
        torch::empty(first_shape.dst_dims, first.options().memory_format(torch::MemoryFormat::ChannelsLast3d));
    run_forward_into(first_shape, first, first_weight, with_bias ? *bias : torch::Tensor(), output);
    run_forward_into(second_shape, second, second_weight, torch::Tensor(), output);

    ctx->save_for_backward({first, second, weight});
    ctx->saved_data["padding"] = padding;
    ctx->saved_data["has_bias"] = with_bias;
    return output;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    if (at::GradMode::is_enabled()) {
      throw std::runtime_error(
          "onednn_conv3d_cat: double backward is not supported, so call backward() without create_graph or "
          "use torch::conv3d on the concatenated input");
    }
    const auto saved = ctx->get_saved_variables();
    const torch::Tensor& first = saved[0];
    const torch::Tensor& second = saved[1];
    const torch::Tensor& weight = saved[2];
    const bool with_bias = ctx->saved_data["has_bias"].toBool();
    const std::int64_t padding = ctx->saved_data["padding"].toInt();
    const auto [first_weight, second_weight] = split_weight(weight, first.size(1));
    // The backward primitives of a shape do not depend on accumulate, so the
    // plain shapes serve both halves.
    const ConvShape first_shape = conv_shape(first, first_weight, with_bias, padding, true);
    const ConvShape second_shape = conv_shape(second, second_weight, false, padding, true);

    const torch::Tensor grad_output = grad_outputs[0].contiguous(torch::MemoryFormat::ChannelsLast3d);
    torch::Tensor grad_first;
    torch::Tensor grad_second;
    if (ctx->needs_input_grad(0)) {
      grad_first = run_backward_data(first_shape, grad_output, first_weight);
    }
    if (ctx->needs_input_grad(1)) {
      grad_second = run_backward_data(second_shape, grad_output, second_weight);
    }

    torch::Tensor grad_weight;
    torch::Tensor grad_bias;
    const bool needs_bias_grad = with_bias && ctx->needs_input_grad(3);
    if (ctx->needs_input_grad(2) || needs_bias_grad) {
      torch::Tensor grad_first_weight;
      std::tie(grad_first_weight, grad_bias) = run_backward_weights(first_shape, grad_output, first, first_weight);
      if (ctx->needs_input_grad(2)) {
        const torch::Tensor grad_second_weight =
            run_backward_weights(second_shape, grad_output, second, second_weight).first;
        grad_weight = torch::cat({grad_first_weight, grad_second_weight}, 1);
      }
    }
    if (!needs_bias_grad) {
      grad_bias = torch::Tensor();
    }
    return {grad_first, grad_second, grad_weight, grad_bias, torch::Tensor()};
  }

 private:
  // weight: [Cout, C1 + C2, k, k, k] -> contiguous [Cout, C1, ...] and [Cout, C2, ...]
  static std::pair<torch::Tensor, torch::Tensor> split_weight(const torch::Tensor& weight,
                                                              std::int64_t first_channels) {
    return {weight.narrow(1, 0, first_channels).contiguous(),
            weight.narrow(1, first_channels, weight.size(1) - first_channels).contiguous()};
  }
};

}  // namespace

namespace {

// Checks the arguments of a stride-1 convolution whose input is `input`,
// or the channel concatenation of `input` and `second` when second is given.
void check_conv3d_arguments(const char* kFunction, const torch::Tensor& input, const torch::Tensor* second,
                            const torch::Tensor& weight, const c10::optional<torch::Tensor>& bias,
                            std::int64_t padding) {
  check_tensor(kFunction, "input", input, 5);
  check_tensor(kFunction, "weight", weight, 5);
  check_bias(kFunction, bias, weight.size(0));
  std::int64_t input_channels = input.size(1);
  if (second != nullptr) {
    check_tensor(kFunction, "second input", *second, 5);
    if (second->size(0) != input.size(0) || second->sizes().slice(2) != input.sizes().slice(2)) {
      throw std::invalid_argument(fmt::format(
          "{}: the inputs to concatenate along channels differ in batch or spatial size: {} and {}", kFunction,
          shape_string(input), shape_string(*second)));
    }
    input_channels += second->size(1);
  }

  // weight: [Cout, Cin, k, k, k]
  const std::int64_t kernel = weight.size(2);
  if (weight.size(3) != kernel || weight.size(4) != kernel || kernel < 1) {
    throw std::invalid_argument(fmt::format(
        "{}: weight has shape {}, but only cubic kernels [Cout, Cin, k, k, k] are supported", kFunction,
        shape_string(weight)));
  }
  if (weight.size(1) != input_channels) {
    throw std::invalid_argument(fmt::format(
        "{}: input has {} channels (shape {}{}) but weight expects {} (shape {} is [Cout, Cin, k, k, k])",
        kFunction, input_channels, shape_string(input),
        second != nullptr ? " concatenated with " + shape_string(*second) : std::string(), weight.size(1),
        shape_string(weight)));
  }
  if (padding < 0) {
    throw std::invalid_argument(fmt::format("{}: padding must be non-negative, got {}", kFunction, padding));
  }
  if (input.numel() == 0 || weight.numel() == 0) {
    throw std::invalid_argument(fmt::format("{}: empty tensor: input {}, weight {}", kFunction,
                                            shape_string(input), shape_string(weight)));
  }
  for (int dim = 2; dim < 5; ++dim) {
    if (input.size(dim) + 2 * padding < kernel) {
      throw std::invalid_argument(fmt::format(
          "{}: input spatial size {} with padding {} is smaller than the kernel size {}", kFunction,
          shape_string(input), padding, kernel));
    }
  }
}

}  // namespace

torch::Tensor onednn_conv3d(const torch::Tensor& input, const torch::Tensor& weight,
                            const c10::optional<torch::Tensor>& bias, std::int64_t padding) {
  check_conv3d_arguments("onednn_conv3d", input, nullptr, weight, bias, padding);
  const bool channels_last = prefers_channels_last(input);
  return OnednnConvFunction::apply(input.contiguous(memory_format(channels_last)), weight.contiguous(),
                                   contiguous_bias(bias), static_cast<std::int64_t>(ConvKind::convolution),
                                   padding, channels_last);
}

namespace {

// The 2x2x2 stride-2 transposed convolution of a channels-last input as a
// 1x1x1 convolution to 8 x Cout channels, (a, b, c, co) in memory order.
// A depth-to-space copy then puts channel group (a, b, c) of voxel
// (d, h, w) at voxel (2d + a, 2h + b, 2w + c). LibTorch's autograd
// differentiates the weight permutation and the copy. oneDNN 2.6's
// deconvolution kernels reached 50-70 GFLOP/s here, and this form made a
// scale-6 step 5% faster (1-2% at scale 5).
torch::Tensor transposed_as_pointwise(const torch::Tensor& input, const torch::Tensor& weight,
                                      const c10::optional<torch::Tensor>& bias) {
  const std::int64_t batch = input.size(0);
  const std::int64_t in_channels = input.size(1);
  const std::int64_t out_channels = weight.size(1);
  const std::int64_t depth = input.size(2);
  const std::int64_t height = input.size(3);
  const std::int64_t width = input.size(4);

  // weight [Cin, Cout, a, b, c] -> [(a, b, c, Cout), Cin, 1, 1, 1]
  const torch::Tensor pointwise_weight =
      weight.permute({2, 3, 4, 1, 0}).reshape({8 * out_channels, in_channels, 1, 1, 1});
  c10::optional<torch::Tensor> pointwise_bias;
  if (has_bias(bias)) {
    pointwise_bias = bias->repeat({8});
  }
  // [N, 8 Cout, D, H, W] channels-last: memory [N, D, H, W, a, b, c, Cout]
  const torch::Tensor pointwise = onednn_conv3d(input, pointwise_weight, pointwise_bias, 0);
  const torch::Tensor blocks = pointwise.permute({0, 2, 3, 4, 1}).view(
      {batch, depth, height, width, 2, 2, 2, out_channels});
  // -> [N, D, a, H, b, W, c, Cout] = [N, 2D, 2H, 2W, Cout], then NCDHW sizes
  return blocks.permute({0, 1, 4, 2, 5, 3, 6, 7})
      .reshape({batch, 2 * depth, 2 * height, 2 * width, out_channels})
      .permute({0, 4, 1, 2, 3});
}

}  // namespace

torch::Tensor onednn_conv_transpose3d(const torch::Tensor& input, const torch::Tensor& weight,
                                      const c10::optional<torch::Tensor>& bias) {
  constexpr const char* kFunction = "onednn_conv_transpose3d";
  check_tensor(kFunction, "input", input, 5);
  check_tensor(kFunction, "weight", weight, 5);
  check_bias(kFunction, bias, weight.size(1));

  // weight: [Cin, Cout, 2, 2, 2]
  if (weight.size(2) != 2 || weight.size(3) != 2 || weight.size(4) != 2) {
    throw std::invalid_argument(fmt::format(
        "{}: weight has shape {}, but only kernel 2 with stride 2 ([Cin, Cout, 2, 2, 2]) is supported",
        kFunction, shape_string(weight)));
  }
  if (weight.size(0) != input.size(1)) {
    throw std::invalid_argument(fmt::format(
        "{}: input has {} channels (shape {}) but weight expects {} (shape {} is [Cin, Cout, 2, 2, 2])",
        kFunction, input.size(1), shape_string(input), weight.size(0), shape_string(weight)));
  }
  if (input.numel() == 0 || weight.numel() == 0) {
    throw std::invalid_argument(fmt::format("{}: empty tensor: input {}, weight {}", kFunction,
                                            shape_string(input), shape_string(weight)));
  }

  const bool channels_last = prefers_channels_last(input);
  if (channels_last) {
    return transposed_as_pointwise(input.contiguous(torch::MemoryFormat::ChannelsLast3d), weight, bias);
  }
  return OnednnConvFunction::apply(input.contiguous(memory_format(channels_last)), weight.contiguous(),
                                   contiguous_bias(bias), static_cast<std::int64_t>(ConvKind::transposed),
                                   std::int64_t{0}, channels_last);
}

torch::Tensor onednn_conv3d_cat(const torch::Tensor& first, const torch::Tensor& second,
                                const torch::Tensor& weight, const c10::optional<torch::Tensor>& bias,
                                std::int64_t padding) {
  check_conv3d_arguments("onednn_conv3d_cat", first, &second, weight, bias, padding);

  // The second convolution adds to the output in place, which needs the
  // output in the caller's layout, so the split runs on channels-last inputs
  // only. Plain inputs take the blocked path, which reorders around every
  // call anyway, so concatenating them first adds one copy.
  if (!prefers_channels_last(first) || !prefers_channels_last(second)) {
    return onednn_conv3d(torch::cat({first, second}, 1), weight, bias, padding);
  }
  const auto channels_last = torch::MemoryFormat::ChannelsLast3d;
  return OnednnConvCatFunction::apply(first.contiguous(channels_last), second.contiguous(channels_last),
                                      weight.contiguous(), contiguous_bias(bias), padding);
}

std::size_t onednn_conv_cache_size() { return primitive_cache().size(); }

namespace {

void check_channels(const char* module, std::int64_t in_channels, std::int64_t out_channels) {
  if (in_channels < 1 || out_channels < 1) {
    throw std::invalid_argument(fmt::format("{}: channel counts must be at least 1, got in_channels={} "
                                            "out_channels={}",
                                            module, in_channels, out_channels));
  }
}

// Same draws as LibTorch's ConvNdImpl::reset_parameters (1.13):
// kaiming_uniform_(weight, a = sqrt(5)), then bias uniform in +-1/sqrt(fan_in).
void reset_conv_parameters(torch::Tensor& weight, torch::Tensor& bias) {
  torch::NoGradGuard no_grad;
  torch::nn::init::kaiming_uniform_(weight, std::sqrt(5.0));
  if (bias.defined()) {
    const auto [fan_in, fan_out] = torch::nn::init::_calculate_fan_in_and_fan_out(weight);
    const double bound = 1.0 / std::sqrt(static_cast<double>(fan_in));
    torch::nn::init::uniform_(bias, -bound, bound);
  }
}

}  // namespace

OnednnConv3dImpl::OnednnConv3dImpl(std::int64_t in_channels, std::int64_t out_channels,
                                   std::int64_t kernel_size, std::int64_t padding, bool bias)
    : in_channels_(in_channels), out_channels_(out_channels), kernel_size_(kernel_size), padding_(padding) {
  check_channels("OnednnConv3d", in_channels, out_channels);
  if (kernel_size < 1 || padding < 0) {
    throw std::invalid_argument(fmt::format(
        "OnednnConv3d: kernel_size must be at least 1 and padding non-negative, got kernel_size={} "
        "padding={}",
        kernel_size, padding));
  }

  // Registered like torch::nn::Conv3d: an absent bias is an undefined
  // parameter, which named_parameters() and state dicts skip.
  weight = register_parameter("weight",
                              torch::empty({out_channels, in_channels, kernel_size, kernel_size, kernel_size}));
  if (bias) {
    this->bias = register_parameter("bias", torch::empty({out_channels}));
  } else {
    register_parameter("bias", torch::Tensor(), /*requires_grad=*/false);
  }
  reset_parameters();
}

torch::Tensor OnednnConv3dImpl::forward(const torch::Tensor& x) {
  return onednn_conv3d(x, weight, bias.defined() ? c10::optional<torch::Tensor>(bias) : c10::nullopt,
                       padding_);
}

torch::Tensor OnednnConv3dImpl::forward_cat(const torch::Tensor& first, const torch::Tensor& second) {
  return onednn_conv3d_cat(first, second, weight,
                           bias.defined() ? c10::optional<torch::Tensor>(bias) : c10::nullopt, padding_);
}

void OnednnConv3dImpl::reset_parameters() { reset_conv_parameters(weight, bias); }

void OnednnConv3dImpl::pretty_print(std::ostream& stream) const {
  stream << "scaffold::OnednnConv3d(" << in_channels_ << ", " << out_channels_
         << ", kernel_size=" << kernel_size_ << ", padding=" << padding_
         << ", bias=" << (bias.defined() ? "true" : "false") << ")";
}

OnednnConvTranspose3dImpl::OnednnConvTranspose3dImpl(std::int64_t in_channels, std::int64_t out_channels,
                                                     bool bias)
    : in_channels_(in_channels), out_channels_(out_channels) {
  check_channels("OnednnConvTranspose3d", in_channels, out_channels);
  weight = register_parameter("weight", torch::empty({in_channels, out_channels, 2, 2, 2}));
  if (bias) {
    this->bias = register_parameter("bias", torch::empty({out_channels}));
  } else {
    register_parameter("bias", torch::Tensor(), /*requires_grad=*/false);
  }
  reset_parameters();
}

torch::Tensor OnednnConvTranspose3dImpl::forward(const torch::Tensor& x) {
  return onednn_conv_transpose3d(x, weight,
                                 bias.defined() ? c10::optional<torch::Tensor>(bias) : c10::nullopt);
}

void OnednnConvTranspose3dImpl::reset_parameters() { reset_conv_parameters(weight, bias); }

void OnednnConvTranspose3dImpl::pretty_print(std::ostream& stream) const {
  stream << "scaffold::OnednnConvTranspose3d(" << in_channels_ << ", " << out_channels_
         << ", kernel_size=2, stride=2, bias=" << (bias.defined() ? "true" : "false") << ")";
}

torch::nn::AnyModule make_conv3d(std::int64_t in_channels, std::int64_t out_channels, std::int64_t kernel_size,
                                 std::int64_t padding, bool bias, ConvBackend backend) {
  if (backend == ConvBackend::onednn) {
    return torch::nn::AnyModule(OnednnConv3d(in_channels, out_channels, kernel_size, padding, bias));
  }
  return torch::nn::AnyModule(torch::nn::Conv3d(
      torch::nn::Conv3dOptions(in_channels, out_channels, kernel_size).padding(padding).bias(bias)));
}

torch::nn::AnyModule make_conv_transpose3d(std::int64_t in_channels, std::int64_t out_channels, bool bias,
                                           ConvBackend backend) {
  if (backend == ConvBackend::onednn) {
    return torch::nn::AnyModule(OnednnConvTranspose3d(in_channels, out_channels, bias));
  }
  return torch::nn::AnyModule(torch::nn::ConvTranspose3d(
      torch::nn::ConvTranspose3dOptions(in_channels, out_channels, 2).stride(2).bias(bias)));
}

}  // namespace scaffold

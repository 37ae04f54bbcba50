#include "train/ddp.hpp"

#include <chrono>
#include <cstring>
#include <stdexcept>
#include <utility>

#include <fmt/format.h>

#include "core/logging.hpp"

namespace scaffold {

GradientAllReducer::GradientAllReducer(ProcessGroup& group, std::vector<torch::Tensor> parameters,
                                       std::size_t bucket_bytes)
    : group_(group), parameters_(std::move(parameters)), owner_thread_(std::this_thread::get_id()) {
  if (group_.size() == 1) {
    return;
  }
  const std::size_t bucket_elements = std::max<std::size_t>(1, bucket_bytes / sizeof(float));
  bucket_of_.resize(parameters_.size());
  slot_of_.resize(parameters_.size());
  arrived_.assign(parameters_.size(), false);

  // Reverse registration order approximates the order in which backward
  // produces the gradients.
  for (std::size_t k = parameters_.size(); k-- > 0;) {
    const torch::Tensor& parameter = parameters_[k];
    if (parameter.scalar_type() != torch::kFloat32 || !parameter.device().is_cpu()) {
      throw std::invalid_argument(fmt::format(
          "GradientAllReducer: parameter {} is {} on {}, but only CPU float32 parameters are supported", k,
          c10::toString(parameter.scalar_type()), parameter.device().str()));
    }
    const auto elements = static_cast<std::size_t>(parameter.numel());
    if (buckets_.empty() || (buckets_.back().buffer.size() + elements > bucket_elements &&
                             !buckets_.back().parameters.empty())) {
      buckets_.emplace_back();
    }
    Bucket& bucket = buckets_.back();
    bucket_of_[k] = buckets_.size() - 1;
    slot_of_[k] = bucket.parameters.size();
    bucket.parameters.push_back(k);
    bucket.offsets.push_back(static_cast<std::int64_t>(bucket.buffer.size()));
    bucket.buffer.resize(bucket.buffer.size() + elements);
  }

  for (std::size_t k = 0; k < parameters_.size(); ++k) {
    hook_handles_.push_back(parameters_[k].register_hook([this, k](const torch::Tensor& gradient) {
      on_gradient(k, gradient);
    }));
  }
  spdlog::debug("gradient all-reduce: {} parameters in {} buckets of at most {:.1f} MiB", parameters_.size(),
                buckets_.size(), static_cast<double>(bucket_bytes) / (1024.0 * 1024.0));
}

GradientAllReducer::~GradientAllReducer() {
  for (std::size_t k = 0; k < hook_handles_.size(); ++k) {
    try {
      parameters_[k].remove_hook(hook_handles_[k]);
    } catch (const std::exception&) {
      // The parameter is already gone; nothing to remove.
    }
  }
}

void GradientAllReducer::on_gradient(std::size_t parameter, const torch::Tensor& gradient) {
  Bucket& bucket = buckets_[bucket_of_[parameter]];
  if (bucket.started) {
    // A second gradient for a parameter already sent (the parameter is used
    // twice in the graph). The bucket must be summed again in finish().
    throw std::logic_error(fmt::format(
        "GradientAllReducer: parameter {} received a gradient after its bucket was sent; every parameter must be "
        "used once per forward pass",
        parameter));
  }
  const torch::Tensor source = gradient.contiguous();
  float* destination = bucket.buffer.data() + bucket.offsets[slot_of_[parameter]];
  const auto bytes = static_cast<std::size_t>(source.numel()) * sizeof(float);
  if (arrived_[parameter]) {
    // Accumulate, as autograd does for a parameter used twice before its bucket starts.
    const float* values = source.data_ptr<float>();
    for (std::int64_t i = 0; i < source.numel(); ++i) destination[i] += values[i];
  } else {
    std::memcpy(destination, source.data_ptr<float>(), bytes);
    arrived_[parameter] = true;
    ++bucket.ready;
  }

  // MPI calls must come from the thread that initialised MPI (MPI_THREAD_FUNNELED).
  // LibTorch 1.13 runs CPU backward on the calling thread, but if a hook ever
  // runs elsewhere the bucket simply starts in finish().
  if (std::this_thread::get_id() == owner_thread_) {
    start_ready_buckets();
  }
}

void GradientAllReducer::start_ready_buckets() {
  // Buckets start in index order so that every rank issues the same sequence
  // of collectives, even if gradients arrive in a different order.
  while (next_to_start_ < buckets_.size()) {
    Bucket& bucket = buckets_[next_to_start_];
    if (bucket.ready < bucket.parameters.size()) {
      break;
    }
    bucket.request = group_.iall_reduce_sum(bucket.buffer.data(), bucket.buffer.size());
    bucket.started = true;
    ++next_to_start_;
  }
  // Open MPI progresses non-blocking collectives only inside MPI calls.
  for (std::size_t b = 0; b < next_to_start_; ++b) {
    buckets_[b].request.test();
  }
}

void GradientAllReducer::finish() {
  if (group_.size() == 1) {
    return;
  }
  // Parameters without a gradient this step contribute zeros.
  for (Bucket& bucket : buckets_) {
    if (bucket.started) continue;
    for (std::size_t slot = 0; slot < bucket.parameters.size(); ++slot) {
      const std::size_t k = bucket.parameters[slot];
      if (!arrived_[k]) {
        std::memset(bucket.buffer.data() + bucket.offsets[slot], 0,
                    static_cast<std::size_t>(parameters_[k].numel()) * sizeof(float));
        arrived_[k] = true;
        ++bucket.ready;
      }
    }
  }
  start_ready_buckets();

  const auto wait_start = std::chrono::steady_clock::now();
  for (Bucket& bucket : buckets_) {
    bucket.request.wait();
  }
  wait_seconds_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - wait_start).count();

  const float scale = 1.0F / static_cast<float>(group_.size());
  torch::NoGradGuard no_grad;
  for (Bucket& bucket : buckets_) {
    for (std::size_t slot = 0; slot < bucket.parameters.size(); ++slot) {
      torch::Tensor& parameter = parameters_[bucket.parameters[slot]];
      const torch::Tensor averaged =
          torch::from_blob(bucket.buffer.data() + bucket.offsets[slot], parameter.sizes(), torch::kFloat32)
              .mul(scale);
      parameter.mutable_grad() = averaged;
    }
  }
  reset_step();
}

void GradientAllReducer::reset_step() {
  for (Bucket& bucket : buckets_) {
    bucket.ready = 0;
    bucket.started = false;
  }
  std::fill(arrived_.begin(), arrived_.end(), false);
  next_to_start_ = 0;
}

void GradientAllReducer::broadcast_parameters() {
  if (group_.size() == 1) {
    return;
  }
  torch::NoGradGuard no_grad;
  for (torch::Tensor& parameter : parameters_) {
    torch::Tensor contiguous = parameter.contiguous();
    group_.broadcast_bytes(contiguous.data_ptr(), static_cast<std::size_t>(contiguous.nbytes()), 0);
    if (!contiguous.is_same(parameter)) {
      parameter.copy_(contiguous);
    }
  }
}

}  // namespace scaffold

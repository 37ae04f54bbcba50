// Validation of the U-Net on the dataset's validation split, shared out over
// the ranks of a data-parallel job.
#pragma once

#include <torch/torch.h>

#include "core/config.hpp"
#include "dataset/dataset.hpp"
#include "dist/process_group.hpp"
#include "nn/unet.hpp"

namespace scaffold {

// Batches the background loader reads ahead during validation.
inline constexpr int kValidationPrefetchBatches = 2;

struct ValidationOutput {
  double loss_sum = 0;  // sum of batch loss x batch size over all ranks
  double dice_sum = 0;  // sum of per-sample hard Dice over all ranks
  int samples = 0;      // samples validated on all ranks
};

// Validates this rank's contiguous share of the validation set (at most
// `max_batches` batches when that is not negative) in eval mode without
// gradients, and combines the ranks' results. Per-sample Dice values are
// gathered by position and summed in sample order, so for the same weights and
// local_batch_size 1 the Dice is bit-identical for any rank count. Leaves the
// model in training mode.
ValidationOutput run_validation(UNet& model, const Config& config, const DatasetInfo& dataset,
                                const torch::Tensor& class_weights, int max_batches, ProcessGroup& group);

}  // namespace scaffold

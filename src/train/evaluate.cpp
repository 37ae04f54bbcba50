#include "train/evaluate.hpp"

#include <algorithm>
#include <cstddef>
#include <vector>

#include "core/progress.hpp"
#include "core/trace.hpp"
#include "train/data_loader.hpp"
#include "train/loss.hpp"

namespace scaffold {

ValidationOutput run_validation(UNet& model, const Config& config, const DatasetInfo& dataset,
                                const torch::Tensor& class_weights, int max_batches, ProcessGroup& group) {
  const TraceRegion region("evaluate");
  torch::NoGradGuard no_grad;
  model->eval();
  const IndexRange shard = validation_shard(dataset.val_ids.size(), group.rank(), group.size());
  const std::vector<int> ids(dataset.val_ids.begin() + static_cast<std::ptrdiff_t>(shard.begin),
                             dataset.val_ids.begin() + static_cast<std::ptrdiff_t>(shard.end));

  // Per position in val_ids: the sample's Dice, and 1 when it was validated.
  std::vector<double> dice(dataset.val_ids.size(), 0.0);
  std::vector<double> validated(dataset.val_ids.size(), 0.0);
  double loss_sum = 0.0;
  PrefetchLoader loader(dataset, Split::kValidation, ids, config.local_batch_size,
                        config.dataloader_num_workers > 0 ? kValidationPrefetchBatches : 0);
  Progress progress_bar("validation",
                        max_batches >= 0 ? std::min(max_batches, loader.batch_count()) : loader.batch_count(),
                        "batches", {.keep_bar = false});
  std::size_t position = shard.begin;
  int batches = 0;
  while (auto batch = loader.next()) {
    if (max_batches >= 0 && batches >= max_batches) {
      break;
    }
    const torch::Tensor logits = model->forward(batch->volume);
    const LossTerms terms = segmentation_loss(logits, batch->mask, class_weights);
    const torch::Tensor per_sample = hard_dice_per_sample(logits, batch->mask).to(torch::kFloat64).contiguous();
    loss_sum += terms.loss.item<double>() * batch->size();
    for (int b = 0; b < batch->size(); ++b, ++position) {
      dice[position] = per_sample.data_ptr<double>()[b];
      validated[position] = 1.0;
    }
    ++batches;
    progress_bar.advance();
  }
  model->train();

  // Adding zeros is exact, so every rank ends with each sample's own value.
  group.all_reduce_sum(dice.data(), dice.size());
  group.all_reduce_sum(validated.data(), validated.size());
  group.all_reduce_sum(&loss_sum, 1);

  ValidationOutput total;
  total.loss_sum = loss_sum;
  for (std::size_t i = 0; i < dice.size(); ++i) {
    total.dice_sum += dice[i];
    total.samples += validated[i] != 0.0 ? 1 : 0;
  }
  return total;
}

}  // namespace scaffold
